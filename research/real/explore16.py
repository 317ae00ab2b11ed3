import numpy as np, sys, json, os
import paths  # needs sc_best.npy from explore15.py
from proxy import data
import curve, opmetrics as om
Xtr, Xte, y, _, _ = data("d2")
sc = np.load(os.path.join(paths.cache_dir(), "sc_best.npy"))
np.set_printoptions(linewidth=250)
shown = 0
for s in range(len(sc)):
    for a, b in om.incidents(y[s]):
        if sc[s][a:a + 4].max() < 0.15 and shown < 4 and a > 300:
            shown += 1
            print(f"svc {s} inc {a}-{b} len {b-a+1} score first4 {sc[s][a:a+4].round(2)}")
            X = Xte[s]
            ref = np.median(X[a - 288:a], 0); sd = np.median(np.abs(np.diff(X[a - 288:a], axis=0)), 0) + 1e-9
            for t in list(range(a - 4, a + 8)) + [a + 15, a + 30, a + 60]:
                print(f"  {t-a:+3d} y={y[s][t]} sc={sc[s][t]:5.2f}", " ".join(f"{v:7.1f}" for v in np.clip((X[t] - ref) / sd, -9999, 9999)))
