"""Candidate online detectors for NAB (kanary research). Every detector is causal: the score of
row i depends on values[0..=i] only, with no labels. Each takes (values, n_probation_hint=None)
and returns scores in [0, 1], one per row.

Vectorised numpy where it is obviously causal (trailing windows), plain loops elsewhere.
"""
from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view as swv

MAD_TO_SD = 1.482602218505602


# ---------------------------------------------------------------------------------------------
# trailing-window helpers (row i uses rows <= i)
# ---------------------------------------------------------------------------------------------

def _pad_front(x, w, fill=np.nan):
    return np.concatenate([np.full(w - 1, fill), x])


def trailing(x, w, fn):
    """fn over x[i-w+1..=i] for every i (partial windows at the start: NaN)."""
    out = np.full(len(x), np.nan)
    if len(x) >= w:
        out[w - 1:] = fn(swv(x, w), axis=-1)
    return out


def trailing_expanding(x, w, fn, min_len=1):
    """fn over x[max(0,i-w+1)..=i] (window grows until it reaches w)."""
    n = len(x)
    out = np.full(n, np.nan)
    for i in range(min_len - 1, min(w - 1, n)):
        out[i] = fn(x[:i + 1])
    if n >= w:
        out[w - 1:] = fn(swv(x, w), axis=-1)
    return out


def lag(x, k, fill=np.nan):
    if k == 0:
        return x.copy()
    return np.concatenate([np.full(k, fill), x[:-k]])


def ewm_mean(x, alpha):
    out = np.empty(len(x))
    m = x[0]
    for i, v in enumerate(x):
        m = m + alpha * (v - m)
        out[i] = m
    return out


def qfunc(z):
    """Upper tail of the standard normal."""
    z = np.asarray(z, float)
    from math import erfc, sqrt
    return np.vectorize(lambda t: 0.5 * erfc(t / sqrt(2.0)))(z)


# ---------------------------------------------------------------------------------------------
# Baselines
# ---------------------------------------------------------------------------------------------

def windowed_gaussian(values, window=6400, step=100):
    """NAB's windowedGaussian detector, re-implemented: score = 1 - Q(|z|)*... exactly
    1 - normalProbability(x, mean, std) = 1 - Q(|x-mean|/std)."""
    data = []
    buf = []
    mean, std = 0.0, 1.0
    out = np.zeros(len(values))
    from math import erfc, sqrt
    for i, x in enumerate(values):
        s = 0.0
        if data:
            z = abs(x - mean) / std
            s = 1.0 - 0.5 * erfc(z / sqrt(2.0))
        out[i] = s
        if len(data) < window:
            data.append(x)
            mean, std = float(np.mean(data)), float(np.std(data))
            if std == 0.0:
                std = 1e-6
        else:
            buf.append(x)
            if len(buf) == step:
                data = data[step:] + buf
                buf = []
                mean, std = float(np.mean(data)), float(np.std(data))
                if std == 0.0:
                    std = 1e-6
    return out


# ---------------------------------------------------------------------------------------------
# Windowed features + trailing robust statistics
# ---------------------------------------------------------------------------------------------

def window_features(x, lengths=(8, 32), kinds=("value", "delta", "mean", "std")):
    """Causal windowed features; returns dict name -> array (NaN until defined)."""
    f = {}
    if "value" in kinds:
        f["value"] = x.copy()
    if "delta" in kinds:
        f["delta"] = x - lag(x, 1)
    for w in lengths:
        if "mean" in kinds:
            f[f"mean{w}"] = trailing(x, w, np.mean)
        if "std" in kinds:
            f[f"std{w}"] = trailing(x, w, np.std)
        if "roc" in kinds:
            f[f"roc{w}"] = x - lag(x, w)
    return f


def robust_scale(med, mad, meanad):
    s = mad * MAD_TO_SD
    s = np.where(s > 1e-12, s, meanad * 1.2533141373155003)
    return np.where(s > 1e-12, s, np.nan)


