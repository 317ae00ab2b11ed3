import numpy as np, sys, json
from run_services import data
import codev, curve, opmetrics as om
Xtr, Xte, y, _, _ = data("d2")
S, ntr = Xtr.shape[0], Xtr.shape[1]
def runmean(x, k):
    c = np.cumsum(np.r_[np.zeros(k), x]); return (c[k:] - c[:-k]) / k
thrs = np.geomspace(0.3, 6, 30)
res = {}
for s in range(S):
    X = np.concatenate([Xtr[s], Xte[s]])
    R, fl, _, zz = codev.run(X, score_from=ntr, want_z=True, freeze=0, thr=1e9)
    res.setdefault("codevR", []).append(R[ntr:])
    Si = np.linalg.inv(np.cov(zz[1000:ntr].T) + np.eye(19))
    d = np.einsum("ij,jk,ik->i", zz, Si, zz); d2 = runmean(d, 2)
    res.setdefault("static k2", []).append(d2[ntr:] / np.quantile(d2[1000:ntr], 0.99))
    # running-quantile normalisation with static cov
    q = np.array([np.quantile(d2[max(0, t - 2016):t], 0.99) if t > 300 else np.inf for t in range(ntr, len(d2), 12)])
    q = np.repeat(q, 12)[:len(d2) - ntr]
    res.setdefault("static cov, run q", []).append(d2[ntr:] / q)
for k, sc in res.items():
    rows = curve.curve(sc, y, thrs)
    m1 = curve.at_pages(rows, 1.0); m3 = curve.at_pages(rows, 0.3)
    print(k, "| <=1:", om.fmt(m1), "| <=0.3: early", round(m3["early"], 3), "caught", round(m3["caught"], 3), flush=True)
