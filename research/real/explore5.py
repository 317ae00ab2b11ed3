import numpy as np, load, opmetrics as om, sys
from explore_lib import feats
ds = sys.argv[1] if len(sys.argv) > 1 else "d2"
Xtr, Xte, y, _, _ = load.load(ds)
S = Xtr.shape[0]; ntr = Xtr.shape[1]
def proxy(scores, q=(0.003, 0.01)):
    out = []
    for qq in q:
        hits = []
        for s in range(S):
            sc = scores[s]; nm = sc[y[s] == 0]
            thr = np.quantile(nm, 1 - qq)
            for a, b in om.incidents(y[s]): hits.append(sc[a:a + 4].max() > thr)
        out.append(np.mean(hits))
    return np.round(out, 3)
R = {}
for W in (12, 36, 288):
    for s in range(S):
        X = np.concatenate([Xtr[s], Xte[s]])
        zl, zs, sc, lv = feats(X, W=W)
        zs = np.where(np.isnan(zs), zl, zs)
        zm = np.where(np.abs(zl) < np.abs(zs), zl, zs)
        for name, zz in (("lvl", zl), ("min", zm)):
            a = np.nan_to_num(np.abs(zz), nan=0)
            for qq in (0.99, 0.999):
                q = np.quantile(a[1000:ntr], qq, axis=0)
                q = np.maximum(q, 1.0)   # floor: z of 1 scale unit
                R.setdefault((W, name, qq), []).append(np.log(np.maximum(a[ntr:] / q, 1e-3)))
for key, L in R.items():
    res = {"max": proxy([l.max(1) for l in L]),
           "sumpos": proxy([np.maximum(l, 0).sum(1) for l in L]),
           "top2": proxy([np.sort(l, 1)[:, -2:].sum(1) for l in L]),
           "top3": proxy([np.sort(l, 1)[:, -3:].sum(1) for l in L]),
           "cnt0": proxy([(l > 0).sum(1) + 1e-3 * l.max(1) for l in L])}
    print(key, res)
print("---- delay distribution")
for key in [(288, 'min', 0.99), (12, 'min', 0.999)]:
    L = R[key]
    d = []
    for s in range(S):
        sc = np.maximum(L[s], 0).sum(1); thr = np.quantile(sc[y[s] == 0], 0.99)
        for a, b in om.incidents(y[s]):
            f = np.flatnonzero(sc[a:b + 1] > thr)
            pre = np.flatnonzero(sc[max(a - 12, 0):a] > thr)
            d.append((f[0] if len(f) else -1, len(pre) > 0, b - a + 1))
    d = np.array(d)
    print(key, "never", (d[:, 0] < 0).mean().round(2), "delay pct", np.percentile(d[d[:, 0] >= 0, 0], [25, 50, 75, 90]), "flag in 12 before start", d[:, 1].mean().round(2))
    print(" early-missed incidents: (delay, pre, len)", [tuple(x) for x in d[(d[:, 0] > 3) | (d[:, 0] < 0)]][:40])