def trailing_robust_stats(feat, H, gap=1, min_hist=30, every=1):
    """Per row i: (median, robust sd) of hist = feat[i-gap-H+1 .. i-gap] (non-NaN), refreshed
    every `every` rows (held in between). NaN before min_hist values exist."""
    n = len(feat)
    med_a = np.full(n, np.nan)
    sd_a = np.full(n, np.nan)
    med = sd = np.nan
    for i in range(n):
        if i % every == 0:
            hi = i - gap + 1
            lo = max(0, hi - H)
            h = feat[lo:max(hi, 0)]
            h = h[~np.isnan(h)]
            if len(h) >= min_hist:
                med = np.median(h)
                ad = np.abs(h - med)
                s = np.median(ad) * MAD_TO_SD
                if s <= 1e-12:
                    s = ad.mean() * 1.2533141373155003
                sd = s
        med_a[i] = med
        sd_a[i] = sd
    return med_a, sd_a


def trailing_robust_z(feat, H, gap=1, min_hist=30, every=1, floor=1e-12):
    med, sd = trailing_robust_stats(feat, H, gap, min_hist, every)
    d = np.abs(feat - med)
    sd = np.maximum(np.nan_to_num(sd, nan=np.inf), floor)
    z = np.where(np.isfinite(med) & ~np.isnan(feat), d / sd, 0.0)
    # constant history and a departure from it: very large but finite
    z = np.where(np.isinf(z), 1e6, z)
    return np.nan_to_num(z, nan=0.0)


def squash(z, k=10.0):
    """[0,inf) -> [0,1) without saturating in double precision."""
    return z / (z + k)


def trailing_median(x, H, gap=1, every=1, min_hist=10):
    med, _ = trailing_robust_stats(x, H, gap, min_hist, every)
    return med


def decaying_max_ratio(d, decay=1.0, gap=1, warm=10, eps=1e-12):
    """r_i = d_i / M where M = max of d over rows < i-gap+1 with exponential decay per row.
    r = 0 during the first `warm` rows."""
    n = len(d)
    r = np.zeros(n)
    M = 0.0
    pend = []  # values waiting `gap` rows before entering M
    for i in range(n):
        di = d[i]
        if np.isnan(di):
            di = 0.0
        if i >= warm:
            r[i] = di / max(M, eps) if M > eps else (0.0 if di <= eps else 1e6)
        M *= decay
        pend.append(di)
        if len(pend) >= gap:
            v = pend.pop(0)
            if v > M:
                M = v
    return r


def suppress(s, tau, K, low=None):
    """After a row with s >= tau, the next K rows are clamped to min(s, low) (low < tau)."""
    if low is None:
        low = tau * 0.999
    out = s.copy()
    until = -1
    for i, v in enumerate(s):
        if i <= until:
            out[i] = min(v, low)
        elif v >= tau:
            until = i + K
    return out


def time_lag_index(ts, seconds):
    """For each row i, the index of the last row with timestamp <= ts[i] - seconds (-1 if none)."""
    t = ts.astype("datetime64[s]").astype(np.int64)
    return np.searchsorted(t, t - seconds, side="right") - 1


def lag_by_index(x, idx):
    out = np.full(len(x), np.nan)
    ok = idx >= 0
    out[ok] = x[idx[ok]]
    return out


# ---------------------------------------------------------------------------------------------
# The proposed detector: "novelty ratio" (record ratio) over windowed deviation features
# ---------------------------------------------------------------------------------------------

