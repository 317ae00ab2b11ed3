#!/usr/bin/env bash
# kafka.sh — a throwaway single-node Apache Kafka broker (KRaft mode) for kanary's tests and
# local development. No Kafka tarball and no docker: the jars pinned in scripts/kafka/pom.xml
# are fetched once with Maven into a cache and run with plain `java -cp`.
#
# Usage:
#   scripts/kafka.sh start            fetch jars (if not cached), format storage, start, wait
#   scripts/kafka.sh stop             TERM, then KILL after KAFKA_STOP_TIMEOUT s (idempotent)
#   scripts/kafka.sh status           exit 0 iff the broker runs and answers
#   scripts/kafka.sh topics ARGS...   kafka-topics (org.apache.kafka.tools.TopicCommand)
#                                     with --bootstrap-server added
#   scripts/kafka.sh run CLASS ARGS...  any class on the Kafka classpath, e.g.
#                                     org.apache.kafka.tools.ConsoleProducer
#   scripts/kafka.sh fetch            only fetch the jars
#
# Environment:
#   KAFKA_PORT             broker listener on 127.0.0.1 (default 9092)
#   KAFKA_CONTROLLER_PORT  KRaft controller listener (default KAFKA_PORT + 1)
#   KAFKA_DATA             data dir: config, log dirs, broker log, pid file
#                          (default <repo>/target/kafka-data); wiped on every start
#   KAFKA_FRESH            1 (default): wipe KAFKA_DATA on start; 0: keep topics and offsets
#                          from the previous run (storage is formatted only once)
#   KANARY_CACHE           jar cache root (default $HOME/.cache/kanary); jars go to
#                          $KANARY_CACHE/kafka-<version>/libs
#   KAFKA_VERSION          override the version pinned in scripts/kafka/pom.xml
#   KAFKA_START_TIMEOUT    seconds to wait for the broker to answer (default 60)
#   KAFKA_STOP_TIMEOUT     seconds between TERM and KILL (default 30)
#   KAFKA_HEAP_OPTS        broker heap (default "-Xms256m -Xmx512m")
#   KAFKA_EXTRA_CONFIG     extra server.properties lines (newline-separated key=value)
#   KAFKA_TOOL_OPTS        JVM options for tools (topics/run)
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd -P)
POM="$SCRIPT_DIR/kafka/pom.xml"

log() { printf 'kafka.sh: %s\n' "$*" >&2; }
die() { printf 'kafka.sh: error: %s\n' "$*" >&2; exit 1; }
# shellcheck source-path=SCRIPTDIR source=lib/stop.sh
. "$SCRIPT_DIR/lib/stop.sh"

KAFKA_PORT=${KAFKA_PORT:-9092}
[[ $KAFKA_PORT =~ ^[0-9]+$ ]] || die "KAFKA_PORT must be a port number, got '$KAFKA_PORT'"
KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}
KAFKA_DATA=${KAFKA_DATA:-$REPO_ROOT/target/kafka-data}
KAFKA_FRESH=${KAFKA_FRESH:-1}
KANARY_CACHE=${KANARY_CACHE:-${HOME:-/tmp}/.cache/kanary}
KAFKA_START_TIMEOUT=${KAFKA_START_TIMEOUT:-60}
KAFKA_STOP_TIMEOUT=${KAFKA_STOP_TIMEOUT:-30}
KAFKA_HEAP_OPTS=${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}
KAFKA_TOOL_OPTS=${KAFKA_TOOL_OPTS:--Xms32m -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1}
KAFKA_EXTRA_CONFIG=${KAFKA_EXTRA_CONFIG:-}

BOOTSTRAP="127.0.0.1:$KAFKA_PORT"
# Marks a data dir as ours, so that a mistaken KAFKA_DATA (say, $HOME) is never wiped.
MARKER=".kanary-kafka-data"
PID_FILE="$KAFKA_DATA/kafka.pid"
LOG_FILE="$KAFKA_DATA/kafka.log"
SERVER_PROPS="$KAFKA_DATA/server.properties"

show_log_tail() {
    if [[ -f $LOG_FILE ]]; then
        printf 'kafka.sh: last 40 lines of %s:\n' "$LOG_FILE" >&2
        tail -n 40 "$LOG_FILE" | sed 's/^/  | /' >&2
    fi
}

for v in KAFKA_PORT KAFKA_CONTROLLER_PORT KAFKA_START_TIMEOUT KAFKA_STOP_TIMEOUT; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a number, got '${!v}'"
done
[[ $KAFKA_PORT != "$KAFKA_CONTROLLER_PORT" ]] || die "KAFKA_PORT and KAFKA_CONTROLLER_PORT must differ"

