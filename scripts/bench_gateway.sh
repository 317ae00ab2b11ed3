#!/usr/bin/env bash
# Throughput of `kanary gateway` on this machine (a benchmark, not a test):
#
#   scripts/bench_gateway.sh [--entities N] [--series S] [--scrapes K] [--connections C]
#
# 1. The gateway runs pinned to one core (taskset -c 0); a load generator pinned to the other
#    (crates/kanary/examples/remote_write_load.rs) sends Prometheus remote-write requests as
#    Prometheus does (snappy protobuf, about 2,000 samples each, one shard per connection,
#    each entity's scrapes in order): N entities (default 1,000) x S series (default 20, half
#    counters) x K scrapes (default 100), over C connections (default 16; Prometheus runs up to 200 shards). Every request is
#    answered only after Kafka acknowledged its events. samples/s = samples / time until the
#    last answer; events/s likewise.
# 2. Baseline in the same run: Kafka's own producer (org.apache.kafka.tools.ProducerPerformance,
#    also on core 0, with the gateway's producer settings: acks=all, idempotence, lz4,
#    linger.ms=5) producing the very records the gateway wrote, read back from its topic.
#    It sends at least 500,000 of them (picked from those records), so that the JVM's warm-up
#    is a small part of its time. The ratio is the gateway's event rate over Kafka's producer
#    rate.
#
# Starts a broker with scripts/kafka.sh if none answers on KAFKA_PORT (default 9092).
# Writes target/bench/gateway.json.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
ENTITIES=1000
SERIES=20
SCRAPES=100
CONNECTIONS=16
while [ $# -gt 0 ]; do
  case "$1" in
    --entities) ENTITIES="$2"; shift 2 ;;
    --series) SERIES="$2"; shift 2 ;;
    --scrapes) SCRAPES="$2"; shift 2 ;;
    --connections) CONNECTIONS="$2"; shift 2 ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
command -v taskset >/dev/null || { echo "bench_gateway.sh: taskset (util-linux) is required" >&2; exit 1; }
command -v kcat >/dev/null || { echo "bench_gateway.sh: kcat is required (apt-get install kcat)" >&2; exit 1; }
export KAFKA_PORT="${KAFKA_PORT:-9092}"
BROKERS="127.0.0.1:$KAFKA_PORT"
OUT="$ROOT/target/bench"
mkdir -p "$OUT"
cargo build --release -q -p kanary --bin kanary --example remote_write_load
KANARY="$ROOT/target/release/kanary"
LOAD="$ROOT/target/release/examples/remote_write_load"
# shellcheck source-path=SCRIPTDIR source=lib/bench.sh
. "$ROOT/scripts/lib/bench.sh"
bench_kafka_start

run_id="gwbench-$$-$(date +%s)"
topic="$run_id-events"
port=$(free_port)
echo "== kanary gateway on core 0 -> $topic"
taskset -c 0 "$KANARY" gateway --listen "127.0.0.1:$port" --brokers "$BROKERS" --topic "$topic" \
  --partitions 3 --max-series 1000000 >"$OUT/gateway.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 300); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz")" = 200 ] && break
  sleep 0.1
done
echo "== remote write on core 1: $ENTITIES entities x $SERIES series x $SCRAPES scrapes, $CONNECTIONS connections"
load=$(taskset -c 1 "$LOAD" "http://127.0.0.1:$port/api/v1/write" "$ENTITIES" "$SERIES" "$SCRAPES" "$CONNECTIONS")
echo "   $load"
events=$(metric "$port" gateway_events_total)
expected=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['events'])" "$load")
[ "$events" = "$expected" ] || { echo "gateway acknowledged $events events, expected $expected" >&2; exit 1; }
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true

echo "== baseline: Kafka's own producer, the same records, on core 0"
kcat -C -b "$BROKERS" -t "$topic" -e -q -D '\n' >"$OUT/gateway-records.jsonl"
got=$(wc -l <"$OUT/gateway-records.jsonl")
[ "$got" -ge "$events" ] || { echo "read back $got records of $events" >&2; exit 1; }
base_n=$(( events > 500000 ? events : 500000 ))
base=$(taskset -c 0 "$ROOT/scripts/kafka.sh" run org.apache.kafka.tools.ProducerPerformance \
  --topic "$run_id-baseline" --num-records "$base_n" --throughput -1 \
  --payload-file "$OUT/gateway-records.jsonl" \
  --producer-props "bootstrap.servers=$BROKERS" acks=all enable.idempotence=true \
  compression.type=lz4 linger.ms=5 2>/dev/null | tail -1)
echo "   $base"
python3 - "$load" "$base" "$OUT/gateway.json" <<'PY'
import json, re, sys
load = json.loads(sys.argv[1])
m = re.search(r"([0-9.]+) records/sec", sys.argv[2])
if not m:
    sys.exit(f"no rate in ProducerPerformance output: {sys.argv[2]}")
base = float(m.group(1))
eps = load["events"] / load["seconds"]
out = {
    "samples": load["samples"], "events": load["events"], "requests": load["requests"],
    "gateway_samples_per_s": round(load["samples_per_s"]), "gateway_events_per_s": round(eps),
    "kafka_producer_records_per_s": round(base), "ratio": round(eps / base, 3),
}
json.dump(out, open(sys.argv[3], "w"), indent=1)
print(f"gateway: {out['gateway_samples_per_s']} samples/s = {out['gateway_events_per_s']} events/s "
      f"(acknowledged by Kafka); Kafka's producer, same records: {out['kafka_producer_records_per_s']} "
      f"records/s; ratio {out['ratio']}")
PY
