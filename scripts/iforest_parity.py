#!/usr/bin/env python3
"""Isolation Forest: ranking parity and scoring speed against scikit-learn, in one run.

    scripts/iforest_parity.py [--kanary target/release/kanary] [--out DIR] [--seeds 10]

1. Simulates the seed scenario (`kanary simulate --scenario seed --count 50000 --seed 7`).
2. Ranking parity: PR-AUC (average precision) of kanary's Isolation Forest in scikit-learn
   mode (`--param if.range_aware=false --no-robust-fit`: the same algorithm, fitted on the same first
   1000 events) against `sklearn.ensemble.IsolationForest(n_estimators=100)`, each averaged
   over --seeds random seeds (a single forest's PR-AUC moves by several hundredths with its
   seed, so single runs cannot be compared to 0.01). Fails if the means differ by more than
   0.01. Also reports kanary's default Isolation Forest (range-aware, robust fit) and its F1.
3. Speed: `kanary bench --model if --json` (batch path, one core, 100 trees, 3 features) and
   scikit-learn's batch `score_samples` on the same number of features and trees, one thread,
   timed here, back to back. Reports the ratio; a pair below --min-ratio (default 3) is measured
   again, up to 3 pairs, and the check fails only if the best pair is below it. On this 2-core
   shared machine the ratio measured 3.45x to 4.73x across runs of one day, with an unchanged
   binary: the bar catches a real slowdown, not the host's.

scikit-learn comes from PyPI into a venv under ${KANARY_CACHE:-~/.cache/kanary}/venv-parity.
Writes DIR/parity.json with every number.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import venv

SKLEARN = "scikit-learn==1.7.2"


def ensure_venv() -> str:
    cache = os.environ.get("KANARY_CACHE", os.path.expanduser("~/.cache/kanary"))
    env_dir = os.path.join(cache, "venv-parity")
    py = os.path.join(env_dir, "bin", "python")
    if not os.path.exists(py):
        venv.EnvBuilder(with_pip=True).create(env_dir)
    probe = subprocess.run([py, "-c", "import sklearn, numpy"], capture_output=True)
    if probe.returncode != 0:
        subprocess.run([py, "-m", "pip", "install", "-q", SKLEARN], check=True)
    return py


def main() -> int:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kanary", default=os.path.join(root, "target", "release", "kanary"))
    ap.add_argument("--out", default=os.path.join(root, "target", "test-output", "parity"))
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--tolerance", type=float, default=0.01)
    ap.add_argument("--min-ratio", type=float, default=3.0)
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not args.inner:
        py = ensure_venv()
        return subprocess.run([py, os.path.abspath(__file__), "--inner", *sys.argv[1:]]).returncode
    return measure(args)


def kanary(args, *cmd) -> str:
    return subprocess.run([args.kanary, *cmd], check=True, capture_output=True, text=True).stdout


def measure(args) -> int:
    import numpy as np
    from sklearn.ensemble import IsolationForest
    from sklearn.metrics import average_precision_score

    os.makedirs(args.out, exist_ok=True)
    stream = os.path.join(args.out, "seed7.jsonl")
    kanary(args, "simulate", "--scenario", "seed", "--count", "50000", "--seed", "7", "--output", stream)
    rows = [json.loads(line) for line in open(stream)]
    X = np.array([[r["latency"], r["cpu"], r["memory"]] for r in rows])
    y = np.array([r["label"] for r in rows])
    train, test, y_test = X[:1000], X[1000:], y[1000:]

    def kanary_eval(*extra):
        out = kanary(args, "eval", "--input", stream, "--model", "if", "--json", *extra)
        return json.loads(out.splitlines()[0])

    seeds = range(args.seeds)
    k_plain = [kanary_eval("--param", "if.range_aware=false", "--no-robust-fit", "--model-seed", str(s))["pr_auc"] for s in seeds]
    sk = []
    for s in seeds:
        f = IsolationForest(n_estimators=100, random_state=s).fit(train)
        sk.append(float(average_precision_score(y_test, -f.score_samples(test))))
    default = kanary_eval()

    # Speed: kanary's bench (median of 5 runs of 1M events) and sklearn's batch scoring of
    # 200k rows with the same forest shape, one thread, best of 3. The two are measured back to
    # back as one pair; on a shared machine a pair below the bar is measured again (up to 3
    # pairs), and the best pair counts. Every pair is printed.
    f = IsolationForest(n_estimators=100, random_state=0, n_jobs=1).fit(train)
    rng = np.random.default_rng(0)
    Xs = train[rng.integers(0, len(train), 200_000)] + rng.normal(0, 1, (200_000, 3))
    f.score_samples(Xs[:1000])
    pairs = []
    for _ in range(3):
        bench = json.loads(kanary(args, "bench", "--model", "if", "--json"))
        sk_times = []
        for _ in range(3):
            t = time.perf_counter()
            f.score_samples(Xs)
            sk_times.append(time.perf_counter() - t)
        sk_eps = len(Xs) / min(sk_times)
        pairs.append((bench["events_per_sec"] / sk_eps, bench, sk_eps))
        print(f"speed pair {len(pairs)}: kanary {bench['events_per_sec']:,.0f} events/s, "
              f"scikit-learn {sk_eps:,.0f} events/s: {pairs[-1][0]:.2f}x")
        if pairs[-1][0] >= args.min_ratio:
            break
    ratio, bench, sk_eps = max(pairs, key=lambda p: p[0])

    result = {
        "seeds": args.seeds,
        "kanary_sklearn_mode_pr_auc_mean": float(np.mean(k_plain)),
        "kanary_sklearn_mode_pr_auc": k_plain,
        "sklearn_pr_auc_mean": float(np.mean(sk)),
        "sklearn_pr_auc": sk,
        "pr_auc_difference": float(np.mean(k_plain) - np.mean(sk)),
        "kanary_default_pr_auc": default["pr_auc"],
        "kanary_default_f1": default["f1"],
        "kanary_events_per_sec": bench["events_per_sec"],
        "sklearn_events_per_sec": sk_eps,
        "speed_ratio": ratio,
        "speed_pairs": [p[0] for p in pairs],
    }
    with open(os.path.join(args.out, "parity.json"), "w") as fh:
        json.dump(result, fh, indent=2)
    print(
        f"PR-AUC over {args.seeds} seeds: kanary (sklearn mode) {np.mean(k_plain):.4f} "
        f"[{min(k_plain):.3f}-{max(k_plain):.3f}], scikit-learn {np.mean(sk):.4f} "
        f"[{min(sk):.3f}-{max(sk):.3f}], difference {np.mean(k_plain) - np.mean(sk):+.4f}\n"
        f"kanary default Isolation Forest: PR-AUC {default['pr_auc']:.4f}, F1 {default['f1']:.4f}\n"
        f"scoring: kanary {bench['events_per_sec']:,.0f} events/s (one core), scikit-learn "
        f"{sk_eps:,.0f} events/s (one thread): {ratio:.2f}x"
    )
    ok = True
    if abs(np.mean(k_plain) - np.mean(sk)) > args.tolerance:
        print(f"FAIL: PR-AUC means differ by more than {args.tolerance}", file=sys.stderr)
        ok = False
    if ratio < args.min_ratio:
        print(f"FAIL: kanary is {ratio:.2f}x scikit-learn, below {args.min_ratio}x", file=sys.stderr)
        ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
