#!/usr/bin/env bash
# tls_test.sh — kanary against a Kafka broker that wants TLS and SASL/SCRAM-SHA-512.
#
# Makes a test CA and a broker certificate from scratch (openssl, keytool), starts
# scripts/kafka_secure.sh's single-node broker on its own ports, builds kanary with
# `--features ssl`, and then checks with the real binary:
#   (a) `kanary simulate` produces over SASL_SSL; `kanary detect` with the same options consumes
#       every event (its /metrics counts them) and produces anomaly records, which Kafka's Java
#       console consumer reads back over SASL_SSL; detect stops cleanly on SIGTERM;
#   (b) a wrong SCRAM password: detect exits non-zero within --startup-timeout and its log names
#       the SASL authentication failure;
#   (c) a CA that did not sign the broker's certificate: detect exits non-zero within
#       --startup-timeout and its log names the certificate verification failure;
#   and no kanary log holds a password.
# Every check runs and is reported; the script fails if any check failed. A missing tool is a
# failure, never a skip.
#
#   scripts/tls_test.sh
#
# Environment:
#   TLS_TEST_DIR        work dir: certificates, broker data, logs (default <repo>/target/tls-test);
#                       wiped on start
#   TLS_TEST_PORT       base port on 127.0.0.1 (default 19192): broker PLAINTEXT = PORT,
#                       controller = PORT+1, SASL_SSL = PORT+2, detect's HTTP = PORT+10..12
#   TLS_TEST_STARTUP_TIMEOUT  detect --startup-timeout in (b) and (c), seconds (default 20)
#   KANARY_SSL_BIN      test this kanary binary (built with --features ssl) instead of building
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$ROOT"
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

WORK=${TLS_TEST_DIR:-$ROOT/target/tls-test}
PORT=${TLS_TEST_PORT:-19192}
STARTUP_TIMEOUT=${TLS_TEST_STARTUP_TIMEOUT:-20}
EVENTS=20000
TOPIC=tls-events
ANOMALIES=tls-anomalies
SCRAM_USER=kanary
SCRAM_PASSWORD=tls-test-secret-$RANDOM$RANDOM
WRONG_PASSWORD=not-the-password-$RANDOM
MARKER=.kanary-tls-test

started=$SECONDS
step() { printf '\n==> %s (%ss)\n' "$*" "$((SECONDS - started))"; }
die() {
    printf 'tls_test.sh: error: %s\n' "$*" >&2
    exit 1
}
results=()
pass() {
    results+=("PASS  $1")
    printf 'PASS  %s\n' "$1"
}
fail() {
    results+=("FAIL  $1")
    printf 'FAIL  %s\n' "$1" >&2
}
show_tail() {
    [[ -f $1 ]] || return 0
    printf '  last lines of %s:\n' "$1" >&2
    tail -n "${2:-15}" "$1" | sed 's/^/  | /' >&2
}

[[ $PORT =~ ^[0-9]+$ ]] || die "TLS_TEST_PORT must be a port number, got '$PORT'"
[[ $STARTUP_TIMEOUT =~ ^[0-9]+$ ]] || die "TLS_TEST_STARTUP_TIMEOUT must be whole seconds"
SASL_BOOTSTRAP="127.0.0.1:$((PORT + 2))"

# --- Tools ----------------------------------------------------------------------------------
step "tools"
for t in java mvn openssl keytool curl ldd timeout flock; do
    command -v "$t" >/dev/null 2>&1 || die "$t is needed (scripts/test.sh installs java and maven; openssl and keytool: apt-get install -y openssl openjdk-17-jre-headless)"
done
if [[ -z ${KANARY_SSL_BIN:-} ]]; then
    command -v cargo >/dev/null 2>&1 || die "cargo (Rust stable) is needed"
    { command -v pkg-config >/dev/null 2>&1 && pkg-config --exists openssl; } ||
        die "OpenSSL headers and pkg-config are needed to build kanary --features ssl (apt-get install -y libssl-dev pkg-config)"
fi

