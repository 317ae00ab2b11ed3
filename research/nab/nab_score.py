"""NAB scorer (kanary research), following docs/evaluation.md "NAB scoring".

Usage:
    python nab_score.py            # runs the sanity checks (null -> 0, perfect -> 100)

API:
    corpus = load_corpus(data_dir, windows_file)   # list of File(name, ts, values, windows)
    res = score_corpus(corpus, scores_by_name)     # {profile: (normalised, threshold, raw)}

Definitions (per file, rows 0..n-1):
  * window [start, end] -> rows L = first row with ts >= start, R = last row with ts <= end,
    W = R - L + 1.
  * probation P = min(floor(0.15 n), 750): rows < P are never detections.
  * detection: row i >= P with score_i >= threshold.
  * sigma(y) = 2 / (1 + exp(5 y)) - 1.
  * earliest detection i in window [L, R]: + A * sigma(-(R - i + 1)/W) / sigma(-1).
    A window with no detection: -FN.
  * detection outside all windows: B * sigma((i - R')/(W' - 1)) where R', W' are the right edge
    and width of the closest preceding window (sigma taken as -1 when y > 3); with no preceding
    window: -B.
  * one threshold per profile over the whole corpus, maximising the raw total (exact sweep over
    all distinct score values); normalised 100 (S - S_null) / (S_perfect - S_null) with
    S_null = -FN * nwin and S_perfect = A * nwin.
"""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass

import numpy as np

PROFILES = {
    "standard": (1.0, 1.0, 0.11),
    "reward_low_FP_rate": (1.0, 1.0, 0.22),
    "reward_low_FN_rate": (1.0, 2.0, 0.11),
}

HERE = os.path.dirname(os.path.abspath(__file__))
# The NAB folder (data/<category>/<file>.csv, labels/windows.json): the repository's data/nab,
# or the folder named by KANARY_NAB_DATA.
NAB_DIR = os.environ.get("KANARY_NAB_DATA") or os.path.join(HERE, "..", "..", "data", "nab")
DATA_DIR = os.path.join(NAB_DIR, "data")
WINDOWS_FILE = os.path.join(NAB_DIR, "labels", "windows.json")


def sigma(y):
    return 2.0 / (1.0 + np.exp(5.0 * np.asarray(y, dtype=float))) - 1.0


@dataclass
class File:
    name: str              # "category/file.csv"
    ts: np.ndarray         # datetime64[s]
    values: np.ndarray     # float64
    windows: list          # list of (L, R) row indices (inclusive)
    probation: int

    @property
    def n(self):
        return len(self.values)


def _parse_ts(s: str) -> np.datetime64:
    s = s.strip().replace(" ", "T")
    return np.datetime64(s, "s")


def load_corpus(data_dir: str = DATA_DIR, windows_file: str = WINDOWS_FILE) -> list[File]:
    if not os.path.isfile(windows_file) or not os.path.isdir(data_dir):
        raise SystemExit(f"NAB data not found: need {windows_file} and {data_dir} "
                         "(the repository's data/nab; set KANARY_NAB_DATA to use another folder)")
    with open(windows_file) as f:
        wins = json.load(f)
    out = []
    for name in sorted(wins):
        ts, vals = [], []
        with open(os.path.join(data_dir, name)) as f:
            r = csv.reader(f)
            next(r)
            for row in r:
                ts.append(_parse_ts(row[0]))
                vals.append(float(row[1]))
        ts = np.array(ts, dtype="datetime64[s]")
        vals = np.array(vals, dtype=float)
        n = len(vals)
        rows = []
        for start, end in wins[name]:
            s, e = _parse_ts(start), _parse_ts(end)
            L = int(np.searchsorted(ts, s, side="left"))       # first ts >= start
            R = int(np.searchsorted(ts, e, side="right")) - 1  # last ts <= end
            if R >= L:
                rows.append((L, R))
        rows.sort()
        out.append(File(name, ts, vals, rows, min(int(math.floor(0.15 * n)), 750)))
    return out


def _fp_weights(f: File) -> np.ndarray:
    """sigma-based FP factor (<= 0) for every row outside windows, NaN inside windows,
    0 in probation (no effect). Multiply by B."""
    n = f.n
    w = np.full(n, -1.0)
    inwin = np.zeros(n, bool)
    for L, R in f.windows:
        inwin[L:R + 1] = True
    idx = np.arange(n)
    for k, (L, R) in enumerate(f.windows):
        W = R - L + 1
        nxt = f.windows[k + 1][0] if k + 1 < len(f.windows) else n
        seg = idx[R + 1:nxt]
        if len(seg) == 0:
            continue
        if W > 1:
            y = (seg - R) / (W - 1)
            s = sigma(y)
            s[y > 3] = -1.0
        else:
            s = np.full(len(seg), -1.0)
        w[R + 1:nxt] = s
    w[inwin] = np.nan
    w[:f.probation] = 0.0
    return w