class NoveltyRatio:
    """Streaming, label-free, deterministic. One instance per series.

    Per row (t seconds, x value):
      med  = median of the previous H values (rows i-H .. i-1), recomputed every `every` rows
             (at rows i with i % every == 0), held in between; undefined until >= min_hist rows.
      f_up   = max(x - med, 0)
      f_down = max(med - x, 0)
      f_dev  = |mean(x over rows i-w+1 .. i) - med|            (needs w rows)
      f_seas = min_k |x - x(t - k*86400s)|, k = 1..days, where x(t') is the value of the last row
               with timestamp <= t' (lags that do not exist yet are skipped; undefined if none)
    Undefined features count as 0. For each feature j keep M_j = max of f_j over all previous
    rows (optionally a sliding max over the last `max_horizon` rows, or decayed by `decay`
    per row). ratio_j = f_j / M_j (0 if f_j <= eps; 1e6 if M_j <= eps < f_j); r = max_j ratio_j.
    r = 0 for the first `warm` rows.
    Cooldown: when r >= alert (and not cooling down), the next `cooldown` rows have r capped
    at `cap` (1.0). Score = r / (scale + r), scale = alert by default, so score >= 0.5 exactly
    when r >= alert (the built-in alarm level) and cooled-down rows stay below 0.5.
    """

    def __init__(self, H=1000, every=10, min_hist=10, w=16, days=7, seas_mode="med",
                 warm=10, alert=1.05, cooldown=20, cap=1.0, decay=1.0, max_horizon=4032,
                 feats=("up", "down", "dev", "seas"), eps=1e-12, tsec=86400, scale=None):
        self.H, self.every, self.min_hist, self.w = H, every, min_hist, w
        self.days, self.seas_mode, self.warm = days, seas_mode, warm
        self.alert, self.cooldown, self.cap = alert, cooldown, cap
        self.decay, self.max_horizon, self.feats, self.eps = decay, max_horizon, feats, eps
        self.tsec = tsec
        self.scale = alert if scale is None else scale
        from collections import deque
        self.vals = deque(maxlen=H)     # previous H values
        self.win = deque(maxlen=w)      # last w values (including current)
        self.win_sum = 0.0
        self.med = math.nan
        self.i = 0
        self.hist_t = deque()           # (t, x) history for seasonal lags
        self.hist_base = 0              # absolute row index of hist_t[0]
        self.ptr = [-1] * days          # absolute index of last row with t <= t_i - k*tsec
        self.M = {f: 0.0 for f in feats}
        self.maxq = {f: deque() for f in feats}  # monotonic deques for sliding max
        self.cool_until = -1

    def _seas(self, t, x):
        best = math.nan
        vals = []
        for k in range(1, self.days + 1):
            target = t - k * self.tsec
            p = self.ptr[k - 1]
            # advance while the next row's timestamp <= target (rows before the current one)
            while p + 1 < self.i and self.hist_t[p + 1 - self.hist_base][0] <= target:
                p += 1
            self.ptr[k - 1] = p
            if p >= self.hist_base:
                lx = self.hist_t[p - self.hist_base][1]
                vals.append(lx)
        if not vals:
            return math.nan
        if self.seas_mode == "min":
            return min(abs(x - v) for v in vals)
        return abs(x - float(np.median(vals)))

    def update(self, t, x):
        i = self.i
        # --- baseline median of the previous H values
        if i % self.every == 0 and len(self.vals) >= self.min_hist:
            self.med = float(np.median(np.fromiter(self.vals, float)))
        # --- features
        if len(self.win) == self.w:
            self.win_sum -= self.win[0]
        self.win.append(x)
        self.win_sum += x
        f = {}
        med = self.med
        if "up" in self.feats:
            f["up"] = max(x - med, 0.0) if med == med else 0.0
        if "down" in self.feats:
            f["down"] = max(med - x, 0.0) if med == med else 0.0
        if "dev" in self.feats:
            f["dev"] = abs(self.win_sum / self.w - med) if (med == med and len(self.win) == self.w) else 0.0
        if "seas" in self.feats:
            s = self._seas(t, x)
            f["seas"] = 0.0 if s != s else s
        # --- ratios against the running maxima of previous rows
        r = 0.0
        for name, v in f.items():
            M = self.M[name]
            if v <= self.eps:
                q = 0.0
            elif M <= self.eps:
                q = 1e6
            else:
                q = v / M
            r = max(r, q)
        if i < self.warm:
            r = 0.0
        # --- update the maxima
        for name, v in f.items():
            if self.max_horizon is None:
                self.M[name] = max(self.M[name] * self.decay, v)
            else:
                dq = self.maxq[name]
                while dq and dq[-1][1] <= v:
                    dq.pop()
                dq.append((i, v))
                while dq[0][0] <= i - self.max_horizon:
                    dq.popleft()
                self.M[name] = dq[0][1]
        # --- cooldown
        if i <= self.cool_until:
            r = min(r, self.cap)
        elif r >= self.alert:
            self.cool_until = i + self.cooldown
        # --- state for the next row
        self.vals.append(x)
        self.hist_t.append((t, x))
        # drop seasonal history no lag pointer can need any more
        oldest = min(self.ptr) if self.days else i
        while self.hist_base < oldest and len(self.hist_t) > 1:
            self.hist_t.popleft()
            self.hist_base += 1
        self.i += 1
        return r / (self.scale + r)


def novelty_ratio(values, ts, **kw):
    det = NoveltyRatio(**kw)
    t = ts.astype("datetime64[s]").astype(np.int64)
    return np.array([det.update(int(tt), float(x)) for tt, x in zip(t, values)])


