#!/usr/bin/env bash
# hapmaster's master CLI against the transcripts of the haproxy a Debian tree holds (issue 13: haproxy
# 3.0 in the trixie tree of the systemd tier), without booting the tree (tests/transcripts/in-tree.sh):
#
#   sudo tests/transcripts/compare-in-tree.sh [TREE]            # default /var/lib/machines/hm-trixie
#   sudo tests/transcripts/compare-in-tree.sh --capture [TREE]  # and every exchange, listed
#
# Builds and runs the transcript-comparing tests (e2e_mcli_lines, e2e_mcli_keywords, e2e_mcli_haproxy)
# inside the tree, where they pick tests/transcripts/<that haproxy's version>/; exits 1 if one fails
# (each binary's output: target/hm-compare.*/).
# --capture also runs capture.sh with hapmaster in haproxy's place (`hapmaster -v` prints haproxy's
# version first, so it lands in <out>/<version>/) and lists the exchanges whose normalized answer
# differs from haproxy's, with the diff: what the tests do not compare (or compare loosely), for a
# human to read; it does not change the exit status.
set -euo pipefail

CAPTURE=
if [ "${1:-}" = --capture ]; then
    CAPTURE=1
    shift
fi
TREE=${1:-/var/lib/machines/hm-trixie}
here=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$here/../.." && pwd)
TESTS="e2e_mcli_lines e2e_mcli_keywords e2e_mcli_haproxy"
command -v cargo > /dev/null || { echo "error: cargo is needed to build the tests" >&2; exit 2; }

args=()
for t in $TESTS; do args+=(--test "$t"); done
mapfile -t bins < <(cd "$REPO" && cargo test --release --no-run --message-format=json "${args[@]}" |
    grep '"kind":\["test"\]' | grep -o '"executable":"[^"]*"' | sed 's/^"executable":"//; s/"$//')
[ "${#bins[@]}" -eq 3 ] || { echo "error: expected 3 test binaries, cargo built: ${bins[*]}" >&2; exit 2; }

version=$("$here/in-tree.sh" "$TREE" /usr/sbin/haproxy -v | sed -n 's/^HAProxy version \([^ ]*\).*/\1/p')
echo "haproxy $version in $TREE; transcripts tests/transcripts/$version/"
logs=$(mktemp -d "$REPO/target/hm-compare.XXXXXX")
failed=0
for bin in "${bins[@]}"; do
    name=$(basename "$bin")
    if "$here/in-tree.sh" "$TREE" "$bin" --test-threads=2 > "$logs/${name%-*}.log" 2>&1; then
        echo "PASS: ${name%-*} ($(grep -o '[0-9]* passed' "$logs/${name%-*}.log"))"
    else
        echo "FAIL: ${name%-*}: $logs/${name%-*}.log"
        grep -E '^test .* FAILED$|panicked at' "$logs/${name%-*}.log" | sed 's/^/      /' || true
        failed=1
    fi
done

if [ -n "$CAPTURE" ]; then
    out=$(mktemp -d "$REPO/target/hm-capture.XXXXXX")   # inside the repository: the tree sees it
    "$here/in-tree.sh" "$TREE" "$here/capture.sh" "$REPO/target/release/hapmaster" "$out" > "$out.log" 2>&1 ||
        { echo "capture with hapmaster failed: $out.log"; exit 1; }
    echo "exchanges whose normalized answer differs from haproxy's ($out/$version):"
    for f in "$here/$version"/*.norm; do
        n=$(basename "$f")
        if ! cmp -s "$f" "$out/$version/$n"; then
            echo "--- ${n%.norm}"
            diff "$f" "$out/$version/$n" | sed 's/^/      /' || true
        fi
    done
fi
exit "$failed"
