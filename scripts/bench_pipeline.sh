#!/usr/bin/env bash
# Throughput and latency of the whole online path on this machine (a benchmark, not a test):
#
#   scripts/bench_pipeline.sh [--events N] [--rate EPS] [--seconds S] [--model M[,M...]]
#
# 1. Throughput: N events (default 2,000,000; microservices scenario, 3 partitions) are produced
#    first; then one `kanary detect` (the default model unless --model; several models share
#    one consumer) consumes,
#    scores, publishes anomalies, updates metrics and commits. events/s = N / time until the
#    group's committed offsets reach the end of every partition. Baseline in the same run:
#    Kafka's own consumer (org.apache.kafka.tools.ConsumerPerformance) reading the same topic;
#    the ratio is kanary's share of the raw consume rate.
# 2. Latency: a producer at --rate events/s (default 20,000) for --seconds (default 30) into a
#    fresh detector that already holds the topic's partitions (a cold start of the models,
#    not of the consumer group); p50/p99 event-to-detection latency from the detector's
#    detector_event_latency_seconds histogram (linear interpolation within buckets, as
#    Prometheus' histogram_quantile), over the whole run (cold start included) and over the
#    events after its first 5 s.
#
# Starts a broker with scripts/kafka.sh if none answers on KAFKA_PORT (default 9092).
# Writes target/bench/pipeline.json.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
EVENTS=2000000
RATE=20000
SECONDS_AT_RATE=30
MODEL=""
while [ $# -gt 0 ]; do
  case "$1" in
    --events) EVENTS="$2"; shift 2 ;;
    --rate) RATE="$2"; shift 2 ;;
    --seconds) SECONDS_AT_RATE="$2"; shift 2 ;;
    --model) MODEL="$2"; shift 2 ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
export KAFKA_PORT="${KAFKA_PORT:-9092}"
BROKERS="127.0.0.1:$KAFKA_PORT"
OUT="$ROOT/target/bench"
mkdir -p "$OUT"
cargo build --release -q -p kanary
model_args=()
[ -n "$MODEL" ] && model_args=(--model "$MODEL")
# Every model counts every event in detector_events_total.
if [ -n "$MODEL" ]; then
  MODELS=$(awk -F, '{print NF}' <<<"$MODEL")
else
  MODELS=1
fi
KANARY="$ROOT/target/release/kanary"
# shellcheck source-path=SCRIPTDIR source=lib/bench.sh
. "$ROOT/scripts/lib/bench.sh"
bench_kafka_start
lag_sum() { # group topic -> total lag (end - committed)
  "$ROOT/scripts/kafka.sh" run org.apache.kafka.tools.consumer.group.ConsumerGroupCommand \
    --bootstrap-server "$BROKERS" --describe --group "$1" 2>/dev/null \
    | awk -v t="$2" '$2 == t && $6 ~ /^[0-9]+$/ {s += $6; n++} END {if (n == 0) print -1; else print s}'
}

run_id="bench-$$-$(date +%s)"
topic="$run_id-events"

echo "== producing $EVENTS events to $topic"
"$KANARY" simulate --scenario microservices --count "$EVENTS" --seed 1 \
  --brokers "$BROKERS" --topic "$topic" --partitions 3 2>"$OUT/produce.log"

echo "== baseline: Kafka's own consumer on the same topic"
base_json=$("$ROOT/scripts/kafka.sh" run org.apache.kafka.tools.ConsumerPerformance \
  --bootstrap-server "$BROKERS" --topic "$topic" --messages "$EVENTS" --timeout 60000 \
  --group "$run_id-perf" 2>/dev/null | tail -1)
# start.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg, nMsg.sec, ...
base_eps=$(echo "$base_json" | awk -F', ' '{print $6}')

echo "== kanary detect ${model_args[*]:-(default model)}"
port=$(free_port)
group="$run_id-detect"
"$KANARY" detect "${model_args[@]}" --brokers "$BROKERS" --topic "$topic" --group "$group" \
  --metrics-addr "127.0.0.1:$port" --state-dir "$OUT/state-$run_id" \
  --anomalies-topic "$run_id-anomalies" --dlq-topic "$run_id-dlq" >"$OUT/detect.log" 2>&1 &
pids+=($!)
# Timed from the first event counted to the last (every model counts every event), so the
# process start and the consumer-group join are not part of it; fitting is.
t0=""
while :; do
  n=$(metric "$port" detector_events_total 2>/dev/null || echo 0)
  n=${n:-0}
  if [ -z "$t0" ] && [ "$n" -gt 0 ]; then t0=$(date +%s.%N); n0=$n; fi
  if [ "$n" -ge $((MODELS * EVENTS)) ]; then t1=$(date +%s.%N); break; fi
  sleep 0.05
done
# Everything processed must also be committed.
for _ in $(seq 1 60); do
  [ "$(lag_sum "$group" "$topic")" = 0 ] && break
  sleep 1
