#!/usr/bin/env bash
# Coverage-guided fuzzing with afl-fuzz (Debian's afl++) through SharpFuzz: builds tests/AflTargets,
# copies the build to out/afl/TARGET/bin, instruments there the assemblies the target names (only
# the code under test: the harness, the test helpers and the runtime are not instrumented), and runs
# afl-fuzz for SECONDS from the checked-in corpus (tests/AflTargets/corpus/TARGET) plus the inputs of
# earlier crashes (tests/AflTargets/regressions/TARGET).
#
#   scripts/fuzz-afl.sh TARGET|all [SECONDS]      (make fuzz-afl TARGET=... SECONDS=...)
#
# Prints one line per target (executions, edges found and the instrumented basic blocks they join,
# stability, corpus size, crashes, hangs) and appends it
# to out/afl-report.txt. A crash fails the run: its inputs are kept in out/afl/TARGET/crashes, and
# `dotnet out/afl/TARGET/bin/Vhostfsd.AflTargets.dll TARGET FILE` replays one (with its stack);
# `afl-tmin -i FILE -o MIN -- dotnet out/afl/TARGET/bin/Vhostfsd.AflTargets.dll TARGET` shrinks it.
set -euo pipefail

target=${1:-all}
seconds=${2:-60}
config=${CONFIG:-Release}
root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/out/afl"
build="$root/tests/AflTargets/bin/$config/net10.0"
dll=Vhostfsd.AflTargets.dll

command -v afl-fuzz >/dev/null || { echo "fuzz-afl: afl-fuzz is missing (Debian package afl++; scripts/install-deps.sh installs it)" >&2; exit 1; }
cd "$root"
if [ "${AFL_NO_BUILD:-}" != 1 ]; then
  dotnet build tests/AflTargets/AflTargets.csproj -c "$config" --nologo -v quiet >/dev/null
fi
dotnet tool restore >/dev/null

targets=$target
if [ "$target" = all ]; then
  targets=$(dotnet "$build/$dll" --list)
fi

status=0
mkdir -p "$out"
for t in $targets; do
  work="$out/$t"
  rm -rf "$work"
  mkdir -p "$work/bin" "$work/in"
  cp -r "$build/." "$work/bin/"
  instrumented=()
  while read -r assembly prefixes; do
    # shellcheck disable=SC2086 # the prefixes are separate arguments
    dotnet sharpfuzz "$work/bin/$assembly" $prefixes >/dev/null
    instrumented+=("$work/bin/$assembly")
  done < <(dotnet "$work/bin/$dll" --assemblies "$t")
  # The basic blocks instrumented: what the edges below are transitions between.
  blocks=$(dotnet "$work/bin/$dll" --trace-points "${instrumented[@]}")
  cp "tests/AflTargets/corpus/$t/"* "$work/in/"
  if [ -d "tests/AflTargets/regressions/$t" ]; then
    cp "tests/AflTargets/regressions/$t/"* "$work/in/"
  fi
  # The runtime is not instrumented (no fork-server check of the binary), the cores are shared with
  # other work (no CPU binding), and the run has no terminal.
  # A dry run on a loaded machine now and then sees an empty map for its first input ("No
  # instrumentation detected"); afl-fuzz is started again then, at most twice.
  ok=0
  for attempt in 1 2 3; do
    rm -rf "$work/findings"
    if AFL_SKIP_BIN_CHECK=1 AFL_NO_AFFINITY=1 AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_FAST_CAL=1 \
        afl-fuzz -V "$seconds" -t 5000 -m none -i "$work/in" -o "$work/findings" -- dotnet "$work/bin/$dll" "$t" >"$work/afl-fuzz.log" 2>&1; then
      ok=1
      break
    fi
    grep -q "No instrumentation detected" "$work/afl-fuzz.log" || break
    echo "fuzz-afl $t: the dry run saw no instrumentation (attempt $attempt), starting again" >&2
  done
  if [ $ok != 1 ]; then
    echo "fuzz-afl $t: afl-fuzz failed:"
    tail -n 30 "$work/afl-fuzz.log"
    status=1
    continue
  fi
  stats="$work/findings/default/fuzzer_stats"
  stat() { sed -n "s/^$1 *: *//p" "$stats"; }
  crashes=$(stat saved_crashes)
  line="afl $t: $(stat execs_done) execs in $(stat run_time) s ($(stat execs_per_sec)/s), edges $(stat edges_found) (between $blocks instrumented blocks; $(stat bitmap_cvg) of the map), stability $(stat stability), corpus $(stat corpus_count), crashes $crashes, hangs $(stat saved_hangs)"
  echo "$line"
  echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) $line" >>"$root/out/afl-report.txt"
  if [ "${crashes:-0}" != 0 ]; then
    mkdir -p "$work/crashes"
    find "$work/findings/default/crashes" -type f -name 'id:*' -exec cp {} "$work/crashes/" \;
    echo "fuzz-afl $t: $crashes crash(es) kept in $work/crashes; replay one with: dotnet $work/bin/$dll $t FILE"
    status=1
  fi
done
exit $status
