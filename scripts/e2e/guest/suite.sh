#!/bin/sh
# The end-to-end suite, run inside the guest by /init. Every step prints
# "E2E-STEP <name> OK" or "E2E-FAIL <name> <why>"; the host also checks what the guest
# left in the share (see docs/e2e.md). The host prepared, before boot:
#   hello.txt            "hello from the host\n", mode 0640, xattr user.host=host-value
#   sub/dir/nested.txt   "nested file\n"
#   random.bin           256 KiB of random bytes
#   manifest.md5         md5sum lines for the three files above
# Besides steps it prints "E2E-MD5 big.bin <md5>" and "E2E-INFO request-queues <n>".
# Environment from /init: E2E_TAG, E2E_XATTR (1: xattrs are served).
# The same suite runs on the host against a mount made by vhostfsd --fuse-mount
# (tests/FuseMount): E2E_TRANSPORT=fuse skips what only a guest has (mounting virtiofs, its
# queues, unmounting), E2E_MOUNT names the mount point, E2E_CONSOLE where markers go from
# inside a step (whose own output is captured).
M="${E2E_MOUNT:-/mnt}"
TRANSPORT="${E2E_TRANSPORT:-virtiofs}"
CONSOLE="${E2E_CONSOLE:-/dev/console}"
failed=0

fail() { echo "$*"; return 1; }

# Long steps say they are alive, so the host's silence watchdog (run.sh --stall) only
# fires on a real hang.
progress() { echo "E2E-PROGRESS $*" >> "$CONSOLE"; }

# expect_eq WHAT ACTUAL EXPECTED
expect_eq() {
  [ "$2" = "$3" ] || fail "$1: got '$2', expected '$3'"
}

step() { # step NAME FUNCTION: runs it, prints its output only when it fails
  name="$1"; shift
  t0="$(cut -d' ' -f1 /proc/uptime)"
  if out="$("$@" 2>&1)"; then
    echo "E2E-STEP $name OK ($(awk -v a="$t0" -v b="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN { printf "%.2fs", b - a }'))"
  else
    failed=1
    echo "E2E-FAIL $name $(echo "$out" | tr '\n' '|' | cut -c1-600)"
  fi
}

do_mount() {
  if [ "$TRANSPORT" = fuse ]; then
    grep -q " $M fuse.vhostfsd " /proc/mounts || fail "$M is not in /proc/mounts as fuse.vhostfsd"
    return
  fi
  mount -t virtiofs "$E2E_TAG" "$M" || return 1
  grep -q " $M virtiofs " /proc/mounts || fail "$M is not in /proc/mounts as virtiofs"
}

do_queues() {
  # virtio_fs names its virtqueues hiprio and requests.N; with MSI-X each gets a vector
  # named virtioK-requests.N in /proc/interrupts. The host compares this with the device.
  n="$(grep -o 'virtio[0-9]*-requests\.[0-9]*' /proc/interrupts | sort -u | wc -l)"
  [ "$n" -ge 1 ] || fail "no request queue vector in /proc/interrupts: $(cat /proc/interrupts)" || return 1
  echo "E2E-INFO request-queues $n" >> "$CONSOLE"
}

do_ls() {
  listing="$(ls -l "$M")" || return 1
  echo "$listing" | grep -q ' hello.txt$' || fail "hello.txt missing from: $listing"
  echo "$listing" | grep -q '^-rw-r----- .* hello.txt$' || fail "hello.txt mode wrong in: $listing"
  echo "$listing" | grep -q '^d.* sub$' || fail "sub/ missing from: $listing"
  expect_eq "ls sub/dir" "$(ls "$M/sub/dir")" "nested.txt"
}

do_stat() {
  expect_eq "size/mode/type of hello.txt" "$(stat -c '%s %a %F' "$M/hello.txt")" "20 640 regular file" &&
  expect_eq "type of sub" "$(stat -c '%F' "$M/sub")" "directory" &&
  expect_eq "size of random.bin" "$(stat -c '%s' "$M/random.bin")" "262144"
}

