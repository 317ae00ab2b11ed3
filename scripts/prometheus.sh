#!/usr/bin/env bash
# prometheus.sh — a throwaway Prometheus server for kanary's tests and local development,
# using Debian's `prometheus` package (installed with apt-get when missing).
#
# Usage:
#   scripts/prometheus.sh start CONFIG   check CONFIG with promtool, start Prometheus on
#                                        127.0.0.1:PROM_PORT with a fresh TSDB, wait for /-/ready
#   scripts/prometheus.sh stop           TERM, then KILL after PROM_STOP_TIMEOUT s (idempotent)
#   scripts/prometheus.sh status         exit 0 iff the server runs and is ready
#   scripts/prometheus.sh query 'EXPR'   instant query through the HTTP API; prints the JSON
#                                        and fails unless its status is "success"
#
# Environment:
#   PROM_PORT            HTTP port on 127.0.0.1 (default 9090)
#   PROM_DATA            state dir: pid file, log, TSDB (default <repo>/target/prometheus);
#                        the TSDB is wiped on every start
#   PROM_START_TIMEOUT   seconds to wait for /-/ready (default 60)
#   PROM_STOP_TIMEOUT    seconds between TERM and KILL (default 20)
#   PROM_ARGS            extra prometheus flags, e.g. --web.enable-remote-write-receiver
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd -P)

log() { printf 'prometheus.sh: %s\n' "$*" >&2; }
die() { printf 'prometheus.sh: error: %s\n' "$*" >&2; exit 1; }
# shellcheck source-path=SCRIPTDIR source=lib/stop.sh
. "$SCRIPT_DIR/lib/stop.sh"

PROM_PORT=${PROM_PORT:-9090}
PROM_DATA=${PROM_DATA:-$REPO_ROOT/target/prometheus}
PROM_START_TIMEOUT=${PROM_START_TIMEOUT:-60}
PROM_STOP_TIMEOUT=${PROM_STOP_TIMEOUT:-20}
PROM_ARGS=${PROM_ARGS:-}
for v in PROM_PORT PROM_START_TIMEOUT PROM_STOP_TIMEOUT; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a number, got '${!v}'"
done

BASE_URL="http://127.0.0.1:$PROM_PORT"
PID_FILE="$PROM_DATA/prometheus.pid"
LOG_FILE="$PROM_DATA/prometheus.log"
CONFIG_RECORD="$PROM_DATA/config.path"
TSDB="$PROM_DATA/tsdb"
MARKER=".kanary-prometheus-data"

show_log_tail() {
    if [[ -f $LOG_FILE ]]; then
        printf 'prometheus.sh: last 30 lines of %s:\n' "$LOG_FILE" >&2
        tail -n 30 "$LOG_FILE" | sed 's/^/  | /' >&2
    fi
}

need_curl() {
    command -v curl >/dev/null 2>&1 || die "curl is needed (apt-get install -y curl)"
}

# Installs Debian's prometheus package when prometheus or promtool is missing.
ensure_installed() {
    if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 ||
        die "prometheus/promtool not found and apt-get is unavailable; install Prometheus 2.x"
    local -a as_root=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null 2>&1 ||
            die "prometheus is not installed and installing it needs root (no sudo found)"
        as_root=(sudo -n)
    fi
    local -a install=("${as_root[@]}" env DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q -o DPkg::Lock::Timeout=300 prometheus)
    log "prometheus/promtool missing; running apt-get install -y prometheus ..."
    if ! "${install[@]}" </dev/null >&2; then
        log "install failed; running apt-get update and retrying"
        "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
            apt-get update -q -o DPkg::Lock::Timeout=300 </dev/null >&2 ||
            die "apt-get update failed"
        "${install[@]}" </dev/null >&2 || die "apt-get install -y prometheus failed"
    fi
    if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
        die "the prometheus package was installed but prometheus/promtool are not on PATH"
    fi
}

port_open() {
    # shellcheck disable=SC2016  # $1 is expanded by the inner bash
    timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null
}

pid_alive() {
    local state
    kill -0 "$1" 2>/dev/null || return 1
    state=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null || true)
    [[ -n $state && $state != Z ]]
}

# Prints the recorded pid if it is a live Prometheus started by this script for PROM_DATA.
server_pid() {
    [[ -f $PID_FILE ]] || return 1
    local pid cmdline
    pid=$(<"$PID_FILE")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    pid_alive "$pid" || return 1
    cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)
    [[ $cmdline == *prometheus*"--storage.tsdb.path=$TSDB"* ]] || return 1
    printf '%s\n' "$pid"
}

is_ready() {
    curl -fsS -o /dev/null --max-time 3 "$BASE_URL/-/ready" 2>/dev/null
}

lock_state_dir() {
    mkdir -p "$PROM_DATA" || die "cannot create $PROM_DATA"
    exec 8>"$PROM_DATA/.lock"
    flock 8 || die "cannot lock $PROM_DATA/.lock"
}

