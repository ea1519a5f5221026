#!/usr/bin/env bash
# The Deployment's own commands, run for real without a cluster (issue 15): hapmaster as PID 1
# of a new PID namespace, as the pod's runAsUser, on the ConfigMap's files laid out as the kubelet
# lays them out (`..<ts>/`, `..data -> ..<ts>`, `haproxy.cfg -> ..data/haproxy.cfg`), with the
# Deployment's readiness and liveness probe commands and its preStop hook run inside that
# namespace as that user, as the kubelet's exec would, and then the kubelet's stop signal
# (SIGTERM, the image's STOPSIGNAL) to PID 1.
#
#   sudo tests/kubernetes/pod.sh      # after tests/kubernetes/validate.sh (its venv has PyYAML)
#
# Needs root (unshare, setpriv; as non-root: "skipped"), target/release/hapmaster (or
# $HM_HAPMASTER) and haproxy.
# Rewritten for the host: `bind :PORT` lines to 127.0.0.1 and a free port, `-f` to the test's
# directory, `--metrics-bind` to 127.0.0.1 and a free port; options this hapmaster does not take
# (an older $HM_HAPMASTER) are dropped with a FAIL line, and what needs them is skipped. A second file `zz-test.cfg` beside haproxy.cfg adds a frontend whose backend
# answers 8 s after it got the request, for a request in flight at the stop. Prints PASS/FAIL/SKIP lines and a
# summary; exits 1 if any check failed. Everything it started is stopped by pid at exit.
set -euo pipefail

REPO=$(cd "$(dirname "$0")" && git rev-parse --show-toplevel 2>/dev/null) || REPO=$(cd "$(dirname "$0")/../.." && pwd)
DIR=$REPO/deploy/kubernetes
BIN=${HM_HAPMASTER:-$REPO/target/release/hapmaster}
PY=$REPO/target/kubernetes-validate-1.37.0/bin/python

# shellcheck source=tests/lib.sh
. "$REPO/tests/lib.sh"
if [ "$(id -u)" -ne 0 ]; then
    echo "kubernetes pod: skipped: needs root (unshare --pid, setpriv)"
    exit 0
fi
[ -x "$BIN" ] || die "no $BIN: run 'cargo build --release' first"
[ -x "$PY" ] || die "no $PY: run tests/kubernetes/validate.sh first (it installs the venv with PyYAML)"
for t in unshare nsenter setpriv curl timeout python3; do command -v "$t" >/dev/null || die "$t is needed"; done