def _events(f: File, scores: np.ndarray, A: float, FN: float, B: float):
    """Return (threshold values, deltas): total(t) = base + sum(deltas[values >= t])."""
    scores = np.asarray(scores, dtype=float)
    assert len(scores) == f.n, (f.name, len(scores), f.n)
    vals, dels = [], []
    fw = _fp_weights(f)
    fp_rows = np.where(~np.isnan(fw) & (np.arange(f.n) >= f.probation))[0]
    vals.append(scores[fp_rows])
    dels.append(B * fw[fp_rows])
    s1 = sigma(-1.0)
    for L, R in f.windows:
        W = R - L + 1
        lo = max(L, f.probation)
        if lo > R:
            continue  # window entirely in probation: always a miss
        seg = scores[lo:R + 1]
        # records of the prefix maximum
        rec_i, rec_v = [], []
        m = -np.inf
        for j, v in enumerate(seg):
            if v > m:
                m = v
                rec_i.append(lo + j)
                rec_v.append(v)
        tp = [A * float(sigma(-(R - i + 1) / W)) / s1 for i in rec_i]
        # highest record: detection appears, FN cost removed
        vals.append(np.array([rec_v[-1]]))
        dels.append(np.array([tp[-1] + FN]))
        for k in range(len(rec_i) - 1):
            vals.append(np.array([rec_v[k]]))
            dels.append(np.array([tp[k] - tp[k + 1]]))
    return np.concatenate(vals), np.concatenate(dels)


def sweep(corpus: list[File], scores_by_name: dict, profile: str):
    """Exact threshold sweep. Returns (normalised score, threshold, raw score, per-file raw)."""
    A, FN, B = PROFILES[profile]
    nwin = sum(len(f.windows) for f in corpus)
    base = -FN * nwin
    allv, alld = [], []
    for f in corpus:
        v, d = _events(f, scores_by_name[f.name], A, FN, B)
        allv.append(v)
        alld.append(d)
    v = np.concatenate(allv)
    d = np.concatenate(alld)
    order = np.argsort(-v, kind="stable")
    v, d = v[order], d[order]
    cum = np.cumsum(d)
    # only evaluate at the last element of each group of equal values
    last = np.ones(len(v), bool)
    last[:-1] = v[:-1] != v[1:]
    cand_tot = base + cum[last]
    cand_thr = v[last]
    # threshold above every score = null detector
    tots = np.concatenate([[base], cand_tot])
    thrs = np.concatenate([[np.inf], cand_thr])
    k = int(np.argmax(tots))
    S, thr = float(tots[k]), float(thrs[k])
    s_null, s_perf = base, A * nwin
    norm = 100.0 * (S - s_null) / (s_perf - s_null)
    return norm, thr, S


def score_at(f: File, scores: np.ndarray, thr: float, profile: str):
    """Direct (non-sweep) raw score for one file at a fixed threshold; also counts."""
    A, FN, B = PROFILES[profile]
    scores = np.asarray(scores, float)
    det = scores >= thr
    det[:f.probation] = False
    fw = _fp_weights(f)
    s1 = sigma(-1.0)
    total = 0.0
    tp = fn = 0
    for L, R in f.windows:
        W = R - L + 1
        hit = np.where(det[L:R + 1])[0]
        if len(hit):
            i = L + hit[0]
            total += A * float(sigma(-(R - i + 1) / W)) / s1
            tp += 1
        else:
            total -= FN
            fn += 1
    fpm = det & ~np.isnan(fw)
    total += B * float(np.sum(fw[fpm]))
    return total, tp, fn, int(fpm.sum())


def score_corpus(corpus, scores_by_name, profiles=PROFILES):
    return {p: sweep(corpus, scores_by_name, p) for p in profiles}


def per_category(corpus, scores_by_name, thr, profile):
    """Normalised score per category at a fixed (corpus-wide) threshold."""
    A, FN, B = PROFILES[profile]
    cats = {}
    for f in corpus:
        c = f.name.split("/")[0]
        raw, tp, fn, fp = score_at(f, scores_by_name[f.name], thr, profile)
        d = cats.setdefault(c, [0.0, 0, 0, 0, 0])
        d[0] += raw
        d[1] += len(f.windows)
        d[2] += tp
        d[3] += fn
        d[4] += fp
    out = {}
    for c, (raw, nw, tp, fn, fp) in cats.items():
        if nw:
            norm = 100.0 * (raw + FN * nw) / (A * nw + FN * nw)
        else:
            norm = float("nan")
        out[c] = (norm, raw, nw, tp, fn, fp)
    return out


def _sanity():
    corpus = load_corpus()
    nwin = sum(len(f.windows) for f in corpus)
    print(f"{len(corpus)} files, {nwin} windows, {sum(f.n for f in corpus)} rows")
    null = {f.name: np.zeros(f.n) for f in corpus}
    perfect = {}
    for f in corpus:
        s = np.zeros(f.n)
        for L, R in f.windows:
            s[L] = 1.0
        perfect[f.name] = s
    ok = True
    for p in PROFILES:
        n0 = sweep(corpus, null, p)[0]
        n1, thr, raw = sweep(corpus, perfect, p)
        print(f"{p:20s} null={n0:7.3f} perfect={n1:7.3f} (thr={thr}, raw={raw:.3f})")
        ok &= abs(n0) < 1e-9 and abs(n1 - 100) < 1e-9
    # cross-check the sweep against the direct scorer on random scores
    rng = np.random.default_rng(0)
    rnd = {f.name: rng.random(f.n) for f in corpus}
    for p in PROFILES:
        norm, thr, raw = sweep(corpus, rnd, p)
        raw2 = sum(score_at(f, rnd[f.name], thr, p)[0] for f in corpus)
        print(f"{p:20s} random: sweep raw={raw:.6f} direct raw={raw2:.6f} norm={norm:.3f}")
        ok &= abs(raw - raw2) < 1e-6
    # windows whose left edge is in probation
    inprob = [(f.name, L, R, f.probation) for f in corpus for (L, R) in f.windows if L < f.probation]
    print("windows starting in probation:", inprob)
    print("SANITY", "OK" if ok else "FAILED")
    return ok


if __name__ == "__main__":
    raise SystemExit(0 if _sanity() else 1)
