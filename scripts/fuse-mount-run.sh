#!/usr/bin/env bash
# Mounts a fresh, empty share through vhostfsd --fuse-mount, runs a command against the mount,
# unmounts, and exits with the command's status: point any file-system test suite at vhostfsd
# served by the host kernel's own FUSE client (docs/testing.md, "Host FUSE mount").
#
# usage: fuse-mount-run.sh COMMAND [DAEMON-OPTION...]
#   COMMAND runs under bash -c with the mount point as its working directory and in
#   VHOSTFSD_MOUNT; the shared directory behind it is in VHOSTFSD_SHARE.
#   DAEMON-OPTIONs are added to vhostfsd's command line (e.g. --xattr --posix-lock).
# Environment: VHOSTFSD (the daemon command, default: dotnet src/Vhostfsd/bin/$CONFIG/net10.0/vhostfsd.dll),
#   CONFIG (Release), KEEP=1 keeps the share and the daemon log afterwards.
# Exit status: COMMAND's; 125 when the mount could not be set up or the daemon did not end cleanly.
set -uo pipefail

[ $# -ge 1 ] && [ -n "$1" ] || { echo "usage: $0 COMMAND [DAEMON-OPTION...]" >&2; exit 125; }
command="$1"; shift
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
if [ -n "${VHOSTFSD:-}" ]; then
  read -r -a daemon <<< "$VHOSTFSD"
else
  dll="$root/src/Vhostfsd/bin/${CONFIG:-Release}/net10.0/vhostfsd.dll"
  [ -f "$dll" ] || { echo "fuse-mount-run: $dll is not built (make build)" >&2; exit 125; }
  daemon=(dotnet "$dll")
fi

work="$(mktemp -d /tmp/vhostfsd-fuse.XXXXXX)"
share="$work/share" mnt="$work/mnt" log="$work/daemon.log"
mkdir "$share" "$mnt"

mounted() { grep -q " $mnt fuse.vhostfsd " /proc/mounts; }
cleanup() {
  if mounted; then umount -l "$mnt" 2>/dev/null; fi
  if [ "${KEEP:-0}" = 1 ]; then
    echo "fuse-mount-run: kept $share and $log" >&2
  elif ! mounted; then
    rm -rf "$work"
  fi
}
trap cleanup EXIT

"${daemon[@]}" --shared-dir "$share" --fuse-mount "$mnt" "$@" > "$log" 2>&1 &
pid=$!
# Served once the daemon answered the kernel's INIT.
for _ in $(seq 600); do
  grep -q "FUSE INIT:" "$log" && break
  if ! kill -0 "$pid" 2>/dev/null; then
    wait "$pid"; echo "fuse-mount-run: vhostfsd exited with $? before serving the mount:" >&2
    tail -n 20 "$log" >&2; exit 125
  fi
  sleep 0.1
done
if ! grep -q "FUSE INIT:" "$log"; then
  echo "fuse-mount-run: vhostfsd did not serve the mount within 60 s:" >&2
  tail -n 20 "$log" >&2; kill -TERM "$pid"; wait "$pid"; exit 125
fi
echo "fuse-mount-run: $share mounted on $mnt; running: $command" >&2

(cd "$mnt" && VHOSTFSD_MOUNT="$mnt" VHOSTFSD_SHARE="$share" bash -c "$command")
status=$?

kill -TERM "$pid"
wait "$pid"
daemon_status=$?
echo "fuse-mount-run: the command exited with $status; vhostfsd exited with $daemon_status" >&2
if [ "$daemon_status" -ne 0 ] || mounted; then
  echo "fuse-mount-run: vhostfsd did not end cleanly:" >&2
  tail -n 20 "$log" >&2
  [ "$status" -eq 0 ] && status=125
fi
exit "$status"