do_cat() {
  expect_eq "hello.txt" "$(cat "$M/hello.txt")" "hello from the host" &&
  expect_eq "nested.txt" "$(cat "$M/sub/dir/nested.txt")" "nested file" &&
  (cd "$M" && md5sum -c manifest.md5)
}

do_write() {
  echo "written by the guest" > "$M/from-guest.txt" || return 1
  echo "appended line" >> "$M/from-guest.txt" || return 1
  expect_eq "from-guest.txt" "$(cat "$M/from-guest.txt")" "written by the guest
appended line"
}

do_mkdir() {
  mkdir -p "$M/kept/a/b/c" || return 1
  [ -d "$M/kept/a/b/c" ] || fail "kept/a/b/c is not a directory"
  mkdir -p "$M/kept/a/b/c" || fail "mkdir -p on an existing tree failed"
}

do_mv() {
  echo "move me" > "$M/kept/a/b/c/tomove.txt" || return 1
  mv "$M/kept/a/b/c/tomove.txt" "$M/kept/moved.txt" || return 1
  [ ! -e "$M/kept/a/b/c/tomove.txt" ] || fail "source still exists after mv"
  expect_eq "moved.txt" "$(cat "$M/kept/moved.txt")" "move me" || return 1
  echo inner > "$M/kept/a/b/inner.txt" || return 1
  mv "$M/kept/a/b" "$M/kept/renamed-dir" || return 1
  [ -d "$M/kept/renamed-dir/c" ] || fail "renamed directory lost its child"
  expect_eq "renamed-dir/inner.txt" "$(cat "$M/kept/renamed-dir/inner.txt")" "inner" || return 1
  # Rename over an existing file replaces it.
  echo old > "$M/kept/target.txt" && echo new > "$M/kept/source.txt" || return 1
  mv -f "$M/kept/source.txt" "$M/kept/target.txt" || return 1
  expect_eq "target.txt after overwrite" "$(cat "$M/kept/target.txt")" "new"
}

do_rm() {
  mkdir -p "$M/doomed/x/y" || return 1
  echo 1 > "$M/doomed/one" && echo 2 > "$M/doomed/x/two" && echo 3 > "$M/doomed/x/y/three" || return 1
  ln -s one "$M/doomed/link" || return 1
  rm -r "$M/doomed" || return 1
  [ ! -e "$M/doomed" ] || fail "doomed/ still exists after rm -r"
  rm "$M/kept/a/b/c" 2>/dev/null && fail "rm of a directory without -r succeeded"
  rm -r "$M/kept/a" || return 1
  [ ! -e "$M/kept/a" ] || fail "kept/a still exists"
}

do_symlink() {
  ln -s ../hello.txt "$M/kept/link" || return 1
  expect_eq "readlink" "$(readlink "$M/kept/link")" "../hello.txt" &&
  expect_eq "cat through the link" "$(cat "$M/kept/link")" "hello from the host" &&
  expect_eq "lstat type" "$(stat -c '%F' "$M/kept/link")" "symbolic link" &&
  ln -s /nonexistent/target "$M/kept/dangling" &&
  expect_eq "dangling readlink" "$(readlink "$M/kept/dangling")" "/nonexistent/target"
}

do_chmod() {
  echo mode > "$M/kept/mode-751" || return 1
  chmod 0751 "$M/kept/mode-751" || return 1
  expect_eq "mode after chmod" "$(stat -c '%a' "$M/kept/mode-751")" "751" || return 1
  chmod u-w,g+w "$M/kept/mode-751" || return 1
  expect_eq "mode after symbolic chmod" "$(stat -c '%a' "$M/kept/mode-751")" "571" || return 1
  chmod 0751 "$M/kept/mode-751"
}

do_truncate() {
  printf 'abcdefghij' > "$M/kept/truncated" || return 1
  truncate -s 3 "$M/kept/truncated" || return 1
  expect_eq "size after shrink" "$(stat -c '%s' "$M/kept/truncated")" "3" &&
  expect_eq "content after shrink" "$(cat "$M/kept/truncated")" "abc" || return 1
  : > "$M/kept/extended" && truncate -s 1M "$M/kept/extended" || return 1
  expect_eq "size after extend" "$(stat -c '%s' "$M/kept/extended")" "1048576" &&
  expect_eq "extended bytes are zero" "$(tr -d '\000' < "$M/kept/extended" | wc -c)" "0"
}

