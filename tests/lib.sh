# Helpers shared by the shell test tiers (tests/systemd/run.sh, tests/kubernetes/pod.sh,
# tests/container/run.sh): sourced, not run. Each check prints one PASS/FAIL/SKIP/XFAIL line
# and is counted; the caller prints its summary and exits non-zero if FAILS > 0.

PASSES=0 FAILS=0 SKIPS=0 XFAILS=0
pass() { echo "PASS: $*"; PASSES=$((PASSES + 1)); }
fail() { echo "FAIL: $*"; FAILS=$((FAILS + 1)); }
skip() { echo "SKIP: $*"; SKIPS=$((SKIPS + 1)); }
xfail() { echo "XFAIL: $*"; XFAILS=$((XFAILS + 1)); }
info() { echo "      $*"; }
section() { printf '\n== %s\n' "$*"; }
die() { echo "error: $*" >&2; exit 1; }

# SIGKILL those of PIDS (pids this script started: children, or children of one of them) that
# still run as such: a pid reaped and reused since by another process has another parent and is
# left alone. The parents are looked up before any is killed (a killed parent's children move).
kill_started() {
    local p ppid mine=" $$ $* " ours=()
    for p in "$@"; do
        ppid=$(sed -n 's/.*) [A-Za-z] \([0-9]*\) .*/\1/p' "/proc/$p/stat" 2>/dev/null) || continue
        [[ -n $ppid && $mine == *" $ppid "* ]] && ours+=("$p")
    done
    [ ${#ours[@]} -eq 0 ] || kill -9 "${ours[@]}" 2>/dev/null || true
}

now_ms() { echo $(($(date +%s%N) / 1000000)); }
# Poll CMD... every 0.1 s until it succeeds or SECONDS pass.
wait_until() {
    local secs=$1 deadline
    shift
    deadline=$(($(now_ms) + secs * 1000))
    until "$@"; do
        [ "$(now_ms)" -lt "$deadline" ] || return 1
        sleep 0.1
    done
}

# ab's figures from its output file: ab_field FILE 'Failed requests'; ab_summary FILE.
ab_field() { awk -F': *' -v k="$2" '$1 == k { sub(/ .*/, "", $2); print $2; exit }' "$1"; }
ab_summary() { grep -E '^(Complete requests|Failed requests|Non-2xx responses|Time taken|Requests per second)|^ +\(Connect' "$1" | sed 's/^ */      ab: /'; }

# N distinct free ports on 127.0.0.1, on one line (all bound at once while the kernel picks them,
# so they differ; free again when this returns, so a test binds them soon after).
free_loopback_ports() {
    python3 -c '
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))' "$1"
}
