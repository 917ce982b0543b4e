#!/bin/sh
# The `make demo` guest: mounts the share, lists and reads the host's files, writes one
# back. Output is meant for a human watching the console.
say() { echo "[guest] $*"; }

say "Linux $(uname -r), mounting virtio-fs tag '$E2E_TAG' on /mnt"
mount -t virtiofs "$E2E_TAG" /mnt || { echo "E2E-FAIL mount"; exit 1; }
echo "E2E-STEP mount OK"
say "\$ ls -l /mnt"
ls -l /mnt
for f in /mnt/*.txt; do
  say "\$ cat $f"
  cat "$f"
done
say "\$ df -h /mnt"
df -h /mnt
msg="hello from the guest ($(uname -r), $(date -u '+%Y-%m-%d %H:%M:%S') UTC)"
say "\$ echo '$msg' > /mnt/written-by-guest.txt"
echo "$msg" > /mnt/written-by-guest.txt || { echo "E2E-FAIL write"; exit 1; }
echo "E2E-STEP write OK"
sync
umount /mnt && echo "E2E-STEP umount OK"
say "done, powering off"