# --- Work dir -------------------------------------------------------------------------------
# The broker's settings, for scripts/kafka_secure.sh (and through it scripts/kafka.sh).
export KAFKA_SECURE_DIR="$WORK/broker" KAFKA_PORT="$PORT"
export KAFKA_CONTROLLER_PORT=$((PORT + 1)) KAFKA_SASL_SSL_PORT=$((PORT + 2))
export KAFKA_SCRAM_USER="$SCRAM_USER" KAFKA_SCRAM_PASSWORD="$SCRAM_PASSWORD"
CERTS="$KAFKA_SECURE_DIR/certs"
CLIENT_PROPS="$KAFKA_SECURE_DIR/client.properties"

if [[ -e $WORK && ! -f $WORK/$MARKER ]] && [[ -n $(ls -A "$WORK" 2>/dev/null) ]]; then
    die "TLS_TEST_DIR=$WORK is not empty and was not created by tls_test.sh; refusing to wipe it"
fi
# A broker left over from an interrupted run would hold the ports.
if [[ -f $WORK/$MARKER ]]; then
    "$ROOT/scripts/kafka_secure.sh" stop >/dev/null 2>&1 || true
fi
rm -rf "$WORK"
mkdir -p "$WORK"
touch "$WORK/$MARKER"

# --- kanary with OpenSSL ----------------------------------------------------------------------
KANARY="$WORK/kanary"
if [[ -n ${KANARY_SSL_BIN:-} ]]; then
    step "kanary from KANARY_SSL_BIN"
    [[ -x $KANARY_SSL_BIN ]] || die "KANARY_SSL_BIN=$KANARY_SSL_BIN is not an executable"
    cp "$KANARY_SSL_BIN" "$KANARY"
else
    step "cargo build --release -p kanary --features ssl"
    cargo build --release -p kanary --features ssl
    # A copy: another build of the workspace may replace target/release/kanary meanwhile.
    cp "${CARGO_TARGET_DIR:-$ROOT/target}/release/kanary" "$KANARY"
fi
# Whole outputs, never `ldd | grep -q`: under pipefail, grep -q stopping early can kill the writer
# with SIGPIPE and fail the pipeline although the match was found.
linked=$(ldd "$KANARY") || die "ldd cannot read $KANARY"
[[ $linked == *libssl.so* ]] ||
    die "$KANARY does not link OpenSSL, so it was not built with --features ssl (did another build replace target/release/kanary? run again)"
HAS_STARTUP_TIMEOUT=0
detect_help=$("$KANARY" detect --help) || die "$KANARY detect --help failed"
if [[ $detect_help == *--startup-timeout* ]]; then
    HAS_STARTUP_TIMEOUT=1
fi

# --- The broker ---------------------------------------------------------------------------------
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    "$ROOT/scripts/kafka_secure.sh" stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

step "Kafka with a SASL_SSL listener (scripts/kafka_secure.sh) on $SASL_BOOTSTRAP"
"$ROOT/scripts/kafka_secure.sh" start
for f in ca.pem rogue-ca.pem; do
    [[ -f $CERTS/$f ]] || die "kafka_secure.sh made no $CERTS/$f"
done

# Java tools over SASL_SSL. These helpers print what they found, or nothing / 0, and never
# fail: the checks compare what they print.
kafka_tool() { "$ROOT/scripts/kafka_secure.sh" run "$@"; }
end_offset_sum() {
    { kafka_tool org.apache.kafka.tools.GetOffsetShell --bootstrap-server "$SASL_BOOTSTRAP" \
        --command-config "$CLIENT_PROPS" --topic "$1" </dev/null 2>>"$WORK/tools.log" || true; } |
        awk -F: 'NF >= 3 { s += $NF } END { print s + 0 }'
}

# kanary's librdkafka options for SASL_SSL with PASSWORD, trusting CA_FILE.
kafka_opts() {
    kopts=(
        --kafka-opt security.protocol=SASL_SSL
        --kafka-opt sasl.mechanism=SCRAM-SHA-512
        --kafka-opt "sasl.username=$SCRAM_USER"
        --kafka-opt "sasl.password=$1"
        --kafka-opt "ssl.ca.location=$2"
    )
}

# Sum of a metric's samples with model="if" on detect's /metrics, or nothing.
metric_sum() {
    { curl -sf --max-time 5 "http://127.0.0.1:$1/metrics" 2>/dev/null || true; } |
        awk -v m="$2" '$1 ~ ("^" m "\\{") && $1 ~ /model="if"/ { s += $2; n++ } END { if (n) print s + 0 }'
}

