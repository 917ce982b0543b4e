#!/usr/bin/env bash
# Boots the throwaway guest against a virtio-fs daemon serving a host directory:
# starts the daemon on a fresh socket, waits for the socket, runs QEMU (TCG) with
# vhost-user-fs-pci, waits for the guest to power off, then for the daemon to exit.
#
# usage: run.sh --daemon reference|vhostfsd|custom --share DIR --out DIR
#               [--script suite|demo] [--queues N] [--xattr] [--tag TAG]
#               [--timeout SECONDS] [--stall SECONDS] [--socket-activation] [--show]
#
#   --daemon reference  /usr/lib/qemu/virtiofsd (C, QEMU 7.2), or $VIRTIOFSD
#   --daemon vhostfsd   the native src/Vhostfsd/bin/$CONFIG/native/vhostfsd (make build), or $VHOSTFSD
#   --daemon custom     $E2E_DAEMON_CMD, a command line in which @SOCKET@, @SHARED@, @TAG@
#                       and @QUEUES@ are replaced (e.g. another virtiofsd build)
#   --xattr             the daemon serves xattrs and the guest suite tests them
#   --socket-activation start the daemon as a systemd socket unit would: the socket is
#                       created by systemd-socket-activate, which starts the daemon with
#                       the listening socket as fd 3 (--fd=3, as vhostfsd@.service) on first connect
#   --timeout SECONDS   kill QEMU when the guest has not powered off by then (300)
#   --stall SECONDS     kill QEMU when the console printed nothing for that long (90): a
#                       request the daemon never answers hangs the guest for good
#   --show              copy the guest console to stdout while it runs (make demo)
#   Extra daemon arguments: $E2E_DAEMON_ARGS (split on spaces).
#
# Writes into --out: serial.log (guest console), daemon.log (daemon stdout+stderr),
# qemu.log (QEMU's own messages), command (what ran), result (key=value: qemu_rc,
# daemon_rc, daemon_exit=self|term|kill|early, timed_out, stalled, daemon_died_first,
# seconds to boot and to finish).
# Exit status: 0 when the guest printed "E2E-DONE rc=0" and QEMU exited by itself.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

daemon="" share="" out="" script=suite queues=1 xattr=0 tag=e2e timeout=300 stall=90 show=0 activation=0
while [ $# -gt 0 ]; do
  case "$1" in
    --daemon)  daemon="$2"; shift 2 ;;
    --share)   share="$2"; shift 2 ;;
    --out)     out="$2"; shift 2 ;;
    --script)  script="$2"; shift 2 ;;
    --queues)  queues="$2"; shift 2 ;;
    --xattr)   xattr=1; shift ;;
    --tag)     tag="$2"; shift 2 ;;
    --timeout) timeout="$2"; shift 2 ;;
    --stall)   stall="$2"; shift 2 ;;
    --show)    show=1; shift ;;
    --socket-activation) activation=1; shift ;;
    *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
die() { echo "run.sh: error: $*" >&2; exit 2; }
[ -n "$daemon" ] && [ -n "$share" ] && [ -n "$out" ] || die "--daemon, --share and --out are required"
[ -d "$share" ] || die "shared directory $share does not exist"
[[ "$queues" =~ ^[1-9][0-9]*$ ]] || die "--queues takes a positive number"
[[ "$timeout" =~ ^[1-9][0-9]*$ ]] && [[ "$stall" =~ ^[1-9][0-9]*$ ]] || die "--timeout and --stall take seconds"
[[ "$tag" =~ ^[A-Za-z0-9_.-]{1,36}$ ]] || die "--tag: 1-36 characters of [A-Za-z0-9_.-]"
share="$(cd "$share" && pwd)"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
qemu="${QEMU:-qemu-system-x86_64}"
command -v "$qemu" >/dev/null || die "$qemu is missing (run scripts/install-deps.sh)"

guest="$("$here/build-guest.sh")"

# A short private directory for the socket (sun_path is limited to 107 bytes).
rundir="$(mktemp -d /tmp/vhostfsd-e2e.XXXXXX)"
sock="$rundir/vfs.sock"

