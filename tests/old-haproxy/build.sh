#!/usr/bin/env bash
# Builds the haproxy releases that predate `-x` (1.5.19, 1.6.16, 1.7.14) for the tests that run
# hapmaster against them (tests/e2e_old_haproxy.rs, HAPMASTER_TEST_OLD_HAPROXY=target/old-haproxy).
#
#   tests/old-haproxy/build.sh              # all three
#   tests/old-haproxy/build.sh 1.7.14       # only these
#
# Sources: $HAPROXY_SRC (default ../shared/haproxy-src), the tarballs and their SHA256SUMS; every
# tarball is checked against SHA256SUMS before it is unpacked. Each binary lands in
# target/old-haproxy/<version>/haproxy next to a stamp file holding the tarball's sha256; a binary
# whose stamp matches is not rebuilt. A build runs in a temp dir under target/old-haproxy and is
# renamed into place only once it succeeded, so an interrupted build leaves nothing half-made
# (only a .build-* temp dir, which the next run does not use).
# The make output goes to <version>/build.log (its tail is printed on failure). Prints one line per
# version: the binary's path and how long the build took (or "cached").
#   JOBS (default 2) and NICE (default 10) set make's -j and the niceness of the build.
set -euo pipefail

case $0 in */*) HERE=${0%/*} ;; *) HERE=. ;; esac
ROOT=$(cd "$HERE/../.." && pwd)
SRC=${HAPROXY_SRC:-$ROOT/../shared/haproxy-src}
OUT=$ROOT/target/old-haproxy
JOBS=${JOBS:-2}
NICE=${NICE:-10}
ALL=(1.5.19 1.6.16 1.7.14)

die() { echo "error: $*" >&2; exit 1; }

case ${1:-} in -h|--help) sed -n '2,16p' "$0"; exit 0 ;; esac
[ $# -gt 0 ] && versions=("$@") || versions=("${ALL[@]}")
for v in "${versions[@]}"; do
    case " ${ALL[*]} " in *" $v "*) ;; *) die "unknown version '$v' (this script builds: ${ALL[*]})" ;; esac
done

for tool in gcc make tar sha256sum flock; do
    command -v "$tool" >/dev/null 2>&1 ||
        die "$tool is missing; install a C toolchain (Debian: apt-get install build-essential)"
done
[ -r "$SRC/SHA256SUMS" ] || die "no $SRC/SHA256SUMS (set HAPROXY_SRC to the directory holding the haproxy tarballs)"
mkdir -p "$OUT"
# One build at a time (CI and a developer, or two test runs): the second waits, then finds the
# first one's binaries cached.
exec 9>"$OUT/.lock"
flock 9

# The sha256 SHA256SUMS lists for NAME, after checking that the file has it.
verified_sum() {
    local name=$1 want got
    want=$(awk -v n="$name" '$2 == n || $2 == "*" n { print $1 }' "$SRC/SHA256SUMS")
    [ -n "$want" ] || die "$SRC/SHA256SUMS has no line for $name"
    [ -r "$SRC/$name" ] || die "missing $SRC/$name"
    got=$(sha256sum "$SRC/$name" | cut -d' ' -f1)
    [ "$got" = "$want" ] || die "$SRC/$name has sha256 $got, SHA256SUMS says $want: refusing to build it"
    echo "$want"
}

tmp=""
cleanup() { [ -z "$tmp" ] || rm -rf "$tmp"; }
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

for v in "${versions[@]}"; do
    name=haproxy-$v.tar.gz
    sum=$(verified_sum "$name")
    dest=$OUT/$v
    if [ -x "$dest/haproxy" ] && [ "$(cat "$dest/stamp" 2>/dev/null)" = "$sum" ]; then
        echo "$dest/haproxy (cached)"
        continue
    fi
    tmp=$(mktemp -d "$OUT/.build-$v.XXXXXX")
    start=$(date +%s)
    tar -xzf "$SRC/$name" -C "$tmp"
    mkdir "$tmp/out"
    if ! nice -n "$NICE" make -C "$tmp/haproxy-$v" -j"$JOBS" TARGET=linux2628 >"$tmp/out/build.log" 2>&1; then
        mkdir -p "$OUT/failed"
        cp "$tmp/out/build.log" "$OUT/failed/build-$v.log"
        tail -n 30 "$tmp/out/build.log" >&2
        die "building haproxy $v failed; full log: $OUT/failed/build-$v.log"
    fi
    secs=$(($(date +%s) - start))
    cp "$tmp/haproxy-$v/haproxy" "$tmp/out/haproxy"
    "$tmp/out/haproxy" -v | grep -q "version $v " || die "the binary built from $name does not say version $v"
    echo "$sum" >"$tmp/out/stamp"
    echo "$secs" >"$tmp/out/build-seconds"
    # Replace an old build (other stamp) only now that the new one is complete.
    if [ -e "$dest" ]; then
        mv "$dest" "$tmp/old"
    fi
    mv "$tmp/out" "$dest"
    rm -rf "$tmp"
    tmp=""
    echo "$dest/haproxy (built in ${secs}s)"
done
