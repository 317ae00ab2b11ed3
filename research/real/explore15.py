import numpy as np, sys, json, os
import paths
from proxy import data
import detlib, curve, opmetrics as om
Xtr, Xte, y, _, _ = data("d2")
S, ntr = Xtr.shape[0], Xtr.shape[1]
def runmean(x, k):
    c = np.cumsum(np.r_[np.zeros(k), x]); return (c[k:] - c[:-k]) / k
sc = []
for s in range(S):
    X = np.concatenate([Xtr[s], Xte[s]])
    _, _, _, zz = detlib.run(X, score_from=ntr, want_z=True, freeze=0, thr=1e9, W=72)
    zc = np.clip(np.nan_to_num(zz), -10, 10)
    Si = np.linalg.inv(np.cov(zc[1000:ntr].T) + np.eye(19))
    d2 = runmean(np.einsum("ij,jk,ik->i", zc, Si, zc), 2)
    sc.append(d2[ntr:] / np.quantile(d2[1000:ntr], 0.99))
np.save(os.path.join(paths.cache_dir(), "sc_best.npy"), np.array(sc))
rows = curve.curve(sc, y, np.geomspace(0.3, 6, 30))
m1 = curve.at_pages(rows, 1.0); thr = [t for t, m in rows if m is m1][0]
print("thr", thr, om.fmt(m1))
cats = {"early": 0, "blocked(disarmed)": 0, "weak": 0, "late-cross": 0}
gaps = []
for s in range(S):
    f = curve.flags_for(sc[s], thr)
    for a, b in om.incidents(y[s]):
        ff = np.flatnonzero(f[a:b + 1])
        if len(ff) and ff[0] <= 3: cats["early"] += 1
        elif (sc[s][a:a + 4] >= thr).any(): cats["blocked(disarmed)"] += 1
        else:
            cats["weak"] += 1; gaps.append(sc[s][a:a + 4].max() / thr)
print(cats, "weak: max score/thr in first 4 pct", np.percentile(gaps, [25, 50, 75]).round(2))