config="${CONFIG:-Release}"
read -r -a extra <<< "${E2E_DAEMON_ARGS:-}"
case "$daemon" in
  reference)
    read -r -a cmd <<< "${VIRTIOFSD:-/usr/lib/qemu/virtiofsd}"
    # The C daemon takes -o options; it has no --tag and a single request queue.
    if [ "$activation" = 1 ]; then cmd+=(--fd=3); else cmd+=("--socket-path=$sock"); fi
    cmd+=(-o "source=$share" -o cache=auto)
    [ "$xattr" = 1 ] && cmd+=(-o xattr)
    ;;
  vhostfsd)
    if [ -n "${VHOSTFSD:-}" ]; then
      read -r -a cmd <<< "$VHOSTFSD"
    else
      exe="$root/src/Vhostfsd/bin/$config/native/vhostfsd"
      [ -x "$exe" ] || die "$exe is not built (make build, or set VHOSTFSD)"
      cmd=("$exe")
    fi
    # No --tag: a daemon offering VHOST_USER_PROTOCOL_F_CONFIG makes QEMU 7.1-8.0 crash
    # (see docs/e2e.md); QEMU's own tag= property names the file system.
    if [ "$activation" = 1 ]; then cmd+=(--fd=3); else cmd+=(--socket-path "$sock"); fi
    cmd+=(--shared-dir "$share" --cache auto)
    [ "$xattr" = 1 ] && cmd+=(--xattr)
    ;;
  custom)
    [ -n "${E2E_DAEMON_CMD:-}" ] || die "--daemon custom needs E2E_DAEMON_CMD"
    line="${E2E_DAEMON_CMD//@SOCKET@/$sock}"
    line="${line//@SHARED@/$share}"
    line="${line//@TAG@/$tag}"
    line="${line//@QUEUES@/$queues}"
    read -r -a cmd <<< "$line"
    ;;
  *) die "--daemon must be reference, vhostfsd or custom" ;;
esac
cmd+=("${extra[@]}")
if [ "$activation" = 1 ]; then
  command -v systemd-socket-activate >/dev/null || die "--socket-activation needs systemd-socket-activate (package systemd)"
  # It execs the daemon in place (same pid) once the first client connects.
  cmd=(systemd-socket-activate -l "$sock" "${cmd[@]}")
fi

device="vhost-user-fs-pci,chardev=vfs,tag=$tag"
[ "$queues" -gt 1 ] && device+=",num-request-queues=$queues"
qcmd=("$qemu" -accel tcg -m 1G -smp 1 -nographic -nodefaults -no-user-config -no-reboot
      -serial stdio
      -kernel "$guest/vmlinuz" -initrd "$guest/initramfs.cpio.gz"
      -append "console=ttyS0 panic=-1 quiet e2e.script=$script e2e.tag=$tag e2e.xattr=$xattr"
      -object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem
      -chardev "socket,id=vfs,path=$sock" -device "$device")
{
  echo "daemon: ${cmd[*]}"
  echo "qemu: ${qcmd[*]}"
} > "$out/command"
: > "$out/serial.log"; : > "$out/daemon.log"; : > "$out/qemu.log"

daemon_pid="" qemu_pid="" tail_pid=""
daemon_rc="" daemon_exit="" qemu_rc="" timed_out=0 stalled=0 daemon_died_first=0 boot_s="" done_s=""
now_ms() { local t="${EPOCHREALTIME/./}"; echo $((t / 1000)); }
elapsed() { local d=$(( $(now_ms) - $1 )); printf '%d.%d' $((d / 1000)) $((d % 1000 / 100)); }
alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }
stop_group() { # pid: SIGTERM to its process group, SIGKILL after 5 s
  local pid="$1" i
  alive "$pid" || return 0
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 50); do alive "$pid" || return 0; sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  return 1
}
finish() {
  local rc=$?
  set +e
  [ -n "$tail_pid" ] && kill "$tail_pid" 2>/dev/null
  stop_group "$qemu_pid"
  if alive "$daemon_pid"; then
    stop_group "$daemon_pid" && daemon_exit="${daemon_exit:-term}" || daemon_exit=kill
    wait "$daemon_pid" 2>/dev/null; daemon_rc="${daemon_rc:-$?}"; daemon_pid=""
  fi
  {
    echo "qemu_rc=$qemu_rc"
    echo "daemon_rc=$daemon_rc"
    echo "daemon_exit=$daemon_exit"
    echo "timed_out=$timed_out"
    echo "stalled=$stalled"
    echo "daemon_died_first=$daemon_died_first"
    echo "boot_seconds=$boot_s"
    echo "done_seconds=$done_s"
  } > "$out/result"
  rm -rf "$rundir"
  exit $rc
}
trap finish EXIT
trap 'exit 130' INT TERM

