#!/usr/bin/env bash
# The container image (Containerfile) built and run for real with podman (issue 15).
#
#   sudo tests/container/run.sh
#   sudo HM_CTR_PREFIX=hm-mine tests/container/run.sh      # other image/container names
#
# Needs root, podman and runc (Debian: apt-get install podman runc), target/release/hapmaster,
# ab and curl. Where podman cannot run a container it prints "container tier: skipped: ..." and
# exits 0. No registry is needed: the base image is the systemd tier's debootstrapped bookworm
# tree (/var/lib/machines/hm-bookworm, made by ../shared/tools/sd-harness.sh, with haproxy in it)
# imported with `podman import`, and kept as localhost/$PREFIX-base:bookworm-<hash of the tree's
# dpkg status> for the next run. The image is built from the Containerfile with BASE= that image,
# then run with host networking (so everything binds 127.0.0.1 only):
#
#   - the image: a HEALTHCHECK (Docker format), hapmaster and haproxy run in it, the command is
#     the one deploy/kubernetes/deployment.yaml runs (tests/kubernetes/validate.sh checks that);
#   - the image's own command, the configuration directory mounted as a ConfigMap is (`..<ts>/`,
#     `..data -> ..<ts>`, `haproxy.cfg -> ..data/haproxy.cfg`; `bind` moved to a free port):
#     hapmaster is PID 1, `podman healthcheck run` passes once a worker is ready and fails while
#     the worker does not answer (SIGSTOP), the frontend answers;
#   - a `..data` swap to a new configuration under load (ab, a new connection per request):
#     --watch reloads, no request fails, the reload shows in GET /metrics, the new configuration
#     answers;
#   - `podman stop -t (drain bound + 10)`: SIGTERM (--on-sigterm soft) soft-stops: a request
#     held 8 s by its backend finishes with 200, one held 120 s is cut at the drain bound
#     (--drain-timeout), hapmaster exits 0 within the bound, nothing of the container is left.
#
# Options the binary does not take (an older $BIN) are dropped from the image's command with a
# FAIL line, and the checks that need them are skipped (`--watch`: the swap is then followed by
# `hapmaster reload`; `--on-sigterm`: the stop is only checked for exit status and leftovers). Health checks are run
# with `podman healthcheck run` (podman runs its periodic ones from systemd timers, which this
# host may not have: --health-interval=disable). Prints PASS/FAIL/SKIP lines and a summary;
# exits 1 if any check failed. The container and the image it built are removed at exit.
set -euo pipefail

REPO=$(cd "$(dirname "$0")" && git rev-parse --show-toplevel 2>/dev/null) || REPO=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=tests/lib.sh
. "$REPO/tests/lib.sh"
BIN=$REPO/target/release/hapmaster
PREFIX=${HM_CTR_PREFIX:-hm-ctr}
TREE=${HM_CTR_TREE:-/var/lib/machines/hm-bookworm}
HARNESS=${HM_SD_HARNESS:-$REPO/../shared/tools/sd-harness.sh}
AB_SECONDS=${HM_CTR_AB_SECONDS:-20}

skipped() { echo "container tier: skipped: $*"; exit 0; }
[ "$(id -u)" -eq 0 ] || skipped "needs root (podman with host networking and ulimits within the host's)"
command -v podman >/dev/null || skipped "podman is not installed (Debian: apt-get install podman runc)"
[ -x "$BIN" ] || die "no $BIN: run 'cargo build --release' first"
for t in ab curl python3 timeout tar sha256sum; do command -v "$t" >/dev/null || die "$t is needed"; done

# runc: crun refuses a hybrid cgroup layout ("cgroups in hybrid mode not supported"). The
# default ulimits (nofile 1048576) exceed the host's hard limits without CAP_SYS_RESOURCE, and
# nproc at the host's hard limit was refused too (runc: "error setting rlimit type 6").
PODMAN=(podman)
! command -v runc >/dev/null || PODMAN+=(--runtime runc)
NOFILE=$(ulimit -Hn) NPROC=$(ulimit -Hu)
[ "$NOFILE" != unlimited ] && [ "$NOFILE" -le 1048576 ] || NOFILE=1048576
[ "$NPROC" != unlimited ] && [ "$NPROC" -le 4096 ] || NPROC=4096
ULIMITS=(--ulimit "nofile=$NOFILE:$NOFILE" --ulimit "nproc=$NPROC:$NPROC")
pm() { "${PODMAN[@]}" "$@"; }