do_bigfile() {
  dd if=/dev/urandom of="$M/big.bin" bs=1M count=16 2>/dev/null || return 1
  progress "bigfile written"
  sync
  sum1="$(md5sum "$M/big.bin" | cut -d' ' -f1)" || return 1
  expect_eq "size of big.bin" "$(stat -c '%s' "$M/big.bin")" "16777216" || return 1
  # Read it again from the daemon, not from the guest page cache.
  progress "bigfile summed"
  echo 3 > /proc/sys/vm/drop_caches
  sum2="$(md5sum "$M/big.bin" | cut -d' ' -f1)" || return 1
  expect_eq "md5 after dropping caches" "$sum2" "$sum1" || return 1
  echo "E2E-MD5 big.bin $sum1" >> "$CONSOLE"
}

do_many_files() {
  mkdir "$M/many" || return 1
  i=0
  while [ $i -lt 1000 ]; do
    : > "$M/many/file-$i" || fail "create of file-$i failed" || return 1
    i=$((i + 1))
    [ $((i % 250)) -eq 0 ] && progress "many-files created $i"
  done
  expect_eq "entries listed" "$(ls "$M/many" | wc -l)" "1000" || return 1
  expect_eq "file-999 listed" "$(ls "$M/many" | grep -c '^file-999$')" "1" || return 1
  progress "many-files listed"
  echo 3 > /proc/sys/vm/drop_caches
  expect_eq "entries listed after dropping caches" "$(ls -l "$M/many" | grep -c '^-')" "1000" || return 1
  progress "many-files listed again"
  (cd "$M/many" && rm file-*) || return 1
  expect_eq "entries after delete" "$(ls -A "$M/many" | wc -l)" "0" || return 1
  rmdir "$M/many"
}

do_xattr() {
  expect_eq "host-set xattr" "$(getfattr --only-values -n user.host "$M/hello.txt")" "host-value" || return 1
  echo x > "$M/kept/xattr.txt" || return 1
  setfattr -n user.e2e -v guest-value "$M/kept/xattr.txt" || return 1
  expect_eq "xattr read back" "$(getfattr --only-values -n user.e2e "$M/kept/xattr.txt")" "guest-value" || return 1
  setfattr -n user.gone -v 1 "$M/kept/xattr.txt" && setfattr -x user.gone "$M/kept/xattr.txt" || return 1
  names="$(getfattr -d -m 'user\.' "$M/kept/xattr.txt")"
  echo "$names" | grep -q '^user.e2e=' || fail "user.e2e not listed: $names" || return 1
  echo "$names" | grep -q '^user.gone=' && fail "user.gone still listed after removal: $names"
  return 0
}

do_umount() {
  umount "$M" || return 1
  grep -q " $M virtiofs " /proc/mounts && fail "$M still mounted"
  return 0
}

step mount do_mount
if [ $failed -ne 0 ]; then
  exit 1
fi
if [ "$TRANSPORT" = fuse ]; then
  echo "E2E-STEP queues SKIP (a host FUSE mount has no virtqueues)"
else
  step queues do_queues
fi
step ls do_ls
step stat do_stat
step cat do_cat
step write do_write
step mkdir do_mkdir
step mv do_mv
step rm do_rm
step symlink do_symlink
step chmod do_chmod
step truncate do_truncate
step bigfile do_bigfile
step many-files do_many_files
if [ "$E2E_XATTR" = 1 ]; then
  step xattr do_xattr
else
  echo "E2E-STEP xattr SKIP (the daemon runs without xattr support)"
fi
sync
if [ "$TRANSPORT" = fuse ]; then
  echo "E2E-STEP umount SKIP (the host unmounts the FUSE mount)"
else
  step umount do_umount
fi
exit $failed
