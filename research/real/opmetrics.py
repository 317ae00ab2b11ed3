"""Operator metrics for per-service flag streams (kanary research/real).

Per service (events in time order):
  * incident = maximal run of label==1 events; caught if any event flagged;
    delay = index of first flagged event in the incident - incident start; early if delay <= 3.
  * false alarms: flags outside incidents; flags of one service at most 6 events apart
    (index difference <= 6) form one alarm; pages = ceil((last - first + 1) / 12).
  * false pages per service-day = pages / (events * 300 / 86400).
  * normal flagged = flagged share of events outside incidents.
  * PR-AUC = average precision of the raw score vs label (per service; mean over services with positives).
Aggregates: caught / early are totals over all incidents, pages/day = total pages / total service-days,
normal flagged = total flagged normal / total normal, median delay over all caught incidents.
"""
import numpy as np

GAP = 6
PAGE_LEN = 12
EARLY = 3
STEP_S = 300


def incidents(y):
    y = np.asarray(y).astype(bool)
    d = np.diff(np.concatenate([[0], y.astype(np.int8), [0]]))
    starts = np.flatnonzero(d == 1)
    ends = np.flatnonzero(d == -1) - 1
    return list(zip(starts, ends))


def false_pages(flag, y):
    idx = np.flatnonzero(np.asarray(flag, bool) & ~np.asarray(y, bool))
    if len(idx) == 0:
        return 0, 0
    brk = np.flatnonzero(np.diff(idx) > GAP)
    firsts = np.concatenate([[idx[0]], idx[brk + 1]])
    lasts = np.concatenate([idx[brk], [idx[-1]]])
    lens = lasts - firsts + 1
    return int(np.sum((lens + PAGE_LEN - 1) // PAGE_LEN)), len(firsts)


def average_precision(score, y):
    """sklearn-style AP (step-wise, ties grouped)."""
    y = np.asarray(y).astype(bool)
    P = y.sum()
    if P == 0:
        return np.nan
    s = np.asarray(score, float)
    s = np.where(np.isfinite(s), s, -np.inf)  # nan/-inf ranked last
    o = np.argsort(-s, kind="mergesort")
    ss, yy = s[o], y[o]
    tp = np.cumsum(yy)
    fp = np.cumsum(~yy)
    last = np.r_[np.flatnonzero(np.diff(ss) != 0), len(ss) - 1]  # last index of each tie group
    tp, fp = tp[last], fp[last]
    prec = tp / (tp + fp)
    rec = tp / P
    rec_prev = np.r_[0, rec[:-1]]
    return float(np.sum((rec - rec_prev) * prec))


def service_metrics(flag, y, score=None):
    flag = np.asarray(flag, bool); y = np.asarray(y, bool)
    inc = incidents(y)
    delays = []
    caught = early = 0
    for a, b in inc:
        f = np.flatnonzero(flag[a:b + 1])
        if len(f):
            caught += 1
            delays.append(int(f[0]))
            early += f[0] <= EARLY
    pages, alarms = false_pages(flag, y)
    return dict(n_inc=len(inc), caught=caught, early=int(early), delays=delays, pages=pages,
                alarms=alarms, events=len(y), normal=int((~y).sum()), normal_flagged=int((flag & ~y).sum()),
                ap=average_precision(score, y) if score is not None else np.nan)


def aggregate(per):
    n_inc = sum(p["n_inc"] for p in per)
    caught = sum(p["caught"] for p in per)
    early = sum(p["early"] for p in per)
    delays = [d for p in per for d in p["delays"]]
    days = sum(p["events"] for p in per) * STEP_S / 86400.0
    pages = sum(p["pages"] for p in per)
    aps = [p["ap"] for p in per if not np.isnan(p["ap"])]
    return dict(n_inc=n_inc, caught=caught / max(n_inc, 1), early=early / max(n_inc, 1),
                med_delay=float(np.median(delays)) if delays else np.nan,
                pages_day=pages / days, normal_flagged=sum(p["normal_flagged"] for p in per) / max(sum(p["normal"] for p in per), 1),
                prauc=float(np.mean(aps)) if aps else np.nan)


def evaluate(flags, ys, scores=None):
    """flags, ys, scores: lists (or 2-d arrays) per service."""
    per = [service_metrics(flags[i], ys[i], None if scores is None else scores[i]) for i in range(len(ys))]
    return aggregate(per)


def fmt(m):
    return (f"caught {m['caught']:.3f} early {m['early']:.3f} med_delay {m['med_delay']:.1f} "
            f"pages/d {m['pages_day']:.3f} normflag {m['normal_flagged']*100:.2f}% prauc {m['prauc']:.3f}"
            + (f" (raw R {m['prauc_rawR']:.3f})" if "prauc_rawR" in m else ""))


def _selftest():
    #            0 1 2 3 4 5 6 7 8 9 ...
    y = np.array([0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0])
    f = np.zeros(40, bool)
    f[6] = True          # incident 1 (2..6): delay 4 -> caught, not early
    f[9] = f[15] = True  # diff 6 -> one alarm, length 7 -> 1 page
    f[22] = True         # diff 7 from 15 -> new alarm, 1 page; 22..35 -> length 14 -> 2 pages
    f[28] = f[34] = f[35] = True  # wait, 22,28,34,35 all <=6 apart -> one alarm length 14 -> 2 pages
    m = service_metrics(f, y)
    assert m["n_inc"] == 2 and m["caught"] == 1 and m["early"] == 0 and m["delays"] == [4], m
    assert m["pages"] == 1 + 2 and m["alarms"] == 2, m
    assert m["normal_flagged"] == 6 and m["normal"] == 33, m
    # incident 2 caught at delay 0 via flag inside
    f2 = f.copy(); f2[31] = True
    m2 = service_metrics(f2, y)
    assert m2["caught"] == 2 and m2["early"] == 1 and m2["delays"] == [4, 0]
    # flags inside incidents split false-alarm runs only by index distance (they are excluded)
    assert false_pages(np.ones(12, bool), np.zeros(12, bool)) == (1, 1)
    assert false_pages(np.ones(13, bool), np.zeros(13, bool)) == (2, 1)
    assert false_pages(np.array([1, 0, 0, 0, 0, 0, 0, 1], bool), np.zeros(8, bool)) == (2, 2)
    # AP
    assert abs(average_precision([0.9, 0.8, 0.7, 0.1], [1, 0, 1, 0]) - (1 + 2 / 3) / 2) < 1e-12
    assert abs(average_precision([0.5, 0.5, 0.5, 0.5], [1, 0, 1, 0]) - 0.5) < 1e-12
    assert np.isnan(average_precision([1, 2], [0, 0]))
    agg = aggregate([m2, m])
    assert agg["caught"] == 3 / 4 and agg["early"] == 1 / 4 and agg["med_delay"] == 4
    assert abs(agg["pages_day"] - 6 / (80 * 300 / 86400)) < 1e-12
    print("opmetrics self-test OK")


if __name__ == "__main__":
    _selftest()
