#!/usr/bin/env python3
"""The checks of scripts/gateway_test.sh over what it consumed from Kafka and received.

    analyze.py events      --events F --entity E --min-features N --max-features N
    analyze.py calm        --anomalies F --entity E --until T [--max 1] [--events F] [--quiet]
    analyze.py stress      --anomalies F --entity E --start T [--within 15] [--top 3]
                           [--events F --end T]
    analyze.py webhook     --file F --alert NAME --entity E --status firing|resolved
                           --after T [--before T] [--wait S]
    analyze.py prom-alerts --file F --alert NAME --entity E
    analyze.py otel        --events F --sent F --entity E
    analyze.py gaps        --events F --entity E --max-gap S --outage-start T --outage-end T
                           [--live-after S]
    analyze.py backfill    --backfill F --live F --entity E [--min-events N] [--gauge NAME]

Inputs: topic dumps written by `kcat -C -e -f '%k\\t%s\\n'` (events, key then value) or
`-f '%s\\n'` (anomalies); the webhook receiver's file; polls of Prometheus' /api/v1/alerts
(`<unix time>\\t<json>` per line); otel_send.py's --out. T are unix times in seconds.

Each command prints detail lines (indented) and then one line `PASS ...` or `FAIL ...`,
and exits 0 on PASS, 1 on FAIL (2 on bad usage). Records must be strict JSON: NaN or
Infinity in a record is counted as invalid and fails the check.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time


def strict_json(text: str):
    def bad_constant(name):
        raise ValueError(f"non-finite number {name}")

    return json.loads(text, parse_constant=bad_constant)


def load_records(path: str, keyed: bool):
    """[(key, record)] of a topic dump, and the number of lines that were not valid JSON objects."""
    records, invalid = [], 0
    if not os.path.exists(path):
        return records, invalid
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            key = None
            if keyed:
                key, _, line = line.partition("\t")
            try:
                rec = strict_json(line)
            except ValueError:
                invalid += 1
                continue
            if not isinstance(rec, dict):
                invalid += 1
                continue
            records.append((key, rec))
    return records, invalid


def features_of(event: dict) -> dict:
    """The numeric fields of an event other than ts."""
    return {
        k: v
        for k, v in event.items()
        if k != "ts" and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def detail(msg: str) -> None:
    print(f"    {msg}")


def verdict(ok: bool, msg: str) -> int:
    print(f"{'PASS' if ok else 'FAIL'} {msg}")
    return 0 if ok else 1


def fmt_t(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int((t % 1) * 1000):03d}"


# ------------------------------------------------------------------------------- events
def cmd_events(a) -> int:
    records, invalid = load_records(a.events, keyed=True)
    job, _, instance = a.entity.partition("/")
    mine = [(k, r) for k, r in records if r.get("service") == a.entity]
    problems = []
    if invalid:
        problems.append(f"{invalid} records are not strict JSON objects")
    if not mine:
        return verdict(False, f"events: no event for {a.entity} among {len(records)} records on the topic")
    wrong_key = sum(1 for k, _ in mine if k != a.entity)
    if wrong_key:
        problems.append(f"{wrong_key} events keyed other than {a.entity!r}")
    wrong_labels = sum(1 for _, r in mine if r.get("job") != job or r.get("instance") != instance)
    if wrong_labels:
        problems.append(f"{wrong_labels} events without job={job!r} instance={instance!r}")
    no_ts = sum(1 for _, r in mine if not isinstance(r.get("ts"), (int, float)))
    if no_ts:
        problems.append(f"{no_ts} events without a numeric ts")
    counts = sorted({len(features_of(r)) for _, r in mine})
    last = features_of(mine[-1][1])
    detail(f"{len(mine)} events for {a.entity}; features per event: {counts}")
    detail("features of the last event: " + ", ".join(sorted(last)))
    if counts[0] < a.min_features or counts[-1] > a.max_features:
        problems.append(f"feature count {counts} outside [{a.min_features}, {a.max_features}]")
    for needed in a.require:
        if not any(needed in f for f in last):
            problems.append(f"no feature containing {needed!r}")
    excluded = sorted({r.get("service") for _, r in records if str(r.get("service", "")).startswith(a.not_prefix)})
    if a.not_prefix and excluded:
        problems.append(f"events for entities {excluded}, which --include should have dropped")
    for p in problems:
        detail(p)
    return verdict(
        not problems,
        f"events: {len(mine)} events for {a.entity}, {counts[0]}-{counts[-1]} features each"
        + (f"; {len(problems)} problem(s)" if problems else ""),
    )


# ------------------------------------------------------------------------------- anomalies
def anomalies_for(path: str, entity: str):
    records, invalid = load_records(path, keyed=False)
    mine = [r for _, r in records if r.get("service") == entity and isinstance(r.get("ts"), (int, float))]
    return sorted(mine, key=lambda r: r["ts"]), len(records), invalid


def top_contributions(rec: dict, n: int):
    contrib = rec.get("contributions") or {}
    items = [(k, v) for k, v in contrib.items() if isinstance(v, (int, float))]
    return sorted(items, key=lambda kv: kv[1], reverse=True)[:n]


def cmd_calm(a) -> int:
    mine, total, invalid = anomalies_for(a.anomalies, a.entity)
    calm = [r for r in mine if r["ts"] < a.until]
    node = []
    if a.events:
        records, _ = load_records(a.events, keyed=True)
        node = [r for _, r in records if r.get("service") == a.entity and isinstance(r.get("ts"), (int, float))]
    for r in calm if not a.quiet else []:
        top = top_contributions(r, 3)
        detail(f"anomaly at {fmt_t(r['ts'])} score {r.get('score')} threshold {r.get('threshold')}; top 3: "
               + ", ".join(f"{k}={v:.3g}" for k, v in top))
        # What the machine did: a calm period on a shared machine is not always calm.
        before = [busy_cpus(e) for e in node if r["ts"] - 60 <= e["ts"] < r["ts"] - 5]
        around = [busy_cpus(e) for e in node if r["ts"] - 5 <= e["ts"] <= r["ts"]]
        if before and around:
            detail(f"  busy CPUs: {sum(before) / len(before):.2f} in the minute before it, "
                   f"{max(around):.2f} at most in its last 5 s")
    ok = len(calm) <= a.max and not invalid
    return verdict(
        ok,
        f"calm: {len(calm)} anomaly record(s) for {a.entity} before the stress (at most {a.max} allowed; "
        f"{total} records on the topic" + (f", {invalid} invalid" if invalid else "") + ")",
    )


def busy_cpus(event: dict) -> float:
    """CPUs busy (the non-idle CPU time rates of a node event, summed)."""
    return sum(v for k, v in features_of(event).items()
               if k.startswith("node_cpu_seconds_total:rate{") and 'mode="idle"' not in k)


def cmd_stress(a) -> int:
    if a.events:
        # How much the stress stood out: a machine already busy before it hides it.
        records, _ = load_records(a.events, keyed=True)
        node = [r for _, r in records if r.get("service") == a.entity and isinstance(r.get("ts"), (int, float))]
        before = [busy_cpus(r) for r in node if a.start - 60 <= r["ts"] < a.start]
        during = [busy_cpus(r) for r in node if a.start + 5 <= r["ts"] <= (a.end or a.start + 60)]
        if before and during:
            detail(f"busy CPUs (non-idle CPU time per second): {sum(before) / len(before):.2f} in the minute "
                   f"before the stress, {sum(during) / len(during):.2f} during it")
    mine, total, invalid = anomalies_for(a.anomalies, a.entity)
    window = [r for r in mine if a.start <= r["ts"] <= a.start + a.within]
    after = [r for r in mine if r["ts"] >= a.start]
    detail(f"{len(after)} anomaly record(s) for {a.entity} since the stress started, {len(window)} within {a.within:g} s")
    good = None
    for i, r in enumerate(window):
        top = top_contributions(r, a.top)
        named = [k for k, _ in top if any(p in k for p in a.pattern)]
        if i < 5 or (good is None and named):
            detail(
                f"ts +{r['ts'] - a.start:.1f} s (detected +{(r.get('detected_at') or r['ts']) - a.start:.1f} s) "
                f"score {r.get('score')}: top {a.top}: " + ", ".join(f"{k}={v:.3g}" for k, v in top)
            )
        if good is None and named:
            good = r
    if invalid:
        detail(f"{invalid} records on the anomalies topic are not strict JSON")
    if not window:
        first = f"; first at +{after[0]['ts'] - a.start:.1f} s" if after else ""
        return verdict(False, f"stress: no anomaly record for {a.entity} with ts within {a.within:g} s of the stress start{first}")
    first_delay = window[0]["ts"] - a.start
    if good is None:
        return verdict(
            False,
            f"stress: first anomaly after {first_delay:.1f} s, but none within {a.within:g} s has a "
            f"{'/'.join(a.pattern)} feature in its top {a.top} contributions",
        )
    top = ", ".join(k for k, _ in top_contributions(good, a.top))
    return verdict(
        not invalid,
        f"stress: anomaly {good['ts'] - a.start:.1f} s after the stress start (first record at "
        f"{first_delay:.1f} s); top {a.top}: {top}",
    )


# ------------------------------------------------------------------------------- alerts
def matching_alerts(payload: dict, alert: str, entity: str, status: str):
    for al in payload.get("alerts") or []:
        labels = al.get("labels") or {}
        if labels.get("alertname") != alert or al.get("status") != status:
            continue
        if "service" in labels and labels["service"] != entity:
            continue
        yield al


def cmd_webhook(a) -> int:
    deadline = time.time() + a.wait
    while True:
        rows, _ = load_records(a.file, keyed=False)
        for _, row in rows:
            t = row.get("received_at", 0)
            if t < a.after:
                continue
            hits = list(matching_alerts(row.get("payload") or {}, a.alert, a.entity, a.status))
            if hits:
                labels = hits[0].get("labels") or {}
                detail("labels: " + ", ".join(f"{k}={v}" for k, v in sorted(labels.items())))
                late = a.before is not None and t > a.before
                when = f"{t - a.after:.1f} s after {a.after_what}"
                if late:
                    return verdict(False, f"alert: {a.alert} {a.status} reached the webhook {when}, "
                                   f"{t - a.before:.1f} s too late")
                return verdict(True, f"alert: {a.alert} {a.status} reached the webhook {when}")
        if time.time() >= deadline:
            seen = sorted({
                f"{(al.get('labels') or {}).get('alertname')}:{al.get('status')}"
                for _, row in rows for al in (row.get("payload") or {}).get("alerts") or []
            })
            detail(f"webhook received {len(rows)} notification(s): {', '.join(seen) or 'none'}")
            if a.before is not None:
                window = f"between {a.after_what} and {a.before - a.after:.0f} s later"
            else:
                window = f"within {a.wait:g} s after {a.after_what}"
            return verdict(False, f"alert: no {a.alert} {a.status} for {a.entity} at the webhook {window}")
        time.sleep(1)


def cmd_prom_alerts(a) -> int:
    polls = firing = 0
    first = None
    with open(a.file, encoding="utf-8") as f:
        for line in f:
            t, _, body = line.rstrip("\n").partition("\t")
            try:
                data = json.loads(body)
            except ValueError:
                continue
            polls += 1
            for al in (data.get("data") or {}).get("alerts") or []:
                labels = al.get("labels") or {}
                if labels.get("alertname") == a.alert and al.get("state") == "firing" and \
                        labels.get("service", a.entity) == a.entity:
                    firing += 1
                    first = first or float(t)
                    break
    when = f", first at {fmt_t(first)}" if first else ""
    return verdict(firing > 0, f"prometheus: {a.alert} firing in {firing} of {polls} polls of /api/v1/alerts during the stress{when}")


# ------------------------------------------------------------------------------- OTel
def cmd_otel(a) -> int:
    sent = [json.loads(line) for line in open(a.sent, encoding="utf-8") if line.strip()]
    records, invalid = load_records(a.events, keyed=True)
    events = sorted((r for _, r in records if r.get("service") == a.entity), key=lambda r: r.get("ts", 0))
    job, _, instance = a.entity.partition("/")
    gauge, counter = "otel_check_temperature", 'otel_check_requests:rate{route="/a"}'
    count_rate, sum_rate = 'otel_check_latency_count:rate{route="/a"}', 'otel_check_latency_sum:rate{route="/a"}'
    mean = 'otel_check_latency:mean{route="/a"}'
    detail(f"{len(sent)} exports sent, {len(events)} events for {a.entity} on the topic")
    problems = []
    if invalid:
        problems.append(f"{invalid} records on the topic are not strict JSON")
    if any(s["result"] != "SUCCESS" for s in sent):
        problems.append("not every export succeeded")
    if len(events) < len(sent) - 1:
        problems.append(f"{len(events)} events, expected one per export after the first ({len(sent) - 1})")
    if events:
        detail("features: " + ", ".join(sorted(features_of(events[-1]))))
    times = [s["time_unix_nano"] / 1e9 for s in sent]
    integral = expected_total = 0.0
    gauges_ok = means_checked = rates_checked = 0
    worst_mean = worst_rate = 0.0
    for ev in events:
        if ev.get("job") != job or ev.get("instance") != instance:
            problems.append(f"event at {ev.get('ts')}: job/instance {ev.get('job')!r}/{ev.get('instance')!r}")
        j = min(range(len(sent)), key=lambda i: abs(times[i] - ev.get("ts", 0)))
        if abs(times[j] - ev.get("ts", 0)) > 0.25:
            problems.append(f"event ts {ev.get('ts')} matches no export time")
            continue
        s = sent[j]
        if ev.get(gauge) != s["gauge"]:
            problems.append(f"export {s['seq']}: {gauge} = {ev.get(gauge)!r}, sent {s['gauge']!r}")
        else:
            gauges_ok += 1
        if j == 0:
            continue  # the first export: no rate or mean to expect
        p, dt = sent[j - 1], times[j] - times[j - 1]
        d_total = s["counter_total"] - p["counter_total"]
        rate = ev.get(counter)
        if not isinstance(rate, (int, float)) or rate <= 0:
            problems.append(f"export {s['seq']}: {counter} = {rate!r}, expected a positive rate")
        else:
            integral += rate * dt
            expected_total += d_total
            rates_checked += 1
        for name, want in ((count_rate, (s["hist_count"] - p["hist_count"]) / dt),
                           (sum_rate, (s["hist_sum"] - p["hist_sum"]) / dt)):
            got = ev.get(name)
            if not isinstance(got, (int, float)):
                problems.append(f"export {s['seq']}: no {name}")
            else:
                worst_rate = max(worst_rate, abs(got - want) / max(abs(want), 1e-12))
        if s["interval_values"]:
            want = sum(s["interval_values"]) / len(s["interval_values"])
            got = ev.get(mean)
            if not isinstance(got, (int, float)):
                problems.append(f"export {s['seq']}: no {mean}")
            else:
                err = abs(got - want) / abs(want)
                worst_mean = max(worst_mean, err)
                means_checked += 1
                if err > 1e-9:
                    problems.append(f"export {s['seq']}: {mean} = {got!r}, recorded values have mean {want!r}")
    if rates_checked:
        rel = abs(integral - expected_total) / expected_total
        detail(f"counter: sum of rate x dt = {integral:.4f} over {rates_checked} events, increase sent {expected_total:g} "
               f"(off by {rel * 100:.3f}%)")
        if rel > 0.05:
            problems.append(f"counter rates integrate to {integral:.4f}, the counter grew by {expected_total:g}")
    else:
        problems.append(f"no event carries {counter}")
    detail(f"histogram _count/_sum rates: worst relative error {worst_rate:.2e}")
    if worst_rate > 0.05:
        problems.append(f"histogram _count/_sum rates off by up to {worst_rate * 100:.1f}%")
    detail(f"histogram mean: {means_checked} checked, worst relative error {worst_mean:.2e}")
    if means_checked < len(sent) - 1:
        problems.append(f"only {means_checked} of {len(sent) - 1} intervals had their {mean} checked")
    for p in problems[:15]:
        detail(p)
    return verdict(
        not problems,
        f"otel: {len(events)} events for {a.entity}; gauge exact in {gauges_ok}, counter rates {rates_checked}, "
        f"means {means_checked} (worst rel. error {worst_mean:.1e})"
        + (f"; {len(problems)} problem(s)" if problems else ""),
    )


# ------------------------------------------------------------------------------- gaps
def cmd_gaps(a) -> int:
    records, invalid = load_records(a.events, keyed=True)
    ts = sorted(r["ts"] for _, r in records if r.get("service") == a.entity and isinstance(r.get("ts"), (int, float)))
    if len(ts) < 2:
        return verdict(False, f"gaps: {len(ts)} events for {a.entity}")
    gaps = [(ts[i] - ts[i - 1], ts[i - 1]) for i in range(1, len(ts))]
    big = [(g, t) for g, t in gaps if g > a.max_gap]
    dups = sum(1 for g, _ in gaps if g == 0)
    during = sum(1 for t in ts if a.outage_start <= t <= a.outage_end)
    live = ts[-1] - a.outage_end
    detail(f"{len(ts)} events for {a.entity} from {fmt_t(ts[0])} to {fmt_t(ts[-1])}; "
           f"{dups} duplicate timestamps; largest gap {max(gaps)[0]:.3f} s")
    detail(f"{during} events with ts inside the outage ({a.outage_end - a.outage_start:.1f} s); "
           f"last event {live:.1f} s after Kafka was back")
    for g, t in big[:10]:
        detail(f"gap of {g:.3f} s after {fmt_t(t)}")
    problems = []
    if big:
        problems.append(f"{len(big)} gap(s) above {a.max_gap:g} s")
    if invalid:
        problems.append(f"{invalid} records not strict JSON")
    if live < a.live_after:
        problems.append(f"the newest event is only {live:.1f} s past the outage (want {a.live_after:g} s)")
    return verdict(
        not problems,
        f"gaps: {len(ts)} node events, largest ts gap {max(gaps)[0]:.2f} s (limit {a.max_gap:g} s), "
        f"{during} inside the {a.outage_end - a.outage_start:.0f} s outage"
        + (f"; {'; '.join(problems)}" if problems else ""),
    )


# ------------------------------------------------------------------------------- backfill
def cmd_backfill(a) -> int:
    """The backfilled events: enough of them, one per step, the live events' features, and
    a gauge equal to the live value of the scrape each step falls after (Prometheus evaluates
    a range query at the step from the last sample before it)."""
    back, invalid = load_records(a.backfill, keyed=True)
    live, _ = load_records(a.live, keyed=True)
    back = sorted((r for _, r in back if r.get("service") == a.entity), key=lambda r: r["ts"])
    live = sorted((r for _, r in live if r.get("service") == a.entity), key=lambda r: r["ts"])
    if not back or not live:
        return verdict(False, f"backfill: {len(back)} backfilled and {len(live)} live events for {a.entity}")
    steps = sorted({round(back[i]["ts"] - back[i - 1]["ts"], 3) for i in range(1, len(back))})
    want = set(features_of(live[-1]))
    differ = [r["ts"] for r in back if set(features_of(r)) != want]
    same, compared = 0, 0
    lts = [r["ts"] for r in live]
    import bisect
    for r in back:
        i = bisect.bisect_right(lts, r["ts"]) - 1
        if i < 0 or a.gauge not in r or a.gauge not in live[i]:
            continue
        compared += 1
        same += live[i][a.gauge] == r[a.gauge]
    detail(f"{len(back)} backfilled events for {a.entity}, {fmt_t(back[0]['ts'])} to {fmt_t(back[-1]['ts'])}; steps {steps[:5]}")
    detail(f"{a.gauge}: equal to the live value in {same} of {compared} events")
    problems = []
    if len(back) < a.min_events:
        problems.append(f"only {len(back)} events (want {a.min_events})")
    if steps != [1.0]:
        problems.append(f"steps {steps[:5]} (want 1 s)")
    if differ:
        problems.append(f"{len(differ)} events with other features than the live ones")
    if compared == 0 or same < 0.9 * compared:
        problems.append(f"{a.gauge} equal in {same} of {compared}")
    if invalid:
        problems.append(f"{invalid} records not strict JSON")
    return verdict(
        not problems,
        f"backfill: {len(back)} events of {a.entity} from Prometheus, 1 s apart, the live features, "
        f"{a.gauge} equal to the live value in {same} of {compared}"
        + (f"; {'; '.join(problems)}" if problems else ""),
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("events")
    p.add_argument("--events", required=True)
    p.add_argument("--entity", required=True)
    p.add_argument("--min-features", type=int, default=1)
    p.add_argument("--max-features", type=int, default=1000)
    p.add_argument("--require", action="append", default=[], help="a feature name must contain this")
    p.add_argument("--not-prefix", default="", help="no event's service may start with this")
    p.set_defaults(fn=cmd_events)

    p = sub.add_parser("calm")
    p.add_argument("--anomalies", required=True)
    p.add_argument("--entity", required=True)
    p.add_argument("--until", type=float, required=True)
    p.add_argument("--max", type=int, default=1)
    p.add_argument("--events", help="the node's events (keyed dump): busy CPUs around each record")
    p.add_argument("--quiet", action="store_true", help="only the verdict")
    p.set_defaults(fn=cmd_calm)

    p = sub.add_parser("stress")
    p.add_argument("--anomalies", required=True)
    p.add_argument("--entity", required=True)
    p.add_argument("--start", type=float, required=True)
    p.add_argument("--within", type=float, default=15)
    p.add_argument("--top", type=int, default=3)
    p.add_argument("--pattern", type=lambda s: s.split(","), default=["cpu", "load"])
    p.add_argument("--events", help="the events topic: report busy CPUs before and during the stress")
    p.add_argument("--end", type=float, help="when the stress ended")
    p.set_defaults(fn=cmd_stress)

    p = sub.add_parser("webhook")
    p.add_argument("--file", required=True)
    p.add_argument("--alert", required=True)
    p.add_argument("--entity", required=True)
    p.add_argument("--status", choices=["firing", "resolved"], required=True)
    p.add_argument("--after", type=float, required=True)
    p.add_argument("--after-what", default="the reference time")
    p.add_argument("--before", type=float)
    p.add_argument("--wait", type=float, default=0)
    p.set_defaults(fn=cmd_webhook)

    p = sub.add_parser("prom-alerts")
    p.add_argument("--file", required=True)
    p.add_argument("--alert", required=True)
    p.add_argument("--entity", required=True)
    p.set_defaults(fn=cmd_prom_alerts)

    p = sub.add_parser("otel")
    p.add_argument("--events", required=True)
    p.add_argument("--sent", required=True)
    p.add_argument("--entity", required=True)
    p.set_defaults(fn=cmd_otel)

    p = sub.add_parser("gaps")
    p.add_argument("--events", required=True)
    p.add_argument("--entity", required=True)
    p.add_argument("--max-gap", type=float, default=3)
    p.add_argument("--outage-start", type=float, required=True)
    p.add_argument("--outage-end", type=float, required=True)
    p.add_argument("--live-after", type=float, default=10)
    p.set_defaults(fn=cmd_gaps)

    p = sub.add_parser("backfill")
    p.add_argument("--backfill", required=True)
    p.add_argument("--live", required=True)
    p.add_argument("--entity", required=True)
    p.add_argument("--min-events", type=int, default=100)
    p.add_argument("--gauge", default="node_load1")
    p.set_defaults(fn=cmd_backfill)

    a = ap.parse_args()
    try:
        return a.fn(a)
    except (OSError, KeyError, TypeError, ValueError) as e:
        return verdict(False, f"{a.cmd}: cannot analyse: {e!r}")


if __name__ == "__main__":
    sys.exit(main())
