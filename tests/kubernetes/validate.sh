#!/usr/bin/env bash
# Offline validation of the Kubernetes manifests in deploy/kubernetes/ (issue 15).
#
#   tests/kubernetes/validate.sh [DIR]          # DIR defaults to deploy/kubernetes
#   HM_K8S_VERSION=1.33.0 tests/kubernetes/validate.sh
#
# 1. kubernetes-validate (PyPI; it ships the API schemas, so validating needs no cluster and no
#    network) checks every *.yaml against Kubernetes $HM_K8S_VERSION (default 1.30.0) with
#    --strict (unknown fields are errors). It only WARNs, and exits 0, on a kind or apiVersion it
#    has no schema for (a misspelt `kind:`), so any WARN line fails here. kustomization.yaml is
#    not a Kubernetes resource and is not passed to it. Canaries first check that the pinned
#    validator still reports each of these the way this script reads them.
# 2. What a schema cannot say, checked with the validator's own PyYAML: the ConfigMap is mounted
#    as a directory (no subPath, which never updates) at the `-f` path hapmaster watches and has a
#    `.cfg` key haproxy reads; the probes are `hapmaster cli` with a --timeout below the probe's;
#    terminationGracePeriodSeconds covers the preStop wait plus the drain bound (--drain-timeout,
#    with --on-sigterm soft) plus a margin; the metrics port, `--metrics-bind` and the
#    prometheus.io annotations agree; the Service selects the pods and targets a named port;
#    the Deployment and the repository's Containerfile agree (command = CMD, runAsUser:runAsGroup
#    = USER, readiness = HEALTHCHECK, ports EXPOSEd, STOPSIGNAL SIGTERM, the ConfigMap's
#    haproxy.cfg = deploy/container/haproxy.cfg).
#
# The validator is installed on first use (pip, from PyPI) into a venv under target/ and reused
# afterwards. Prints PASS/FAIL lines and a summary; exits 1 if any check failed.
set -euo pipefail

REPO=$(cd "$(dirname "$0")" && git rev-parse --show-toplevel 2>/dev/null) || REPO=$(cd "$(dirname "$0")/../.." && pwd)
DIR=${1:-$REPO/deploy/kubernetes}
K8S_VERSION=${HM_K8S_VERSION:-1.30.0}
KV_VERSION=1.37.0
VENV=$REPO/target/kubernetes-validate-$KV_VERSION
KV=$VENV/bin/kubernetes-validate
PY=$VENV/bin/python

die() { echo "error: $*" >&2; exit 1; }

PASSES=0 FAILS=0
pass() { echo "PASS: $*"; PASSES=$((PASSES + 1)); }
fail() { echo "FAIL: $*"; FAILS=$((FAILS + 1)); }
info() { echo "      $*"; }

[ -d "$DIR" ] || die "no directory $DIR"

if [ ! -x "$KV" ] || [ "$("$KV" --version 2>/dev/null)" != "$KV_VERSION" ]; then
    command -v python3 >/dev/null || die "python3 is needed to install kubernetes-validate"
    echo "installing kubernetes-validate==$KV_VERSION into $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV" || die "python3 -m venv $VENV failed (Debian: apt-get install python3-venv)"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$KV_VERSION" ||
        die "pip install kubernetes-validate==$KV_VERSION failed (PyPI unreachable?)"
fi
echo "kubernetes-validate $("$KV" --version), Kubernetes $K8S_VERSION, manifests in $DIR"

TMP=$(mktemp -d /tmp/hm-k8s-validate.XXXXXX)
trap 'rm -rf "$TMP"' EXIT

# kubernetes-validate on FILE...: its output in $TMP/out, its exit status in $RC.
validate() {
    RC=0
    "$KV" -k "$K8S_VERSION" --strict "$@" >"$TMP/out" 2>&1 || RC=$?
}