[[ -f $POM ]] || die "missing $POM"
if [[ -z ${KAFKA_VERSION:-} ]]; then
    KAFKA_VERSION=$(sed -n 's:.*<kafka\.version>\([^<]*\)</kafka\.version>.*:\1:p' "$POM" | sed -n 1p)
    [[ -n $KAFKA_VERSION ]] || die "cannot read <kafka.version> from $POM"
fi
KAFKA_HOME="$KANARY_CACHE/kafka-$KAFKA_VERSION"
LIBS="$KAFKA_HOME/libs"
TOOLS_LOG4J="$KAFKA_HOME/tools-log4j2.properties"

# ---------------------------------------------------------------------------------------------
# Jars

# Changes whenever the pom or the version changes, so an edited pom refreshes the cache.
jar_stamp() {
    printf '%s %s\n' "$KAFKA_VERSION" "$(sha256sum <"$POM" | cut -d' ' -f1)"
}

jars_ready() {
    [[ -f $LIBS/.kanary-stamp && -f $LIBS/kafka_2.13-$KAFKA_VERSION.jar ]] &&
        [[ $(cat "$LIBS/.kanary-stamp") == "$(jar_stamp)" ]]
}

write_tools_log4j() {
    # Tools log warnings and errors to stderr only, like Kafka's own tools-log4j2.yaml.
    [[ -f $TOOLS_LOG4J ]] && return 0
    local tmp
    tmp=$(mktemp "$TOOLS_LOG4J.XXXXXX")
    cat >"$tmp" <<'EOF'
status = warn
name = kanary-kafka-tools
appender.err.type = Console
appender.err.name = STDERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.err.ref = STDERR
EOF
    mv -f "$tmp" "$TOOLS_LOG4J"
}

fetch_jars() {
    if ! jars_ready; then
        command -v mvn >/dev/null 2>&1 || die "mvn (Maven) is needed to fetch the Kafka jars; install it (apt-get install -y maven)"
        mkdir -p "$KAFKA_HOME" || die "cannot create $KAFKA_HOME"
        # Serialise concurrent fetches into the same cache.
        exec 9>"$KAFKA_HOME/.fetch.lock"
        flock 9 || die "cannot lock $KAFKA_HOME/.fetch.lock"
        if ! jars_ready; then
            local tmp mvn_log started
            started=$SECONDS
            tmp=$(mktemp -d "$KAFKA_HOME/libs.tmp.XXXXXX")
            mvn_log="$KAFKA_HOME/fetch.log"
            log "fetching Kafka $KAFKA_VERSION jars with Maven into $LIBS (once) ..."
            if ! mvn -B -q -f "$POM" -Dkafka.version="$KAFKA_VERSION" \
                dependency:copy-dependencies -DincludeScope=runtime \
                -DoutputDirectory="$tmp" </dev/null >"$mvn_log" 2>&1; then
                rm -rf "$tmp"
                tail -n 30 "$mvn_log" | sed 's/^/  | /' >&2
                die "Maven could not fetch Kafka $KAFKA_VERSION (full log: $mvn_log)"
            fi
            [[ -f $tmp/kafka_2.13-$KAFKA_VERSION.jar ]] || {
                rm -rf "$tmp"
                die "Maven finished but kafka_2.13-$KAFKA_VERSION.jar is missing (log: $mvn_log)"
            }
            jar_stamp >"$tmp/.kanary-stamp"
            rm -rf "$LIBS"
            mv "$tmp" "$LIBS"
            log "fetched $(find "$LIBS" -name '*.jar' | wc -l) jars in $((SECONDS - started)) s"
        fi
        exec 9>&-
    fi
    write_tools_log4j
}

check_java() {
    command -v java >/dev/null 2>&1 || die "java is needed (Kafka $KAFKA_VERSION needs Java 17+)"
    local spec
    spec=$(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java\.specification\.version = //p')
    if ! [[ $spec =~ ^[0-9]+$ ]] || ((spec < 17)); then
        die "Kafka $KAFKA_VERSION needs Java 17 or newer; 'java' is version ${spec:-unknown}"
    fi
}

# Runs a Kafka tool class in the foreground. Word splitting of KAFKA_TOOL_OPTS is intended.
run_class() {
    local class=$1
    shift
    # shellcheck disable=SC2086
    java $KAFKA_TOOL_OPTS -Dlog4j2.configurationFile="$TOOLS_LOG4J" \
        -cp "$LIBS/*" "$class" "$@"
}

# ---------------------------------------------------------------------------------------------
# Process state

port_open() {
    # shellcheck disable=SC2016  # $1 is expanded by the inner bash
    timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null
}

# True if the process exists and is not a zombie.
pid_alive() {
    local state
    kill -0 "$1" 2>/dev/null || return 1
    state=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null || true)
    [[ -n $state && $state != Z ]]
}

