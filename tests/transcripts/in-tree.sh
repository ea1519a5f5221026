#!/usr/bin/env bash
# Runs a command inside a Debian tree (the systemd tier's /var/lib/machines/hm-<suite>) without
# booting it, so that hapmaster's tests meet that tree's haproxy (/usr/sbin/haproxy, e.g. 3.0 in
# trixie) with the host's kernel and network:
#
#   sudo tests/transcripts/in-tree.sh /var/lib/machines/hm-trixie target/release/deps/e2e_mcli_lines-<hash>
#   sudo tests/transcripts/in-tree.sh /var/lib/machines/hm-trixie tests/transcripts/capture.sh /usr/sbin/haproxy
#
# A private mount namespace: the tree under an overlay whose writes go to a tmpfs (the tree is left
# as it was), the repository bind-mounted at its own path (test binaries find their compiled-in
# paths: CARGO_MANIFEST_DIR, CARGO_BIN_EXE_*), the host's /proc (no new pid namespace: pids stay
# large, as the transcripts' normalizer expects), /dev and /sys, a fresh tmpfs on /tmp. The command
# runs from the repository with a fixed environment (PATH finds the tree's haproxy first). Python's
# shutil.py and fnmatch.py are copied from the host when it has them (Debian's python3-minimal lacks
# them; capture.py's tempfile needs them). Needs root (mounts); exits with the command's status.
set -euo pipefail

if [ $# -lt 2 ]; then
    echo "usage: $0 TREE COMMAND [ARGS...]" >&2
    exit 2
fi
TREE=$(cd "$1" && pwd)
shift
REPO=$(cd "$(dirname "$0")/../.." && pwd)
[ "$(id -u)" -eq 0 ] || { echo "error: $0 needs root (it mounts in a private namespace)" >&2; exit 2; }
[ -x "$TREE/usr/sbin/haproxy" ] || { echo "error: no $TREE/usr/sbin/haproxy (create the tree with tests/systemd/run.sh)" >&2; exit 2; }

SCRATCH=$(mktemp -d /tmp/hm-in-tree.XXXXXX)
trap 'rm -rf "$SCRATCH"' EXIT
mkdir "$SCRATCH/py" "$SCRATCH/ovl"
if command -v python3 > /dev/null; then
    python3 -c 'import shutil, fnmatch; print(shutil.__file__); print(fnmatch.__file__)' |
        xargs -r cp -t "$SCRATCH/py"
fi

# The inner script gets its paths as arguments, the command after them: nothing is re-quoted.
# shellcheck disable=SC2016
unshare --mount --propagation private bash -euc '
    tree=$1 repo=$2 scratch=$3; shift 3
    mount -t tmpfs tmpfs "$scratch/ovl"
    mkdir "$scratch/ovl/up" "$scratch/ovl/work" "$scratch/ovl/root"
    root=$scratch/ovl/root
    mount -t overlay overlay -o "lowerdir=$tree,upperdir=$scratch/ovl/up,workdir=$scratch/ovl/work" "$root"
    mkdir -p "$root$repo" "$root/opt/hm-py"
    mount --bind "$repo" "$root$repo"
    cp "$scratch"/py/*.py "$root/opt/hm-py/" 2>/dev/null || true
    mount --rbind /proc "$root/proc"
    mount --rbind /dev "$root/dev"
    mount --rbind /sys "$root/sys"
    mount -t tmpfs tmpfs "$root/tmp"
    exec chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
        PYTHONPATH=/opt/hm-py RUST_BACKTRACE=1 /bin/sh -c '"'"'cd "$0" && exec "$@"'"'"' "$repo" "$@"
' in-tree "$TREE" "$REPO" "$SCRATCH" "$@"
