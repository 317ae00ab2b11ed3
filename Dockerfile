# kanary: one image for every subcommand (`simulate`, `detect`, `eval`, ...).
#
#   docker build -t kanary:local .
#   docker run --rm kanary:local --help
#   docker run --rm -p 9898:9898 kanary:local detect --model if --brokers kafka:9092
#
# Needs BuildKit (the default builder since Docker 23; with an older docker CLI
# set DOCKER_BUILDKIT=1) for the cache mounts below.
#
# Stage 1 builds the release binary. rdkafka's bundled librdkafka is compiled
# from source here (~2 min): it needs a C toolchain, make, perl and the zlib
# headers. OpenSSL headers and pkg-config are installed too, so enabling the
# rdkafka `ssl` feature (TLS / SASL_SSL brokers) needs no Dockerfile change.
# Cargo's registry and the target directory live in BuildKit cache mounts, so a
# rebuild after a source change recompiles only what changed (the crates and
# librdkafka stay compiled); the binary is copied out of the cache to /out.
#
# Stage 2 is a slim Debian with the binary, its shared libraries, CA
# certificates (for TLS brokers) and curl (used by the compose healthchecks).
# It runs as an unprivileged user (uid/gid 10001) and keeps its state in
# /var/lib/kanary, the only directory it writes to, so the root filesystem can
# be mounted read-only (see deploy/k8s and deploy/compose).
#
# There is deliberately no HEALTHCHECK here: the same image runs `simulate`,
# which serves no HTTP. The compose file and the Kubernetes manifests probe
# /healthz and /readyz of `detect` themselves.

ARG RUST_VERSION=1
ARG DEBIAN_RELEASE=bookworm

############################ builder ############################
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder

# Unpinned apt packages on purpose: the release's current security updates.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        gcc g++ make perl pkg-config zlib1g-dev libssl-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# The whole workspace (see .dockerignore for what is left out). Cargo.lock is
# required: the image is built with --locked so it matches what CI tested.
COPY . .

# Extra cargo flags, e.g. --build-arg CARGO_BUILD_FLAGS="--features ssl" (TLS, SCRAM)
ARG CARGO_BUILD_FLAGS=""
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p kanary ${CARGO_BUILD_FLAGS} \
 && install -D -m 0755 target/release/kanary /out/kanary \
 && strip /out/kanary \
 && /out/kanary --help > /dev/null

############################ runtime ############################
FROM debian:${DEBIAN_RELEASE}-slim AS runtime

# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        ca-certificates curl libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 kanary \
 && useradd --system --uid 10001 --gid kanary --no-create-home \
        --home-dir /var/lib/kanary --shell /usr/sbin/nologin kanary \
 && install -d -o kanary -g kanary -m 0750 /var/lib/kanary

COPY --from=builder /out/kanary /usr/local/bin/kanary

# Defaults read by `kanary detect` (every flag has a KANARY_<FLAG> variable).
# Listen on all interfaces so Prometheus and probes can reach /metrics,
# /healthz and /readyz; keep models and snapshots in the writable state dir.
ENV KANARY_METRICS_ADDR=0.0.0.0:9898 \
    KANARY_STATE_DIR=/var/lib/kanary

USER 10001:10001
WORKDIR /var/lib/kanary
EXPOSE 9898

ENTRYPOINT ["/usr/local/bin/kanary"]
CMD ["--help"]

LABEL org.opencontainers.image.title="kanary" \
      org.opencontainers.image.description="Real-time anomaly detection on Kafka telemetry"
