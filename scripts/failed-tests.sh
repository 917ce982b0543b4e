#!/usr/bin/env bash
# Prints, at the end of a test run, every failed test with its message and the first lines of its
# stack trace, taken from the console log of `dotnet test` (verbosity normal). The test projects
# run in parallel and their output interleaves, so a failure can sit hundreds of lines above the
# end of the log; CI shows only the end.
set -uo pipefail
log=${1:?usage: failed-tests.sh CONSOLE_LOG}
[[ -f $log ]] || { echo "failed-tests.sh: no log at $log" >&2; exit 2; }
awk '
    # A result line of the console logger starts a block; the block runs until the next result
    # line or the end of a project.
    /^  (Passed|Skipped) / || /^\[xUnit\.net/ || /^Test Run / || /^Results File:/ { inblock = 0 }
    /^  Failed / { inblock = 1; lines = 0; failed++ ; print "" }
    inblock && lines < 40 { print; lines++ }
    END {
        if (failed == 0) { print "failed-tests.sh: no failed test in the log" }
        else { printf "\n%d failed test(s), listed above\n", failed }
    }
' "$log"
