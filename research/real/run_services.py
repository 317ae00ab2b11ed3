"""d2/d3: warm up on train (learning, no scoring), then score test while learning. Usage:
   python run_services.py '{"thr": 1.0}' [d2 d3]    |  sweep: python run_services.py '{}' d2 --thr 0.5,1,2"""
import sys, json, time
import numpy as np
import load, opmetrics as om, codev

_cache = {}


def data(ds):
    if ds not in _cache:
        _cache[ds] = load.load(ds)
    return _cache[ds]


def run_ds(ds, **kw):
    Xtr, Xte, y, _, _ = data(ds)
    S, ntr = Xtr.shape[0], Xtr.shape[1]
    flags, scores, raw = [], [], []
    for s in range(S):
        X = np.concatenate([Xtr[s], Xte[s]])
        R, fl, _, _, H = codev.run(X, score_from=ntr, want_h=True, **kw)
        flags.append(fl[ntr:]); scores.append(H[ntr:]); raw.append(R[ntr:])
    m = om.evaluate(flags, list(y), scores)
    m["prauc_rawR"] = float(np.nanmean([om.average_precision(raw[s], y[s]) for s in range(S)]))
    return m, flags, scores


if __name__ == "__main__":
    kw = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    dss = [a for a in sys.argv[2:] if a in ("d2", "d3")] or ["d2", "d3"]
    thrs = [None]
    if "--thr" in sys.argv:
        thrs = [float(v) for v in sys.argv[sys.argv.index("--thr") + 1].split(",")]
    for ds in dss:
        for thr in thrs:
            k = dict(kw)
            if thr is not None:
                k["thr"] = thr
            t0 = time.time()
            m, _, _ = run_ds(ds, **k)
            print(ds, f"thr {k.get('thr', codev.DEFAULTS['thr'])}", om.fmt(m), f"({time.time()-t0:.1f}s)", flush=True)
