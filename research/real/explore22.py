"""Breadth channel exploration: does a count/energy of moderately deviating metrics add early catches
beyond codev's flags at a bounded page cost?  python explore22.py d2 [q ...] [--cfg '{"rho":0.03}'] [--stats E3,E2]
The breadth flags are ORed with codev's; each service's breadth threshold is the quantile q of its own
2-event-mean breadth over the train split after its first two days (no labels)."""
import sys, json
import numpy as np
import opmetrics as om, codev
from run_services import data

ds = sys.argv[1] if len(sys.argv) > 1 else "d2"
args = sys.argv[2:]
cfg, names = {}, ["E3", "E2", "N2", "N15"]
if "--cfg" in args:
    i = args.index("--cfg"); cfg = json.loads(args[i + 1]); del args[i:i + 2]
if "--stats" in args:
    i = args.index("--stats"); names = args[i + 1].split(","); del args[i:i + 2]
qs = [float(v) for v in args] or [0.999, 0.9995, 0.9998]
Xtr, Xte, y, _, _ = data(ds)
S, ntr = Xtr.shape[0], Xtr.shape[1]
runs = []
for s in range(S):
    X = np.concatenate([Xtr[s], Xte[s]])
    R, fl, _, zz = codev.run(X, score_from=ntr, want_z=True, **cfg)
    runs.append((R, fl, np.clip(np.nan_to_num(zz), -10, 10)))


def stats(z):
    a = np.abs(z)
    return {"E3": np.minimum(a, 3.0).__pow__(2).sum(1), "N2": (a >= 2).sum(1).astype(float),
            "N15": (a >= 1.5).sum(1).astype(float), "E2": np.minimum(a, 2.0).__pow__(2).sum(1)}


base = om.evaluate([r[1][ntr:] for r in runs], list(y))
print(ds, "codev", cfg, om.fmt(base))
for name in names:
    for q in qs:
        flags = []
        for s, (R, fl, z) in enumerate(runs):
            b = stats(z)[name]
            b2 = np.convolve(b, [0.5, 0.5])[:len(b)]          # 2-event mean
            thr = np.quantile(b2[2 * 288:ntr], q)             # label-free: train split after 2 days
            thr = max(thr, 1e-9)
            flags.append(fl[ntr:] | (b2[ntr:] > thr))
        m = om.evaluate(flags, list(y))
        print(f"  {name} q {q}: {om.fmt(m)}", flush=True)
