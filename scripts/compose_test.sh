#!/usr/bin/env bash
# compose_test.sh — runs the compose stack (deploy/compose/docker-compose.yml) for real and
# checks it end to end, then removes it (`down -v`), whatever happened. After `compose up`
# (every service but grafana) it waits until kafka, both detectors and prometheus are healthy,
# the producer runs and kafka-init has exited 0, and checks:
#   1. the published ports answer: each detector's /healthz and /metrics, Kafka's host listener
#   2. Prometheus (its HTTP API on the host port) scrapes both detectors: up == 1 for
#      compose_service detector-if and detector-ae
#   3. events flow producer -> Kafka -> detectors -> Prometheus: detector_events_total of
#      detector-if (model if) and of detector-ae (model ae) is above 0 and increases
#   4. the alert rules are loaded: /api/v1/rules has every group of
#      deploy/prometheus/rules/kanary.rules.yml with all its rules, each evaluated (health ok)
#
#   scripts/compose_test.sh            build what is missing, run the stack, check, tear down
#   scripts/compose_test.sh --images   only build the images (base images and kanary:local)
#
# No image is pulled from a registry. The base images that the Dockerfile and the compose file
# name are built here under those names when missing (scripts/images/README.md):
#   debian:bookworm-slim      debootstrap (minbase) rootfs, `docker import`ed
#   rust:1-bookworm           that base + the host's stable Rust toolchain
#   apache/kafka:<pom.xml>    that base + OpenJDK 17 + the jars of scripts/kafka/pom.xml
#   prom/prometheus:v<x.y.z>  that base + Debian's prometheus package (PROMETHEUS_VERSION=vx.y.z)
# Each is rebuilt only when the hash of its inputs changes. Then kanary:local is built with the
# repository's Dockerfile (BuildKit; cargo's registry and target dir are cache mounts, so a
# rebuild compiles only what changed). Grafana is left out: its image cannot be built here.
#
# If no Docker daemon answers, dockerd is started (log in target/compose-test/dockerd.log) and
# stopped again at the end. A missing tool or service is an error, never a skip.
#
# Environment:
#   KANARY_COMPOSE_PROJECT    compose project name (default kanary-compose-test)
#   KANARY_KAFKA_HOST_PORT    host ports on 127.0.0.1 (defaults 23092, 23898, 23899, 23090;
#   KANARY_DETECTOR_IF_PORT   the compose file's own defaults are 29092, 9898, 9899, 9090,
#   KANARY_DETECTOR_AE_PORT   which a developer's stack may be using)
#   KANARY_PROMETHEUS_PORT    (below 32768: outside Linux's ephemeral port range, so a
#                             client connection of an earlier test cannot hold one of them)
#   KANARY_COMPOSE_TIMEOUT    seconds to wait for each stage of the checks (default 180)
#   KANARY_REBUILD_IMAGES=1   rebuild the base images even if their inputs did not change
#   KANARY_CACHE              cache root of scripts/kafka.sh (Kafka jars), default ~/.cache/kanary
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$ROOT"
IMAGES="$ROOT/scripts/images"
COMPOSE_FILE="$ROOT/deploy/compose/docker-compose.yml"
RULES_FILE="$ROOT/deploy/prometheus/rules/kanary.rules.yml"
WORK="$ROOT/target/compose-test"
LOGS="$ROOT/target/test-output/compose"
LABEL=dev.kanary.image-inputs
# Bump when the way the Debian rootfs is made changes (it has no recipe file to hash).
DEBIAN_RECIPE=1

PROJECT=${KANARY_COMPOSE_PROJECT:-kanary-compose-test}
export KANARY_KAFKA_HOST_PORT=${KANARY_KAFKA_HOST_PORT:-23092}
export KANARY_DETECTOR_IF_PORT=${KANARY_DETECTOR_IF_PORT:-23898}
export KANARY_DETECTOR_AE_PORT=${KANARY_DETECTOR_AE_PORT:-23899}
export KANARY_PROMETHEUS_PORT=${KANARY_PROMETHEUS_PORT:-23090}
TIMEOUT=${KANARY_COMPOSE_TIMEOUT:-180}
for v in KANARY_KAFKA_HOST_PORT KANARY_DETECTOR_IF_PORT KANARY_DETECTOR_AE_PORT \
    KANARY_PROMETHEUS_PORT TIMEOUT; do
    [[ ${!v} =~ ^[0-9]+$ ]] || { echo "compose_test.sh: $v must be a number, got '${!v}'" >&2; exit 2; }
