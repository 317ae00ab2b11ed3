import numpy as np, sys, json
from proxy import data
import detlib, opmetrics as om
Xtr, Xte, y, _, _ = data("d2")
S, ntr = Xtr.shape[0], Xtr.shape[1]
kw = {"freeze": 0, "thr": 1e9}
offs = np.arange(-6, 16)
prof = []; prof_abs = []; base_abs = []
for s in range(S):
    X = np.concatenate([Xtr[s], Xte[s]])
    sc, fl, co, zz, vv = detlib.run(X, score_from=ntr, want_z=True, want_v=True, **kw)
    zc = np.clip(np.nan_to_num(zz[ntr:]), -10, 10)
    base_abs.append(np.abs(zc[y[s] == 0]).mean(0))
    for a, b in om.incidents(y[s]):
        if a + offs[-1] < len(zc) and a + offs[0] >= 0:
            prof_abs.append(np.abs(zc[a + offs]))
            prof.append(np.median(np.abs(zc[a + offs]), 1))
np.set_printoptions(linewidth=220, precision=2, suppress=True)
pa = np.mean(prof_abs, 0)
print("base mean |z| per metric", np.mean(base_abs, 0))
print("offset: mean|z| per metric (clip 10)")
for i, o in enumerate(offs): print(f"{o:+3d}", pa[i], " med-over-metrics(median)", np.median(np.array(prof)[:, i]).round(2))
