#!/usr/bin/env bash
# Installs the Debian packages that the build, the tests, the demo and the benchmark need, if
# missing: clang (links the native executable), help2man (its man page in the .deb), QEMU 7.2
# (with the reference daemon /usr/lib/qemu/virtiofsd), busybox-static, cpio and kmod for the
# guest initramfs, fuse3, fio, stress-ng, attr/acl tools, afl++ (the coverage-guided fuzzers).
# With --build, only what `make build` needs (clang). Safe to run repeatedly; does nothing
# when everything is present.
set -euo pipefail

need=()
check() { # package, a file it provides
  [ -e "$2" ] || need+=("$1")
}
check clang /usr/bin/clang                       # Native AOT links with it
if [ "${1:-}" != --build ]; then
  check help2man /usr/bin/help2man                 # make deb: the man page from --help
  check qemu-system-x86 /usr/bin/qemu-system-x86_64
  check qemu-system-common /usr/lib/qemu/virtiofsd
  check busybox-static /bin/busybox
  check cpio /usr/bin/cpio
  check kmod /usr/bin/kmod
  check fuse3 /usr/bin/fusermount3
  check attr /usr/bin/getfattr
  check acl /usr/bin/getfacl
  check fio /usr/bin/fio
  check stress-ng /usr/bin/stress-ng
  check systemd /usr/bin/systemd-socket-activate   # the e2e socket-activation (--fd 3) run
  check afl++ /usr/bin/afl-fuzz                    # make fuzz-afl and the AFL fuzz tests (with SharpFuzz)
fi

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "install-deps: missing packages ${need[*]}; run as root on Debian/Ubuntu, or install them yourself" >&2
  exit 1
fi
echo "install-deps: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
