#!/usr/bin/env bash
# Measures which system calls the serving vhostfsd process makes once its seccomp filter is in
# force, while COMMAND runs (a test project, the soak, the fuzzers, the real-guest suite, the
# benchmark...). docs/seccomp.md says how the allow-list is kept up to date with it.
#
#   scripts/seccomp/measure.sh OUTDIR -- COMMAND [ARG...]
#   scripts/seccomp/measure.sh --report OUTDIR...       (the union of several runs)
#   MEASURE_SHOW='prctl|ioctl' scripts/seccomp/measure.sh --report OUTDIR   (those calls, in full)
#
# While COMMAND runs, every process that runs this checkout's vhostfsd (dotnet DIR/vhostfsd.dll,
# or a binary named vhostfsd, under the repository or under MEASURE_ROOT when that is set) gets
# `strace -f` attached as soon as it appears; the copy a root daemon spawns is followed from
# its start. Daemons of other checkouts on the same machine are left alone. Attaching is by
# polling /proc, so a daemon is caught within tens of milliseconds: long before it serves (the
# .NET start-up alone takes longer).
# Afterwards (and with --report) the traces in OUTDIR are summarised: per serving process,
# the system calls entered from its seccomp(2) call on (the filter going in) — or, in a run with
# --seccomp=none, from its first accept4(2) — counted by name over all processes; then the
# names missing from the allow-list in src/Vhostfsd/Hosting/SeccompPolicy.cs, and the listed
# names that never showed up (each needs its reason there).
# Needs root (ptrace of root processes) and strace. ptrace slows the daemon several times over:
# tests with tight timing may fail under it; that does not spoil the measurement.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
policy="$repo/src/Vhostfsd/Hosting/SeccompPolicy.cs"
root=${MEASURE_ROOT:-$repo}

usage() {
  echo "usage: $0 OUTDIR -- COMMAND [ARG...]   or   $0 --report OUTDIR..." >&2
  exit 2
}

