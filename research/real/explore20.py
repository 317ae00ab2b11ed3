import numpy as np, sys, json
from run_services import data
import codev, curve, opmetrics as om
Xtr, Xte, y, _, _ = data("d2")
S, ntr = Xtr.shape[0], Xtr.shape[1]
kw = dict(freeze=0, thr=1e9); kw.update(json.loads(sys.argv[1]))
thrs = np.geomspace(0.3, 6, 40)
sc = []
for s in range(S):
    X = np.concatenate([Xtr[s], Xte[s]])
    R, fl, _, zz = codev.run(X, score_from=ntr, **kw)
    sc.append(R[ntr:])
for al in json.loads(sys.argv[2]):
    rows = curve.curve(sc, y, thrs, **al)
    m1 = curve.at_pages(rows, 1.0); m3 = curve.at_pages(rows, 0.3)
    t1 = [t for t, m in rows if m is m1][0]; t3 = [t for t, m in rows if m is m3][0]
    print(al, f"thr1 {t1:.3f} thr03 {t3:.3f}", "| <=1:", om.fmt(m1), "| <=0.3: early", round(m3["early"], 3), "caught", round(m3["caught"], 3), flush=True)