pid_alive() {
    local state
    kill -0 "$1" 2>/dev/null || return 1
    state=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null || true)
    [[ -n $state && $state != Z ]]
}

# --- (a) produce, consume, produce anomalies over SASL_SSL --------------------------------------
check_a() {
    local log_s="$WORK/simulate.log" log_d="$WORK/detect-a.log" mport=$((PORT + 10))
    kafka_opts "$SCRAM_PASSWORD" "$CERTS/ca.pem"

    if ! "$KANARY" simulate --scenario seed --count "$EVENTS" --seed 7 \
        --brokers "$SASL_BOOTSTRAP" --topic "$TOPIC" --partitions 3 "${kopts[@]}" \
        >"$log_s" 2>&1; then
        show_tail "$log_s"
        fail "(a) kanary simulate over SASL_SSL exited non-zero (log: $log_s)"
        return 0
    fi
    local n
    n=$(end_offset_sum "$TOPIC")
    if [[ $n != "$EVENTS" ]]; then
        show_tail "$WORK/tools.log"
        fail "(a) kanary simulate over SASL_SSL: topic $TOPIC holds $n records, want $EVENTS"
        return 0
    fi
    pass "(a) kanary simulate produced $EVENTS events over SASL_SSL (end offsets read by a Java client)"

    "$KANARY" detect --model if --brokers "$SASL_BOOTSTRAP" --topic "$TOPIC" \
        --group tls-test-if --metrics-addr "127.0.0.1:$mport" --state-dir "$WORK/state-a" \
        --anomalies-topic "$ANOMALIES" --dlq-topic tls-dlq "${kopts[@]}" >"$log_d" 2>&1 &
    local pid=$!
    pids+=("$pid")
    local deadline=$((SECONDS + 120)) events=""
    while ((SECONDS < deadline)); do
        pid_alive "$pid" || break
        events=$(metric_sum "$mport" detector_events_total)
        [[ $events == "$EVENTS" ]] && break
        sleep 1
    done
    if [[ $events != "$EVENTS" ]]; then
        show_tail "$log_d"
        if pid_alive "$pid"; then
            fail "(a) kanary detect over SASL_SSL: /metrics counts ${events:-no} events after 120 s, want $EVENTS (log: $log_d)"
        else
            fail "(a) kanary detect over SASL_SSL exited early (log: $log_d)"
        fi
        return 0
    fi
    pass "(a) kanary detect consumed all $EVENTS events over SASL_SSL (detector_events_total)"

    local flagged
    flagged=$(metric_sum "$mport" detector_anomalies_total)
    if ! [[ ${flagged:-0} -gt 0 ]] 2>/dev/null; then
        fail "(a) kanary detect flagged no anomaly (detector_anomalies_total=${flagged:-missing})"
        return 0
    fi
    local published=0
    deadline=$((SECONDS + 60))
    while ((SECONDS < deadline)); do
        published=$(end_offset_sum "$ANOMALIES")
        [[ $published == "$flagged" ]] && break
        sleep 2
    done
    if [[ $published != "$flagged" ]]; then
        show_tail "$log_d"
        fail "(a) topic $ANOMALIES holds $published records, detector_anomalies_total says $flagged"
        return 0
    fi
    local nread
    nread=$(kafka_tool org.apache.kafka.tools.consumer.ConsoleConsumer \
        --bootstrap-server "$SASL_BOOTSTRAP" --consumer.config "$CLIENT_PROPS" \
        --topic "$ANOMALIES" --from-beginning --max-messages "$flagged" --timeout-ms 30000 \
        --group tls-test-reader </dev/null 2>>"$WORK/tools.log" | tee "$WORK/anomalies.jsonl" |
        grep -c '"model":"if"' || true)
    if [[ $nread != "$flagged" ]]; then
        show_tail "$WORK/tools.log"
        fail "(a) the Java console consumer read $nread anomaly records of model if over SASL_SSL, want $flagged"
        return 0
    fi
    pass "(a) kanary detect produced $flagged anomaly records over SASL_SSL; the Java console consumer read them all"

    kill -TERM "$pid"
    local rc=0
    deadline=$((SECONDS + 30))
    while pid_alive "$pid" && ((SECONDS < deadline)); do sleep 0.5; done
    if pid_alive "$pid"; then
        fail "(a) kanary detect still running 30 s after SIGTERM"
        return 0
    fi
    wait "$pid" || rc=$?
    if ((rc != 0)); then
        show_tail "$log_d"
        fail "(a) kanary detect exited $rc after SIGTERM, want 0 (log: $log_d)"
        return 0
    fi
    pass "(a) kanary detect stopped cleanly on SIGTERM"
}

