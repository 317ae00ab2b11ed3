#!/usr/bin/env python3
"""Sends known OpenTelemetry metrics over OTLP/HTTP (protobuf) and writes down what it sent.

    otel_send.py --endpoint http://127.0.0.1:19201/v1/metrics --token TOKEN --out sent.jsonl
                 [--exports 8] [--interval 1.0]

Used by scripts/gateway_test.sh to check `kanary gateway`'s OTLP path; needs the
OpenTelemetry Python SDK and OTLP/HTTP exporter (scripts/telemetry/requirements.txt).

One MeterProvider on the resource service.name=otel-check, service.instance.id=i1, read by a
PeriodicExportingMetricReader (--interval seconds) into an OTLPMetricExporter (HTTP protobuf,
cumulative temporality, `Authorization: Bearer TOKEN`). Three instruments:

    otel_check_temperature   synchronous gauge, no attributes; set to 42.5 + 0.25 k in interval k
    otel_check_requests      counter (monotonic sum), attribute route="/a"; adds 10 + 3 k
    otel_check_latency       histogram, attribute route="/a"; records 2 + k/4 values, each a
                             multiple of 1/8 (exact in binary floating point)

Interval k's values are recorded right after export k completes (k = 0 before the first
export), so export k+1 carries exactly them; after --exports periodic exports one more
interval is recorded and MeterProvider.shutdown() sends the final export half an interval
later. Each export appends one JSON line to --out, read from the data actually exported:

    {"seq", "time_unix_nano", "start_time_unix_nano", "sent_at", "result",
     "gauge", "counter_total", "hist_count", "hist_sum",
     "interval_values": [histogram values recorded since the previous export],
     "interval_counter_add", "consistent": Δcount/Δsum of the export match interval_values}

Exits 1 if any export failed (non-2xx after the exporter's retries) or was inconsistent.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

try:
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider
    from opentelemetry.sdk.metrics.export import (
        AggregationTemporality,
        MetricExportResult,
        PeriodicExportingMetricReader,
    )
    from opentelemetry.sdk.resources import Resource
except ImportError as e:  # pragma: no cover - a clear message instead of a traceback
    sys.exit(
        f"otel_send.py: {e}; install scripts/telemetry/requirements.txt into a venv "
        "(scripts/gateway_test.sh does)"
    )

GAUGE = "otel_check_temperature"
COUNTER = "otel_check_requests"
HISTOGRAM = "otel_check_latency"
ATTRS = {"route": "/a"}


def gauge_value(k: int) -> float:
    return 42.5 + 0.25 * k


def counter_add(k: int) -> int:
    return 10 + 3 * k


def histogram_values(k: int) -> list[float]:
    return [0.125 * (1 + ((k * 7 + i * 5) % 23)) for i in range(2 + k // 4)]


class RecordingExporter(OTLPMetricExporter):
    """The OTLP/HTTP exporter, writing down each export's points before it is sent."""

    def __init__(self, out, **kwargs):
        super().__init__(**kwargs)
        self.out = out
        self.seq = 0
        self.failures = 0
        self.inconsistent = 0
        self.prev = None  # (hist_count, hist_sum, counter_total) of the previous export
        self.pending_values: list[float] = []  # recorded since the previous export
        self.pending_add = 0
        self.lock = threading.Lock()
        self.exported = threading.Condition(self.lock)

    def note(self, values: list[float], add: int) -> None:
        with self.lock:
            self.pending_values.extend(values)
            self.pending_add += add

    def export(self, metrics_data, timeout_millis=10_000, **kwargs):
        row = summarize(metrics_data)
        with self.lock:
            values, add = self.pending_values, self.pending_add
            self.pending_values, self.pending_add = [], 0
        row["sent_at"] = time.time()
        result = super().export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        prev_count, prev_sum, _ = self.prev or (0, 0.0, 0)
        row["interval_values"] = values
        row["interval_counter_add"] = add
        row["consistent"] = (
            row["hist_count"] is not None
            and row["hist_count"] - prev_count == len(values)
            and abs((row["hist_sum"] - prev_sum) - sum(values)) <= 1e-9 * max(1.0, sum(values))
        )
        row["result"] = result.name
        with self.lock:
            self.seq += 1
            row = {"seq": self.seq, **row}
            self.prev = (row["hist_count"] or 0, row["hist_sum"] or 0.0, row["counter_total"])
            if result is not MetricExportResult.SUCCESS:
                self.failures += 1
            if not row["consistent"]:
                self.inconsistent += 1
            self.out.write(json.dumps(row) + "\n")
            self.out.flush()
            self.exported.notify_all()
        print(
            f"otel_send.py: export {row['seq']}: {row['result']}, gauge {row['gauge']}, "
            f"counter {row['counter_total']}, histogram {row['hist_count']} values "
            f"sum {row['hist_sum']}",
            file=sys.stderr,
        )
        return result

    def wait_exports(self, n: int, timeout: float) -> None:
        with self.lock:
            if not self.exported.wait_for(lambda: self.seq >= n, timeout):
                raise SystemExit(f"otel_send.py: export {n} did not happen within {timeout} s")


