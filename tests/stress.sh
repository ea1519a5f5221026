#!/usr/bin/env bash
# Runs the test suite (or part of it) while two CPU hogs keep both cores of a 2-core machine busy:
# the load CI may run under. The tests must pass here every time; a failure is a race in a test
# (or in hapmaster), never "a slow machine".
#
#   tests/stress.sh                          # the whole suite once: cargo test --release --no-fail-fast
#   tests/stress.sh -n 5                     # five times in a row
#   tests/stress.sh -n 30 --test e2e_policy  # one test binary 30 times (anything after the options
#                                            # goes to cargo test, before its own `--`)
#   HOGS=4 tests/stress.sh                   # more hogs
#
# It builds first (without hogs), then runs each round with the hogs, prints one line per round and a
# closing "N passed, N failed" line, and exits 1 if any round failed. The log of each failed round is
# kept in $STRESS_LOGS (default: a temp dir, printed). The hogs are this script's own children; they
# are ended by pid when it exits, however it exits, and each also stops by itself after HOG_SECS.
set -euo pipefail

cd "$(dirname "$0")/.."

ROUNDS=1
while [ $# -gt 0 ]; do
    case $1 in
        -n) ROUNDS=${2:?-n takes a count}; shift 2 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) break ;;
    esac
done
case $ROUNDS in ''|*[!0-9]*|0) echo "error: -n takes a whole number above 0, not '$ROUNDS'" >&2; exit 2 ;; esac

HOGS=${HOGS:-2}
HOG_SECS=${HOG_SECS:-7200}
LOGS=${STRESS_LOGS:-$(mktemp -d /tmp/hapmaster-stress.XXXXXX)}
mkdir -p "$LOGS"

echo "building (no hogs yet): cargo test --release --no-run $*"
cargo test --release --no-run "$@" >"$LOGS/build.log" 2>&1 || { cat "$LOGS/build.log" >&2; exit 1; }

hog_pids=()
stop_hogs() {
    local p
    for p in "${hog_pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${hog_pids[@]}"; do wait "$p" 2>/dev/null || true; done
    hog_pids=()
}
trap stop_hogs EXIT
trap 'exit 130' INT TERM
for _ in $(seq "$HOGS"); do
    # A busy loop in a shell of its own, bounded by timeout(1) in case this script is SIGKILLed.
    timeout "$HOG_SECS" sh -c 'while :; do :; done' &
    hog_pids+=($!)
done
echo "$HOGS CPU hogs running (pids ${hog_pids[*]}); logs of failed rounds go to $LOGS"

passed=0 failed=0
for i in $(seq "$ROUNDS"); do
    log=$LOGS/round-$i.log
    start=$(date +%s)
    if cargo test --release --no-fail-fast "$@" >"$log" 2>&1; then
        passed=$((passed + 1)); verdict=ok; rm -f "$log"
    else
        failed=$((failed + 1)); verdict="FAILED (log: $log)"
        grep -E '^test .* FAILED$|^---- |panicked at' "$log" | head -20 | sed 's/^/    /'
    fi
    echo "round $i/$ROUNDS: $verdict in $(($(date +%s) - start)) s, load average $(cut -d' ' -f1-3 /proc/loadavg)"
done
stop_hogs
echo "stress: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
