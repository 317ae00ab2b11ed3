"""One-at-a-time sensitivity sweep around the recommended NoveltyRatio configuration
(the defaults of detectors.NoveltyRatio). Prints standard / low-FP / low-FN scores."""
import time
import detectors as D
import nab_score as N

corpus = N.load_corpus()


def ev(kw):
    S = {f.name: D.novelty_ratio(f.values, f.ts, **kw) for f in corpus}
    r = N.score_corpus(corpus, S)
    return r['standard'][0], r['reward_low_FP_rate'][0], r['reward_low_FN_rate'][0], r['standard'][1]


VARS = [("defaults", {})]
for k, vals in [("alert", [1.0, 1.02, 1.04, 1.06, 1.1]), ("cooldown", [0, 5, 10, 30, 50, 100]),
                ("H", [250, 500, 2000, 4000]), ("w", [4, 8, 12, 24, 32]), ("days", [1, 3, 14]),
                ("seas_mode", ["min"]), ("every", [1, 5, 50]),
                ("max_horizon", [1000, 2016, 3000, None])]:
    for v in vals:
        VARS.append((f"{k}={v}", {k: v}))
VARS += [("no seasonal feature", {"feats": ("up", "down", "dev"), "days": 0}),
         ("no windowed-mean feature", {"feats": ("up", "down", "seas")}),
         ("no up/down features", {"feats": ("dev", "seas")})]
if __name__ == "__main__":
    print(f"{'variant':32s} {'std':>7s} {'lowFP':>7s} {'lowFN':>7s}")
    for name, kw in VARS:
        r = ev(kw)
        print(f"{name:32s}", " ".join(f"{v:7.2f}" for v in r[:3]), f"thr={r[3]:.4f}", flush=True)
