import numpy as np, ctypes, load, opmetrics as om, sys
from explore_lib import feats
ds = sys.argv[1] if len(sys.argv) > 1 else "d2"
Xtr, Xte, y, _, _ = load.load(ds)
S = Xtr.shape[0]; ntr = Xtr.shape[1]
res = {k: ([], []) for k in ("level", "seas", "min")}
for s in range(S):
    X = np.concatenate([Xtr[s], Xte[s]])
    zl, zs, sc, lv = feats(X)
    zs = np.where(np.isnan(zs), zl, zs)
    z = np.where(np.abs(zl) < np.abs(zs), zl, zs)
    for name, zz in (("level", zl), ("seas", zs), ("min", z)):
        a = np.nan_to_num(np.abs(zz), nan=0)
        tr = np.sort(a[1000:ntr], axis=0)  # calibration on train (after warm-up)
        te = a[ntr:]
        # tail prob: fraction of train values >= current
        u = np.empty_like(te)
        for j in range(te.shape[1]):
            u[:, j] = (len(tr) - np.searchsorted(tr[:, j], te[:, j], side="left") + 1) / (len(tr) + 1)
        res[name][0].append(u)
for name in res:
    print("==", name)
    for alpha in (1e-2, 3e-3, 1e-3):
        st = []; nm = []
        for s in range(S):
            c = (res[name][0][s] <= alpha).sum(1)
            for a, b in om.incidents(y[s]): st.append(c[a:a + 4].max())
            nm.append(c[y[s] == 0])
        st = np.array(st); nm = np.concatenate(nm)
        print(f"  alpha {alpha}: count>=k normal frac:", [round((nm >= kk).mean(), 4) for kk in (1, 2, 3, 4, 5)], "inc-start:", [round((st >= kk).mean(), 2) for kk in (1, 2, 3, 4, 5)])
