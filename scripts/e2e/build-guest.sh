#!/usr/bin/env bash
# Builds the throwaway Linux guest that the end-to-end tests and `make demo` boot:
#   $E2E_CACHE/guest/vmlinuz            Debian's kernel (package linux-image-amd64)
#   $E2E_CACHE/guest/initramfs.cpio.gz  busybox-static, the virtio/virtiofs modules,
#                                       setfattr/getfattr, /init and the guest scripts
# Idempotent: the kernel package is downloaded once; the initramfs is rebuilt only when
# one of its inputs (kernel, scripts, busybox, attr tools) changed. Prints the guest
# directory on stdout. Needs apt-get (Debian 12), dpkg-deb, cpio, gzip, busybox-static.
#
# Environment:
#   E2E_CACHE           cache directory (default: <repo>/.e2e-cache)
#   E2E_KERNEL_PACKAGE  kernel package to use instead of resolving linux-image-amd64
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cache="${E2E_CACHE:-$root/.e2e-cache}"
guest="$cache/guest"
mkdir -p "$cache/debs" "$guest"

log() { echo "build-guest: $*" >&2; }
die() { echo "build-guest: error: $*" >&2; exit 1; }

# One builder at a time per cache (tests and `make demo` may start together).
exec 9>"$cache/.lock"
flock -w 600 9 || die "timed out waiting for $cache/.lock"

# The modules the guest loads, in load order. Any of them may be built into the kernel.
modules=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci fuse virtiofs)

for tool in dpkg-deb cpio gzip sha256sum; do
  command -v "$tool" >/dev/null || die "$tool is missing (run scripts/install-deps.sh)"
done
busybox=/bin/busybox
[ -x "$busybox" ] || die "$busybox is missing (Debian package busybox-static)"
if ldd "$busybox" >/dev/null 2>&1; then
  die "$busybox is dynamically linked; install busybox-static"
fi

# --- 1. the kernel package -------------------------------------------------------------
resolve_kernel_package() {
  if [ -n "${E2E_KERNEL_PACKAGE:-}" ]; then echo "$E2E_KERNEL_PACKAGE"; return; fi
  local pkg
  # linux-image-amd64 is a metapackage; its Depends names the real image package.
  pkg="$(apt-cache depends linux-image-amd64 2>/dev/null |
         awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')"
  if [ -z "$pkg" ] && [ "$(id -u)" = 0 ]; then
    log "apt lists do not know linux-image-amd64; running apt-get update"
    apt-get update -q >/dev/null 2>&1 || true
    pkg="$(apt-cache depends linux-image-amd64 2>/dev/null |
           awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')"
  fi
  [ -n "$pkg" ] || die "cannot resolve linux-image-amd64 to a kernel package (Debian with apt lists needed, or set E2E_KERNEL_PACKAGE)"
  echo "$pkg"
}

deb="$(ls -1 "$cache"/debs/linux-image-[0-9]*.deb 2>/dev/null | head -n1 || true)"
if [ -n "${E2E_KERNEL_PACKAGE:-}" ] && [ -n "$deb" ] &&
   [ "$(dpkg-deb -f "$deb" Package)" != "$E2E_KERNEL_PACKAGE" ]; then
  deb=""
