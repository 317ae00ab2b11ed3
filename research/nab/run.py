"""Run detectors over the NAB corpus and print a score table.

    python run.py                 # every detector in REGISTRY
    python run.py name1 name2     # only those
    python run.py --cat name      # per-category breakdown for a detector
    python run.py --write DIR name   # also write DIR/<category>/<file>.csv (NAB results layout)
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

import detectors as D
import nab_score as N

# name -> callable(values) -> scores in [0,1]
def _kanary_feats_ratio(v, ts):
    F = D.kanary_window_features(v)
    F[:, 0] = F[:, 0] - D.trailing_median(v, 1000, every=10)
    R = np.max(np.stack([D.decaying_max_ratio(np.abs(F[:, j])) for j in range(F.shape[1])]), 0)
    return D.squash(D.suppress(R, 1.04, 20, low=1.0), 1.0)


def _probation(v):
    return min(int(0.15 * len(v)), 750)


REGISTRY = {
    # the recommendation (defaults of detectors.NoveltyRatio)
    "novelty_ratio": lambda v, ts: D.novelty_ratio(v, ts),
    # variants of it
    "novelty_ratio seasonal=min": lambda v, ts: D.novelty_ratio(v, ts, seas_mode="min"),
    "novelty_ratio no seasonal feature": lambda v, ts: D.novelty_ratio(v, ts, feats=("up", "down", "dev"), days=0),
    "novelty_ratio no cooldown": lambda v, ts: D.novelty_ratio(v, ts, cooldown=0),
    "novelty_ratio max horizon 2016 rows": lambda v, ts: D.novelty_ratio(v, ts, max_horizon=2016),
    "novelty_ratio all-time max": lambda v, ts: D.novelty_ratio(v, ts, max_horizon=None),
    "novelty_ratio decayed max 0.99995": lambda v, ts: D.novelty_ratio(v, ts, max_horizon=None, decay=0.99995),
    # kanary's default window features (value, d1, z8, z32, z128)
    "kanary feats, per-feature record ratio": _kanary_feats_ratio,
    "robust z kanary feats, fit probation, squash": lambda v, ts: D.squash(
        D.robust_z_static(D.kanary_window_features(v), _probation(v)), 10.0),
    "robust z kanary feats, rolling H1000, squash": lambda v, ts: D.squash(
        D.robust_z_rolling(D.kanary_window_features(v)), 10.0),
    "robust z kanary feats, rolling, record ratio": lambda v, ts: D.record_ratio_norm(
        D.robust_z_rolling(D.kanary_window_features(v))),
    "IF kanary feats, fit probation": lambda v, ts: D.iforest_scores(
        D.kanary_window_features(v), _probation(v)),
    "IF novelty feats, refit 250/1000": lambda v, ts: D.iforest_scores(
        D.novelty_features(v, ts), _probation(v), refit_every=250, refit_hist=1000),
    "IF novelty feats, refit, record ratio": lambda v, ts: D.record_ratio_norm(D.iforest_scores(
        D.novelty_features(v, ts), _probation(v), refit_every=250, refit_hist=1000)),
    # NAB's own baseline, as a check of the scorer (published 41.4 on these 41 files)
    "windowed_gaussian (NAB baseline)": lambda v, ts: D.windowed_gaussian(v),
}


def run_detector(corpus, fn):
    t0 = time.perf_counter()
    out = {f.name: np.asarray(fn(f.values, f.ts), float) for f in corpus}
    dt = time.perf_counter() - t0
    rows = sum(f.n for f in corpus)
    for k, s in out.items():
        assert np.all(np.isfinite(s)), k
        assert s.min() >= 0 and s.max() <= 1, (k, s.min(), s.max())
    return out, dt / rows * 1e6


def table(corpus, names, cat=False):
    print(f"{'detector':44s} {'standard':>9s} {'lowFP':>9s} {'lowFN':>9s}   thr(std)  us/row")
    res_all = {}
    for name in names:
        scores, us = run_detector(corpus, REGISTRY[name])
        res = N.score_corpus(corpus, scores)
        res_all[name] = (res, scores)
        print(f"{name:44s} {res['standard'][0]:9.2f} {res['reward_low_FP_rate'][0]:9.2f} "
              f"{res['reward_low_FN_rate'][0]:9.2f}   {res['standard'][1]:.6f}  {us:6.1f}",
              flush=True)
        at = []
        for p, (A, FNw, B) in N.PROFILES.items():
            raw = sum(N.score_at(f, scores[f.name], 0.5, p)[0] for f in corpus)
            nw = sum(len(f.windows) for f in corpus)
            at.append(100 * (raw + FNw * nw) / (A * nw + FNw * nw))
        if name.startswith("novelty_ratio"):  # scores calibrated so that 0.5 is the alarm level
            print(f"{'':44s} {at[0]:9.2f} {at[1]:9.2f} {at[2]:9.2f}   (fixed threshold 0.5)")
        if cat:
            for p in N.PROFILES:
                thr = res[p][1]
                print(f"  {p} (threshold {thr:.6f}):")
                pc = N.per_category(corpus, scores, thr, p)
                for c, (norm, raw, nw, tp, fn, fp) in sorted(pc.items()):
                    print(f"    {c:24s} score={norm:7.2f} raw={raw:7.3f} windows={nw:2d} "
                          f"tp={tp:2d} fn={fn:2d} fp={fp:3d}")
            thr = res["standard"][1]
            print("  per file (standard):")
            for f in corpus:
                raw, tp, fn, fp = N.score_at(f, scores[f.name], thr, "standard")
                print(f"    {f.name:58s} raw={raw:7.3f} tp={tp} fn={fn} fp={fp}")
    return res_all


def write_results(corpus, scores, out_dir):
    for f in corpus:
        cat, fname = f.name.split("/")
        os.makedirs(os.path.join(out_dir, cat), exist_ok=True)
        lab = np.zeros(f.n, int)
        for L, R in f.windows:
            lab[L:R + 1] = 1
        with open(os.path.join(out_dir, cat, fname), "w") as fh:
            fh.write("timestamp,value,anomaly_score,label\n")
            for t, v, s, l in zip(f.ts, f.values, scores[f.name], lab):
                fh.write(f"{str(t).replace('T', ' ')},{v!r},{s!r},{l}\n")


if __name__ == "__main__":
    args = sys.argv[1:]
    cat = False
    wdir = None
    if args and args[0] == "--cat":
        cat = True
        args = args[1:]
    if args and args[0] == "--write":
        wdir = args[1]
        args = args[2:]
    corpus = N.load_corpus()
    names = args or list(REGISTRY)
    res = table(corpus, names, cat=cat)
    if wdir:
        for name in names:
            write_results(corpus, res[name][1], os.path.join(wdir, name))