# ---------------------------------------------------------------------------------------------
# Runners-up: kanary's default window features + robust z / isolation forest
# ---------------------------------------------------------------------------------------------

def kanary_window_features(x, lengths=(8, 32, 128), value=True, delta=True, zscore=True,
                           std=False, mean=False, rate=False):
    """kanary's WindowSpec (features.rs): rows before max(lengths)+1 are NaN.
    zL = (x - mean of the L previous values) / max(sd, 1e-3 * max(|mean|, 1e-3))."""
    n = len(x)
    cols = []
    if value:
        cols.append(x.copy())
    if delta:
        cols.append(x - lag(x, 1))
    for L in lengths:
        prev = lag(x, 1)
        m = trailing(prev, L, np.mean)
        sd = trailing(prev, L, np.std)
        if mean:
            cols.append(m)
        if std:
            cols.append(sd)
        if zscore:
            floor = 1e-3 * np.maximum(np.abs(m), 1e-3)
            cols.append((x - m) / np.maximum(sd, floor))
        if rate:
            cols.append((x - lag(x, L)) / L)
    F = np.stack(cols, 1)
    F[:max(lengths) + 1] = np.nan
    return F


def robust_fit(F):
    F = F[~np.isnan(F).any(1)]
    med = np.median(F, 0)
    ad = np.abs(F - med)
    s = np.median(ad, 0) * MAD_TO_SD
    mean_ad = ad.mean(0) * 1.2533141373155003
    s = np.where(s > 1e-12, s, mean_ad)
    s = np.where(s > 1e-12, s, 1.0)
    return med, s


def robust_z_static(F, fit_rows):
    """kanary's RobustZ fitted once on rows [0, fit_rows), score = max |z| per row."""
    med, s = robust_fit(F[:fit_rows])
    z = np.abs(F - med) / s
    out = np.nanmax(np.where(np.isnan(z), -np.inf, z), 1)
    return np.where(np.isfinite(out), out, 0.0)


def robust_z_rolling(F, H=1000, every=10, min_hist=100):
    """Robust z with median/MAD refitted every `every` rows on the previous H rows."""
    n = len(F)
    out = np.zeros(n)
    med = s = None
    for i in range(n):
        if i % every == 0:
            lo = max(0, i - H)
            h = F[lo:i]
            h = h[~np.isnan(h).any(1)] if len(h) else h
            if len(h) >= min_hist:
                med, s = robust_fit(h)
        if med is not None and not np.isnan(F[i]).any():
            out[i] = np.max(np.abs(F[i] - med) / s)
    return out


def _c(n):
    if n > 2:
        return 2.0 * (math.log(n - 1) + 0.5772156649) - 2.0 * (n - 1) / n
    return 1.0 if n == 2 else 0.0


class IsolationForest:
    """scikit-learn's algorithm (100 trees, 256 subsample, depth limit ceil(log2 256)),
    numpy-vectorised scoring. Deterministic for a given seed."""

    def __init__(self, n_trees=100, sample=256, seed=0):
        self.n_trees, self.sample, self.seed = n_trees, sample, seed

    def fit(self, X):
        rng = np.random.default_rng(self.seed)
        n, d = X.shape
        m = min(self.sample, n)
        self.limit = int(math.ceil(math.log2(max(m, 2))))
        self.cn = _c(m)
        self.trees = []
        for _ in range(self.n_trees):
            idx = rng.choice(n, m, replace=False)
            feat, thr, left, right, size, depth = [], [], [], [], [], []

            def build(rows, dep):
                k = len(feat)
                feat.append(-1); thr.append(0.0); left.append(-1); right.append(-1)
                size.append(len(rows)); depth.append(dep)
                if dep >= self.limit or len(rows) <= 1:
                    return k
                Xr = X[rows]
                lo, hi = Xr.min(0), Xr.max(0)
                cand = np.where(hi > lo)[0]
                if len(cand) == 0:
                    return k
                j = int(cand[rng.integers(len(cand))])
                t = float(rng.uniform(lo[j], hi[j]))
                feat[k] = j; thr[k] = t
                mask = Xr[:, j] < t
                left[k] = build(rows[mask], dep + 1)
                right[k] = build(rows[~mask], dep + 1)
                return k

            build(idx, 0)
            self.trees.append(tuple(np.array(a) for a in (feat, thr, left, right, size, depth)))
        return self

    def score(self, X):
        """sklearn's anomaly score 2^(-E[h(x)]/c(m)) in (0, 1]."""
        n = len(X)
        tot = np.zeros(n)
        for feat, thr, left, right, size, depth in self.trees:
            node = np.zeros(n, int)
            for _ in range(self.limit + 1):
                f = feat[node]
                inner = f >= 0
                if not inner.any():
                    break
                xi = X[np.arange(n), np.where(inner, f, 0)]
                go_left = xi < thr[node]
                nxt = np.where(go_left, left[node], right[node])
                node = np.where(inner, nxt, node)
            tot += depth[node] + np.array([_c(int(s)) for s in size[node]])
        return 2.0 ** (-(tot / self.n_trees) / self.cn)