fi
if [ -z "$deb" ]; then
  command -v apt-get >/dev/null || die "apt-get is missing: the guest kernel comes from Debian's linux-image-amd64"
  pkg="$(resolve_kernel_package)"
  log "downloading $pkg (about 70 MB, once)"
  rm -f "$cache"/debs/*.deb.part
  (cd "$cache/debs" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >/dev/null 2>"$cache/debs/download.log") ||
    die "apt-get download $pkg failed: $(tail -n3 "$cache/debs/download.log")"
  deb="$(ls -1 "$cache"/debs/"$pkg"_*.deb 2>/dev/null | head -n1 || true)"
  [ -n "$deb" ] || die "apt-get download $pkg produced no .deb in $cache/debs"
fi
kpkg="$(dpkg-deb -f "$deb" Package)"
kver_pkg="$(dpkg-deb -f "$deb" Version)"

# --- 2. the kernel and the modules -----------------------------------------------------
kdir="$cache/kernel-$kpkg-$kver_pkg"
if [ ! -f "$kdir/.complete" ]; then
  log "unpacking $kpkg $kver_pkg"
  rm -rf "$kdir" "$cache/unpack"
  mkdir -p "$cache/unpack" "$kdir/modules"
  dpkg-deb -x "$deb" "$cache/unpack"
  vmlinuz="$(ls -1 "$cache"/unpack/boot/vmlinuz-* 2>/dev/null | head -n1 || true)"
  [ -n "$vmlinuz" ] && [ -f "$vmlinuz" ] || die "no /boot/vmlinuz-* in $deb"
  cp "$vmlinuz" "$kdir/vmlinuz"
  mdir="$(ls -d "$cache"/unpack/lib/modules/* "$cache"/unpack/usr/lib/modules/* 2>/dev/null | head -n1 || true)"
  [ -n "$mdir" ] && [ -d "$mdir" ] || die "no lib/modules/<version> in $deb"
  basename "$mdir" > "$kdir/release"
  for m in "${modules[@]}"; do
    # Module file names use '-' or '_' interchangeably; builtin lists say kernel/.../name.ko.
    if grep -Eq "/${m}\.ko\$" "$mdir/modules.builtin" 2>/dev/null ||
       grep -Eq "/${m//_/-}\.ko\$" "$mdir/modules.builtin" 2>/dev/null; then
      echo "$m" >> "$kdir/builtin"
      continue
    fi
    f="$(find "$mdir/kernel" \( -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" -o -name "$m.ko.gz" \) | head -n1)"
    [ -n "$f" ] || die "module $m is neither in modules.builtin nor in the package"
    case "$f" in
      *.ko.xz)  xz -dc "$f" > "$kdir/modules/$m.ko" ;;
      *.ko.zst) zstd -qdc "$f" > "$kdir/modules/$m.ko" ;;
      *.ko.gz)  gzip -dc "$f" > "$kdir/modules/$m.ko" ;;
      *)        cp "$f" "$kdir/modules/$m.ko" ;;
    esac
    # Every dependency must be loaded before it: one of ours, earlier in the list, or builtin.
    if command -v modinfo >/dev/null; then
      for dep in $(modinfo -F depends "$kdir/modules/$m.ko" | tr ',' ' '); do
        [ -f "$kdir/modules/$dep.ko" ] || grep -qx "$dep" "$kdir/builtin" 2>/dev/null ||
          die "module $m depends on $dep, which is not loaded before it"
      done
    fi
  done
  touch "$kdir/builtin"
  rm -rf "$cache/unpack"
  touch "$kdir/.complete"
fi

# --- 3. the initramfs --------------------------------------------------------------------
# Guest-side xattr tools: busybox has no setfattr/getfattr, so the host's (package attr)
# are copied in together with the shared libraries they link against.
attr_tools=()
for t in /usr/bin/setfattr /usr/bin/getfattr; do
  [ -x "$t" ] && attr_tools+=("$t")
done
[ ${#attr_tools[@]} -eq 2 ] || die "setfattr/getfattr are missing (Debian package attr)"

libs_of() { # the shared objects a binary loads, including the dynamic loader
  ldd "$1" | awk '/=> \// { print $3 } $1 ~ /^\// && $2 ~ /^\(/ { print $1 }'
}

inputs="$(
  {
    echo "kernel $kpkg $kver_pkg"
    echo "modules ${modules[*]}"
    sha256sum "$busybox" "${attr_tools[@]}" "$here"/guest/*
    for t in "${attr_tools[@]}"; do libs_of "$t"; done | sort -u | xargs sha256sum
  } | sha256sum | cut -d' ' -f1
)"
if [ -f "$guest/initramfs.cpio.gz" ] && [ -f "$guest/vmlinuz" ] &&
   [ "$(cat "$guest/inputs" 2>/dev/null)" = "$inputs" ]; then
  echo "$guest"
  exit 0
fi

log "building the initramfs"
tree="$cache/initramfs-tree"
rm -rf "$tree"
mkdir -p "$tree"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,mnt,tmp,run,e2e,lib/modules}
cp "$busybox" "$tree/bin/busybox"
install -m 0755 "$here/guest/init" "$tree/init"
for s in "$here"/guest/*.sh; do install -m 0755 "$s" "$tree/e2e/"; done
cp "$kdir"/modules/*.ko "$tree/lib/modules/" 2>/dev/null || true
cp "$kdir/builtin" "$tree/lib/modules/builtin"
printf '%s\n' "${modules[@]}" > "$tree/lib/modules/load-order"
cp "$kdir/release" "$tree/lib/modules/release"
for t in "${attr_tools[@]}"; do
  install -D -m 0755 "$t" "$tree$t"
  for l in $(libs_of "$t"); do
    real="$(readlink -f "$l")"
    install -D -m 0755 "$real" "$tree$l"
  done
done
# No /dev/console node in the archive (building needs no root): /init reopens its
# stdio on the console once devtmpfs is mounted.
(cd "$tree" && find . -print0 | LC_ALL=C sort -z |
  cpio --null -o -H newc --owner 0:0 --quiet) > "$guest/initramfs.cpio"
gzip -9 -n -f "$guest/initramfs.cpio"
cp "$kdir/vmlinuz" "$guest/vmlinuz"
echo "$inputs" > "$guest/inputs"
rm -rf "$tree"
log "guest ready in $guest ($(du -h "$guest/initramfs.cpio.gz" | cut -f1) initramfs, kernel $(cat "$kdir/release"))"
echo "$guest"
