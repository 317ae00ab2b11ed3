#!/usr/bin/env python3
"""Builds node-1s.jsonl.gz from recordings of scripts/gateway_test.sh (see README.md).

  python3 data/node/build.py OUT.jsonl.gz NAME=FILE[,FILE...] [NAME=FILE...]

Each FILE holds the events of one run as kanary wrote them to Kafka (`key<TAB>json` lines,
as kcat prints them, or plain JSON lines): the node's events are kept (service `node/...`),
renamed to service NAME, de-duplicated by `ts` and labelled: the stress starts at the first
event of the first run of three events in which the node's busy CPUs (2 minus the idle CPU
seconds per second of its two CPUs) are at least 1.5, moved back over the events of the ramp
before it whose busy CPUs exceed 0.3; `label` is true from there for the 60 s stress-ng runs.
Events more than 90 s after the start are dropped (later steps of the test load the machine
in other ways). Only the standard library is used."""
import gzip
import json
import sys

IDLE = 'mode="idle"'


def rows_of(path):
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            _, tab, rest = line.partition("\t")
            yield json.loads(rest if tab else line)


def busy(ev):
    return 2.0 - sum(v for k, v in ev.items() if IDLE in k)


def build(name, paths):
    by_ts = {}
    for p in paths:
        for ev in rows_of(p):
            if str(ev.get("service", "")).startswith("node/"):
                by_ts[ev["ts"]] = ev
    evs = [by_ts[t] for t in sorted(by_ts)]
    b = [busy(e) for e in evs]
    start = next((i for i in range(len(b) - 2) if min(b[i:i + 3]) >= 1.5), None)
    if start is None:
        raise SystemExit(f"build.py: {name}: no stress (three events with 1.5 busy CPUs) in {paths}")
    while start > 0 and b[start - 1] > 0.3:
        start -= 1
    t0 = evs[start]["ts"]
    out = []
    for i, e in enumerate(evs):
        if e["ts"] > t0 + 90:
            break
        row = {"ts": e["ts"], "service": name}
        row.update({k: v for k, v in e.items() if k not in ("ts", "service", "job", "instance", "label")})
        row["label"] = i >= start and e["ts"] <= t0 + 60
        out.append(row)
    print(f"{name}: {len(out)} events, stress from event {start} ({sum(r['label'] for r in out)} labelled)", file=sys.stderr)
    return out


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    rows = []
    for arg in sys.argv[2:]:
        name, _, files = arg.partition("=")
        rows += build(name, files.split(","))
    rows.sort(key=lambda r: (r["ts"], r["service"]))
    with gzip.open(sys.argv[1], "wt") as f:
        for r in rows:
            f.write(json.dumps(r, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main()
