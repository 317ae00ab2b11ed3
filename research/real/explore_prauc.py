import numpy as np, json, sys
import opmetrics as om, codev
from run_services import data
for ds in ("d2",):
    Xtr, Xte, y, _, _ = data(ds)
    S, ntr = Xtr.shape[0], Xtr.shape[1]
    Rs = []
    for s in range(S):
        R, fl, _, _ = codev.run(np.concatenate([Xtr[s], Xte[s]]), score_from=ntr)
        Rs.append(R[ntr:])
    for lam in (0, 0.9, 0.97, 0.99, 0.995):
        aps = []
        for s in range(S):
            R = Rs[s]; h = np.empty_like(R); prev = 0.0
            for t in range(len(R)):
                prev = max(R[t], lam * prev); h[t] = prev
            aps.append(om.average_precision(h, y[s]))
        print(ds, "peak-hold decay", lam, "PR-AUC", round(float(np.nanmean(aps)), 3))
