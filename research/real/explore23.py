"""Post-collection floor channel (memory leaks of the microservices scenario): does the rolling
minimum of a metric, against the same statistic on earlier days, catch the leaks codev misses, and
what does it cost on d2?  Labels are used only to score.

  python explore23.py micro W K[,K...]       memory's floor, scale = MAD of its residual
  python explore23.py d2 W C K[,K...] [--skip-still]
                                             every metric's floor, scale >= C x the metric's MAD
                                             (--skip-still: not where that MAD is 0)

The floor F_t is the minimum of the last W events. Its residual r_t = F_t - median(F at the same
time of day on the previous 7 days); the score is (r_t - median r) / (1.4826 MAD r), both over the
previous day of residuals (lagged by W). Flags = codev's default flags OR score > K."""
import sys
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view as swv
import opmetrics as om, codev, run_sim
from run_services import data

ND = 7


def floor_score(x, w, P, start, c=0.0, skip_still=False):
    n = len(x)
    F = np.full(n, np.nan)
    F[w - 1:] = swv(x, w).min(1)
    r = np.full(n, np.nan)
    for t in range(P + w, n):
        r[t] = F[t] - np.median([F[t - d * P] for d in range(1, ND + 1) if t - d * P >= w - 1])
    z = np.zeros(n)
    for t in range(max(start, P + w), n):
        h = r[max(0, t - w - P):t - w]
        h = h[np.isfinite(h)]
        if len(h) < 10:
            continue
        med = np.median(h)
        mad = 1.4826 * np.median(np.abs(h - med))
        xx = x[max(0, t - w - P):t - w]
        mx = np.median(xx)
        sx = 1.4826 * np.median(np.abs(xx - mx))
        if c > 0 and skip_still and sx == 0:
            continue
        z[t] = (r[t] - med) / max(mad, c * sx, 1e-6 * abs(mx) + 1e-9)
    return z


def micro(w, ks):
    per = {}
    for s, (X, y, ts) in sorted(run_sim.load_micro().items()):
        P = codev.events_per_day(ts)
        _, fl, _, _, H = codev.run(X, want_h=True, P=P, epd=codev.epd(ts))
        per[s] = (fl, y, H, len(y) * np.median(np.diff(ts)) / om.STEP_S, floor_score(X[:, 2], w, int(round(P)), 0))
    for k in [None] + ks:
        ms = []
        for fl, y, H, days, z in per.values():
            m = om.service_metrics(fl if k is None else fl | (z > k), y, H)
            m["events"] = days
            ms.append(m)
        print("micro", "codev" if k is None else f"w {w} k {k}", om.fmt(om.aggregate(ms)), flush=True)


def services(ds, w, c, ks, skip_still=False):
    Xtr, Xte, y, _, _ = data(ds)
    ntr = Xtr.shape[1]
    runs = []
    for s in range(Xtr.shape[0]):
        X = np.nan_to_num(np.concatenate([Xtr[s], Xte[s]]))
        _, fl, _, _ = codev.run(X, score_from=ntr)
        Z = np.array([floor_score(X[:, j], w, 288, ntr, c, skip_still) for j in range(X.shape[1])]).T
        runs.append((fl[ntr:], Z[ntr:]))
    print(ds, "codev", "(metrics still over the day skipped)" if skip_still else "", om.fmt(om.evaluate([f for f, _ in runs], list(y))))
    for k in ks:
        print(ds, f"w {w} c {c} k {k}", om.fmt(om.evaluate([f | (Z > k).any(1) for f, Z in runs], list(y))), flush=True)


if __name__ == "__main__":
    a = sys.argv[1:]
    if a[0] == "micro":
        micro(int(a[1]), [float(v) for v in a[2].split(",")])
    else:
        services(a[0], int(a[1]), float(a[2]), [float(v) for v in a[3].split(",")], "--skip-still" in a)
