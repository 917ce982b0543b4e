#!/usr/bin/env bash
# `make demo`: serves a small demo directory to a throwaway Linux guest and shows both
# sides. usage: demo.sh [vhostfsd|reference]   (default vhostfsd; see scripts/e2e/run.sh)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
daemon="${1:-vhostfsd}"
case "$daemon" in
  vhostfsd|reference) ;;
  *) echo "demo: DAEMON must be vhostfsd or reference, not '$daemon'" >&2; exit 2 ;;
esac

demo="${E2E_CACHE:-$root/.e2e-cache}/demo"
share="$demo/share"
rm -rf "$demo"
mkdir -p "$share/photos"
cat > "$share/README.txt" <<'TXT'
This directory lives on the host. The guest sees it through virtio-fs.
TXT
printf 'line one\nline two\n' > "$share/notes.txt"
head -c 4096 /dev/urandom > "$share/photos/cat.jpg"

bold() { printf '\033[1m%s\033[0m\n' "$*"; }
bold "== host: serving $share with $daemon"
ls -l "$share"
echo
bold "== booting a Debian kernel under QEMU (TCG, ~15-30 s); the guest console follows"
set +e
"$here/run.sh" --daemon "$daemon" --share "$share" --out "$demo/out" --script demo --show --timeout 180
rc=$?
set -e
echo
daemon_exit="$(sed -n 's/^daemon_exit=//p' "$demo/out/result" 2>/dev/null || true)"
boot="$(sed -n 's/^boot_seconds=//p' "$demo/out/result" 2>/dev/null || true)"
bold "== host: the guest powered off (console up after ${boot:-?} s); the daemon's exit: ${daemon_exit:-?}"
if [ -f "$share/written-by-guest.txt" ]; then
  bold "== host: $share/written-by-guest.txt, written by the guest:"
  ls -l "$share/written-by-guest.txt"
  cat "$share/written-by-guest.txt"
else
  bold "== host: the guest did not write written-by-guest.txt"
fi
if [ $rc -ne 0 ]; then
  echo "demo: failed; logs in $demo/out (daemon.log, serial.log, qemu.log)" >&2
  tail -n 15 "$demo/out/daemon.log" >&2 || true
  exit 1
fi
