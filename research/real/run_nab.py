"""NAB (41 files): CoDev with its own fixed threshold. Detections = alarm starts (first flagged row of
each alarm). Also reports the corpus-optimal threshold on the raw score R for reference."""
import sys, json, os
import numpy as np
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "nab"))
import nab_score as ns
import codev

_corpus = None


def corpus():
    global _corpus
    if _corpus is None:
        _corpus = ns.load_corpus()
    return _corpus


def nab(**kw):
    C = corpus()
    starts, raw = {}, {}
    for f in C:
        ts = f.ts.astype("datetime64[s]").astype(np.int64).astype(float)
        k = dict(kw); k.setdefault("P", codev.events_per_day(ts)); k.setdefault("epd", codev.epd(ts))
        R, fl, _, _ = codev.run(f.values.reshape(-1, 1), **k)
        starts[f.name] = (fl & ~np.r_[False, fl[:-1]]).astype(float)
        raw[f.name] = R
    tot = {p: 0.0 for p in ns.PROFILES}
    out = {}
    for p in ns.PROFILES:
        A, FN, B = ns.PROFILES[p]
        S = sum(ns.score_at(f, starts[f.name], 0.5, p)[0] for f in C)
        nw = sum(len(f.windows) for f in C)
        out[p] = 100 * (S + FN * nw) / (A * nw + FN * nw)
    best = ns.score_corpus(C, raw)
    return out, {p: round(v[0], 2) for p, v in best.items()}


if __name__ == "__main__":
    kw = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    fixed, best = nab(**kw)
    print("NAB fixed-threshold (alarm starts):", {k: round(v, 2) for k, v in fixed.items()}, "| raw R, corpus-optimal threshold:", best)
