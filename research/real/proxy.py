"""Fast separability proxy: fraction of incidents whose score in the first 4 events exceeds the
service's normal-event (1-q) quantile. Labels used for evaluation only."""
import sys, json
import numpy as np
import opmetrics as om, detlib
from runner import data

def get(ds, **kw):
    Xtr, Xte, y, _, _ = data(ds)
    S, ntr = Xtr.shape[0], Xtr.shape[1]
    out = []
    for s in range(S):
        X = np.concatenate([Xtr[s], Xte[s]])
        sc, fl, co, zz, vv = detlib.run(X, score_from=ntr, want_z=True, want_v=True, **kw)
        out.append((zz[ntr:], vv[ntr:]))
    return out, y

def proxy(scores, y, q=(0.003, 0.01, 0.03)):
    out = []
    for qq in q:
        hits = []
        for s in range(len(y)):
            sc = scores[s]; thr = np.quantile(sc[y[s] == 0], 1 - qq)
            for a, b in om.incidents(y[s]): hits.append(sc[a:a + 4].max() > thr)
        out.append(np.mean(hits))
    return np.round(out, 3)