TMP=$(mktemp -d /tmp/hm-container.XXXXXX)
chmod 0755 "$TMP"
NAME=$PREFIX-$$
IMG=localhost/$PREFIX-img:$$
PIDS=()
cleanup() {
    kill_started "${PIDS[@]}"
    pm rm -f --time 0 "$NAME" >/dev/null 2>&1 || true
    pm rmi "$IMG" >/dev/null 2>&1 || true
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
T0=$(now_ms)

# --- The base image: the systemd tier's bookworm tree, imported once per content of its dpkg
# status (a package added or upgraded makes a new one).
section "base image"
# podman's storage and runtime at all (a host without overlay or user namespaces, a nested
# container): a skip, said, rather than a failed import below.
if ! pm info >"$TMP/info.log" 2>&1; then
    tail -3 "$TMP/info.log" | sed 's/^/      /'
    skipped "podman info fails on this host (its error is above)"
fi
if [ ! -x "$TREE/usr/sbin/haproxy" ]; then
    [ -x "$HARNESS" ] || die "no tree at $TREE and no harness at $HARNESS to make it (set HM_CTR_TREE or HM_SD_HARNESS)"
    info "making $TREE with $HARNESS (as the systemd tier does; 1-2 min)"
    NAME=$(basename "$TREE") SUITE=bookworm EXTRA_PKGS="haproxy apache2-utils" "$HARNESS" create >"$TMP/create.log" 2>&1 ||
        { tail -20 "$TMP/create.log" >&2; die "creating $TREE failed (log above)"; }
fi
KEY=$(sha256sum "$TREE/var/lib/dpkg/status" | cut -c1-12)
BASE=localhost/$PREFIX-base:bookworm-$KEY
if pm image exists "$BASE"; then
    info "$BASE: cached"
else
    t=$(now_ms)
    # Not what the systemd tier adds to the tree for its own runs (its hapmaster link and unit).
    tar -C "$TREE" --numeric-owner -c --exclude=./usr/sbin/hapmaster --exclude='./etc/systemd/system/hapmaster*' \
        --exclude='./var/cache/apt/*' --exclude='./var/lib/apt/lists/*' --exclude='./var/log/journal/*' . |
        pm import - "$BASE" >"$TMP/import.log" 2>&1 || { cat "$TMP/import.log" >&2; die "podman import of $TREE failed"; }
    info "$BASE: imported from $TREE in $(($(now_ms) - t)) ms"
    # Older imports of this tree by this script: superseded.
    # (grep finds none on a first import: not a failure under pipefail.)
    pm images --format '{{.Repository}}:{{.Tag}}' "localhost/$PREFIX-base" | { grep -vx "$BASE" || true; } |
        while read -r old; do pm rmi "$old" >/dev/null 2>&1 || true; done
fi
if ! pm run --rm --network host "${ULIMITS[@]}" "$BASE" true >"$TMP/probe.log" 2>&1; then
    sed 's/^/      /' "$TMP/probe.log"
    skipped "podman cannot run a container on this host (its error is above)"
fi

# --- The image.
section "image"
t=$(now_ms)
if pm build --format docker --pull=never --layers=false "${ULIMITS[@]}" --network host \
    --build-arg "BASE=$BASE" -t "$IMG" -f "$REPO/Containerfile" "$REPO" >"$TMP/build.log" 2>&1; then
    pass "podman build --format docker: $IMG from $BASE in $(($(now_ms) - t)) ms"
else
    fail "podman build failed:"; tail -20 "$TMP/build.log" | sed 's/^/      /'
    echo; echo "container tier: $PASSES passed, $FAILS failed, $SKIPS skipped"; exit 1
fi
inspect() { pm image inspect "$IMG" --format "$1"; }
health=$(inspect '{{json .HealthCheck.Test}}')
[[ $health == '["CMD","hapmaster","cli",'* ]] && pass "HEALTHCHECK kept (Docker format): $health" ||
    fail "HEALTHCHECK missing from the image: '$health' (built without --format docker?)"
info "user $(inspect '{{.Config.User}}'), stop signal $(inspect '{{.Config.StopSignal}}'), workdir $(inspect '{{.Config.WorkingDir}}')"
versions=$(pm run --rm --network host "${ULIMITS[@]}" "$IMG" sh -c 'id -u; id -g; haproxy -v | head -1; hapmaster --version | tail -1' 2>"$TMP/run.err" || true)
mapfile -t V <<<"$versions"
[ "${V[0]:-}" = 99 ] && [ "${V[1]:-}" = 99 ] && [[ ${V[2]:-} == HAProxy* ]] && [[ ${V[3]:-} == hapmaster* ]] &&
    pass "in the image, as uid/gid ${V[0]}/${V[1]}: ${V[2]%% - *}; ${V[3]}" ||
    fail "in the image: '${versions//$'\n'/ | }' $(head -3 "$TMP/run.err")"

# The image's command, for this host: --metrics-bind on loopback and a free port; options this
# hapmaster does not take yet dropped (with their value).
read -r HTTP SLOW SLOWFE METRICS < <(free_loopback_ports 4)
HELP=$("$BIN" --help 2>&1 || true)
inspect '{{json .Config.Cmd}}' | python3 -c '
import json, sys
cmd, help_text, metrics = json.load(sys.stdin), sys.argv[1], sys.argv[2]
takes_value = {"--metrics-bind", "--on-sigterm", "--drain-timeout", "-f", "--ready-timeout", "--cli-timeout"}
out, dropped, i = [], [], 0
while i < len(cmd):
    a = cmd[i]
    n = 2 if a in takes_value else 1
    if a.startswith("--") and a not in help_text:
        dropped.append(a)
    elif a == "--metrics-bind":
        out += [a, "127.0.0.1:" + metrics]
    else:
        out += cmd[i:i + n]
    i += n
open(sys.argv[3] + "/cmd", "w").write("".join(w + "\0" for w in out))
open(sys.argv[3] + "/dropped", "w").write("".join(w + "\0" for w in dropped))' "$HELP" "$METRICS" "$TMP"
mapfile -d '' CMD <"$TMP/cmd"
mapfile -d '' DROPPED <"$TMP/dropped"
has() { [[ " ${CMD[*]} " == *" $1 "* ]]; }
for o in "${DROPPED[@]}"; do fail "this hapmaster does not take $o, which the image's command has: run without it"; done
DRAIN=$(python3 -c '
import re, sys
m = re.fullmatch(r"(\d+)(ms|s|m)?", sys.argv[1])
print(int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[m.group(2) or "ms"] if m else "")' \
    "$(printf '%s\n' "${CMD[@]}" | sed -n '/^--drain-timeout$/{n;p}')")
[ -n "$DRAIN" ] || die "the image's command has no --drain-timeout (the drain bound): ${CMD[*]}"
DRAIN=${DRAIN%.*}
STOP_T=$((DRAIN + 10))

# --- The configuration directory, as the kubelet lays out a ConfigMap volume: the image's own
# haproxy.cfg on a free port, and zz-test.cfg (a frontend whose backend holds /slow 8 s and
# /hang 120 s).
CFG=$TMP/config TS=..2026_11_29_00_00_00.000000001
mkdir -p "$CFG/$TS"
pm run --rm --network host "${ULIMITS[@]}" "$IMG" cat /usr/local/etc/haproxy/haproxy.cfg 2>/dev/null |
    sed -E "s/^([[:space:]]*bind[[:space:]]+)[^[:space:]]*:[0-9]+/\\1127.0.0.1:$HTTP/" >"$CFG/$TS/haproxy.cfg"
grep -q "bind 127.0.0.1:$HTTP" "$CFG/$TS/haproxy.cfg" || die "the image's haproxy.cfg has no 'bind ADDR:PORT' line to move to port $HTTP"
cat >"$CFG/$TS/zz-test.cfg" <<EOF
frontend slow
    bind 127.0.0.1:$SLOWFE
    default_backend slow
backend slow
    timeout server 150s
    server s1 127.0.0.1:$SLOW
EOF
for f in haproxy.cfg zz-test.cfg; do ln -s "..data/$f" "$CFG/$f"; done
ln -s "$TS" "$CFG/..data"
chmod -R a+rX "$CFG"

# The slow backend: touches $TMP/got-<path> when a request arrives, answers after the delay.
python3 -c '
import http.server, os, sys, time
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        open(os.path.join(sys.argv[2], "got-" + self.path.strip("/")), "w").close()
        time.sleep({"/slow": 8, "/hang": 120}.get(self.path, 0))
        self.send_response(200); self.send_header("Content-Length", "5"); self.end_headers(); self.wfile.write(b"slow\n")
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()' "$SLOW" "$TMP" &
PIDS+=($!)

# --- Start.
section "run"
info "podman run --network host -v $CFG:/usr/local/etc/haproxy:ro $IMG ${CMD[*]}"
t=$(now_ms)
pm run -d --name "$NAME" --network host "${ULIMITS[@]}" --health-interval=disable \
    -v "$CFG:/usr/local/etc/haproxy:ro" "$IMG" "${CMD[@]}" >"$TMP/run.log" 2>&1 ||
    { cat "$TMP/run.log" >&2; die "podman run failed"; }
logs() { pm logs "$NAME" 2>&1 | tail -"${1:-20}" | sed 's/^/      log: /'; }
healthy() { pm healthcheck run "$NAME" >/dev/null 2>&1; }
if wait_until 60 healthy; then
    pass "podman healthcheck run: healthy $(($(now_ms) - t)) ms after podman run"
else
    fail "not healthy within 60 s"; logs; echo; echo "container tier: $PASSES passed, $FAILS failed, $SKIPS skipped"; exit 1
fi
MASTER=$(pm inspect "$NAME" --format '{{.State.Pid}}')
pid1=$(pm exec "$NAME" cat /proc/1/cmdline | tr '\0' ' ')
[[ $pid1 == hapmaster* ]] && pass "PID 1 of the container is hapmaster (host pid $MASTER): $pid1" || fail "PID 1 is '$pid1'"
body=$(curl -s -m 10 "http://127.0.0.1:$HTTP/" || true)
[ "$body" = "hello from haproxy" ] && pass "the image's haproxy.cfg frontend answers: $body" || fail "the frontend answered '$body'"

worker=$(pgrep -P "$MASTER" -x haproxy | head -1)
kill -STOP "$worker"
rc=0; pm healthcheck run "$NAME" >"$TMP/hc.out" 2>&1 || rc=$?
kill -CONT "$worker"
[ "$rc" -ne 0 ] && pass "worker stopped (SIGSTOP): podman healthcheck run exit $rc ($(head -1 "$TMP/hc.out"))" ||
    fail "worker stopped (SIGSTOP): podman healthcheck run still exit 0"
wait_until 30 healthy && pass "worker continued: healthy again" || fail "not healthy 30 s after SIGCONT"

# --- A ConfigMap update under load: the kubelet's `..data` swap.
section "..data swap under load"
metric() { # the value of the sample named $1 (with its labels) in GET /metrics, or empty
    curl -s -m 5 "http://127.0.0.1:$METRICS/metrics" | awk -v k="$1" '$1 == k { print $2; exit }'
}
R='hapmaster_reloads_total{result="success"}'
r0=$(metric "$R")
[ -n "$r0" ] && pass "GET /metrics on 127.0.0.1:$METRICS: $R $r0" || fail "GET /metrics has no $R (--metrics-bind?)"
conns() { pm exec "$NAME" hapmaster cli --timeout 4s @1 show info 2>/dev/null | awk -F': ' '$1 == "CumConns" { print $2 }'; }
c0=$(conns)
ab -r -c 10 -t "$AB_SECONDS" -n 100000000 "http://127.0.0.1:$HTTP/" >"$TMP/ab.out" 2>&1 &
AB=$!
PIDS+=($AB)
under_load() { [ "$(conns)" -ge "$((c0 + 200))" ]; }
wait_until 30 under_load || fail "ab made no 200 connections within 30 s"
NEW=..2026_11_29_00_01_00.000000002
cp -a "$CFG/$TS" "$CFG/$NEW"
# The same length: ab counts a response of another length as failed.
sed -i 's/hello from haproxy/hello from HAPROXY/' "$CFG/$NEW/haproxy.cfg"
ln -s "$NEW" "$CFG/..data_tmp" && mv -T "$CFG/..data_tmp" "$CFG/..data"
rm -rf "${CFG:?}/$TS"
t=$(now_ms)
if has --watch; then
    how="--watch"
else
    skip "..data swap seen by --watch: needs --watch; reloading with 'hapmaster reload' in the container instead"
    how="hapmaster reload"
    pm exec "$NAME" hapmaster reload >"$TMP/reload.out" 2>&1 || { fail "hapmaster reload:"; sed 's/^/      /' "$TMP/reload.out"; }
fi
reloaded() { [ "$(metric "$R")" = "$((r0 + 1))" ]; }
if wait_until 30 reloaded; then
    pass "reload by $how $(($(now_ms) - t)) ms after the swap, seen in GET /metrics: $R $(metric "$R")"
else
    fail "no reload in GET /metrics within 30 s of the swap ($R $(metric "$R"))"; logs
fi
kill -0 "$AB" 2>/dev/null && during=yes || during=no
abrc=0; wait "$AB" || abrc=$?
complete=$(ab_field "$TMP/ab.out" 'Complete requests') failed=$(ab_field "$TMP/ab.out" 'Failed requests')
non2xx=$(ab_field "$TMP/ab.out" 'Non-2xx responses')
if [ "$during" = yes ] && [ "$abrc" -eq 0 ] && [ "${complete:-0}" -gt 0 ] && [ "$failed" = 0 ] && [ -z "$non2xx" ]; then
    pass "under load (ab -r -c 10 -t $AB_SECONDS, still running at the reload): $complete requests, 0 failed"
else
    fail "under load: ab rc $abrc, running at the reload: $during, complete ${complete:-?}, failed ${failed:-?}${non2xx:+, non-2xx $non2xx}"
fi
ab_summary "$TMP/ab.out"
body=$(curl -s -m 10 "http://127.0.0.1:$HTTP/" || true)
[ "$body" = "hello from HAPROXY" ] && pass "the new configuration answers: $body" || fail "after the swap the frontend answered '$body'"
cur=$(metric 'hapmaster_workers{role="current"}') last=$(metric hapmaster_last_reload_success)
[ "$cur" = 1 ] && [ "$last" = 1 ] && pass "GET /metrics: hapmaster_workers{role=\"current\"} $cur, hapmaster_last_reload_success $last" ||
    fail "GET /metrics: current workers '$cur', last reload success '$last'"

# --- podman stop: SIGTERM, a soft stop bounded by --drain-timeout.
section "podman stop"
WORKERS=$(pgrep -P "$MASTER" -x haproxy | tr '\n' ' ')
graceful=no
if [[ " ${DROPPED[*]} " != *" --on-sigterm "* ]]; then
    graceful=yes
    for p in slow hang; do
        curl -s -o /dev/null -m 150 -w '%{http_code}' "http://127.0.0.1:$SLOWFE/$p" >"$TMP/code-$p" 2>&1 &
        eval "CURL_$p=\$!"
        PIDS+=($!)
        wait_until 30 test -e "$TMP/got-$p" || fail "the slow backend got no /$p within 30 s"
    done
else
    skip "a graceful podman stop (requests in flight finish, the drain bound): needs --on-sigterm"
fi
t=$(now_ms)
rc=0; pm stop -t "$STOP_T" "$NAME" >"$TMP/stop.out" 2>&1 || rc=$?
ms=$(($(now_ms) - t))
code=$(pm inspect "$NAME" --format '{{.State.ExitCode}}')
[ "$rc" -eq 0 ] && [ "$code" = 0 ] && [ "$ms" -lt $((STOP_T * 1000)) ] &&
    pass "podman stop -t $STOP_T: hapmaster exited 0 after $ms ms" ||
    fail "podman stop -t $STOP_T: rc $rc, exit code '$code' after $ms ms (SIGKILL at $STOP_T s)"
if [ "$graceful" = yes ]; then
    wait "$CURL_slow" || true
    wait "$CURL_hang" || true
    slow=$(cat "$TMP/code-slow") hang=$(cat "$TMP/code-hang")
    [ "$slow" = 200 ] && pass "a request in flight at the stop (8 s) finished: 200" || fail "a request in flight at the stop (8 s) got '$slow'"
    [ "$hang" != 200 ] && [ "$ms" -ge $((DRAIN * 1000)) ] && [ "$ms" -lt $(((DRAIN + 5) * 1000)) ] &&
        pass "a request held 120 s was cut at the drain bound (--drain-timeout ${DRAIN}s): stop took $ms ms, it got '$hang'" ||
        fail "the drain bound (--drain-timeout ${DRAIN}s): stop took $ms ms, the 120 s request got '$hang'"
fi
left=
for p in $MASTER $WORKERS; do ! kill -0 "$p" 2>/dev/null || left="$left $p"; done
running=$(pm ps -q --filter "name=^$NAME\$" --filter status=running)
[ -z "$left" ] && [ -z "$running" ] && pass "nothing left running (master $MASTER, workers $WORKERS)" ||
    fail "still running after the stop: pids '$left', container '$running'"
[ "$FAILS" -eq 0 ] || logs 30

section "container tier: $PASSES passed, $FAILS failed, $SKIPS skipped ($((($(now_ms) - T0) / 1000)) s)"
[ "$FAILS" -eq 0 ]
