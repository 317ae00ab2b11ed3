import numpy as np, load, opmetrics as om, sys
from explore_lib import feats
ds = sys.argv[1] if len(sys.argv) > 1 else "d2"
Xtr, Xte, y, _, _ = load.load(ds)
S = Xtr.shape[0]; ntr = Xtr.shape[1]
np.set_printoptions(linewidth=250)
for s in range(0, S, 5):
    X = np.concatenate([Xtr[s], Xte[s]])
    zl, zs, sc, lv = feats(X)
    zs = np.where(np.isnan(zs), zl, zs)
    z = np.where(np.abs(zl) < np.abs(zs), zl, zs)[ntr:]
    for a, b in om.incidents(y[s])[:2]:
        print(f"svc {s} incident {a}-{b} len {b-a+1}")
        for t in range(a - 3, min(a + 8, b + 1)):
            print(f"  {t-a:+3d} y={y[s][t]}", " ".join(f"{v:6.1f}" if abs(v) < 1e4 else "   big" for v in z[t]))