done
[ "$(lag_sum "$group" "$topic")" = 0 ] || { echo "offsets not committed to the end" >&2; exit 1; }
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
eps=$(python3 -c "print(round(($EVENTS - $n0 / $MODELS) / ($t1 - $t0)))")
echo "   $eps events/s through Kafka -> detect ${model_args[*]:-(default model)} -> metrics -> commit; Kafka's consumer alone: $base_eps"

echo "== latency at $RATE events/s for $SECONDS_AT_RATE s"
topic2="$run_id-rate"
port2=$(free_port)
# A cold start of the models, not of the consumer group: the topic exists and detect holds its
# partitions before the first event is produced (otherwise the first events wait for the
# consumer to find the new topic and join its group, which is Kafka's start-up, not kanary's).
"$ROOT/scripts/kafka.sh" topics --create --topic "$topic2" --partitions 3 --replication-factor 1 >/dev/null
"$KANARY" detect "${model_args[@]}" --brokers "$BROKERS" --topic "$topic2" --group "$run_id-rate" \
  --metrics-addr "127.0.0.1:$port2" --state-dir "$OUT/state2-$run_id" --train 1000 \
  --anomalies-topic "$run_id-anomalies2" --dlq-topic "$run_id-dlq2" >"$OUT/detect-rate.log" 2>&1 &
pids+=($!)
holds_partitions() { # /readyz says ready, or waits only for its first events
  case "$1" in ready* | *"models not fitted"*) return 0 ;; *) return 1 ;; esac
}
for _ in $(seq 1 300); do
  ready=$(curl -s "http://127.0.0.1:$port2/readyz" || true)
  holds_partitions "$ready" && break
  sleep 0.1
done
holds_partitions "$ready" || { echo "detect did not get its partitions in 30 s: $ready" >&2; exit 1; }
"$KANARY" simulate --scenario microservices --count $((RATE * SECONDS_AT_RATE)) --seed 2 \
  --rate "$RATE" --brokers "$BROKERS" --topic "$topic2" --partitions 3 2>"$OUT/produce-rate.log" &
pids+=($!)
# Steady state: the histogram's growth after the first 5 s (the warm-up fits models on each
# service's first 1000 events, which holds up the events queued meanwhile).
sleep 5
curl -sf "http://127.0.0.1:$port2/metrics" >"$OUT/latency-metrics-start.txt"
wait "${pids[-1]}"
sleep 2
curl -sf "http://127.0.0.1:$port2/metrics" >"$OUT/latency-metrics.txt"
kill "${pids[-2]}"; wait "${pids[-2]}" 2>/dev/null || true
python3 - "$OUT/latency-metrics.txt" "$eps" "$base_eps" "$EVENTS" "$RATE" "$OUT/pipeline.json" "$OUT/latency-metrics-start.txt" <<'PY'
import json, re, sys
text, eps, base, n, rate, out = open(sys.argv[1]).read(), float(sys.argv[2]), float(sys.argv[3] or 0), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
start = open(sys.argv[7]).read()
def buckets_of(t, model):
    buckets = {}
    for m in re.finditer(r'^detector_event_latency_seconds_bucket\{([^}]*)\} (\S+)$', t, re.M):
        labels = dict(kv.split('=', 1) for kv in m.group(1).split(','))
        if labels.get('model') != f'"{model}"':
            continue
        le = labels['le'].strip('"')
        buckets[float('inf') if le == '+Inf' else float(le)] = float(m.group(2))
    return buckets
def quantiles(model, begin_text):
    end, begin = buckets_of(text, model), buckets_of(begin_text, model)
    buckets = sorted((le, c - begin.get(le, 0.0)) for le, c in end.items())
    total = buckets[-1][1]
    def q(p):
        rank, prev_le, prev_c = p * total, 0.0, 0.0
        for le, c in buckets:
            if c >= rank:
                if le == float('inf'):
                    return prev_le
                return prev_le + (le - prev_le) * (rank - prev_c) / max(c - prev_c, 1e-9)
            prev_le, prev_c = le, c
        return prev_le
    return {"events": total, "p50_ms": 1000 * q(0.5), "p99_ms": 1000 * q(0.99)}
models = sorted({re.search(r'model="([^"]+)"', m.group(0)).group(1)
                 for m in re.finditer(r'^detector_event_latency_seconds_bucket\{[^}]*\}', text, re.M)})
res = {"events": n, "events_per_sec": eps, "kafka_consumer_events_per_sec": base,
       "ratio_to_kafka_consumer": eps / base if base else None, "latency_at_rate": rate,
       "latency": {m: {"whole_run_from_cold_start": quantiles(m, ""),
                       "after_the_first_5_s": quantiles(m, start)} for m in models}}
json.dump(res, open(out, "w"), indent=2)
print(json.dumps(res, indent=2))
PY