def iforest_scores(F, fit_rows, refit_every=None, refit_hist=2000, seed=0):
    """IF on windowed features; fit on rows < fit_rows, optionally refitted every
    `refit_every` rows on the previous `refit_hist` rows. Rows with NaN features score 0."""
    n = len(F)
    out = np.zeros(n)
    ok = ~np.isnan(F).any(1)
    Fz = np.where(np.isnan(F), 0.0, F)
    starts = [fit_rows] + (list(range(fit_rows + refit_every, n, refit_every)) if refit_every else [])
    starts.append(n)
    for a, b in zip(starts[:-1], starts[1:]):
        lo = max(0, a - (refit_hist if refit_every else a))
        tr = Fz[lo:a][ok[lo:a]]
        if len(tr) < 10:
            continue
        forest = IsolationForest(seed=seed).fit(tr)
        out[a:b] = forest.score(Fz[a:b])
        if a == fit_rows:
            out[:a] = forest.score(Fz[:a])  # probation rows, ignored by NAB anyway
    return np.where(ok, out, 0.0)


# ---------------------------------------------------------------------------------------------
# Score normalisations applicable to any raw anomaly score
# ---------------------------------------------------------------------------------------------

def record_ratio_norm(raw, alert=1.04, cooldown=20, warm=10):
    """The NoveltyRatio normalisation on a single raw score: r = raw_i / max(raw_<i), cooldown,
    s = r / (1 + r)."""
    r = decaying_max_ratio(np.maximum(raw, 0.0), 1.0, warm=warm)
    return squash(suppress(r, alert, cooldown, low=1.0), 1.0)


def anomaly_likelihood(raw, short=10, long=8640, min_hist=300):
    """Numenta-style: mean of the last `short` raw scores compared with a Gaussian fitted to the
    raw scores of the last `long` rows; likelihood = 1 - Q(z)."""
    n = len(raw)
    out = np.zeros(n)
    from math import erfc, sqrt
    cs = np.concatenate([[0.0], np.cumsum(raw)])
    cs2 = np.concatenate([[0.0], np.cumsum(raw * raw)])
    for i in range(n):
        lo = max(0, i + 1 - long)
        cnt = i + 1 - lo
        if cnt < min_hist:
            continue
        mu = (cs[i + 1] - cs[lo]) / cnt
        var = max((cs2[i + 1] - cs2[lo]) / cnt - mu * mu, 0.0)
        sd = max(math.sqrt(var), 1e-6)
        a = max(0, i + 1 - short)
        sm = (cs[i + 1] - cs[a]) / (i + 1 - a)
        z = (sm - mu) / sd
        out[i] = 1.0 - 0.5 * erfc(z / sqrt(2.0))
    return out


def novelty_features(values, ts, H=1000, every=10, w=16, days=7):
    """The NoveltyRatio features as a matrix [x - med, mean_w - med, seas] (signed deviation,
    windowed-mean deviation, seasonal distance), NaN where undefined."""
    x = values
    med = trailing_robust_stats(x, H, 1, 10, every)[0]
    m = trailing(x, w, np.mean)
    L = np.stack([lag_by_index(x, time_lag_index(ts, 86400 * k)) for k in range(1, days + 1)])
    d = np.abs(x[None, :] - L)
    d[np.isnan(d)] = np.inf
    s = d.min(0)
    s[np.isinf(s)] = np.nan
    return np.stack([x - med, m - med, s], 1)