# --- the daemon ---------------------------------------------------------------------------
setsid "${cmd[@]}" > "$out/daemon.log" 2>&1 < /dev/null &
daemon_pid=$!
for i in $(seq 300); do
  [ -S "$sock" ] && break
  if ! alive "$daemon_pid"; then
    daemon_rc=0; wait "$daemon_pid" || daemon_rc=$?; daemon_exit=early
    echo "run.sh: the daemon exited (status $daemon_rc) before creating $sock:" >&2
    tail -n 20 "$out/daemon.log" >&2
    exit 1
  fi
  sleep 0.1
done
[ -S "$sock" ] || { echo "run.sh: no socket $sock after 30 s" >&2; exit 1; }

# --- the guest ----------------------------------------------------------------------------
t1="$(now_ms)"
setsid "${qcmd[@]}" > "$out/serial.log" 2> "$out/qemu.log" < /dev/null &
qemu_pid=$!
if [ "$show" = 1 ]; then
  # Without the terminal resets and colour codes SeaBIOS sends.
  tail -n +1 -f "$out/serial.log" > >(sed -u -e 's/\x1b\[[0-9;?]*[A-Za-z]//g' -e 's/\x1bc//g') &
  tail_pid=$!
fi
last_size=0 last_change="$t1" daemon_gone=""
while alive "$qemu_pid"; do
  t="$(now_ms)"
  size="$(stat -c %s "$out/serial.log")"
  if [ "$size" != "$last_size" ]; then
    last_size="$size" last_change="$t"
    if [ -z "$boot_s" ] && grep -q 'E2E-BOOT' "$out/serial.log"; then boot_s="$(elapsed "$t1")"; fi
    if [ -z "$done_s" ] && grep -q 'E2E-DONE' "$out/serial.log"; then done_s="$(elapsed "$t1")"; fi
  fi
  why=""
  if [ $((t - t1)) -gt $((timeout * 1000)) ]; then
    timed_out=1 why="the guest did not finish within $timeout s"
  elif [ $((t - last_change)) -gt $((stall * 1000)) ]; then
    stalled=1 why="the guest console was silent for $stall s"
  elif ! alive "$daemon_pid"; then
    # The guest cannot get past a request the dead daemon never answers; a few seconds
    # let a guest that was already powering off finish by itself.
    daemon_gone="${daemon_gone:-$t}"
    if [ $((t - daemon_gone)) -gt 5000 ]; then
      daemon_died_first=1 why="the daemon exited while the guest was running"
    fi
  fi
  if [ -n "$why" ]; then
    echo "run.sh: $why; killing QEMU" >&2
    stop_group "$qemu_pid" || true
    break
  fi
  sleep 0.2
done
qemu_rc=0; wait "$qemu_pid" || qemu_rc=$?
qemu_pid=""
[ -z "$done_s" ] && grep -q 'E2E-DONE' "$out/serial.log" && done_s="$(elapsed "$t1")"
[ -z "$boot_s" ] && grep -q 'E2E-BOOT' "$out/serial.log" && boot_s="$(elapsed "$t1")"
if [ -n "$tail_pid" ]; then sleep 0.3; kill "$tail_pid" 2>/dev/null || true; tail_pid=""; fi

# --- the daemon should leave by itself once the front-end is gone ------------------------
for i in $(seq 100); do alive "$daemon_pid" || break; sleep 0.1; done
if alive "$daemon_pid"; then
  daemon_exit=term
  stop_group "$daemon_pid" || daemon_exit=kill
else
  daemon_exit=self
fi
daemon_rc=0; wait "$daemon_pid" || daemon_rc=$?
daemon_pid=""

[ "$timed_out$stalled$daemon_died_first" = 000 ] && grep -q 'E2E-DONE rc=0' "$out/serial.log"
