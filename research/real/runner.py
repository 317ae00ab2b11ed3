"""Evaluate the detector on the service data sets (train warm-up, then test)."""
import sys, json, time
import numpy as np
import load, opmetrics as om, detlib

_cache = {}


def data(ds):
    if ds not in _cache:
        _cache[ds] = load.load(ds)
    return _cache[ds]


def run_ds(ds, **kw):
    Xtr, Xte, y, _, _ = data(ds)
    S, ntr = Xtr.shape[0], Xtr.shape[1]
    flags, scores = [], []
    for s in range(S):
        X = np.concatenate([Xtr[s], Xte[s]])
        sc, fl, _, _ = detlib.run(X, score_from=ntr, **kw)
        flags.append(fl[ntr:]); scores.append(sc[ntr:])
    return om.evaluate(flags, list(y), scores), flags, scores


if __name__ == "__main__":
    kw = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    for ds in ("d2", "d3"):
        t0 = time.time()
        m, _, _ = run_ds(ds, **kw)
        print(ds, om.fmt(m), f"({time.time()-t0:.1f}s)")
