import numpy as np, sys, json
from run_services import data
import codev, curve, opmetrics as om
Xtr, Xte, y, _, _ = data("d2")
S, ntr = Xtr.shape[0], Xtr.shape[1]
kw = dict(freeze=0, thr=1e9, Ccov=100000); kw.update(json.loads(sys.argv[1]) if len(sys.argv) > 1 else {})
thrs = np.geomspace(0.1, 6, 50)
res = {}
for s in range(S):
    X = np.concatenate([Xtr[s], Xte[s]])
    R, fl, co, zz = codev.run(X, score_from=ntr, want_contrib=True, **kw)
    R, co = R[ntr:], co[ntr:]
    top = co.max(1); neff = 1 / np.maximum((co ** 2).sum(1), 1e-9)
    res.setdefault("R", []).append(R)
    for g in (0.5, 1.0, 2.0):
        res.setdefault(f"R*(1-top)^{g}", []).append(R * (1 - top + 0.05) ** g)
    for k in (2, 3):
        res.setdefault(f"R*min(1,neff/{k})", []).append(R * np.minimum(1, neff / k))
for k, sc in res.items():
    rows = curve.curve(sc, y, thrs)
    m1 = curve.at_pages(rows, 1.0); m3 = curve.at_pages(rows, 0.3)
    print(k, "| <=1:", om.fmt(m1), "| <=0.3: early", round(m3["early"], 3), "caught", round(m3["caught"], 3), flush=True)
