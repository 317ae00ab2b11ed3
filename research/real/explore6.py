import numpy as np, load, opmetrics as om, sys
from explore_lib import feats
ds = "d2"
Xtr, Xte, y, _, _ = load.load(ds)
S = Xtr.shape[0]; ntr = Xtr.shape[1]
np.set_printoptions(linewidth=250)
shown = 0
for s in range(S):
    incs = om.incidents(y[s])
    for a, b in incs:
        if b - a + 1 in (273, 283, 110) and shown < 3:
            shown += 1
            X = np.concatenate([Xtr[s], Xte[s]])
            zl, zs, sc, lv = feats(X, W=288)
            zs = np.where(np.isnan(zs), zl, zs)
            z = np.where(np.abs(zl) < np.abs(zs), zl, zs)[ntr:]
            print(f"svc {s} incident {a}-{b} len {b-a+1}  (time of day {a%288})")
            for t in range(a - 3, a + 20):
                print(f"  {t-a:+3d} y={y[s][t]}", " ".join(f"{v:6.1f}" if abs(v) < 1e4 else "   big" for v in z[t]))
