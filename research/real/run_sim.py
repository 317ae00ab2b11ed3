"""Simulated streams from `kanary simulate`: seed (pointwise F1) and microservices (operator metrics).
The streams are written on first use with the repository's kanary binary (paths.sim_file; --kanary PATH
to use another) into ${KANARY_CACHE:-~/.cache/kanary}/real/sim/{seed,micro}.jsonl."""
import sys, json
import numpy as np
import opmetrics as om, codev, paths

_c = {}


def load_seed():
    if "seed" not in _c:
        L = [json.loads(l) for l in open(paths.sim_file("seed"))]
        X = np.array([[d["latency"], d["cpu"], d["memory"]] for d in L]); y = np.array([d["label"] for d in L])
        ts = np.array([d["ts"] for d in L], float)
        _c["seed"] = (X, y, ts)
    return _c["seed"]


def load_micro():
    if "micro" not in _c:
        by = {}
        for l in open(paths.sim_file("micro")):
            d = json.loads(l)
            by.setdefault(d["service"], []).append(([d[k] for k in ("latency", "cpu", "memory", "rps", "error_rate")], d["label"], d["ts"]))
        _c["micro"] = {s: (np.array([a for a, _, _ in v], float), np.array([b for _, b, _ in v]), np.array([c for _, _, c in v], float)) for s, v in by.items()}
    return _c["micro"]


def seed_f1(**kw):
    X, y, ts = load_seed()
    kw = dict(kw); kw.setdefault("P", codev.events_per_day(ts)); kw.setdefault("epd", codev.epd(ts))
    R, fl, _, _ = codev.run(X, **kw)
    tp = int((fl & (y == 1)).sum()); fp = int((fl & (y == 0)).sum()); fn = int((~fl & (y == 1)).sum())
    p = tp / max(tp + fp, 1); r = tp / max(tp + fn, 1)
    return dict(f1=2 * p * r / max(p + r, 1e-12), precision=p, recall=r, tp=tp, fp=fp, fn=fn)


def micro(**kw):
    per = []
    days = 0.0
    for s, (X, y, ts) in sorted(load_micro().items()):
        k = dict(kw); k.setdefault("P", codev.events_per_day(ts)); k.setdefault("epd", codev.epd(ts))
        R, fl, _, _, H = codev.run(X, want_h=True, **k)
        m = om.service_metrics(fl, y, H)
        # pages per service-day from the real cadence (90 s here), not the 300 s of the JumpStarter data
        m["events"] = len(y) * (np.median(np.diff(ts)) / om.STEP_S)
        per.append(m)
    return om.aggregate(per)


if __name__ == "__main__":
    kw = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    print("seed", seed_f1(**kw))
    print("micro", om.fmt(micro(**kw)))