# Prints the recorded pid if it is a live Kafka broker started by this script for this data
# dir; fails otherwise (no pid file, dead process, zombie, or a reused pid).
broker_pid() {
    [[ -f $PID_FILE ]] || return 1
    local pid cmdline
    pid=$(<"$PID_FILE")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    pid_alive "$pid" || return 1
    cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)
    [[ $cmdline == *kafka.Kafka*"$SERVER_PROPS"* ]] || return 1
    printf '%s\n' "$pid"
}

# True when the broker answers an admin request (lists topics) within a few seconds.
broker_answers() {
    port_open "$KAFKA_PORT" || return 1
    # shellcheck disable=SC2086  # word splitting of KAFKA_TOOL_OPTS is intended
    timeout 30 java $KAFKA_TOOL_OPTS -Dlog4j2.configurationFile="$TOOLS_LOG4J" -cp "$LIBS/*" \
        org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" \
        --command-config "$KAFKA_DATA/admin.properties" --list </dev/null >/dev/null 2>&1
}

wait_ready() {
    local pid=$1 deadline=$((SECONDS + KAFKA_START_TIMEOUT))
    while ((SECONDS < deadline)); do
        # Liveness by pid only: right after the fork, the child's command line is still the
        # script's own until it execs java.
        if ! pid_alive "$pid"; then
            show_log_tail
            rm -f "$PID_FILE"
            die "the Kafka broker (pid $pid) exited during startup; see $LOG_FILE"
        fi
        if port_open "$KAFKA_PORT" && broker_answers; then
            return 0
        fi
        sleep 1
    done
    show_log_tail
    log "stopping the unresponsive broker"
    stop_broker || true
    die "the Kafka broker did not answer on $BOOTSTRAP within ${KAFKA_START_TIMEOUT}s; see $LOG_FILE"
}

# ---------------------------------------------------------------------------------------------
# Data dir and configuration

prepare_data_dir() {
    if [[ -e $KAFKA_DATA && ! -d $KAFKA_DATA ]]; then
        die "KAFKA_DATA=$KAFKA_DATA exists and is not a directory"
    fi
    if [[ -d $KAFKA_DATA && ! -f $KAFKA_DATA/$MARKER ]] && [[ -n $(ls -A "$KAFKA_DATA") ]]; then
        die "KAFKA_DATA=$KAFKA_DATA is not empty and was not created by kafka.sh; refusing to wipe it"
    fi
    if [[ $KAFKA_FRESH == 1 ]]; then
        rm -rf "$KAFKA_DATA"
    fi
    mkdir -p "$KAFKA_DATA/logs" || die "cannot create $KAFKA_DATA"
    touch "$KAFKA_DATA/$MARKER"
}

write_configs() {
    cat >"$SERVER_PROPS" <<EOF
# Written by scripts/kafka.sh: a single-node KRaft broker for tests. Do not edit; it is
# rewritten on every start.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$KAFKA_DATA/logs
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
delete.topic.enable=true
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
log.retention.hours=24
EOF
    if [[ -n $KAFKA_EXTRA_CONFIG ]]; then
        printf '# KAFKA_EXTRA_CONFIG\n%s\n' "$KAFKA_EXTRA_CONFIG" >>"$SERVER_PROPS"
    fi

    # The JVM's stdout and stderr go to kafka.log; log4j writes there through the console.
    cat >"$KAFKA_DATA/log4j2.properties" <<'EOF'
status = warn
name = kanary-kafka-broker
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.request.additivity = false
logger.request.appenderRef.out.ref = STDOUT
EOF

    # Short client timeouts for readiness and status probes.
    cat >"$KAFKA_DATA/admin.properties" <<'EOF'
request.timeout.ms=5000
default.api.timeout.ms=10000
EOF
}

new_cluster_id() {
    # A Kafka Uuid: 16 random bytes, URL-safe base64 without padding; like Kafka's own
    # generator, avoid a leading '-' (it would be read as an option).
    local id
    while :; do
        id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
        [[ $id == -* ]] || break
    done
    printf '%s\n' "$id"
}

