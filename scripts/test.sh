#!/usr/bin/env bash
# kanary's whole test suite, from a fresh clone: installs what the build and the tests need,
# starts a real Apache Kafka broker (scripts/kafka.sh) and uses a real Prometheus
# (scripts/prometheus.sh), and runs everything. A missing service is a failure, never a skip.
#
#   scripts/test.sh            # everything
#   SKIP_LINT=1 scripts/test.sh   # without fmt/clippy (quicker while iterating)
#
# Stages: system packages -> fmt + clippy -> unit, property and CLI tests -> Kafka end-to-end
# tests (+ Prometheus, promtool, dashboard queries) and the gateway's -> real telemetry through
# the gateway (scripts/gateway_test.sh) -> deployment files -> live page and eval
# report in headless Chromium -> Isolation Forest parity with scikit-learn -> NAB score ->
# every model on the shipped cut of the real services set -> TLS + SCRAM broker. The compose
# stack test (after the deployment files) builds local Docker images and starts dockerd if needed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
OUT="$ROOT/target/test-output"
mkdir -p "$OUT"
started=$(date +%s)

step() { printf '\n==> %s (%ss)\n' "$*" "$(( $(date +%s) - started ))"; }
die() { echo "test.sh: $*" >&2; exit 1; }

# --- 1. System packages -----------------------------------------------------------------------
step "system packages"
missing=()
command -v cc >/dev/null || missing+=(gcc)
command -v make >/dev/null || missing+=(make)
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3 python3-venv)
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
command -v promtool >/dev/null || missing+=(prometheus)
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v node >/dev/null || missing+=(nodejs npm)
[ -x /usr/bin/chromium ] || missing+=(chromium)
dpkg -s zlib1g-dev >/dev/null 2>&1 || missing+=(zlib1g-dev)
# The TLS + SCRAM test (kanary --features ssl, certificates) and the compose stack test.
command -v openssl >/dev/null || missing+=(openssl)
command -v pkg-config >/dev/null || missing+=(pkg-config)
dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev)
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
# Real telemetry through the gateway (scripts/gateway_test.sh).
command -v prometheus-node-exporter >/dev/null || missing+=(prometheus-node-exporter)
command -v prometheus-alertmanager >/dev/null || missing+=(prometheus-alertmanager)
command -v stress-ng >/dev/null || missing+=(stress-ng)
command -v kcat >/dev/null || missing+=(kcat)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || die "need root or sudo to install: ${missing[*]}"
    SUDO="sudo"
  fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -q -o DPkg::Lock::Timeout=600 "${missing[@]}" \
    || { $SUDO apt-get update -q -o DPkg::Lock::Timeout=600 \
         && $SUDO apt-get install -y -q -o DPkg::Lock::Timeout=600 "${missing[@]}"; }
fi
command -v cargo >/dev/null || die "cargo (Rust stable) is required"

# --- 2. Formatting and lints --------------------------------------------------------------------
if [ "${SKIP_LINT:-0}" != 1 ]; then
  step "cargo fmt --check"
  cargo fmt --all -- --check
  step "cargo clippy --all-targets -D warnings"
  cargo clippy --workspace --all-targets --release -- -D warnings
fi

# --- 3. Unit, property and command-line tests ------------------------------------------------
step "cargo test --workspace (unit, property, gradient checks, CLI)"
cargo test --workspace --release
KANARY="$ROOT/target/release/kanary"
[ -x "$KANARY" ] || cargo build --release -p kanary
[ -x "$KANARY" ] || die "no kanary binary at $KANARY"

# --- 4. Kafka end to end, with Prometheus ----------------------------------------------------
step "Kafka broker (scripts/kafka.sh)"
export KAFKA_PORT="${KAFKA_PORT:-19092}"
export KAFKA_DATA="${KAFKA_DATA:-$ROOT/target/kafka-test-data}"
cleanup() {
  "$ROOT/scripts/kafka.sh" stop >/dev/null 2>&1 || true
  if [ -n "${DEMO_PID:-}" ]; then kill "$DEMO_PID" 2>/dev/null || true; fi
}
trap cleanup EXIT
"$ROOT/scripts/kafka.sh" start
step "end-to-end tests against Kafka (detect, bad input, kill -9, scale-out, Prometheus)"
KANARY_TEST_BROKERS="127.0.0.1:$KAFKA_PORT" \
  cargo test --release -p kanary --test kafka -- --include-ignored --test-threads=1