def summarize(metrics_data) -> dict:
    """The values of our three instruments in one export (None for one not in it)."""
    row = {
        "time_unix_nano": None,
        "start_time_unix_nano": None,
        "gauge": None,
        "counter_total": None,
        "hist_count": None,
        "hist_sum": None,
    }
    for rm in metrics_data.resource_metrics:
        attrs = dict(rm.resource.attributes)
        if attrs.get("service.name") != "otel-check":
            continue
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                points = list(metric.data.data_points)
                if len(points) != 1:
                    raise SystemExit(f"otel_send.py: {metric.name}: {len(points)} points, expected 1")
                p = points[0]
                row["time_unix_nano"] = p.time_unix_nano
                if metric.name == GAUGE:
                    row["gauge"] = p.value
                elif metric.name == COUNTER:
                    row["counter_total"] = p.value
                    row["start_time_unix_nano"] = p.start_time_unix_nano
                elif metric.name == HISTOGRAM:
                    row["hist_count"] = p.count
                    row["hist_sum"] = p.sum
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--endpoint", required=True, help="OTLP/HTTP metrics URL, ending in /v1/metrics")
    ap.add_argument("--token", default="", help="bearer token (none if empty)")
    ap.add_argument("--out", required=True, help="JSON lines: what each export sent")
    ap.add_argument("--exports", type=int, default=8, help="periodic exports before shutdown (default 8)")
    ap.add_argument("--interval", type=float, default=1.0, help="export interval, seconds (default 1)")
    args = ap.parse_args()
    if args.exports < 2 or args.interval <= 0:
        ap.error("--exports must be at least 2 and --interval positive")

    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    cumulative = {Counter: AggregationTemporality.CUMULATIVE, Histogram: AggregationTemporality.CUMULATIVE}
    with open(args.out, "w", encoding="utf-8") as out:
        exporter = RecordingExporter(
            out,
            endpoint=args.endpoint,
            headers=headers,
            timeout=10,
            preferred_temporality=cumulative,
        )
        reader = PeriodicExportingMetricReader(exporter, export_interval_millis=args.interval * 1000)
        resource = Resource.create({"service.name": "otel-check", "service.instance.id": "i1"})
        provider = MeterProvider(resource=resource, metric_readers=[reader])
        meter = provider.get_meter("kanary.gateway_test")
        gauge = meter.create_gauge(GAUGE, description="known gauge values")
        counter = meter.create_counter(COUNTER, description="known increments")
        histogram = meter.create_histogram(HISTOGRAM, description="known observations")

        def record(k: int) -> None:
            values = histogram_values(k)
            gauge.set(gauge_value(k))
            counter.add(counter_add(k), ATTRS)
            for v in values:
                histogram.record(v, ATTRS)
            exporter.note(values, counter_add(k))

        # Interval k is recorded right after export k (k = 0: before the first), so that each
        # export carries exactly one interval.
        record(0)
        for k in range(1, args.exports + 1):
            exporter.wait_exports(k, timeout=args.interval * 3 + 30)
            record(k)
        time.sleep(args.interval / 2)
        provider.shutdown()  # the final export, with interval --exports

    if exporter.seq != args.exports + 1:
        print(f"otel_send.py: {exporter.seq} exports, expected {args.exports + 1}", file=sys.stderr)
        return 1
    if exporter.failures or exporter.inconsistent:
        print(
            f"otel_send.py: {exporter.failures} failed and {exporter.inconsistent} inconsistent exports "
            f"of {exporter.seq}",
            file=sys.stderr,
        )
        return 1
    print(f"otel_send.py: {exporter.seq} exports sent to {args.endpoint}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
