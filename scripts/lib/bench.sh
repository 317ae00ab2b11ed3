# shellcheck shell=bash
# Shared by bench_pipeline.sh and bench_gateway.sh (sourced after ROOT is set).
#
#   bench_kafka_start     start a broker with scripts/kafka.sh unless one answers on KAFKA_PORT;
#                         the EXIT trap stops it again (and only then)
#   pids                  PIDs the EXIT trap kills (append with pids+=($!))
#   free_port             a free TCP port on 127.0.0.1
#   metric PORT NAME      the sum of NAME's samples on 127.0.0.1:PORT/metrics (0 when absent)

BENCH_STARTED_KAFKA=0
pids=()

bench_cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ "$BENCH_STARTED_KAFKA" = 1 ]; then "$ROOT/scripts/kafka.sh" stop || true; fi
}
trap bench_cleanup EXIT

bench_kafka_start() {
  if ! "$ROOT/scripts/kafka.sh" status >/dev/null 2>&1; then
    "$ROOT/scripts/kafka.sh" start
    BENCH_STARTED_KAFKA=1
  fi
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

metric() { # metric PORT NAME -> sum of samples
  curl -sf "http://127.0.0.1:$1/metrics" | awk -v n="$2" '$1 ~ "^"n"({|$)" {s += $2} END {printf "%.0f", s}'
}