done
PROM_URL="http://127.0.0.1:$KANARY_PROMETHEUS_PORT"
# Every service but grafana; naming them keeps grafana (which depends on prometheus) out.
SERVICES=(kafka kafka-init producer detector-if detector-ae prometheus)

MODE=stack
case ${1:-} in
"") ;;
--images) MODE=images ;;
-h | --help)
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
    exit 0
    ;;
*)
    echo "compose_test.sh: unknown argument '$1' (see --help)" >&2
    exit 2
    ;;
esac

started=$SECONDS
step() { printf '\n==> %s (%ss)\n' "$*" "$((SECONDS - started))"; }
log() { printf 'compose_test.sh: %s\n' "$*"; }
die() {
    printf '\ncompose_test.sh: FAILED: %s\n' "$*" >&2
    exit 1
}
mkdir -p "$WORK" "$LOGS"

# --------------------------------------------------------------------------- cleanup
DOCKERD_PID=""
STACK_UP=0
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    if ((STACK_UP)); then
        compose ps >"$LOGS/ps.txt" 2>&1
        compose logs --no-color >"$LOGS/compose.log" 2>&1
        if ((rc != 0)); then
            printf '\ncompose_test.sh: the stack at the time of the failure:\n' >&2
            sed 's/^/  | /' "$LOGS/ps.txt" >&2
            local svc
            for svc in "${SERVICES[@]}"; do
                printf 'compose_test.sh: last lines of %s:\n' "$svc" >&2
                compose logs --no-color --tail 25 "$svc" 2>&1 | sed 's/^/  | /' >&2
            done
            printf 'compose_test.sh: full logs: %s\n' "$LOGS/compose.log" >&2
        fi
        log "removing the stack (down -v)"
        compose down -v --remove-orphans >"$LOGS/down.log" 2>&1 ||
            { cat "$LOGS/down.log" >&2; rc=1; echo "compose_test.sh: FAILED: compose down -v" >&2; }
    fi
    if [[ -n $DOCKERD_PID ]]; then
        log "stopping the dockerd this script started (pid $DOCKERD_PID)"
        kill -TERM "$DOCKERD_PID" 2>/dev/null
        local deadline=$((SECONDS + 30))
        while kill -0 "$DOCKERD_PID" 2>/dev/null && ((SECONDS < deadline)); do
            sleep 0.5
        done
        if kill -0 "$DOCKERD_PID" 2>/dev/null; then
            log "dockerd (pid $DOCKERD_PID) still running after 30 s; sending KILL"
            kill -KILL "$DOCKERD_PID" 2>/dev/null
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --------------------------------------------------------------------------- tools
step "tools"
missing=()
command -v docker >/dev/null || missing+=(docker.io)
command -v dockerd >/dev/null || missing+=(docker.io)
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || missing+=(docker-compose)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v mvn >/dev/null || missing+=(maven)
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3)
if ((${#missing[@]})); then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    ((EUID == 0)) || die "need Debian package(s) ${missing[*]}: run as root or install them first"
    command -v apt-get >/dev/null || die "need ${missing[*]}, and apt-get is not available"
    log "installing ${missing[*]} with apt-get"
    apt=(apt-get -o DPkg::Lock::Timeout=600 -y -q --no-install-recommends)
    if ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" install "${missing[@]}" </dev/null >"$LOGS/apt.log" 2>&1; then
        apt-get -o DPkg::Lock::Timeout=600 -q update </dev/null >>"$LOGS/apt.log" 2>&1 ||
            { tail -n 20 "$LOGS/apt.log" >&2; die "apt-get update failed"; }
        DEBIAN_FRONTEND=noninteractive "${apt[@]}" install "${missing[@]}" </dev/null >>"$LOGS/apt.log" 2>&1 ||
            { tail -n 30 "$LOGS/apt.log" >&2; die "apt-get install ${missing[*]} failed"; }
    fi
fi
if command -v docker-compose >/dev/null; then
    COMPOSE=(docker-compose)
else
    COMPOSE=(docker compose)
fi
compose() { "${COMPOSE[@]}" -p "$PROJECT" -f "$COMPOSE_FILE" "$@"; }
log "compose client: ${COMPOSE[*]} ($("${COMPOSE[@]}" version --short 2>/dev/null || echo '?'))"

# --------------------------------------------------------------------------- Docker daemon
step "Docker daemon"
if docker info >/dev/null 2>&1; then
    log "a Docker daemon answers ($(docker version --format '{{.Server.Version}}' 2>/dev/null))"
else
    ((EUID == 0)) || die "no Docker daemon answers (docker info failed), and starting dockerd needs root"
    log "no Docker daemon answers (docker info failed): starting dockerd myself, log $WORK/dockerd.log"
    setsid dockerd </dev/null >"$WORK/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    deadline=$((SECONDS + 60))
    until docker info >/dev/null 2>&1; do
        if ! kill -0 "$DOCKERD_PID" 2>/dev/null; then
            DOCKERD_PID=""
            tail -n 30 "$WORK/dockerd.log" | sed 's/^/  | /' >&2
            die "dockerd exited during startup (log: $WORK/dockerd.log)"
        fi
        ((SECONDS < deadline)) || {
            tail -n 30 "$WORK/dockerd.log" | sed 's/^/  | /' >&2
            die "dockerd (pid $DOCKERD_PID) did not answer within 60 s (log: $WORK/dockerd.log)"
        }
        sleep 0.5
    done
    log "dockerd $(docker version --format '{{.Server.Version}}') is up (pid $DOCKERD_PID); it is stopped again at the end"
fi

# A docker client that builds with BuildKit (the Dockerfile's cache mounts need it): one with
# the buildx plugin, or a client older than 23 (its built-in BuildKit, DOCKER_BUILDKIT=1).
# Debian's docker.io 20.10 is the latter; a newer `docker` without buildx may come first on PATH.
BUILD=()
if docker buildx version >/dev/null 2>&1; then
    BUILD=(docker build)
else
    while IFS= read -r client; do
        v=$("$client" version --format '{{.Client.Version}}' 2>/dev/null || true)
        if [[ $v =~ ^([0-9]+)\. ]] && ((BASH_REMATCH[1] < 23)); then
            BUILD=(env DOCKER_BUILDKIT=1 "$client" build)
            break
        fi
    done < <(type -ap docker)
fi
((${#BUILD[@]})) ||
    die "no docker client builds with BuildKit here: install the buildx plugin, or Debian's docker.io (client 20.10)"
log "image builds: ${BUILD[*]} (BuildKit)"

# --------------------------------------------------------------------------- base images
# label_of IMAGE: our input hash of IMAGE; "none" if it exists without one; "" if absent.
label_of() {
    local out
    out=$(docker image inspect -f "{{ index .Config.Labels \"$LABEL\" }}" "$1" 2>/dev/null) || return 0
    [[ -n $out && $out != "<no value>" ]] && printf '%s\n' "$out" || printf 'none\n'
}
image_id() { docker image inspect -f '{{.Id}}' "$1"; }
hash_files() { # hash_files DIR: paths, modes and contents of the files under DIR
    (cd "$1" && find . -type f -printf '%m %p\n' | LC_ALL=C sort && find . -type f -print0 |
        LC_ALL=C sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-64
}
# needs_build NAME KEY: false (and says why) when NAME is ours with KEY, or is not ours at all.
needs_build() {
    local name=$1 key=$2 have
    have=$(label_of "$name")
    if [[ ${KANARY_REBUILD_IMAGES:-0} == 1 && $have != none ]]; then
        log "$name: rebuilding (KANARY_REBUILD_IMAGES=1)"
        return 0
    fi
    case $have in
    "$key") log "$name: up to date (inputs ${key:0:12})" && return 1 ;;
    none) log "$name: present and not built by this script (pulled?); used as it is" && return 1 ;;
    "") log "$name: missing; building it" ;;
    *) log "$name: inputs changed (${have:0:12} -> ${key:0:12}); rebuilding it" ;;
    esac
    return 0
}
# drop_old ID: removes a replaced image if nothing refers to it any more.
drop_old() {
    if [[ -n $1 ]]; then
        docker rmi "$1" >/dev/null 2>&1 || true
    fi
}
build_tar() { # build_tar NAME KEY LOGNAME [build args...] < tar context
    local name=$1 key=$2 logf="$LOGS/build-$3.log" t0=$SECONDS old
    shift 3
    old=$(image_id "$name" 2>/dev/null || true)
    if ! "${BUILD[@]}" --progress=plain --label "$LABEL=$key" -t "$name" "$@" - >"$logf" 2>&1; then
        tail -n 40 "$logf" | sed 's/^/  | /' >&2
        die "building $name failed (log: $logf)"
    fi
    [[ $old == "$(image_id "$name")" ]] || drop_old "$old"
    log "$name: built in $((SECONDS - t0)) s (log: $logf)"
}

step "base images (scripts/images)"
# Names as the Dockerfile spells them (ARG defaults), so the two cannot drift apart.
arg_default() { sed -n "s/^ARG $1=\\([^[:space:]]*\\)\$/\\1/p" "$ROOT/Dockerfile" | sed -n 1p; }
RUST_VERSION=$(arg_default RUST_VERSION)
SUITE=$(arg_default DEBIAN_RELEASE)
[[ -n $RUST_VERSION && -n $SUITE ]] || die "cannot read ARG RUST_VERSION / DEBIAN_RELEASE defaults from the Dockerfile"
# shellcheck disable=SC2016  # the Dockerfile's own ${...}, matched literally
if ! grep -q '^FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder' Dockerfile ||
    ! grep -q '^FROM debian:${DEBIAN_RELEASE}-slim AS runtime' Dockerfile; then
    die "the Dockerfile's FROM lines changed; update scripts/compose_test.sh (it builds their images)"
fi
DEBIAN_IMAGE="debian:$SUITE-slim"
RUST_IMAGE="rust:$RUST_VERSION-$SUITE"

# Debian: debootstrap from the host's mirror, with the host's apt sources for the suite.
sources=$("$IMAGES/debian/sources.sh" "$SUITE") || die "the host has no apt source for $SUITE to build $DEBIAN_IMAGE from"
mirror=$("$IMAGES/debian/sources.sh" --mirror "$SUITE") || die "no mirror for $SUITE in the host's apt sources"
key=$(printf '%s\n' "recipe $DEBIAN_RECIPE" "suite $SUITE" "mirror $mirror" "$sources" \
    "$(hash_files "$IMAGES/debian")" | sha256sum | cut -c1-64)
if needs_build "$DEBIAN_IMAGE" "$key"; then
    command -v debootstrap >/dev/null || die "debootstrap is not installed"
    rootfs="$WORK/rootfs"
    rm -rf "$rootfs"
    t0=$SECONDS
    log "debootstrap --variant=minbase $SUITE from $mirror (log: $LOGS/debootstrap.log)"
    debootstrap --variant=minbase --components=main "$SUITE" "$rootfs" "$mirror" \
        >"$LOGS/debootstrap.log" 2>&1 ||
        { tail -n 30 "$LOGS/debootstrap.log" | sed 's/^/  | /' >&2; die "debootstrap failed"; }
    rm -f "$rootfs/etc/apt/sources.list" "$rootfs/etc/resolv.conf" "$rootfs/etc/hostname"
    if grep -q '^Types:' <<<"$sources"; then
        printf '%s\n' "$sources" >"$rootfs/etc/apt/sources.list.d/debian.sources"
    else
        printf '%s\n' "$sources" >"$rootfs/etc/apt/sources.list"
    fi
    # As in Debian's official images: apt keeps no downloaded packages.
    cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
    old=$(image_id "$DEBIAN_IMAGE" 2>/dev/null || true)
    tar --numeric-owner -C "$rootfs" -c . |
        docker import --change 'CMD ["bash"]' \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change "LABEL $LABEL=$key" - "$DEBIAN_IMAGE" >/dev/null ||
        die "docker import of the $SUITE rootfs failed"
    [[ $old == "$(image_id "$DEBIAN_IMAGE")" ]] || drop_old "$old"
    rm -rf "$rootfs"
    log "$DEBIAN_IMAGE: built in $((SECONDS - t0)) s"
fi
debian_id=$(image_id "$DEBIAN_IMAGE")

# Rust: the host's stable toolchain on the Debian base.
command -v rustc >/dev/null || die "rustc is needed: $RUST_IMAGE is built from the host's stable toolchain"
sysroot=$(rustc --print sysroot) || die "rustc --print sysroot failed"
rust_vv=$(rustc -vV) || die "rustc -vV failed"
[[ $sysroot != / && $sysroot != /usr && -x $sysroot/bin/cargo && -x $sysroot/bin/rustc && -d $sysroot/lib/rustlib ]] ||
    die "rustc's sysroot ($sysroot) is not a self-contained toolchain with bin/cargo (install Rust with rustup)"
rust_minor=$(sed -n 's/^release: 1\.\([0-9]*\)\..*/\1/p' <<<"$rust_vv")
if [[ -z $rust_minor ]] || ((rust_minor < 85)); then
    die "the host's rustc is older than 1.85 (edition 2024): $(head -n 1 <<<"$rust_vv")"
fi
# The host's CA bundle goes in too: cargo in the build must trust what the host trusts (a
# TLS-inspecting proxy in front of the registries, say).
ca_bundle=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
[[ -s $ca_bundle ]] || die "no CA bundle at $ca_bundle (set SSL_CERT_FILE)"
key=$(printf '%s\n' "$debian_id" "$rust_vv" "$(sha256sum <"$ca_bundle")" "$(hash_files "$IMAGES/rust")" |
    sha256sum | cut -c1-64)
if needs_build "$RUST_IMAGE" "$key"; then
    log "$RUST_IMAGE: $(head -n 1 <<<"$rust_vv") from $sysroot (bin/, lib/), CA bundle $ca_bundle"
    cp "$ca_bundle" "$WORK/host-ca-certificates.crt"
    tar -c -C "$IMAGES/rust" Dockerfile -C "$WORK" host-ca-certificates.crt -C "$sysroot" bin lib |
        build_tar "$RUST_IMAGE" "$key" rust --build-arg "BASE_IMAGE=$DEBIAN_IMAGE"
fi

# Kafka: the jars pinned in scripts/kafka/pom.xml, as scripts/kafka.sh fetches them.
KAFKA_VERSION=$(sed -n 's:.*<kafka\.version>\([^<]*\)</kafka\.version>.*:\1:p' scripts/kafka/pom.xml | sed -n 1p)
[[ -n $KAFKA_VERSION ]] || die "cannot read <kafka.version> from scripts/kafka/pom.xml"
KAFKA_IMAGE="apache/kafka:$KAFKA_VERSION"
compose_kafka=$(sed -n 's/^ *image: *\(apache\/kafka:.*\)$/\1/p' "$COMPOSE_FILE" | sort -u)
[[ $compose_kafka == "$KAFKA_IMAGE" ]] ||
    die "the compose file runs '${compose_kafka//$'\n'/, }' but scripts/kafka/pom.xml pins Kafka $KAFKA_VERSION; make them agree"
"$ROOT/scripts/kafka.sh" fetch >"$LOGS/kafka-fetch.log" 2>&1 ||
    { tail -n 20 "$LOGS/kafka-fetch.log" >&2; die "scripts/kafka.sh fetch failed"; }
KAFKA_HOME="${KANARY_CACHE:-${HOME:-/tmp}/.cache/kanary}/kafka-$KAFKA_VERSION"
[[ -f $KAFKA_HOME/libs/kafka_2.13-$KAFKA_VERSION.jar ]] ||
    die "scripts/kafka.sh fetch left no kafka_2.13-$KAFKA_VERSION.jar in $KAFKA_HOME/libs"
key=$(printf '%s\n' "$debian_id" "$KAFKA_VERSION" "$(sha256sum <scripts/kafka/pom.xml)" \
    "$(cd "$KAFKA_HOME/libs" && ls ./*.jar)" "$(hash_files "$IMAGES/kafka")" | sha256sum | cut -c1-64)
if needs_build "$KAFKA_IMAGE" "$key"; then
    tar -c -C "$IMAGES/kafka" Dockerfile bin config -C "$KAFKA_HOME" --exclude=.kanary-stamp libs |
        build_tar "$KAFKA_IMAGE" "$key" kafka --build-arg "BASE_IMAGE=$DEBIAN_IMAGE"
fi

# Prometheus: Debian's package, tagged with its upstream version (PROMETHEUS_VERSION for compose).
PROM_BUILD_IMAGE="kanary-local/prometheus:debian-$SUITE"
key=$(printf '%s\n' "$debian_id" "$(hash_files "$IMAGES/prometheus")" | sha256sum | cut -c1-64)
if needs_build "$PROM_BUILD_IMAGE" "$key"; then
    tar -c -C "$IMAGES/prometheus" Dockerfile |
        build_tar "$PROM_BUILD_IMAGE" "$key" prometheus --build-arg "BASE_IMAGE=$DEBIAN_IMAGE"
fi
prom_version=$(docker run --rm "$PROM_BUILD_IMAGE" --version 2>&1 | sed -n 's/^prometheus, version \([0-9][0-9.]*\).*/\1/p')
[[ -n $prom_version ]] || die "cannot read the Prometheus version of $PROM_BUILD_IMAGE"
export PROMETHEUS_VERSION="v$prom_version"
PROM_IMAGE="prom/prometheus:$PROMETHEUS_VERSION"
if [[ $(label_of "$PROM_IMAGE") == none ]]; then
    log "$PROM_IMAGE: present and not built by this script (pulled?); used as it is"
else
    old=$(image_id "$PROM_IMAGE" 2>/dev/null || true)
    docker tag "$PROM_BUILD_IMAGE" "$PROM_IMAGE"
    [[ $old == "$(image_id "$PROM_IMAGE")" ]] || drop_old "$old"
    log "$PROM_IMAGE: Debian's prometheus $prom_version ($PROM_BUILD_IMAGE)"
fi

# --------------------------------------------------------------------------- kanary:local
step "kanary:local from the Dockerfile (multi-stage, cargo in the builder)"
t0=$SECONDS
old=$(image_id kanary:local 2>/dev/null || true)
log "log: $LOGS/build-kanary.log"
if ! "${BUILD[@]}" --progress=plain -t kanary:local -f Dockerfile . >"$LOGS/build-kanary.log" 2>&1; then
    tail -n 60 "$LOGS/build-kanary.log" | sed 's/^/  | /' >&2
    die "docker build of kanary:local failed (log: $LOGS/build-kanary.log)"
fi
[[ $old == "$(image_id kanary:local)" ]] || drop_old "$old"
compiled=$(grep -c ' Compiling ' "$LOGS/build-kanary.log" || true)
log "kanary:local built in $((SECONDS - t0)) s ($compiled crates compiled; 0 = every step cached)"
docker run --rm kanary:local --help >/dev/null || die "kanary:local does not run (kanary --help)"

if [[ $MODE == images ]]; then
    step "images ready (--images): $DEBIAN_IMAGE $RUST_IMAGE $KAFKA_IMAGE $PROM_IMAGE kanary:local"
    exit 0
fi

# --------------------------------------------------------------------------- the stack
step "compose up (project $PROJECT): ${SERVICES[*]}"
grafana_image=$(sed -n 's/^ *image: *\(grafana\/.*\)$/\1/p' "$COMPOSE_FILE" | sed -n 1p)
log "Grafana is SKIPPED in this run: its image (${grafana_image:-grafana/grafana}) cannot be pulled here and"
log "  cannot be built from Debian packages; the grafana service stays in the compose file for users"
port_open() {
    # shellcheck disable=SC2016  # $1 is expanded by the inner bash
    timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null
}
# Leftovers of an interrupted run (same project) go first; then the ports must be free.
compose down -v --remove-orphans >"$LOGS/down-before.log" 2>&1 ||
    { cat "$LOGS/down-before.log" >&2; die "compose down (leftovers of an earlier run) failed"; }
for v in KANARY_KAFKA_HOST_PORT KANARY_DETECTOR_IF_PORT KANARY_DETECTOR_AE_PORT KANARY_PROMETHEUS_PORT; do
    if port_open "${!v}"; then
        die "port 127.0.0.1:${!v} ($v) is already in use; set $v to a free port"
    fi
done
STACK_UP=1
t0=$SECONDS
# `up` waits for the compose file's conditions: kafka healthy, kafka-init done, detectors
# healthy before prometheus starts.
if ! timeout 600 "${COMPOSE[@]}" -p "$PROJECT" -f "$COMPOSE_FILE" up -d --no-build "${SERVICES[@]}" \
    >"$LOGS/up.log" 2>&1; then
    sed 's/^/  | /' "$LOGS/up.log" >&2
    die "compose up failed or timed out (log: $LOGS/up.log)"
fi
log "compose up returned after $((SECONDS - t0)) s"

# container ID -> state of a service ("running", "exited 0", with "/healthy" if it has a check)
service_state() {
    local id
    id=$(compose ps -a -q "$1" 2>/dev/null | sed -n 1p)
    [[ -n $id ]] || { echo "absent"; return 0; }
    docker inspect -f '{{.State.Status}}{{if eq .State.Status "exited"}} {{.State.ExitCode}}{{end}}{{if .State.Health}}/{{.State.Health.Status}}{{end}}' "$id"
}
# wait_for DESCRIPTION SECONDS COMMAND...: polls COMMAND every 2 s. A check may leave what it
# last saw in SEEN, for the failure message.
SEEN=""
wait_for() {
    local what=$1 limit=$2 deadline
    shift 2
    deadline=$((SECONDS + limit))
    SEEN=""
    until "$@"; do
        ((SECONDS < deadline)) || die "$what: not within $limit s${SEEN:+; last seen: $SEEN}"
        sleep 2
    done
}
all_healthy() {
    local svc state ok=0
    SEEN=""
    for svc in "${SERVICES[@]}"; do
        state=$(service_state "$svc")
        SEEN+="$svc=$state "
        case $svc:$state in
        producer:running | kafka-init:"exited 0" | *:running/healthy) ;;
        *) ok=1 ;;
        esac
    done
    return "$ok"
}
step "waiting for the stack to be healthy"
wait_for "kafka, detector-if, detector-ae and prometheus healthy, producer running, kafka-init done" \
    "$TIMEOUT" all_healthy
for svc in "${SERVICES[@]}"; do
    log "  $svc: $(service_state "$svc")"
done
wait_for "Prometheus ready on $PROM_URL" "$TIMEOUT" curl -fsS -o /dev/null --max-time 5 "$PROM_URL/-/ready"

# --------------------------------------------------------------------------- checks
# prom_query EXPR: one line per series, "label=value,... value" (labels sorted).
prom_query() {
    local json
    json=$(curl -fsS --max-time 10 --get --data-urlencode "query=$1" "$PROM_URL/api/v1/query") ||
        return 1
    python3 - "$json" <<'PY'
import json, sys
d = json.loads(sys.argv[1])
if d.get("status") != "success":
    sys.exit("query failed: %s" % d)
for r in d["data"]["result"]:
    m = r["metric"]
    print(",".join("%s=%s" % (k, m[k]) for k in sorted(m)), r["value"][1])
PY
}

step "check 1: the published ports answer"
for pair in detector-if:KANARY_DETECTOR_IF_PORT detector-ae:KANARY_DETECTOR_AE_PORT; do
    svc=${pair%%:*} var=${pair##*:}
    port=${!var}
    curl -fsS -o /dev/null --max-time 5 "http://127.0.0.1:$port/healthz" ||
        die "$svc: http://127.0.0.1:$port/healthz does not answer 200"
    metrics=$(curl -fsS --max-time 5 "http://127.0.0.1:$port/metrics") ||
        die "$svc: http://127.0.0.1:$port/metrics does not answer 200"
    grep -q '^detector_events_total{' <<<"$metrics" ||
        die "$svc: http://127.0.0.1:$port/metrics has no detector_events_total series"
    log "  $svc: 127.0.0.1:$port /healthz 200, /metrics has detector_events_total"
done
port_open "$KANARY_KAFKA_HOST_PORT" || die "Kafka's host listener 127.0.0.1:$KANARY_KAFKA_HOST_PORT does not accept connections"
log "  kafka: 127.0.0.1:$KANARY_KAFKA_HOST_PORT accepts connections"

step "check 2: Prometheus scrapes both detectors (up == 1)"
both_up() {
    local out
    out=$(prom_query 'up{job="kanary-detectors"}') || return 1
    SEEN=$(tr '\n' ';' <<<"$out")
    grep -q 'compose_service=detector-if,.* 1$' <<<"$out" && grep -q 'compose_service=detector-ae,.* 1$' <<<"$out"
}
wait_for "up{job=\"kanary-detectors\"} == 1 for detector-if and detector-ae" "$TIMEOUT" both_up
prom_query 'up{job="kanary-detectors"}' | sed 's/^/    /'

step "check 3: events flow producer -> Kafka -> both detectors -> Prometheus"
# detector_events_total{model, service}: valid events each detector consumed.
events_of() { # events_of SERVICE MODEL: the detector's summed counter, or "" if no series yet
    prom_query "sum(detector_events_total{job=\"kanary-detectors\",compose_service=\"$1\",model=\"$2\"})" |
        awk '{print $NF}'
}
declare -A first
counted() { # counted SERVICE MODEL: the counter exists and is above 0
    local v
    v=$(events_of "$1" "$2") || return 1
    SEEN="detector_events_total=${v:-no series}"
    [[ -n $v ]] && python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) > 0 else 1)' "$v"
}
grew() { # grew SERVICE MODEL: the counter is above the first reading
    local v
    v=$(events_of "$1" "$2") || return 1
    SEEN="detector_events_total ${first[$1]} -> ${v:-no series}"
    [[ -n $v ]] && python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) > float(sys.argv[2]) else 1)' \
        "$v" "${first[$1]}"
}
for pair in detector-if:if detector-ae:ae; do
    svc=${pair%%:*} model=${pair##*:}
    wait_for "detector_events_total of $svc (model $model) above 0" "$TIMEOUT" counted "$svc" "$model"
    first[$svc]=$(events_of "$svc" "$model")
    log "  $svc (model $model): detector_events_total = ${first[$svc]}"
done
sleep 12 # a few scrapes (every 5 s)
for pair in detector-if:if detector-ae:ae; do
    svc=${pair%%:*} model=${pair##*:}
    wait_for "detector_events_total of $svc (model $model) increasing" 60 grew "$svc" "$model"
    log "  $svc (model $model): detector_events_total ${first[$svc]} -> $(events_of "$svc" "$model")"
done
log "  events per second and services seen, per model:"
prom_query 'sum by (model) (rate(detector_events_total{job="kanary-detectors"}[30s]))' | sed 's/^/    rate: /'
prom_query 'count by (model) (detector_events_total{job="kanary-detectors"})' | sed 's/^/    services: /'

step "check 4: the alert rules are loaded and evaluate"
# Group names and rule count from the rules file (top-level `- name:` entries under groups).
mapfile -t want_groups < <(sed -n 's/^  - name: *\([^ #]*\).*$/\1/p' "$RULES_FILE")
want_rules=$(grep -cE '^ +- (alert|record):' "$RULES_FILE")
((${#want_groups[@]} > 0 && want_rules > 0)) || die "no groups or rules found in $RULES_FILE"
rules_ok() { # all groups of the file are loaded with all their rules, each evaluated without error
    local json
    json=$(curl -fsS --max-time 10 "$PROM_URL/api/v1/rules") || return 1
    python3 - "$json" "$want_rules" "${want_groups[@]}" >"$WORK/rules.txt" <<'PY'
import json, sys
d = json.loads(sys.argv[1]); want_rules = int(sys.argv[2]); want_groups = set(sys.argv[3:])
groups = {g["name"]: g for g in d["data"]["groups"]}
missing = want_groups - set(groups)
rules = [r for name in want_groups & set(groups) for r in groups[name]["rules"]]
for name in sorted(want_groups & set(groups)):
    g = groups[name]
    print("group %s (%s): %d rules" % (name, g["file"], len(g["rules"])))
for r in rules:
    print("  %-26s health=%-7s state=%s" % (r["name"], r.get("health"), r.get("state", "-")))
bad = [r["name"] for r in rules if r.get("health") != "ok"]
ok = not missing and len(rules) == want_rules and not bad
if missing:
    print("missing groups: %s" % sorted(missing))
if len(rules) != want_rules:
    print("rules loaded: %d, in the file: %d" % (len(rules), want_rules))
if bad:
    print("not (yet) evaluated ok: %s" % bad)
sys.exit(0 if ok else 1)
PY
}
deadline=$((SECONDS + TIMEOUT))
until rules_ok; do
    if ((SECONDS >= deadline)); then
        sed 's/^/    /' "$WORK/rules.txt" >&2
        die "the alert rules of $RULES_FILE are not all loaded and evaluated without error (groups ${want_groups[*]}, $want_rules rules) within $TIMEOUT s"
    fi
    sleep 2
done
sed 's/^/    /' "$WORK/rules.txt"

step "all checks passed; removing the stack"