format_storage() {
    if [[ -f $KAFKA_DATA/logs/meta.properties ]]; then
        log "keeping existing storage in $KAFKA_DATA/logs (KAFKA_FRESH=0)"
        return 0
    fi
    local cluster_id out
    cluster_id=$(new_cluster_id)
    # `kafka-storage format`: in Kafka 4.x still the Scala kafka.tools.StorageTool in core.
    if ! out=$(run_class kafka.tools.StorageTool format --config "$SERVER_PROPS" \
        --cluster-id "$cluster_id" </dev/null 2>&1); then
        printf '%s\n' "$out" | sed 's/^/  | /' >&2
        die "formatting Kafka storage in $KAFKA_DATA/logs failed"
    fi
}

# ---------------------------------------------------------------------------------------------
# Commands

# Serialises start/stop for one data dir (parallel test runs may all call `start`). The lock
# file sits next to the data dir, which `start` wipes.
lock_data_dir() {
    mkdir -p "$(dirname "$KAFKA_DATA")" || die "cannot create $(dirname "$KAFKA_DATA")"
    exec 8>"$KAFKA_DATA.lock"
    flock 8 || die "cannot lock $KAFKA_DATA.lock"
}

cmd_start() {
    local pid started=$SECONDS
    lock_data_dir
    if pid=$(broker_pid); then
        fetch_jars
        if broker_answers; then
            log "already running (pid $pid) on $BOOTSTRAP"
            return 0
        fi
        log "already running (pid $pid) but not answering yet; waiting"
        wait_ready "$pid"
        log "Kafka ready on $BOOTSTRAP (pid $pid)"
        return 0
    fi
    rm -f "$PID_FILE"
    local p
    for p in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
        if port_open "$p"; then
            die "port 127.0.0.1:$p is already in use by another process (set KAFKA_PORT / KAFKA_CONTROLLER_PORT)"
        fi
    done

    check_java
    fetch_jars
    prepare_data_dir
    write_configs
    format_storage

    # shellcheck disable=SC2086  # word splitting of KAFKA_HEAP_OPTS / KAFKA_JVM_OPTS is intended
    setsid java $KAFKA_HEAP_OPTS -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
        -Djava.awt.headless=true ${KAFKA_JVM_OPTS:-} \
        -Dlog4j2.configurationFile="$KAFKA_DATA/log4j2.properties" \
        -Dkafka.logs.dir="$KAFKA_DATA" \
        -cp "$LIBS/*" kafka.Kafka "$SERVER_PROPS" </dev/null >>"$LOG_FILE" 2>&1 8>&- 9>&- &
    pid=$!
    printf '%s\n' "$pid" >"$PID_FILE"
    log "started Kafka $KAFKA_VERSION (pid $pid), waiting for it to answer on $BOOTSTRAP ..."
    wait_ready "$pid"
    log "Kafka ready on $BOOTSTRAP (pid $pid, data $KAFKA_DATA, log $LOG_FILE) after $((SECONDS - started)) s"
}

stop_broker() {
    local pid
    if ! pid=$(broker_pid); then
        if [[ -f $PID_FILE ]]; then
            log "removing stale pid file $PID_FILE"
            rm -f "$PID_FILE"
        else
            log "not running"
        fi
        return 0
    fi
    terminate broker "$pid" "$KAFKA_STOP_TIMEOUT" broker_pid
    rm -f "$PID_FILE"
    log "stopped (pid $pid)"
}

cmd_status() {
    local pid
    if ! pid=$(broker_pid); then
        log "not running (no live broker for $PID_FILE)"
        return 1
    fi
    jars_ready || die "broker pid $pid is alive but the jars in $LIBS are missing"
    write_tools_log4j
    if broker_answers; then
        log "running (pid $pid) and answering on $BOOTSTRAP"
        return 0
    fi
    log "running (pid $pid) but not answering on $BOOTSTRAP"
    return 1
}

cmd_topics() {
    fetch_jars
    port_open "$KAFKA_PORT" ||
        die "no broker listening on $BOOTSTRAP (start one with: scripts/kafka.sh start)"
    run_class org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" "$@"
}

cmd_run() {
    (($# >= 1)) || die "usage: kafka.sh run CLASS [ARGS...]"
    fetch_jars
    run_class "$@"
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
    start) cmd_start ;;
    stop)
        lock_data_dir
        stop_broker
        ;;
    status) cmd_status ;;
    topics) cmd_topics "$@" ;;
    run) cmd_run "$@" ;;
    fetch) check_java && fetch_jars && log "jars in $LIBS" ;;
    -h | --help | help) usage ;;
    *)
        usage
        die "unknown command '$cmd'"
        ;;
    esac
}

main "$@"
