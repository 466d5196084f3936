#!/bin/bash
# Times README.md's main command (the <!-- ci:setup --> block: install, build, `finch demo`) on a
# fresh Debian 12: a minimal bookworm made by debootstrap in ROOT, the repository's tracked files
# copied into it, every line of the block run in a chroot with a clean environment. As root:
#     samples/demo/fresh_debian12.sh [ROOT (default /tmp/finch-deb12)]
# Needs debootstrap and network access to deb.debian.org. Prints each line's seconds and the total.
set -euo pipefail
root=${1:-/tmp/finch-deb12}
repo=$(cd "$(dirname "$0")/../.." && pwd)
[ ! -e "$root" ] || { echo "$root exists: give a new folder" >&2; exit 2; }
start=$SECONDS
debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian > "$root.debootstrap.log" 2>&1
echo "debootstrap: $((SECONDS - start)) s (not part of the main command)"
cleanup() { for m in sys dev proc; do umount "$root/$m" 2>/dev/null || true; done; }
trap cleanup EXIT
mount -t proc proc "$root/proc"
mount --bind /dev "$root/dev"
mount -t sysfs sys "$root/sys"      # PoCL reads the CPU topology there
cp /etc/resolv.conf "$root/etc/resolv.conf"
mkdir -p "$root/root/finch"
(cd "$repo" && git ls-files -z | xargs -0 cp --parents -t "$root/root/finch/")
cat > "$root/root/main_command.sh" <<'INNER'
set -euo pipefail
cd /root/finch
block=$(awk -v marker="<!-- ci:setup -->" '$0 == marker { found = 1; next }
    found && /^```/ { if (inside) exit; inside = 1; next } inside { print }' README.md)
start=$SECONDS
while IFS= read -r line; do
    [ -n "$line" ] || continue
    t=$SECONDS
    echo "+ $line"
    bash -euo pipefail -c "$line" </dev/null
    echo "==== $((SECONDS - t)) s"
done <<<"$block"
echo "==== the main command took $((SECONDS - start)) s"
INNER
chroot "$root" /usr/bin/env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    DEBIAN_FRONTEND=noninteractive bash /root/main_command.sh
