"""Test vectors for the Rust port: inputs and the C reference outputs (default parameters).
   results/vectors_seed.csv   first 6000 events of the seed stream (3 features; P and epd from its timestamps)
   results/vectors_d2s00.csv  first 5760 events (the whole train split) of d2-s00 (19 metrics, P=288, epd=288);
                              needs the full data set (--data DIR): the repository's cut has no d2-s00
Columns: t, x0..x{M-1}, R, flag, H, c0..c{M-1} (contributions). Values printed with %.17g.
The repository's copies (crates/kanary-core/tests/data/codev_seed.csv, codev_d2s00.csv) are these files cut
to their first 3000 and 2400 events, with floats in shortest round-trip form."""
import os
import numpy as np
import codev, run_sim, load

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def write(path, X, **kw):
    R, fl, co, _, H = codev.run(X, want_contrib=True, want_h=True, **kw)
    M = X.shape[1]
    with open(path, "w") as f:
        f.write("# params: " + repr({**codev.DEFAULTS, **kw}) + "\n")
        f.write(",".join(["t"] + [f"x{j}" for j in range(M)] + ["R", "flag", "H"] + [f"c{j}" for j in range(M)]) + "\n")
        for t in range(len(X)):
            f.write(",".join([str(t)] + ["%.17g" % v for v in X[t]] + ["%.17g" % R[t], str(int(fl[t])), "%.17g" % H[t]] + ["%.17g" % v for v in co[t]]) + "\n")
    print(path, len(X), "events,", int(fl.sum()), "flagged")


X, y, ts = run_sim.load_seed()
write(os.path.join(OUT, "vectors_seed.csv"), X[:6000], P=codev.events_per_day(ts), epd=codev.epd(ts))
names = load.services("d2")
if "d2-s00" not in names:
    raise SystemExit(f"d2-s00 is not in this data folder (services: {', '.join(names)}); pass --data with the full set")
Xtr, _, _, _, _ = load.load("d2")
write(os.path.join(OUT, "vectors_d2s00.csv"), Xtr[names.index("d2-s00")][:5760], P=288, epd=288.0)