# --- Canaries: the validator reports what this script relies on, in the form it reads.
# canary WHAT EXIT PREFIX < DOCUMENT: kubernetes-validate exits EXIT (0, or 1 for "non-zero") on
# DOCUMENT and prints a line starting with PREFIX.
canary() {
    cat >"$TMP/canary.yaml"
    validate "$TMP/canary.yaml"
    if [ "$((RC != 0))" -eq "$2" ] && grep -q "^$3 " "$TMP/out"; then
        pass "canary: $1: exit $RC, a line starting with $3"
    else
        fail "canary: $1: exit $RC, no line starting with $3: this script's reading of the validator needs updating"
        sed 's/^/      /' "$TMP/out"
    fi
}
canary "an unknown kind (so any WARN line is a failure here)" 0 WARN <<'EOF'
apiVersion: v1
kind: ConfigMapp
metadata: {name: canary}
EOF
canary "--strict rejects an unknown field" 1 ERROR <<'EOF'
apiVersion: v1
kind: Service
metadata: {name: canary}
spec:
  ports: [{port: 80, targetPorr: http}]
EOF

# --- Schemas.
shopt -s nullglob
FILES=()
for f in "$DIR"/*.yaml "$DIR"/*.yml; do
    case $(basename "$f") in kustomization.yaml | kustomization.yml) continue ;; esac
    FILES+=("$f")
done
shopt -u nullglob
[ "${#FILES[@]}" -gt 0 ] || die "no *.yaml in $DIR"
for f in "${FILES[@]}"; do
    name=$(basename "$f")
    docs=$("$PY" -c 'import sys, yaml; print(sum(d is not None for d in yaml.safe_load_all(open(sys.argv[1]))))' "$f") ||
        { fail "$name: not YAML"; continue; }
    validate "$f"
    passed=$(grep -c ' passed for resource ' "$TMP/out" || true)
    if [ "$RC" -eq 0 ] && ! grep -q '^WARN ' "$TMP/out" && [ "$passed" -eq "$docs" ]; then
        pass "$name: $passed of $docs resources valid for Kubernetes $K8S_VERSION (--strict)"
    else
        fail "$name: exit $RC, $passed of $docs resources passed"
        sed 's/^/      /' "$TMP/out"
    fi
done

# --- What the schemas cannot say.
"$PY" - "$DIR" "$REPO" >"$TMP/checks" <<'EOF' || true
import glob, os, re, shlex, sys
import yaml

d = sys.argv[1]
docs = []
for f in sorted(glob.glob(os.path.join(d, "*.yaml")) + glob.glob(os.path.join(d, "*.yml"))):
    if os.path.basename(f).startswith("kustomization."):
        continue
    docs += [x for x in yaml.safe_load_all(open(f)) if x]

def check(ok, text):
    print(("PASS: " if ok else "FAIL: ") + text)

def of_kind(kind):
    return [x for x in docs if x.get("kind") == kind]

UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400}

def seconds(text):
    """haproxy's and hapmaster's durations: a bare number is milliseconds."""
    m = re.fullmatch(r"(\d+)(us|ms|s|m|h|d)?", text)
    if not m:
        raise ValueError(f"not a duration: {text!r}")
    return int(m.group(1)) * UNITS[m.group(2) or "ms"]

def option(cmd, name):
    return cmd[cmd.index(name) + 1] if name in cmd and cmd.index(name) + 1 < len(cmd) else None

deployments = of_kind("Deployment")
if len(deployments) != 1:
    check(False, f"exactly one Deployment (found {len(deployments)})")
    sys.exit(0)
dep = deployments[0]
pod = dep["spec"]["template"]
spec = pod["spec"]
containers = [c for c in spec["containers"] if (c.get("command") or [""])[0].endswith("hapmaster")]
if len(containers) != 1:
    check(False, "exactly one container runs hapmaster as its command")
    sys.exit(0)
c = containers[0]
cmd = [str(x) for x in c["command"] + c.get("args", [])]
check(True, f"container {c['name']}: {' '.join(cmd)}")

# The configuration: a ConfigMap volume mounted whole, at the directory `-f` names, watched.
cfg_dir = option(cmd, "-f")
check("--watch" in cmd, "hapmaster runs with --watch")
volumes = {v["name"]: v for v in spec.get("volumes", [])}
cm_mounts = [m for m in c.get("volumeMounts", []) if "configMap" in volumes.get(m["name"], {})]
check(bool(cm_mounts), "a ConfigMap volume is mounted")
for m in cm_mounts:
    check("subPath" not in m and "subPathExpr" not in m,
          f"ConfigMap mount {m['name']} at {m['mountPath']} is a directory, not subPath (which never updates)")
mount = next((m for m in cm_mounts if m["mountPath"].rstrip("/") == (cfg_dir or "").rstrip("/")), None)
check(mount is not None, f"-f {cfg_dir} is where a ConfigMap is mounted")
cfg = ""
if mount:
    name = volumes[mount["name"]]["configMap"]["name"]
    cms = [x for x in of_kind("ConfigMap") if x["metadata"]["name"] == name]
    check(len(cms) == 1, f"ConfigMap {name} is in the manifests")
    keys = sorted((cms[0].get("data") or {}) if cms else {})
    # haproxy's rule for `-f DIR`: the first ".cfg" ends the name, no leading dot.
    read = [k for k in keys if not k.startswith(".") and k.find(".cfg") == len(k) - 4 >= 0]
    check(bool(read), f"ConfigMap {name} has keys haproxy reads from -f DIR: {read}")
    cfg = "\n".join(cms[0]["data"][k] for k in read) if cms else ""

# Probes: hapmaster's client, bounded below the kubelet's own timeout.
def probe(kind, want):
    p = c.get(kind)
    if not p or "exec" not in p:
        check(False, f"{kind} is an exec probe")
        return
    pc = [str(x) for x in p["exec"]["command"]]
    check(pc[:2] == ["hapmaster", "cli"] and want(pc), f"{kind}: {' '.join(pc)}")
    t = option(pc, "--timeout")
    limit = p.get("timeoutSeconds", 1)
    check(t is not None and seconds(t) < limit,
          f"{kind}: hapmaster cli --timeout {t} is below timeoutSeconds {limit}")

# Ready: the current worker answers (`@1 ...`); alive: the master answers (its own command).
probe("readinessProbe", lambda pc: "@1" in pc)
probe("livenessProbe", lambda pc: not any(w.startswith("@") for w in pc[2:]))

# Drain bound: the stop signal (SIGTERM) soft-stops, --drain-timeout bounds it; grace >= preStop
# wait + drain + margin.
grace = spec.get("terminationGracePeriodSeconds", 30)
drain_opt = option(cmd, "--drain-timeout")
check(drain_opt is not None, "--drain-timeout bounds the drain (of old workers after a reload, of all at the stop)")
drain = seconds(drain_opt) if drain_opt else 0
check(option(cmd, "--on-sigterm") == "soft",
      "--on-sigterm soft: the kubelet's stop signal, SIGTERM, soft-stops the workers (hapmaster's default is a hard stop)")
pre = (c.get("lifecycle") or {}).get("preStop") or {}
if "sleep" in pre:
    wait = pre["sleep"]["seconds"]
elif "exec" in pre:
    text = " ".join(str(x) for x in pre["exec"]["command"])
    w = re.search(r"\bsleep\s+(\d+)", text)
    wait = int(w.group(1)) if w else 0
else:
    wait = 0
check(wait > 0, f"preStop waits {wait} s for endpoints to be removed before the stop signal")
MARGIN = 5
check(grace >= wait + drain + MARGIN,
      f"terminationGracePeriodSeconds {grace} >= preStop {wait} + drain bound {drain:g} + margin {MARGIN}")
check(spec.get("shareProcessNamespace") is not True, "hapmaster is PID 1 (no shareProcessNamespace): it gets the stop signal and reaps orphans")

# Metrics: one port everywhere.
bind = option(cmd, "--metrics-bind")
ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
ann = pod.get("metadata", {}).get("annotations", {})
bport = int(bind.rsplit(":", 1)[1]) if bind and ":" in bind else None
check(bport is not None and bport == ports.get("metrics") == int(ann.get("prometheus.io/port", -1)),
      f"--metrics-bind {bind}, containerPort metrics {ports.get('metrics')}, prometheus.io/port {ann.get('prometheus.io/port')} agree")
check(ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/path", "/metrics") == "/metrics",
      "prometheus.io/scrape is \"true\" and the path is /metrics")

# Service: selects these pods, targets a named port of the container.
labels = pod.get("metadata", {}).get("labels", {})
check(bool(of_kind("Service")), "a Service is in the manifests")
for s in of_kind("Service"):
    sel = s["spec"].get("selector", {})
    check(bool(sel) and all(labels.get(k) == v for k, v in sel.items()),
          f"Service {s['metadata']['name']} selects the Deployment's pods ({sel})")
    for p in s["spec"]["ports"]:
        t = p.get("targetPort", p["port"])
        check(t in ports or t in ports.values(), f"Service {s['metadata']['name']} port {p['port']} targets container port {t}")

# The image (Containerfile at the repository's root) and the Deployment agree: the same command,
# user, health check, ports and stop signal, the same default haproxy.cfg as the ConfigMap's.
repo = sys.argv[2]
containerfile = os.path.join(repo, "Containerfile")
if os.path.exists(containerfile):
    text = re.sub(r"\\\n", " ", open(containerfile).read())
    instr = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            instr.setdefault(word.upper(), []).append(rest.strip())
    import json
    last = lambda k: instr.get(k, [""])[-1]
    image_cmd = json.loads(last("CMD") or "[]")
    check(image_cmd == cmd, f"the Deployment's command is the image's CMD {image_cmd}")
    sc = spec.get("securityContext", {})
    check(last("USER") == f"{sc.get('runAsUser')}:{sc.get('runAsGroup')}",
          f"the image's USER {last('USER')} is runAsUser:runAsGroup {sc.get('runAsUser')}:{sc.get('runAsGroup')}")
    hc = re.search(r"\bCMD\s+(\[.*\])", last("HEALTHCHECK"))
    ready = [str(x) for x in (c.get("readinessProbe") or {}).get("exec", {}).get("command", [])]
    check(hc is not None and json.loads(hc.group(1)) == ready, f"the image's HEALTHCHECK is the readiness probe {ready}")
    exposed = {int(p.split("/")[0]) for e in instr.get("EXPOSE", []) for p in e.split()}
    check(set(ports.values()) <= exposed, f"the image EXPOSEs the container ports {sorted(ports.values())} ({sorted(exposed)})")
    check(last("STOPSIGNAL") in ("", "SIGTERM", "TERM", "15"),
          f"the image's STOPSIGNAL is SIGTERM ('{last('STOPSIGNAL')}'), which --on-sigterm soft makes a soft stop")
    copies = [e.split() for e in instr.get("COPY", [])]
    into = [dst for *src, dst in copies if dst.startswith((cfg_dir or "").rstrip("/") + "/")]
    check(bool(into), f"the image puts a configuration into -f {cfg_dir}: {into}")
    default_cfg = os.path.join(repo, "deploy", "container", "haproxy.cfg")
    if mount and cms and os.path.exists(default_cfg):
        check(open(default_cfg).read() == cms[0]["data"].get("haproxy.cfg"),
              "deploy/container/haproxy.cfg (the image's default) is the ConfigMap's haproxy.cfg")
else:
    check(False, f"no {containerfile}")
print("END")
EOF
while IFS= read -r line; do
    case $line in
        "PASS: "*) pass "${line#PASS: }" ;;
        "FAIL: "*) fail "${line#FAIL: }" ;;
        END) ;;
        *) info "$line" ;;
    esac
done <"$TMP/checks"
grep -qx END "$TMP/checks" || fail "the consistency checks stopped early (the Python error, if any, is above)"

echo
echo "kubernetes manifests: $PASSES passed, $FAILS failed"
[ "$FAILS" -eq 0 ]