TMP=$(mktemp -d /tmp/hm-k8s-pod.XXXXXX)
chmod 0755 "$TMP"
PIDS=()
cleanup() {
    kill_started "${PIDS[@]}"
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Four free loopback ports.
read -r HTTP SLOW SLOWFE METRICS < <(free_loopback_ports 4)
HELP=$("$BIN" --help 2>&1 || true)

# The pod, from the manifests: the container's command, probes, preStop, user; the ConfigMap's
# files in the kubelet's layout under $TMP/config.
"$PY" - "$DIR" "$TMP" "$HTTP" "$METRICS" "$HELP" <<'EOF'
import glob, os, re, sys, yaml
d, tmp, http, metrics, help_text = sys.argv[1:]
docs = [x for f in sorted(glob.glob(os.path.join(d, "*.yaml"))) for x in yaml.safe_load_all(open(f)) if x]
dep = next(x for x in docs if x["kind"] == "Deployment")
spec = dep["spec"]["template"]["spec"]
c = spec["containers"][0]
mount = next(m for m in c["volumeMounts"] if "configMap" in next(v for v in spec["volumes"] if v["name"] == m["name"]))
cm_name = next(v for v in spec["volumes"] if v["name"] == mount["name"])["configMap"]["name"]
cm = next(x for x in docs if x["kind"] == "ConfigMap" and x["metadata"]["name"] == cm_name)
cfg = os.path.join(tmp, "config")
ts = "..2026_11_29_00_00_00.000000001"
os.makedirs(os.path.join(cfg, ts))
for k, v in cm["data"].items():
    v = re.sub(r"^(\s*bind\s+)\S*:\d+", lambda m: m.group(1) + "127.0.0.1:" + http, v, flags=re.M)
    open(os.path.join(cfg, ts, k), "w").write(v)
    os.symlink("..data/" + k, os.path.join(cfg, k))
os.symlink(ts, os.path.join(cfg, "..data"))
cmd, dropped, i = [], [], 0
args = [str(x) for x in c["command"] + c.get("args", [])]
while i < len(args):
    a = args[i]
    if a == "-f" and args[i + 1].rstrip("/") == mount["mountPath"].rstrip("/"):
        cmd += [a, cfg]; i += 2; continue
    if a == "--metrics-bind":
        if a in help_text:
            cmd += [a, "127.0.0.1:" + metrics]
        else:
            dropped.append(a)
        i += 2; continue
    if a == "--watch" and a not in help_text:
        dropped.append(a); i += 1; continue
    if a == "--on-sigterm" and a not in help_text:
        dropped.append(a); i += 2; continue
    cmd.append(a); i += 1
def out(name, words):
    open(os.path.join(tmp, name), "w").write("".join(w + "\0" for w in words))
out("cmd", cmd)
out("dropped", dropped)
out("ready", c["readinessProbe"]["exec"]["command"])
out("alive", c["livenessProbe"]["exec"]["command"])
out("prestop", c["lifecycle"]["preStop"]["exec"]["command"])
sc = spec.get("securityContext", {})
open(os.path.join(tmp, "user"), "w").write(f"{sc.get('runAsUser', 0)} {sc.get('runAsGroup', 0)} {spec.get('terminationGracePeriodSeconds', 30)}\n")
EOF
# A second file haproxy reads from the directory: a frontend whose backend answers after 8 s.
cat >"$TMP/config/..2026_11_29_00_00_00.000000001/zz-test.cfg" <<EOF
frontend slow
    bind 127.0.0.1:$SLOWFE
    default_backend slow
backend slow
    server s1 127.0.0.1:$SLOW
EOF
ln -s ..data/zz-test.cfg "$TMP/config/zz-test.cfg"
chmod -R a+rX "$TMP/config"

mapfile -d '' CMD <"$TMP/cmd"
mapfile -d '' DROPPED <"$TMP/dropped"
mapfile -d '' READY <"$TMP/ready"
mapfile -d '' ALIVE <"$TMP/alive"
mapfile -d '' PRESTOP <"$TMP/prestop"
read -r RUID RGID GRACE <"$TMP/user"
for o in "${DROPPED[@]}"; do fail "this hapmaster does not take $o, which the Deployment's command has: run without it"; done
echo "      pod: uid $RUID gid $RGID, grace ${GRACE}s: ${CMD[*]}"

# The slow backend: makes the file $TMP/got when a request arrives, answers 200 8 s later.
"$PY" -c '
import http.server, sys, time
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        open(sys.argv[2], "w").close()
        time.sleep(8)
        self.send_response(200); self.send_header("Content-Length", "5"); self.end_headers(); self.wfile.write(b"slow\n")
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()' "$SLOW" "$TMP/got" &
PIDS+=($!)
disown

# The container's environment: the runtime directory under a private XDG_RUNTIME_DIR (so that a
# uid-99 master of another test cannot collide with this one), the same for the probes.
XDG=$TMP/xdg
mkdir -m 0700 "$XDG" && chown "$RUID:$RGID" "$XDG"
ENV=(env -i "PATH=$(dirname "$BIN"):/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" "XDG_RUNTIME_DIR=$XDG")
AS_USER=(setpriv --reuid "$RUID" --regid "$RGID" --clear-groups)
unshare --pid --fork --mount-proc "${AS_USER[@]}" "${ENV[@]}" "${CMD[@]}" >"$TMP/log" 2>&1 &
UNSHARE=$!
PIDS+=($UNSHARE)
master_pid() { MASTER=$(pgrep -P "$UNSHARE" | head -1); [ -n "$MASTER" ]; }
wait_until 10 master_pid || die "no master under unshare pid $UNSHARE: $(cat "$TMP/log")"
PIDS+=("$MASTER")
# Run a command as the kubelet's exec would: in the pod's namespaces, as its user, its env.
in_pod() { timeout 30 nsenter -t "$MASTER" -p -m "${AS_USER[@]}" "${ENV[@]}" "$@"; }
probe() { local rc=0; in_pod "$@" >"$TMP/probe.out" 2>&1 || rc=$?; echo "$rc"; }
ready() { [ "$(probe "${READY[@]}")" = 0 ]; }

if wait_until 60 ready; then
    pass "readiness (${READY[*]}) passes once the first worker is ready"
else
    fail "readiness never passed within 60 s: $(cat "$TMP/probe.out")"; tail -20 "$TMP/log"; exit 1
fi
code=$(curl -s -o /dev/null -m 10 -w '%{http_code}' "http://127.0.0.1:$HTTP/" || true)
[ "$code" = 200 ] && pass "the ConfigMap's frontend answers 200" || fail "the ConfigMap's frontend answered '$code'"
rc=$(probe "${ALIVE[@]}")
[ "$rc" = 0 ] && pass "liveness (${ALIVE[*]}) passes" || fail "liveness exit $rc: $(cat "$TMP/probe.out")"

# A worker that does not answer: not ready, still alive.
worker=$(pgrep -P "$MASTER" -x haproxy | head -1)
kill -STOP "$worker"
r=$(probe "${READY[@]}") a=$(probe "${ALIVE[@]}")
kill -CONT "$worker"
[ "$r" != 0 ] && [ "$a" = 0 ] && pass "worker stopped (SIGSTOP): readiness exit $r, liveness exit 0" ||
    fail "worker stopped: readiness exit $r, liveness exit $a"
# A master that does not answer: not alive.
kill -STOP "$MASTER"
a=$(probe "${ALIVE[@]}")
kill -CONT "$MASTER"
[ "$a" != 0 ] && pass "master stopped (SIGSTOP): liveness exit $a" || fail "master stopped: liveness exit 0"
# A crashed worker: not ready until the replacement is.
kill -9 "$worker"
r=$(probe "${READY[@]}")
info_r="readiness right after the crash: exit $r"
if wait_until 60 ready; then pass "worker killed: ready again with the replacement ($info_r)"; else fail "not ready 60 s after a worker crash"; fi

# A ConfigMap update: the kubelet's `..data` swap, then --watch reloads.
if [[ " ${CMD[*]} " == *" --watch "* ]]; then
    cfg=$TMP/config new=..2026_11_29_00_01_00.000000002
    cp -a "$cfg/..2026_11_29_00_00_00.000000001" "$cfg/$new"
    printf '\n# edited\n' >>"$cfg/$new/haproxy.cfg"
    ln -s "$new" "$cfg/..data_tmp" && mv -T "$cfg/..data_tmp" "$cfg/..data"
    rm -rf "$cfg/..2026_11_29_00_00_00.000000001"
    reloaded() { in_pod hapmaster cli show proc 2>/dev/null | awk '$2 == "master" && $3 >= 1 { ok = 1 } END { exit !ok }'; }
    if wait_until 60 reloaded; then pass "..data swap: --watch reloaded (show proc: master reloads >= 1)"; else fail "..data swap: no reload within 60 s"; fi
else
    skip "..data swap reload: needs --watch"
fi
if [[ " ${CMD[*]} " == *" --metrics-bind "* ]]; then
    body=$(curl -s -m 10 "http://127.0.0.1:$METRICS/metrics" || true)
    [[ $body == *hapmaster_reloads_total* ]] && pass "GET /metrics has hapmaster_reloads_total" || fail "GET /metrics: no hapmaster_reloads_total"
else
    skip "GET /metrics: needs --metrics-bind"
fi

# Pod deletion: preStop (a 5 s wait), then SIGTERM, which `--on-sigterm soft` makes a soft stop:
# a request the backend holds for 8 s, in flight at the stop, must finish; hapmaster exits 0
# within the grace period; nothing is left.
graceful=no
if [[ " ${CMD[*]} " == *" --on-sigterm soft "* ]]; then graceful=yes; else
    skip "a graceful stop on SIGTERM (the request in flight finishes): needs --on-sigterm soft"
fi
curl -s -o "$TMP/slow.out" -m 60 -w '%{http_code}' "http://127.0.0.1:$SLOWFE/" >"$TMP/slow.code" 2>&1 &
CURL=$!
PIDS+=($CURL)
wait_until 30 test -e "$TMP/got" || fail "the slow backend got no request within 30 s"
t0=$(now_ms)
rc=0
in_pod "${PRESTOP[@]}" >/dev/null 2>&1 || rc=$?
kill -TERM "$MASTER"
wait "$UNSHARE" && master_rc=0 || master_rc=$?
t=$(( $(now_ms) - t0 ))
wait "$CURL" || true
slow=$(cat "$TMP/slow.code")
[ "$master_rc" = 0 ] && [ "$rc" = 0 ] && pass "preStop (${PRESTOP[*]}) exit 0, then SIGTERM: hapmaster exited 0 after $t ms (grace ${GRACE} s)" ||
    fail "preStop (${PRESTOP[*]}) exit $rc, then SIGTERM: hapmaster exited $master_rc after $t ms"
[ "$t" -lt $((GRACE * 1000)) ] && pass "the stop took $t ms, within terminationGracePeriodSeconds $GRACE" || fail "the stop took $t ms, beyond the grace period $GRACE s"
if [ "$graceful" = yes ]; then
    [ "$slow" = 200 ] && pass "a request in flight at the stop finished: 200" || fail "a request in flight at the stop got '$slow'"
fi
left=$(pgrep -f "$TMP/config" || true)
[ -z "$left" ] && pass "nothing left running" || fail "still running: $left"

echo
echo "kubernetes pod: $PASSES passed, $FAILS failed, $SKIPS skipped"
[ "$FAILS" -eq 0 ]
