#!/usr/bin/env bash
# Builds the Debian package of vhostfsd from the native build (`make deb` runs it after
# `make build`): the executable as /usr/bin/vhostfsd, QEMU's vhost-user descriptor (which
# libvirt reads) naming it, the systemd units, and a man page made from --help.
# usage: packaging/deb.sh OUTDIR      (CONFIG=Release|Debug picks the build; Release by default)
# Prints the path of the .deb it wrote.
set -euo pipefail
umask 022
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
out="${1:?usage: deb.sh OUTDIR}"
config="${CONFIG:-Release}"
binary="$root/src/Vhostfsd/bin/$config/native/vhostfsd"
[ -x "$binary" ] || { echo "deb.sh: $binary is not built (make build)" >&2; exit 1; }
command -v help2man >/dev/null || { echo "deb.sh: help2man is missing (scripts/install-deps.sh)" >&2; exit 1; }

version="$("$binary" --version | awk '{print $2}')"
arch="$(dpkg --print-architecture)"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
stage="$(mktemp -d)"
chmod 755 "$stage"
trap 'rm -rf "$stage"' EXIT

# The same layout as `make install`, under /usr, with the units where packages put them.
make --no-print-directory -s -C "$root" -o build -o restore install CONFIG="$config" \
  DESTDIR="$stage" PREFIX=/usr SYSTEMD_UNIT_DIR=/usr/lib/systemd/system >/dev/null

man="$stage/usr/share/man/man1"
mkdir -p "$man"
help2man --no-info --section 1 --name "virtio-fs vhost-user back-end, a drop-in for virtiofsd" \
  --output "$man/vhostfsd.1" "$binary"
gzip -9n "$man/vhostfsd.1"

doc="$stage/usr/share/doc/vhostfsd"
mkdir -p "$doc"
cat > "$doc/copyright" <<TXT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: vhostfsd
Files: *
License: see the project's repository
TXT

mkdir -p "$stage/DEBIAN"
# The executable needs only libc and libm (ldd); glibc 2.34 merged the pthread and dl symbols it uses.
cat > "$stage/DEBIAN/control" <<TXT
Package: vhostfsd
Version: $version
Architecture: $arch
Maintainer: vhostfsd maintainers <vhostfsd@localhost>
Installed-Size: $(du -ks "$stage/usr" | cut -f1)
Depends: libc6 (>= 2.34)
Section: admin
Priority: optional
Description: virtio-fs vhost-user back-end, a drop-in for virtiofsd
 vhostfsd serves a host directory to a virtual machine's virtio-fs device
 over vhost-user (QEMU's vhost-user-fs-pci). It accepts the command lines of
 both virtiofsd implementations, so libvirt, Kata Containers and hand-written
 QEMU command lines can use it unchanged. One native executable: no .NET
 runtime is needed.
TXT
deb="$out/vhostfsd_${version}_${arch}.deb"
dpkg-deb --root-owner-group --build "$stage" "$deb" >/dev/null
echo "$deb"