stop_server() {
    local pid
    if ! pid=$(server_pid); then
        if [[ -f $PID_FILE ]]; then
            log "removing stale pid file $PID_FILE"
            rm -f "$PID_FILE"
        else
            log "not running"
        fi
        return 0
    fi
    terminate prometheus "$pid" "$PROM_STOP_TIMEOUT" server_pid
    rm -f "$PID_FILE"
    rm -rf "$TSDB"
    log "stopped (pid $pid)"
}

cmd_start() {
    (($# == 1)) || die "usage: prometheus.sh start CONFIG"
    [[ -f $1 ]] || die "config file '$1' not found"
    local config pid started=$SECONDS
    config=$(cd "$(dirname "$1")" && pwd -P)/$(basename "$1")

    ensure_installed
    need_curl
    if [[ -d $PROM_DATA && ! -f $PROM_DATA/$MARKER ]] && [[ -n $(ls -A "$PROM_DATA") ]]; then
        die "PROM_DATA=$PROM_DATA is not empty and was not created by prometheus.sh; refusing to use it"
    fi
    lock_state_dir
    touch "$PROM_DATA/$MARKER"

    if pid=$(server_pid); then
        if [[ $(cat "$CONFIG_RECORD" 2>/dev/null || true) == "$config" ]]; then
            if is_ready; then
                log "already running (pid $pid) on $BASE_URL with $config"
                return 0
            fi
        else
            log "running (pid $pid) with another config; restarting with $config"
        fi
        stop_server
    fi
    rm -f "$PID_FILE"

    local out
    if ! out=$(promtool check config "$config" 2>&1); then
        printf '%s\n' "$out" | sed 's/^/  | /' >&2
        die "promtool check config $config failed"
    fi
    if port_open "$PROM_PORT"; then
        die "port 127.0.0.1:$PROM_PORT is already in use by another process (set PROM_PORT; a system prometheus service may be running)"
    fi

    rm -rf "$TSDB"
    mkdir -p "$TSDB"
    printf '%s\n' "$config" >"$CONFIG_RECORD"
    : >"$LOG_FILE"
    # shellcheck disable=SC2086  # word splitting of PROM_ARGS is intended
    setsid prometheus --config.file="$config" \
        --web.listen-address="127.0.0.1:$PROM_PORT" \
        --storage.tsdb.path="$TSDB" $PROM_ARGS \
        </dev/null >>"$LOG_FILE" 2>&1 8>&- &
    pid=$!
    printf '%s\n' "$pid" >"$PID_FILE"
    log "started prometheus (pid $pid), waiting for $BASE_URL/-/ready ..."

    local deadline=$((SECONDS + PROM_START_TIMEOUT))
    while ! is_ready; do
        if ! pid_alive "$pid"; then
            show_log_tail
            rm -f "$PID_FILE"
            die "prometheus (pid $pid) exited during startup; see $LOG_FILE"
        fi
        if ((SECONDS >= deadline)); then
            show_log_tail
            stop_server || true
            die "prometheus was not ready on $BASE_URL within ${PROM_START_TIMEOUT}s; see $LOG_FILE"
        fi
        sleep 0.3
    done
    log "prometheus ready on $BASE_URL (pid $pid, config $config, log $LOG_FILE) after $((SECONDS - started)) s"
}

cmd_status() {
    local pid
    if ! pid=$(server_pid); then
        log "not running (no live prometheus for $PID_FILE)"
        return 1
    fi
    need_curl
    if is_ready; then
        log "running (pid $pid) and ready on $BASE_URL"
        return 0
    fi
    log "running (pid $pid) but not ready on $BASE_URL"
    return 1
}

cmd_query() {
    (($# == 1)) || die "usage: prometheus.sh query 'EXPR'"
    need_curl
    local body
    if ! body=$(curl -sS --fail-with-body --max-time 30 --get \
        --data-urlencode "query=$1" "$BASE_URL/api/v1/query" 2>&1); then
        printf '%s\n' "$body" >&2
        die "query failed: $1"
    fi
    printf '%s\n' "$body"
    [[ $body == *'"status":"success"'* ]] || die "query did not succeed: $1"
}

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
}

main() {
    (($# >= 1)) || {
        usage
        exit 2
    }
    local cmd=$1
    shift
    case $cmd in
    start) cmd_start "$@" ;;
    stop)
        # An optional CONFIG argument is accepted and ignored, for symmetry with start.
        (($# <= 1)) || die "usage: prometheus.sh stop"
        lock_state_dir
        stop_server
        ;;
    status) cmd_status ;;
    query) cmd_query "$@" ;;
    -h | --help | help) usage ;;
    *)
        usage
        die "unknown command '$cmd'"
        ;;
    esac
}

main "$@"