# --- (b), (c) a refused connection: exit non-zero in time, say why --------------------------------
# check_refused LABEL NAME PASSWORD CA_FILE MPORT REGEX... : every REGEX (case-insensitive)
# must match detect's log.
check_refused() {
    local label=$1 name=$2 password=$3 ca=$4 mport=$5
    shift 5
    local log="$WORK/detect-$name.log" limit=$((STARTUP_TIMEOUT + 30))
    kafka_opts "$password" "$ca"
    local how="--startup-timeout $STARTUP_TIMEOUT"
    ((HAS_STARTUP_TIMEOUT)) || how="no --startup-timeout"
    local args=(detect --model if --brokers "$SASL_BOOTSTRAP" --topic "$TOPIC"
        --group "tls-test-$name" --metrics-addr "127.0.0.1:$mport" --state-dir "$WORK/state-$name"
        --anomalies-topic "$ANOMALIES-$name" --dlq-topic "tls-dlq-$name" "${kopts[@]}")
    if ((HAS_STARTUP_TIMEOUT)); then
        args+=(--startup-timeout "$STARTUP_TIMEOUT")
    else
        fail "$label: this kanary has no 'detect --startup-timeout' yet (ran detect without it)"
    fi
    local t0=$SECONDS rc=0
    timeout -k 5 "$limit" "$KANARY" "${args[@]}" >"$log" 2>&1 || rc=$?
    local took=$((SECONDS - t0))
    if ((rc == 0)); then
        fail "$label: kanary detect exited 0 after ${took} s, want non-zero (log: $log)"
    elif ((rc == 124 || rc == 137)); then
        fail "$label: kanary detect still running after ${limit} s ($how), killed (log: $log)"
    else
        pass "$label: kanary detect exited $rc after ${took} s ($how)"
    fi
    local re missing=()
    for re in "$@"; do
        grep -Eiq -- "$re" "$log" || missing+=("$re")
    done
    if ((${#missing[@]})); then
        show_tail "$log"
        fail "$label: detect's log has no line matching /${missing[*]}/ (log: $log)"
    else
        pass "$label: detect's log says why: $(grep -Ei -m 1 -- "$1" "$log" | cut -c 1-300)"
    fi
}

step "(a) simulate and detect over SASL_SSL with the right password and CA"
check_a

step "(b) a wrong SCRAM password"
check_refused "(b) wrong password" wrong-password "$WRONG_PASSWORD" "$CERTS/ca.pem" $((PORT + 11)) \
    'authenticat' 'sasl'

step "(c) a CA that did not sign the broker's certificate"
check_refused "(c) untrusted CA" untrusted-ca "$SCRAM_PASSWORD" "$CERTS/rogue-ca.pem" $((PORT + 12)) \
    'certificate' 'verif'

step "no password in kanary's logs"
leaks=$(grep -l -F -e "$SCRAM_PASSWORD" -e "$WRONG_PASSWORD" "$WORK"/simulate.log "$WORK"/detect-*.log || true)
if [[ -n $leaks ]]; then
    fail "a SCRAM password appears in: $(echo "$leaks" | tr '\n' ' ')"
else
    pass "no SCRAM password in simulate's and detect's logs"
fi

# --- Summary -----------------------------------------------------------------------------------
step "summary"
printf '%s\n' "${results[@]}"
nfail=$(printf '%s\n' "${results[@]}" | grep -c '^FAIL' || true)
printf '%s checks, %s failed; logs in %s\n' "${#results[@]}" "$nfail" "$WORK"
((nfail == 0)) || exit 1
echo "tls_test.sh: all checks passed ($((SECONDS - started)) s)"