step "kanary gateway against Kafka (remote write, OTLP, refusals, outage, TLS)"
KANARY_TEST_BROKERS="127.0.0.1:$KAFKA_PORT" \
  cargo test --release -p kanary --test gateway -- --include-ignored --test-threads=1
"$ROOT/scripts/kafka.sh" stop
step "real telemetry: node exporter -> Prometheus -> gateway -> Kafka -> detect -> Alertmanager, stress-ng, OTLP, outage (scripts/gateway_test.sh)"
KANARY="$KANARY" "$ROOT/scripts/gateway_test.sh"

# --- 5. Deployment files -----------------------------------------------------------------------
step "deployment files (compose, Kubernetes, Prometheus rules, Grafana)"
"$ROOT/scripts/validate-deploy.sh"
step "compose stack for real: local images, compose up, events to Prometheus, alert rules (scripts/compose_test.sh)"
"$ROOT/scripts/compose_test.sh"

# --- 6. Live page in a real headless Chromium ------------------------------------------------
step "live page in headless Chromium (kanary demo)"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$KANARY" demo --addr "127.0.0.1:$port" --quiet --duration 120 >"$OUT/demo.log" 2>&1 &
DEMO_PID=$!
for _ in $(seq 1 50); do
  curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break
  sleep 0.2
done
"$ROOT/scripts/browser/run.sh" --url "http://127.0.0.1:$port/" --out "$OUT/browser" --models if,ae
kill "$DEMO_PID" 2>/dev/null || true
wait "$DEMO_PID" 2>/dev/null || true
DEMO_PID=""

step "eval --report on the microservices scenario, opened in headless Chromium"
"$KANARY" simulate --scenario microservices --count 20000 --seed 1 --output "$OUT/microservices.jsonl"
"$KANARY" eval --input "$OUT/microservices.jsonl" --model if,ae,zscore,novelty --report "$OUT/report.html"
node "$ROOT/scripts/browser/check_report.mjs" --report "$OUT/report.html" --out "$OUT/report" \
  --models if,ae,zscore,novelty

# --- 7. Isolation Forest ranking parity with scikit-learn ----------------------------------
step "Isolation Forest parity with scikit-learn (scripts/iforest_parity.py)"
python3 "$ROOT/scripts/iforest_parity.py" --kanary "$KANARY" --out "$OUT/parity"

# --- 8. NAB ------------------------------------------------------------------------------------
# The 41 NAB files ship with the repository in data/nab (MIT, data/nab/LICENSE.txt);
# KANARY_NAB_DATA points elsewhere (a folder with the same layout) if set.
NAB_DATA="${KANARY_NAB_DATA:-$ROOT/data/nab}"
[ -d "$NAB_DATA" ] || die "NAB data folder $NAB_DATA does not exist (it ships in the repository as data/nab; KANARY_NAB_DATA overrides it)"
[ -f "$NAB_DATA/labels/windows.json" ] && [ -d "$NAB_DATA/data" ] \
  || die "NAB data folder $NAB_DATA lacks labels/windows.json or data/ (expected data/<category>/<file>.csv and labels/windows.json)"
step "Numenta Anomaly Benchmark ($NAB_DATA)"
"$ROOT/scripts/nab.sh" --kanary "$KANARY" --data "$NAB_DATA" --out "$OUT/nab" --check

# --- 9. Every model on the shipped cut of the real services set and the node recordings ----
step "every model, judged as an operator would (scripts/eval_real.sh on data/services, data/node)"
"$ROOT/scripts/eval_real.sh" --kanary "$KANARY" --out "$OUT/eval-real" >"$OUT/eval-real.log"
for set in d2 node-1s; do
  grep -q "| $set | \`codev\` |" "$OUT/eval-real/table.md" || die "eval_real.sh wrote no $set rows"
done

# --- 10. TLS + SASL/SCRAM ---------------------------------------------------------------------
# Last: it builds kanary with --features ssl into the same target/ (target/release/kanary is then
# the TLS build), and runs its own broker with a SASL_SSL listener.
step "TLS + SASL/SCRAM broker: kanary --features ssl connects, wrong password and untrusted CA fail clearly (scripts/tls_test.sh)"
"$ROOT/scripts/tls_test.sh"

step "all tests passed"
