import numpy as np, sys, json
from proxy import get, proxy, data
import detlib
kw = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
Xtr, Xte, y, _, _ = data("d2")
S, ntr = Xtr.shape[0], Xtr.shape[1]
res = {}
for s in range(S):
    X = np.concatenate([Xtr[s], Xte[s]])
    sc, fl, co, zz, vv = detlib.run(X, score_from=ntr, want_z=True, want_v=True, **kw)
    zc = np.clip(np.nan_to_num(zz), -10, 10)
    ztr, zte = zc[1000:ntr], zc[ntr:]
    for lam in (0.1, 1.0):
        Sig = np.cov(ztr.T) + lam * np.eye(19)
        Si = np.linalg.inv(Sig)
        d2 = np.einsum("ij,jk,ik->i", zte, Si, zte)
        res.setdefault(f"maha lam{lam}", []).append(d2)
    # PCA residual: remove top k PCs of train z
    w, U = np.linalg.eigh(np.cov(ztr.T))
    for k in (1, 3):
        Uk = U[:, -k:]
        r = zte - zte @ Uk @ Uk.T
        res.setdefault(f"pcares k{k}", []).append((r ** 2).sum(1))
        res.setdefault(f"pcascore k{k}", []).append(((zte @ Uk) ** 2 / w[-k:]).sum(1))
    res.setdefault("abs mean z", []).append(np.abs(zte.mean(1)))
    res.setdefault("sum v", []).append(vv[ntr:].sum(1))
    res.setdefault("sum v + maha1", []).append(vv[ntr:].sum(1) / 3 + np.log1p(res["maha lam1.0"][-1]))
for k, v in res.items():
    print(k, proxy(v, y))
