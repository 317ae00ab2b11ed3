import numpy as np, sys, json
from proxy import data
import detlib, curve, opmetrics as om
Xtr, Xte, y, _, _ = data("d2")
S, ntr = Xtr.shape[0], Xtr.shape[1]
def runmean(x, k):
    c = np.cumsum(np.r_[np.zeros(k), x]); return (c[k:] - c[:-k]) / k
thrs = np.geomspace(0.3, 6, 30)
kw = dict(freeze=0, thr=1e9, W=72, qcal=0.0, vcap=50)
res = {}
for s in range(S):
    X = np.concatenate([Xtr[s], Xte[s]])
    _, _, _, zz, vv = detlib.run(X, score_from=ntr, want_z=True, want_v=True, **kw)
    zc = np.clip(np.nan_to_num(zz), -10, 10)
    for name, G in (("gauss", np.sign(zz) * np.sqrt(2 * vv)), ("gauss_cap3", np.sign(zz) * np.minimum(np.sqrt(2 * vv), 3)), ("zclip", zc)):
        Si = np.linalg.inv(np.cov(G[1000:ntr].T) + np.eye(19))
        for k in (1, 2):
            d2 = runmean(np.einsum("ij,jk,ik->i", G, Si, G), k)
            res.setdefault(f"{name} k{k}", []).append(d2[ntr:] / np.quantile(d2[1000:ntr], 0.99))
        if name == "gauss":
            res.setdefault("sum v k2", []).append(runmean(vv.sum(1), 2)[ntr:] / np.quantile(runmean(vv.sum(1), 2)[1000:ntr], 0.99))
for k, sc in res.items():
    rows = curve.curve(sc, y, thrs)
    m1 = curve.at_pages(rows, 1.0); m3 = curve.at_pages(rows, 0.3)
    print(k, "| <=1:", om.fmt(m1), "| <=0.3: early", round(m3["early"], 3), "caught", round(m3["caught"], 3), flush=True)
