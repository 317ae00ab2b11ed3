"""Test vectors for the Rust port: inputs and the C reference outputs (default parameters).
   results/vectors_seed.csv   first 6000 events of the seed stream (3 features; P and epd from its timestamps)
   results/vectors_d2s00.csv  first 5760 events (the whole train split) of d2-s00 (19 metrics, P=288, epd=288);
                              needs the full data set (--data DIR): the repository's cut has no d2-s00
   results/vectors_node1s.csv a made-up node scraped every second (1800 events, epd=86400, no seasonality): two
                              CPU-time rates read from a 100 Hz counter (steps of 0.01 s, timing jitter), a count
                              that sits at 0 and moves once, a load-like gauge, and both CPUs saturated from event
                              1500 to 1559, which exercises the count floor (qf) and the move floor (rf: iowait sits
                              at 0 between one-jiffy blips)
   results/vectors_d2s04_hold.csv first 2400 events of d2-s04 with the hold channel on (hold=8) and a calibration
                              window of 288 events (C=288), so that the hold channel starts within them; needs the
                              full data set
Columns: t, x0..x{M-1}, R, flag, H, c0..c{M-1} (contributions). Values printed with %.17g.
The repository's copies (crates/kanary-core/tests/data/codev_seed.csv, codev_d2s00.csv, codev_node1s.csv,
codev_d2s04_hold.csv) are these files, the first two cut to their first 3000 and 2400 events, with floats in
shortest round-trip form."""
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


def node1s(n=1800):
    rng = np.random.default_rng(11)
    dt = 1.0 + rng.uniform(-0.002, 0.002, n)               # scrape timing jitter
    busy = np.where(rng.random(n) < 0.1, 3, 1) + rng.integers(0, 3, n)   # jiffies of 100 per CPU-second
    busy[1500:1560] = 100 - rng.integers(0, 2, 60)          # both CPUs saturated
    user = busy / 100.0 / dt
    idle = (100 - busy - (rng.random(n) < 0.05)) / 100.0 / dt
    iowait = (rng.random(n) < 0.03) / 100.0 / dt             # one jiffy now and then
    blocked = np.zeros(n); blocked[900] = 1                   # a count that moves once
    load = np.empty(n); load[0] = 0.2
    for t in range(1, n):
        target = 2.0 if 1500 <= t < 1560 else 0.2
        load[t] = load[t - 1] + (target - load[t - 1]) / 60.0 + rng.normal(0, 0.005)
    return np.column_stack([idle, user, iowait, blocked, np.round(load, 2)])


write(os.path.join(OUT, "vectors_node1s.csv"), node1s(), P=0, epd=86400.0)
X, y, ts = run_sim.load_seed()
write(os.path.join(OUT, "vectors_seed.csv"), X[:6000], P=codev.events_per_day(ts), epd=codev.epd(ts))
names = load.services("d2")
if "d2-s00" not in names:
    raise SystemExit(f"d2-s00 is not in this data folder (services: {', '.join(names)}); pass --data with the full set")
Xtr, _, _, _, _ = load.load("d2")
write(os.path.join(OUT, "vectors_d2s00.csv"), Xtr[names.index("d2-s00")][:5760], P=288, epd=288.0)
write(os.path.join(OUT, "vectors_d2s04_hold.csv"), Xtr[names.index("d2-s04")][:2400], P=288, epd=288.0, C=288, hold=8.0)
