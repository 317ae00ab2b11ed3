import numpy as np, sys, json
from proxy import data
import detlib, curve, opmetrics as om
Xtr, Xte, y, _, _ = data("d2")
S, ntr = Xtr.shape[0], Xtr.shape[1]
kw = {"freeze": 0, "thr": 1e9}; kw.update(json.loads(sys.argv[1]) if len(sys.argv) > 1 else {})
base = []; zs = []
for s in range(S):
    X = np.concatenate([Xtr[s], Xte[s]])
    sc, fl, co, zz, vv = detlib.run(X, score_from=ntr, want_z=True, want_v=True, **kw)
    zc = np.clip(np.nan_to_num(zz), -10, 10)
    Si = np.linalg.inv(np.cov(zc[1000:ntr].T) + np.eye(19))
    d2 = np.einsum("ij,jk,ik->i", zc, Si, zc)
    base.append(d2); zs.append((zc, Si))
def calib(sc):  # per-service normalise by train 99th pct (label-free)
    return [x[ntr:] / np.quantile(x[1000:ntr], 0.99) for x in sc]
def runmean(x, k):
    c = np.cumsum(np.r_[np.zeros(k), x]); return (c[k:] - c[:-k]) / k
variants = {"d2": base}
for k in (2, 3, 4):
    variants[f"mean{k}"] = [runmean(b, k) for b in base]
    # maha of mean z over k events
    variants[f"maha(meanz{k})"] = [np.einsum("ij,jk,ik->i", np.apply_along_axis(lambda c: runmean(c, k), 0, zc), Si, np.apply_along_axis(lambda c: runmean(c, k), 0, zc)) for zc, Si in zs]
variants["log d2 + log mean3"] = [np.log1p(b) + np.log1p(runmean(b, 3)) for b in base]
thrs = np.geomspace(0.3, 6, 30)
for k, v in variants.items():
    print(k); curve.show(k, curve.curve(calib(v), y, thrs))