# Which process counts: a program named vhostfsd (a native build), or a dotnet host whose
# argv[1] is vhostfsd.dll; either way the file must lie under $root.
is_vhostfsd() {
  local -a argv
  local program
  mapfile -d "" -t argv 2>/dev/null < "/proc/$1/cmdline" || return 1
  [[ ${#argv[@]} -gt 0 ]] || return 1
  if [[ ${argv[0]##*/} == vhostfsd ]]; then
    program=$(readlink "/proc/$1/exe" 2>/dev/null) || return 1
  elif [[ ${argv[0]##*/} == dotnet && ${#argv[@]} -gt 1 && ${argv[1]} == *vhostfsd.dll ]]; then
    program=${argv[1]}
    [[ $program == /* ]] || program="$(readlink "/proc/$1/cwd" 2>/dev/null)/$program"
  else
    return 1
  fi
  [[ $program == "$root"/* ]]
}

watch_daemons() {
  local out=$1 flag=$2
  declare -A seen=()
  while [[ -e $flag ]]; do
    for dir in /proc/[0-9]*; do
      local pid=${dir#/proc/} arg0=
      # argv[0] changes when a wrapper (env, bash -c, systemd-socket-activate) execs the daemon.
      IFS= read -r -d "" arg0 2>/dev/null < "$dir/cmdline"
      [[ ${seen[$pid]-} == "$arg0" ]] && continue
      seen[$pid]=$arg0
      is_vhostfsd "$pid" || continue
      grep -qs $'^TracerPid:\t0$' "$dir/status" || continue
      strace -f -q --decode-pids=pidns -e trace=all -o "$out/trace.$pid" -p "$pid" 2>/dev/null &
    done
    sleep 0.02
  done
}

# Summarises OUTDIR/trace.*: prints "COUNT NAME" for every call entered after the marker.
summarise() {
  local -a traces=()
  local dir
  for dir in "$@"; do
    [[ -e $dir/$(ls "$dir" | grep -m1 '^trace\.') ]] && traces+=("$dir"/trace.*)
  done
  [[ ${#traces[@]} -gt 0 ]] || { echo "measure: no traces in $* (no vhostfsd process ran?)" >&2; return 1; }
  for trace in "${traces[@]}"; do
    # One file per attached process; with -f its lines start with the thread id. A thread
    # belongs to the process of the thread whose clone returned its id with CLONE_THREAD;
    # any other clone starts a new process. Threads that existed at attach time belong to the
    # attached process.
    awk -v first="${trace##*.}" -v show="${MEASURE_SHOW:-}" -v file="$trace" '
      function proc(tid) { return (tid in owner) ? owner[tid] : first }
      # The id a clone returned, in strace'"'"'s pid namespace: a sandboxed process sees its own
      # numbers, which --decode-pids=pidns follows with the host'"'"'s ("= 9 /* 8274 in ... */").
      function cloned(line) {
        if (match(line, /\/\* [0-9]+ in strace.s PID NS \*\/$/)) return substr(line, RSTART + 3) + 0
        if (match(line, /= [0-9]+$/)) return substr(line, RSTART + 2) + 0
        return 0
      }
      {
        tid = $1
        line = substr($0, length($1) + 2)
        sub(/^ +/, "", line)
        if (line ~ /^<\.\.\. /) {
          # The end of a call entered earlier: already counted at entry. A clone that
          # finished here still says which process the new thread joined.
          if (line ~ /^<\.\.\. clone3? resumed>/ && (child = cloned(line)) > 0) {
            owner[child] = (pending[tid] ~ /CLONE_THREAD/) ? proc(tid) : child
          }
          next
        }
        if (line ~ /^\+\+\+|^---/) next
        if (!match(line, /^[a-z_0-9]+\(/)) next
        name = substr(line, 1, RLENGTH - 1)
        if (name ~ /^clone3?$/) {
          pending[tid] = line
          if ((child = cloned(line)) > 0) {
            owner[child] = (line ~ /CLONE_THREAD/) ? proc(tid) : child
          }
        }
        p = proc(tid)
        # The filter is in force once seccomp(2) returned: that call itself is not counted.
        if (!(p in armed) && name == "seccomp") { armed[p] = 1; next }
        if (!(p in armed) && name == "accept4") armed[p] = 1
        if (p in armed) print name
        if ((p in armed) && show != "" && name ~ ("^(" show ")$")) print file ": " $0 > "/dev/stderr"
      }' "$trace"
  done | sort | uniq -c | sort -k2
}

# Names in the allow-list groups and the argument rules of SeccompPolicy.cs (between their
# markers; a rule's call is listed, but only some of its arguments pass: MEASURE_SHOW=NAME
# prints each call of NAME after the marker, arguments included, to check them), and the x86_64
# numbers of the table, to name calls strace only knows by number (syscall_0x1cf).
listed_names() {
  sed -n -e '/allow-list:begin/,/allow-list:end/p' -e '/argument-rules:begin/,/argument-rules:end/s/^ *new("\([a-z_0-9]*\)".*/"\1"/p' "$policy" \
    | grep -o '"[a-z_0-9]*"' | tr -d '"' | sort -u
}
number_names() {
  sed -n '/syscall-table:begin/,/syscall-table:end/p' "$policy" \
    | sed -n 's/.*new("\([a-z_0-9]*\)", *\([0-9-]*\),.*/\2 \1/p'
}

report() {
  local counts
  counts=$(summarise "$@") || return 1
  if [[ -z $counts ]]; then
    # Counting starts at seccomp(2), or at accept4(2) for a process attached after its filter
    # went in; a --fuse-mount daemon accepts nothing, so one attached late shows no call.
    echo "measure: no call counted in $* (attached after the filter went in, and no accept4 followed)" >&2
    return 1
  fi
  declare -A byNumber=()
  while read -r number name; do byNumber[$number]=$name; done < <(number_names)
  declare -A seen=()
  echo "== system calls entered by serving processes after the filter went in (count, name)"
  while read -r count name; do
    if [[ $name =~ ^syscall_0x([0-9a-f]+)$ ]]; then
      local number=$((16#${BASH_REMATCH[1]}))
      name=${byNumber[$number]:-$name}
    fi
    seen[$name]=1
    printf '%10d %s\n' "$count" "$name"
  done <<< "$counts"
  echo "== seen but not in the allow-list"
  local missing=0
  while read -r name; do [[ -n $name ]] || continue; echo "  $name"; missing=1; done < <(
    for name in "${!seen[@]}"; do listed_names | grep -qx "$name" || echo "$name"; done | sort)
  [[ $missing == 1 ]] || echo "  (none)"
  echo "== in the allow-list but not seen in this run"
  listed_names | while read -r name; do [[ -n ${seen[$name]-} ]] || echo "  $name"; done
}

if [[ ${1-} == --report ]]; then
  [[ $# -ge 2 ]] || usage
  shift
  report "$@"
  exit
fi
[[ $# -ge 3 && $2 == -- ]] || usage
out=$1
shift 2
command -v strace >/dev/null || { echo "measure: strace is not installed (apt-get install strace)" >&2; exit 1; }
[[ $(id -u) == 0 ]] || { echo "measure: run as root (ptrace of the daemon's root processes)" >&2; exit 1; }
mkdir -p "$out"
flag=$(mktemp)
watch_daemons "$out" "$flag" &
watcher=$!
"$@"
status=$?
rm -f "$flag"
wait "$watcher"
# Let the strace processes write their last lines (they end with their daemons).
sleep 1
report "$out"
exit $status
