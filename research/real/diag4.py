import numpy as np, json, sys
import opmetrics as om, codev
from run_services import data
kw = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
Xtr, Xte, y, _, _ = data("d2")
S, ntr = Xtr.shape[0], Xtr.shape[1]
cats = {"early": 0, "R>=1 in first4 but not flagged (refractory)": 0, "max R in first4 0.5-1": 0, "0.2-0.5": 0, "<0.2": 0}
for s in range(S):
    R, fl, _, _ = codev.run(np.concatenate([Xtr[s], Xte[s]]), score_from=ntr, **kw)
    R, fl = R[ntr:], fl[ntr:]
    for a, b in om.incidents(y[s]):
        f = np.flatnonzero(fl[a:b + 1]); mx = R[a:a + 4].max()
        if len(f) and f[0] <= 3: cats["early"] += 1
        elif mx >= 1: cats["R>=1 in first4 but not flagged (refractory)"] += 1
        elif mx >= 0.5: cats["max R in first4 0.5-1"] += 1
        elif mx >= 0.2: cats["0.2-0.5"] += 1
        else: cats["<0.2"] += 1
print(cats)
