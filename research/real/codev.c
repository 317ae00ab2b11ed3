/* CoDev: streaming, label-free, per-service multi-metric anomaly detector (kanary research/real).
 * Reference implementation of the spec in FINDINGS.md.  One Detector per service (or series).
 *
 *   gcc -O2 -shared -fPIC -o codev.so codev.c -lm        (library, used by codev.py via ctypes)
 *   gcc -O2 -DCODEV_BENCH -o codev_bench codev.c -lm     (timing: ./codev_bench M n)
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAXM 32
#define MAXF (6 * MAXM)
#define HB 160              /* score histogram bins: log10 from -4 to +16, 8 per decade */
#define HB_LO -4.0
#define HB_W 0.125
#define CV_FOLDS 8          /* folds of the warm-up rebuild's cross-validation */

typedef struct {
    int W;            /* level window, events (72) */
    int K;            /* seasonal lags in days (7); 0 = off */
    int P;            /* events per day (288 for 5-minute data); 0 or > PMAX = seasonal off */
    double zclip;     /* clip of per-metric z (10) */
    double relmin;    /* minimum relative change vs level (0 = off) */
    int dir;          /* 0 both, +1 up only, -1 down only */
    double ridge;     /* ridge added to the z covariance before inversion (1.0) */
    int C;            /* calibration horizon, events (2016): score histogram window */
    int Ccov;         /* covariance horizon, events: running mean until Ccov events, then EW with rate 1/Ccov */
    int inv_every;    /* refresh the inverse covariance every inv_every events (288) */
    double rho;       /* sensitivity knob: exceedances per day of each channel (initial value if target > 0) */
    double target;    /* if > 0: pages per service-day to aim for; rho is adapted online (see spec 2.5) */
    double kappa;     /* exceedance events per page (clustering constant, calibrated label-free) */
    double epd;       /* events per day (for the rate); 288 for 5-minute data */
    int epd_i;        /* adaptation period in events (= round(epd), at least 1) */
    double pt;        /* tail fraction for the GPD fit (0.02: uses Q98, Q96, Q92) */
    double ximax;     /* maximum GPD shape (1.0) */
    double a1;        /* weight divisor of the instantaneous channel: R = max(R1 / a1, R2) */
    double thr;       /* alarm threshold on R */
    double thr_off;   /* alarm holds while R1inst >= thr_off * thr ... see spec */
    int maxhold;      /* maximum flagged events per alarm */
    int confirm;      /* consecutive events with R >= 1 needed to start an alarm (1) */
    int warm;         /* events before any alarm (per series) */
    int freeze;       /* do not learn from flagged events */
    int calall;       /* 1: the score histograms learn from every event (flagged too) */
    int jointlearn;   /* 1: covariance and score histograms learn only in the armed state */
    double CU;        /* CUSUM feature slack k (0 = off): S+ = max(0, S+ + z - k), S- = min(0, S- + z + k), feature S+ + S- */
    int LR;           /* long-range feature: distance outside [min, max] of the last LR learned values (0 = off) */
    double tfloor;    /* floor of the distance thresholds (and of the quantiles used) */
    int diag;         /* ablation: 1 = ignore cross-feature covariance (diagonal only) */
    double hdecay;    /* decay of the held episode score Hs = max(R, hdecay * Hs_prev) (0.97) */
    int SZ;           /* experimental: seasonal-only deviation zs as an extra feature block */
    int sgate;        /* 1: trend and range features also need a same-direction seasonal deviation (sign-consistent min) */
    int RG;           /* range feature: distance outside [min, max] of the level window, / scale (0 = off) */
    int TK;           /* trend feature: mean of last TK raw values minus mean of the TK before, / scale (0 = off) */
    int rebuild;      /* 1: when the first inverse arrives, refill H1/H2 with the warm-up features' distances under it,
                         cross-validated over CV_FOLDS folds (tried, off: section 4) */
    int span;         /* events of the persistence channel m (2: the 2-event mean); 0 (the default) = about 10 minutes
                         of events, round(600 * epd / 86400) clipped to [2, 16], their median: 2 at 5-minute steps (so
                         the 2-event mean there), 16 at one event a second (section 4) */
    int qf;           /* 1: a metric whose learned values were all whole numbers, at a whole-number value, has a scale
                         of at least 1 (a count moving by one is one unit of deviation) (section 4, "resolution floors") */
    double qz;        /* tried, off (0): events per day above which a metric whose steps are whole multiples of a
                         smallest step (a CPU-seconds counter read every second moves in 0.01 s) has that step as its
                         scale floor (section 4, "resolution floors") */
    double rf;        /* events per day above which a metric that is not a count and rarely moves (at most a share pt
                         of its window off L) has the mean size of its nonzero steps between events (flagged ones
                         included) as a scale floor (section 4, "move floor") */
    double still;     /* with rf: a metric that has not moved yet deviates by at most `still` scale units (0 = no cap) */
    double BR;        /* tried, off (0): breadth channel, B = sum over metrics of min(|level z|, BR)^2, its span median
                         judged against its own histogram at rho * brate exceedances per day, with an alarm state of
                         its own (section 4, "Breadth channel") */
    double brate;     /* with BR: the breadth channel's exceedances per day, as a multiple of rho */
    int PZ;           /* tried, off (0): a fourth feature block, the median of the last PZ (3..16) level features */
    double hold;      /* hold channel (0 = off): a metric whose level feature's median over the last hspan events is at
                         least `hold` scale units off starts an alarm of its own (spec 2.8). Only in streams of at most
                         hfast events a day */
    int hspan;        /* with hold: events of the median (0: about 30 minutes, round(1800 * epd / 86400) in [3, 16]) */
    double hfast;     /* with hold: events per day above which the hold channel is off (1440) */
    int hcal;         /* tried, off (0): with hold, each metric's threshold from its own histogram of the held value at
                         rho * hrate / M exceedances per day (hold is then the floor), tail fraction hpt; hraw = 1
                         extrapolates from the raw quantiles and floors afterwards */
    double hrate, hpt;
    int hraw;
    double covmin;    /* covariance updates needed before scoring, per joint feature (20; 0 = only WARMN) */
} Params;

typedef struct {
    double *sw; int ns;               /* sorted level window (W) */
    double *ring; int rpos, rlen;     /* learned values in arrival order (W) */
    double *dring; double dsum; int dlen; /* |dx| of learned values (W) */
    double last; int has_last;
    double mad;                       /* cached 1.4826 * MAD of the level window (-1 = unset) */
    double qnt;                       /* quantum of the metric's steps (0 = none found; variant qz), see step_quantum */
    int frac;                         /* 1 once a learned value was not a whole number */
    double nzm; long nzc;             /* mean size of the nonzero |dx| between consecutive events, flagged ones included
                                         (memory W), and their count: what one move of the metric is (rf) */
    double seen; int has_seen;        /* the previous event's value */
    double *hist; int hpos, hlen;     /* seasonal history (K*P learned values, or level substitute) */
    double *qmx, *qmn; long *imx, *imn; int hx, nx, hn, nn; long nlearn; /* monotone deques (ring buffers of size LR+1) */
    double cup, cdn, cup_new, cdn_new; /* CUSUM state (committed) and candidate */
    double *tr; int tpos, tlen;       /* raw values of the last 2*TK events (trend feature) */
} Metric;

typedef struct {
    double *ring; int *bring; int pos, len; int cnt[HB + 2]; /* sliding histogram over C values */
} Hist;

typedef struct {
    Params p;
    int M;
    Metric m[MAXM];
    int F;                            /* joint features: M level deviations (+ M trend deviations) */
    double mu[MAXF], cov[MAXF * MAXF], inv[MAXF * MAXF];
    long ncov;                        /* number of covariance updates */
    int have_inv;
    Hist h1, h2;                      /* histograms of d (instantaneous) and d2 (2-event mean) */
    double dprev;
    double rho_cur, start_rate;       /* adaptive knob state */
    long nscored;
    double t1, t2;                    /* current distance thresholds of the two channels */
    long t;
    int state, age, below, run;       /* alarm state machine; run = consecutive events with R >= on */
    /* outputs of the last event */
    double z[MAXF], contrib[MAXM], d, dm, R1, R2, R, Hs;   /* Hs: held (episode) score */
    int flag;
    double *wbuf; int nwarm;          /* learned features before the first inverse (rebuild), at most 288 rows */
    double dring[16]; int dlen;       /* one-event distances of the last span-1 events (span > 2), oldest first */
    Hist h3; double bring[16]; int blen; double bprev, t3, R3; int bstate; /* breadth channel (BR > 0) */
    double pring[MAXM][16]; int plen[MAXM];   /* level features of the last hspan-1 events, per metric (hold or PZ) */
    double hz[MAXM], hth[MAXM]; Hist hm[MAXM]; int hstate; double RH;   /* hold channel: held value, threshold */
} Detector;

/* ---------- helpers ---------- */
static void ins(double *a, int *n, double v) { int lo = 0, hi = *n; while (lo < hi) { int k = (lo + hi) / 2; if (a[k] < v) lo = k + 1; else hi = k; } memmove(a + lo + 1, a + lo, sizeof(double) * (*n - lo)); a[lo] = v; (*n)++; }
static void del(double *a, int *n, double v) { int lo = 0, hi = *n; while (lo < hi) { int k = (lo + hi) / 2; if (a[k] < v) lo = k + 1; else hi = k; } if (lo < *n) { memmove(a + lo, a + lo + 1, sizeof(double) * (*n - lo - 1)); (*n)--; } }
static double med_sorted(const double *a, int n) { return n % 2 ? a[n / 2] : 0.5 * (a[n / 2 - 1] + a[n / 2]); }
/* median absolute deviation about m of a sorted array (lower of the two middle values for even n
 * is NOT used: this returns the k-th smallest |a_i - m| with k = n/2, 0-based) */
static double mad_sorted(const double *a, int n, double m) {
    int k = n / 2, p = n / 2;                   /* m is the median: start the scan at the middle */
    while (p > 0 && a[p - 1] > m) p--;
    while (p < n && a[p] <= m) p++;
    int lo = p - 1, hi = p; double v = 0;
    for (int c = 0; c <= k; c++) {
        double dl = lo >= 0 ? m - a[lo] : INFINITY, dh = hi < n ? a[hi] - m : INFINITY;
        if (dl <= dh) { v = dl; lo--; } else { v = dh; hi++; }
    }
    return v;
}
/* The quantum of a metric's steps (variant qz > 0, off): the 10th percentile q of the steps above tol, when at
 * least 3 of them and 90% of them lie within 0.1 q of a whole multiple of q; else prev (kept once found). */
static double step_quantum(const double *steps, int n, double tol, double prev) {
    double tmp[n > 0 ? n : 1]; int k = 0;
    for (int i = 0; i < n; i++) if (steps[i] > tol) tmp[k++] = steps[i];
    if (k == 0) return prev;
    for (int a = 1; a < k; a++) { double tv = tmp[a]; int b = a - 1; while (b >= 0 && tmp[b] > tv) { tmp[b + 1] = tmp[b]; b--; } tmp[b + 1] = tv; }
    double q = tmp[(int)(0.1 * (k - 1))]; int ok = 0;
    for (int a = 0; a < k; a++) { double r = tmp[a] / q; if (fabs(r - floor(r + 0.5)) <= 0.1) ok++; }
    return (k >= 3 && ok >= 0.9 * k) ? q : prev;
}
static int hbin(double x) {
    if (!(x > 0)) return 0;                     /* bin 0: x <= 10^HB_LO (incl. 0) */
    double b = (log10(x) - HB_LO) / HB_W;
    if (b < 0) return 0;
    if (b >= HB) return HB + 1;                 /* overflow */
    return 1 + (int)b;                          /* bins 1..HB */
}
static double hedge(int b) { return pow(10.0, HB_LO + (b - 1) * HB_W); } /* lower edge of bin b>=1 */
static void hist_init(Hist *h, int C) { h->bring = malloc(sizeof(int) * C); h->ring = NULL; h->pos = h->len = 0; memset(h->cnt, 0, sizeof h->cnt); }
static void hist_add(Hist *h, int C, double x) {
    int b = hbin(x);
    if (h->len == C) h->cnt[h->bring[h->pos]]--; else h->len++;
    h->bring[h->pos] = b; h->cnt[b]++; h->pos = (h->pos + 1) % C;
}
/* quantile q of the window: smallest value v with P(x > v) <= 1-q, log-interpolated inside the bin */
static double hist_quant(const Hist *h, double q) {
    double tail = (1.0 - q) * h->len, acc = 0;
    for (int b = HB + 1; b >= 0; b--) {
        double c = h->cnt[b];
        if (c > 0 && acc + c >= tail) {
            if (b == HB + 1) return hedge(HB + 1);
            if (b == 0) return pow(10.0, HB_LO);
            double frac = (tail - acc) / c;      /* share of this bin above the quantile */
            return pow(10.0, HB_LO + (b - frac) * HB_W);
        }
        acc += c;
    }
    return pow(10.0, HB_LO);
}
/* threshold with P(x > thr) = r from the sliding histogram.
 * Generalised-Pareto tail above Q(1-pt) with shape from Pickands' estimator on Q(1-pt), Q(1-2pt), Q(1-4pt):
 *   xi = ln((Q1 - Q2) / (Q2 - Q4)) / ln 2, clamped to [0, ximax];  sigma = (Q1 - Q2) * xi / (2^xi - 1)  (xi -> 0: (Q1-Q2)/ln 2)
 *   thr = Q1 + sigma * ((pt / r)^xi - 1) / xi       (xi -> 0: Q1 + sigma * ln(pt / r))
 * For r >= pt the empirical quantile Q(1-r) is used. */
static double tail_thr(const Hist *h, double r, double pt, double ximax, double fl) {
    if (r >= pt) { double q = hist_quant(h, 1.0 - r); return q > fl ? q : fl; }
    double q1 = hist_quant(h, 1.0 - pt), q2 = hist_quant(h, 1.0 - 2 * pt), q4 = hist_quant(h, 1.0 - 4 * pt);
    if (q1 < fl) q1 = fl;
    double a = q1 - q2, b = q2 - q4;
    if (a <= 0) return q1;
    double xi = b > 0 ? log(a / b) / log(2.0) : ximax;
    if (xi < 0) xi = 0;
    if (xi > ximax) xi = ximax;
    double ratio = pt / r, thr;
    if (xi < 1e-6) thr = q1 + a / log(2.0) * log(ratio);
    else { double sg = a * xi / (pow(2.0, xi) - 1.0); thr = q1 + sg * (pow(ratio, xi) - 1.0) / xi; }
    return thr > fl ? thr : fl;
}
/* per-metric channel: exponential tail above Q(1-pt) from the raw quantiles, floored after the extrapolation */
static double tail_thr_raw(const Hist *h, double r, double pt, double fl) {
    double q1 = hist_quant(h, 1.0 - pt), q2 = hist_quant(h, 1.0 - 2 * pt);
    double thr = r >= pt ? hist_quant(h, 1.0 - r) : q1 + (q1 > q2 ? q1 - q2 : 0) / log(2.0) * log(pt / r);
    return thr > fl ? thr : fl;
}
/* invert SPD matrix A (n x n) + ridge*I into out via Cholesky; returns 0 on success */
static int spd_inverse(const double *A, int n, double ridge, double *out) {
    double L[MAXF * MAXF]; memset(L, 0, sizeof(double) * n * n);
    for (int i = 0; i < n; i++)
        for (int j = 0; j <= i; j++) {
            double s = A[i * n + j] + (i == j ? ridge : 0);
            for (int k = 0; k < j; k++) s -= L[i * n + k] * L[j * n + k];
            if (i == j) { if (s <= 0) return -1; L[i * n + i] = sqrt(s); }
            else L[i * n + j] = s / L[j * n + j];
        }
    /* inv = L^-T L^-1 : solve column by column */
    double col[MAXF], y[MAXF];
    for (int c = 0; c < n; c++) {
        for (int i = 0; i < n; i++) col[i] = (i == c);
        for (int i = 0; i < n; i++) { double s = col[i]; for (int k = 0; k < i; k++) s -= L[i * n + k] * y[k]; y[i] = s / L[i * n + i]; }
        for (int i = n - 1; i >= 0; i--) { double s = y[i]; for (int k = i + 1; k < n; k++) s -= L[k * n + i] * col[k]; col[i] = s / L[i * n + i]; }
        for (int i = 0; i < n; i++) out[i * n + c] = col[i];
    }
    return 0;
}

static double small_median(double *v, int n) {   /* insertion sort, n small */
    for (int a = 1; a < n; a++) { double t = v[a]; int b = a - 1; while (b >= 0 && v[b] > t) { v[b + 1] = v[b]; b--; } v[b + 1] = t; }
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* at most a share pt of the sorted window lies off L (moves that rare fall beyond the upper quantile the
   thresholds extrapolate from) */
static int rarely_moves(const double *sw, int n, double L, double pt) {
    int off = 0;
    for (int i = 0; i < n; i++) off += sw[i] != L;
    return off <= pt * n;
}

/* ---------- API ---------- */
Detector *codev_new(const Params *p, int M) {
    if (M > MAXM) return NULL;
    Detector *d = calloc(1, sizeof(Detector));
    d->p = *p; d->M = M;
    int HL = (p->K > 0 && p->P > 0) ? p->K * p->P : 0;
    d->p.K = HL ? p->K : 0;
    for (int j = 0; j < M; j++) {
        Metric *m = &d->m[j];
        m->mad = -1;
        if (p->LR > 0) { m->qmx = malloc(sizeof(double) * (p->LR + 1)); m->qmn = malloc(sizeof(double) * (p->LR + 1)); m->imx = malloc(sizeof(long) * (p->LR + 1)); m->imn = malloc(sizeof(long) * (p->LR + 1)); }
        m->sw = malloc(sizeof(double) * p->W); m->ring = malloc(sizeof(double) * p->W); m->dring = malloc(sizeof(double) * p->W);
        m->hist = HL ? malloc(sizeof(double) * HL) : NULL;
        m->tr = p->TK > 0 ? malloc(sizeof(double) * 2 * p->TK) : NULL;  /* uses 2*TK-1 */
    }
    d->F = M * (1 + (p->TK > 0) + (p->RG > 0) + (p->CU > 0) + (p->LR > 0) + (p->SZ > 0) + (p->PZ > 0));
    for (int i = 0; i < d->F; i++) d->cov[i * d->F + i] = 1.0;   /* prior: identity */
    hist_init(&d->h1, p->C); hist_init(&d->h2, p->C); hist_init(&d->h3, p->C); for (int j = 0; j < M; j++) hist_init(&d->hm[j], p->hcal ? p->C : 1);
    d->wbuf = p->rebuild ? malloc(sizeof(double) * 288 * d->F) : NULL;
    return d;
}
void codev_free(Detector *d) {
    for (int j = 0; j < d->M; j++) { free(d->m[j].sw); free(d->m[j].ring); free(d->m[j].dring); free(d->m[j].hist); free(d->m[j].tr); if (d->p.LR > 0) { free(d->m[j].qmx); free(d->m[j].qmn); free(d->m[j].imx); free(d->m[j].imn); } }
    free(d->h1.bring); free(d->h2.bring); free(d->h3.bring); for (int j = 0; j < d->M; j++) free(d->hm[j].bring); free(d->wbuf); free(d);
}

static int hold_span(const Params *p) {
    if (p->hspan > 0) return p->hspan > 16 ? 16 : p->hspan;
    double s = round(1800.0 * p->epd / 86400.0);
    return s < 3 ? 3 : s > 16 ? 16 : (int)s;
}
static int span_of(const Params *p) {
    if (p->span > 0) return p->span;
    double s = round(600.0 * p->epd / 86400.0);
    return s < 2 ? 2 : s > 16 ? 16 : (int)s;
}
/* median of dd and the ring's span-1 previous distances (the 2-event mean when span == 2); pushes dd.
 * A median: one spike does not hold it up for span events, a change lasting half the span moves it */
static double span_median(double *ring, int *len, int span, double dd, double dprev) {
    if (span == 2) return 0.5 * (dd + dprev);
    double v[16]; int n = *len + 1;
    for (int i = 0; i < *len; i++) v[i] = ring[i];
    v[*len] = dd;
    for (int a = 1; a < n; a++) { double tv = v[a]; int b = a - 1; while (b >= 0 && v[b] > tv) { v[b + 1] = v[b]; b--; } v[b + 1] = tv; }
    double m = n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
    if (*len + 1 >= span) { memmove(ring, ring + 1, sizeof(double) * (*len - 1)); (*len)--; }
    ring[(*len)++] = dd;
    return m;
}
/* the first inverse has arrived: H1/H2 are refilled with the warm-up features' distances under the
 * learned metric (the identity-metric distances before it are on another scale); the thresholds are
 * recomputed at the next event */
static void rebuild_hists(Detector *d) {
    const Params *p = &d->p; int F = d->F, span = span_of(p);
    memset(d->h1.cnt, 0, sizeof d->h1.cnt); d->h1.pos = d->h1.len = 0;
    memset(d->h2.cnt, 0, sizeof d->h2.cnt); d->h2.pos = d->h2.len = 0;
    d->dlen = 0;
    double prev = 0;
    /* k-fold cross-validation (k = CV_FOLDS): the rows of each fold are judged by an inverse of the
     * covariance of the other folds' rows (distances of the rows an inverse was fitted on are biased
     * low); too few rows, or a covariance that does not invert, falls back to the inverse itself */
    int kf = CV_FOLDS;
    double *A2 = malloc(sizeof(double) * kf * F * F), *cv = malloc(sizeof(double) * F * F);
    int nw = d->nwarm;
    for (int h = 0; h < kf; h++) {
        int lo = h * nw / kf, hi = (h + 1) * nw / kf, n = nw - (hi - lo); double mu[MAXF] = {0};
        double *Ah = A2 + (long)h * F * F;
        if (n < 2) { memcpy(Ah, d->inv, sizeof(double) * F * F); continue; }
        for (int w = 0; w < nw; w++) if (w < lo || w >= hi) for (int i = 0; i < F; i++) mu[i] += d->wbuf[(long)w * F + i] / n;
        memset(cv, 0, sizeof(double) * F * F);
        for (int w = 0; w < nw; w++) if (w < lo || w >= hi) { const double *z = d->wbuf + (long)w * F; for (int i = 0; i < F; i++) for (int k = 0; k < F; k++) cv[i * F + k] += (z[i] - mu[i]) * (z[k] - mu[k]) / n; }
        if (spd_inverse(cv, F, p->ridge, Ah) != 0) memcpy(Ah, d->inv, sizeof(double) * F * F);
    }
    int h = 0;
    for (int w = 0; w < d->nwarm; w++) {
        while ((h + 1) * nw / kf <= w) h++;
        const double *z = d->wbuf + (long)w * F; double dd = 0;
        const double *A = A2 + (long)h * F * F;
        for (int i = 0; i < F; i++) { double s = 0; for (int k = 0; k < F; k++) s += A[i * F + k] * z[k]; dd += s * z[i]; }
        if (dd < 0) dd = 0;
        hist_add(&d->h1, p->C, dd);
        hist_add(&d->h2, p->C, span_median(d->dring, &d->dlen, span, dd, w ? prev : dd));
        prev = dd;
    }
    free(A2); free(cv);
    d->dprev = prev; d->nwarm = 0; d->t1 = d->t2 = 0;
}

/* process one event (x: M values); returns flag; score/contrib readable from the struct */
int codev_update(Detector *d, const double *x) {
    const Params *p = &d->p;
    int M = d->M, HL = p->K * p->P;
    double lv[MAXM];
    int ready = 1;
    /* 1. per-metric deviation z_j */
    for (int j = 0; j < M; j++) {
        Metric *m = &d->m[j];
        double xv = x[j], z = 0, L = xv, sc_j = 1, zs = NAN;   /* zs: seasonal deviation / scale (NAN = no seasonal context) */
        if (m->ns >= 12) {
            L = med_sorted(m->sw, m->ns);
            double fl = 1e-9 * fabs(L) + 1e-12;               /* scale floor, and what counts as a step */
            if (d->t % 12 == 0 || m->mad < 0) {                  /* refreshed every 12 events */
                m->mad = 1.4826 * mad_sorted(m->sw, m->ns, L);
                if (p->qz > 0 && p->epd > p->qz) m->qnt = step_quantum(m->dring, m->dlen, fl, m->qnt);
            }
            double s = m->mad;
            double st = m->dlen ? m->dsum / m->dlen : 0;      /* mean |step| */
            if (st > s) s = st;
            if (fl > s) s = fl;
            if (m->qnt > s) s = m->qnt;                        /* resolution floors (section 4) */
            if (p->qf && !m->frac && xv == floor(xv)) { if (s < 1.0) s = 1.0; }
            else if (p->rf > 0 && p->epd > p->rf && rarely_moves(m->sw, m->ns, L, p->pt)) {  /* its typical move */
                if (m->nzc > 0) { if (m->nzm > s) s = m->nzm; }
                else if (p->still > 0 && fabs(xv - L) / p->still > s) s = fabs(xv - L) / p->still;
            }
            sc_j = s;
            double dv = xv - L;
            if (HL && m->hlen >= p->P) {
                double lag[16]; int nl = 0;
                for (int k = 1; k <= p->K && k * p->P <= m->hlen; k++) lag[nl++] = m->hist[(m->hpos - k * p->P + HL) % HL];
                for (int a = 1; a < nl; a++) { double tv = lag[a]; int b = a - 1; while (b >= 0 && lag[b] > tv) { lag[b + 1] = lag[b]; b--; } lag[b + 1] = tv; }
                double ds = xv - (nl % 2 ? lag[nl / 2] : 0.5 * (lag[nl / 2 - 1] + lag[nl / 2]));
                zs = ds / s;
                dv = ((dv > 0) == (ds > 0)) ? (fabs(dv) < fabs(ds) ? dv : ds) : 0.0;
            }
            if (fabs(xv - L) < p->relmin * fabs(L)) dv = 0;
            if ((p->dir > 0 && dv < 0) || (p->dir < 0 && dv > 0)) dv = 0;
            z = dv / s;
            if (z > p->zclip) z = p->zclip;
            if (z < -p->zclip) z = -p->zclip;
        } else ready = 0;
        d->z[j] = z; lv[j] = L;
        if (HL && m->hlen < p->P) ready = 0;          /* with seasonality on, wait for one day of seasonal context */
        if (p->TK > 0) {
            /* trend: mean of (current raw value + last TK-1 learned values) minus mean of the TK learned values before */
            int K2 = 2 * p->TK - 1;                       /* ring of past learned values */
            double tz = 0;
            if (m->tlen == K2 && m->ns >= 12) {
                double a = xv, b = 0;
                for (int k = 0; k < p->TK - 1; k++) a += m->tr[(m->tpos - 1 - k + 2 * K2) % K2];
                for (int k = p->TK - 1; k < K2; k++) b += m->tr[(m->tpos - 1 - k + 2 * K2) % K2];
                tz = (a - b) / p->TK / sc_j;
                if (p->sgate && !isnan(zs)) tz = ((tz > 0) == (zs > 0)) ? (fabs(tz) < fabs(zs) ? tz : zs) : 0.0;
                if ((p->dir > 0 && tz < 0) || (p->dir < 0 && tz > 0)) tz = 0;
                if (tz > p->zclip) tz = p->zclip;
                if (tz < -p->zclip) tz = -p->zclip;
            }
            d->z[M + j] = tz;
        }
        if (p->RG > 0) {
            double rz = 0;
            if (m->ns >= 12) {
                double lo = m->sw[0], hi = m->sw[m->ns - 1];
                if (xv > hi) rz = (xv - hi) / sc_j; else if (xv < lo) rz = (xv - lo) / sc_j;
                if (p->sgate && !isnan(zs) && rz != 0) rz = ((rz > 0) == (zs > 0)) ? (fabs(rz) < fabs(zs) ? rz : zs) : 0.0;
                if ((p->dir > 0 && rz < 0) || (p->dir < 0 && rz > 0)) rz = 0;
                if (rz > p->zclip) rz = p->zclip;
                if (rz < -p->zclip) rz = -p->zclip;
            }
            d->z[(p->TK > 0 ? 2 : 1) * M + j] = rz;
        }
        if (p->CU > 0) {
            double cz = 0;
            if (m->ns >= 12) {
                double cu = m->cup + z - p->CU, cd = m->cdn + z + p->CU;
                m->cup_new = cu > 0 ? cu : 0; m->cdn_new = cd < 0 ? cd : 0;   /* committed only if the event is learned */
                cz = m->cup_new + m->cdn_new;
                if (cz > p->zclip) cz = p->zclip;
                if (cz < -p->zclip) cz = -p->zclip;
            }
            d->z[(1 + (p->TK > 0) + (p->RG > 0)) * M + j] = cz;
        }
        if (p->LR > 0) {
            double lz = 0; int cap = p->LR + 1;
            if (m->ns >= 12 && m->nx > 0) {
                double hi = m->qmx[m->hx % cap], lo = m->qmn[m->hn % cap];
                if (xv > hi) lz = (xv - hi) / sc_j; else if (xv < lo) lz = (xv - lo) / sc_j;
                if ((p->dir > 0 && lz < 0) || (p->dir < 0 && lz > 0)) lz = 0;
                if (lz > p->zclip) lz = p->zclip;
                if (lz < -p->zclip) lz = -p->zclip;
            }
            d->z[(1 + (p->TK > 0) + (p->RG > 0) + (p->CU > 0)) * M + j] = lz;
        }
        if (p->SZ > 0) {
            double q = isnan(zs) ? 0 : zs;
            if ((p->dir > 0 && q < 0) || (p->dir < 0 && q > 0)) q = 0;
            if (q > p->zclip) q = p->zclip;
            if (q < -p->zclip) q = -p->zclip;
            d->z[(1 + (p->TK > 0) + (p->RG > 0) + (p->CU > 0) + (p->LR > 0)) * M + j] = q;
        }
        if (p->PZ > 0) {                      /* persistent level deviation: median of the last PZ level features */
            double zl = d->z[j], prev = d->plen[j] ? d->pring[j][d->plen[j] - 1] : zl;
            d->z[(1 + (p->TK > 0) + (p->RG > 0) + (p->CU > 0) + (p->LR > 0) + (p->SZ > 0)) * M + j] = span_median(d->pring[j], &d->plen[j], p->PZ, zl, prev);
        }
    }
    /* 2. joint distance d = z' (Cov + ridge I)^-1 z, contributions z_j (A z)_j */
    int F = d->F;
    double Az[MAXF], dd = 0;
    if (d->have_inv) {
        for (int i = 0; i < F; i++) { double s = 0; for (int k = 0; k < F; k++) s += d->inv[i * F + k] * d->z[k]; Az[i] = s; dd += s * d->z[i]; }
    } else { for (int i = 0; i < F; i++) { Az[i] = d->z[i] / (1.0 + p->ridge); dd += Az[i] * d->z[i]; } }
    if (dd < 0) dd = 0;
    double ctot = 0;
    for (int j = 0; j < M; j++) {
        double c = 0;
        for (int b = j; b < F; b += M) c += d->z[b] * Az[b];
        d->contrib[j] = c > 0 ? c : 0; ctot += d->contrib[j];
    }
    for (int j = 0; j < M; j++) d->contrib[j] = ctot > 0 ? d->contrib[j] / ctot : 1.0 / M;
    int span = span_of(p);
    double dm = span_median(d->dring, &d->dlen, span, dd, d->dprev);
    double B = 0, Bm = 0;
    if (p->BR > 0) {
        for (int j = 0; j < M; j++) { double a = fabs(d->z[j]); if (a > p->BR) a = p->BR; B += a * a; }
        Bm = span_median(d->bring, &d->blen, span, B, d->bprev);
    }
    /* hold channel: per metric, the median of its level feature over the last hspan events against `hold` */
    int hon = p->hold > 0 && p->epd <= p->hfast;
    double RH = 0;
    if (hon) {
        int hs = hold_span(p);
        double rh = (d->rho_cur > 0 ? d->rho_cur : p->rho) * p->kappa / p->epd * p->hrate / M;
        for (int j = 0; j < M; j++) {
            double a = d->z[j], prev = d->plen[j] ? d->pring[j][d->plen[j] - 1] : a;
            d->hz[j] = fabs(span_median(d->pring[j], &d->plen[j], hs, a, prev));
            if (!p->hcal) d->hth[j] = p->hold;
            else if (d->t % 12 == 0 || d->hth[j] <= 0)
                d->hth[j] = p->hraw ? tail_thr_raw(&d->hm[j], rh, p->hpt > 0 ? p->hpt : p->pt, p->hold)
                                    : tail_thr(&d->hm[j], rh, p->hpt > 0 ? p->hpt : p->pt, p->ximax, p->hold);
            if (d->hz[j] / d->hth[j] > RH) RH = d->hz[j] / d->hth[j];
        }
    }
    /* 3. calibration: threshold for a target exceedance rate r = rho * kappa / epd per event, from the
     *    own recent distribution (sliding histogram): Pareto-type tail extrapolation above q_hi. */
    if (d->rho_cur <= 0) d->rho_cur = p->rho;
    double r = d->rho_cur * p->kappa / p->epd;
    if (d->t % 12 == 0 || d->t1 <= 0) { d->t1 = tail_thr(&d->h1, r, p->pt, p->ximax, p->tfloor); d->t2 = tail_thr(&d->h2, r, p->pt, p->ximax, p->tfloor);
        if (p->BR > 0) d->t3 = tail_thr(&d->h3, r * p->brate, p->pt, p->ximax, p->tfloor); }
    double t1 = d->t1, t2 = d->t2;                     /* thresholds refreshed every 12 events */
    double R1 = dd / t1, R2 = dm / t2;
    int scoring = ready && d->t >= p->warm && d->h1.len >= 288 && d->ncov >= 288 && d->ncov >= p->covmin * F;
    double R3 = p->BR > 0 ? Bm / d->t3 : 0;
    if (!scoring) { R1 = R2 = R3 = RH = 0; }
    if (d->h1.len < p->C) RH = 0;   /* the hold channel waits for a full calibration window (the main channels' quiet start) */
    double R = R1 / p->a1 > R2 ? R1 / p->a1 : R2;
    /* 4. alarm state machine: 0 armed, 1 alarm (flagged), 2 refractory */
    int flag = 0;
    double on = p->thr, off = p->thr * p->thr_off;
    if (d->state == 1) {
        d->age++;
        if (R1 < off) d->state = 2;                              /* current event back to normal-ish: alarm ends */
        else if (d->age >= p->maxhold) d->state = 2;             /* long episode: stop paging */
        else flag = 1;
    }
    if (d->state == 2) { if (R < off) d->state = 0; }             /* re-arm once the score is below off */
    if (R >= on) d->run++; else d->run = 0;
    if (d->state == 0 && d->run >= p->confirm) { d->state = 1; d->age = 0; flag = 1; }
    /* breadth: an alarm state of its own (one flagged event, then refractory until R3 < off), so a long
       breadth episode neither pages again nor holds the main channels refractory */
    if (p->BR > 0) {
        if (d->bstate == 2 && R3 < off) d->bstate = 0;
        if (d->bstate == 0 && R3 >= on) { d->bstate = 2; flag = 1; }
    }
    /* hold: an alarm state of its own on RH (one flagged event, then refractory until RH < off). While the main
       channels' alarm is on or refractory, a hold is part of that episode: no flag of its own. An event only
       the hold channel flags reports the held metrics as its contributions */
    if (hon) {
        if (d->hstate == 2 && RH < off) d->hstate = 0;
        if (d->hstate == 0 && RH >= on && d->state != 0) d->hstate = 2;   /* part of the main alarm's episode */
        if (d->hstate == 0 && RH >= on) {
            d->hstate = 2;
            if (!flag) {
                double tot = 0;
                for (int j = 0; j < M; j++) tot += d->hz[j] >= d->hth[j] ? d->hz[j] : 0;
                for (int j = 0; j < M; j++) d->contrib[j] = d->hz[j] >= d->hth[j] ? d->hz[j] / tot : 0;
            }
            flag = 1;
        }
    }
    /* 5. learning (skipped for flagged events when freeze) */
    int learn = !(p->freeze && flag);
    for (int j = 0; j < M; j++) {
        Metric *m = &d->m[j];
        double xv = x[j];
        if (p->TK > 0) { int K2 = 2 * p->TK - 1; m->tr[m->tpos] = learn ? xv : lv[j]; m->tpos = (m->tpos + 1) % K2; if (m->tlen < K2) m->tlen++; }
        if (HL) { m->hist[m->hpos] = learn ? xv : lv[j]; m->hpos = (m->hpos + 1) % HL; if (m->hlen < HL) m->hlen++; }
        if (m->has_seen) {                                    /* moves: every event, flagged ones too (rf) */
            double dx = fabs(xv - m->seen);
            if (dx > 1e-9 * fmax(fabs(xv), fabs(m->seen)) + 1e-12) { m->nzc++; m->nzm += (dx - m->nzm) / (m->nzc < p->W ? m->nzc : p->W); }
        }
        m->seen = xv; m->has_seen = 1;
        if (!learn) continue;
        m->cup = m->cup_new; m->cdn = m->cdn_new;
        if (p->LR > 0) {
            int cap = p->LR + 1; long i = m->nlearn;
            while (m->nx > 0 && m->qmx[(m->hx + m->nx - 1) % cap] <= xv) m->nx--;
            m->qmx[(m->hx + m->nx) % cap] = xv; m->imx[(m->hx + m->nx) % cap] = i; m->nx++;
            while (m->imx[m->hx % cap] <= i - p->LR) { m->hx = (m->hx + 1) % cap; m->nx--; }
            while (m->nn > 0 && m->qmn[(m->hn + m->nn - 1) % cap] >= xv) m->nn--;
            m->qmn[(m->hn + m->nn) % cap] = xv; m->imn[(m->hn + m->nn) % cap] = i; m->nn++;
            while (m->imn[m->hn % cap] <= i - p->LR) { m->hn = (m->hn + 1) % cap; m->nn--; }
            m->nlearn++;
        }
        if (xv != floor(xv)) m->frac = 1;
        if (m->rlen == p->W) del(m->sw, &m->ns, m->ring[m->rpos]);
        ins(m->sw, &m->ns, xv);
        m->ring[m->rpos] = xv;
        if (m->has_last) {
            double dx = fabs(xv - m->last);
            if (m->dlen == p->W) m->dsum -= m->dring[m->rpos]; else m->dlen++;
            m->dring[m->rpos] = dx; m->dsum += dx;
        }
        m->rpos = (m->rpos + 1) % p->W; if (m->rlen < p->W) m->rlen++;
        m->last = xv; m->has_last = 1;
    }
    int jl = p->jointlearn ? (d->state == 0 && !flag) : learn;   /* joint model + calibration learn only from normal (armed) events */
    int rebuilt = 0;
    if (jl && ready) {
        if (d->wbuf && !d->have_inv) {
            if (d->nwarm == 288) { memmove(d->wbuf, d->wbuf + F, sizeof(double) * 287 * F); d->nwarm--; }
            memcpy(d->wbuf + (long)d->nwarm * F, d->z, sizeof(double) * F); d->nwarm++;
        }
        double a = 1.0 / (d->ncov + 1 < p->Ccov ? d->ncov + 1 : p->Ccov);  /* running mean until C, then EW */
        for (int i = 0; i < F; i++) d->mu[i] += a * (d->z[i] - d->mu[i]);
        for (int i = 0; i < F; i++) for (int k = 0; k <= i; k++) {
            double c = d->cov[i * F + k] + a * ((d->z[i] - d->mu[i]) * (d->z[k] - d->mu[k]) - d->cov[i * F + k]);
            d->cov[i * F + k] = d->cov[k * F + i] = c;
        }
        d->ncov++;
        if (d->ncov % p->inv_every == 0 || d->ncov == 288) {
            if (p->diag) { double dg[MAXF * MAXF]; memset(dg, 0, sizeof(double) * F * F); for (int i = 0; i < F; i++) dg[i * F + i] = d->cov[i * F + i]; if (spd_inverse(dg, F, p->ridge, d->inv) == 0) d->have_inv = 1; }
            else if (spd_inverse(d->cov, F, p->ridge, d->inv) == 0) d->have_inv = 1;
            if (d->have_inv && d->nwarm > 0) { rebuild_hists(d); rebuilt = 1; }
        }
    }
    if (ready && !rebuilt) {
        if (jl || p->calall == 1) { hist_add(&d->h1, p->C, dd); hist_add(&d->h2, p->C, dm); if (p->BR > 0) hist_add(&d->h3, p->C, Bm); if (hon && p->hcal) for (int j = 0; j < M; j++) hist_add(&d->hm[j], p->C, d->hz[j]); }
        else if (p->calall == 2) { hist_add(&d->h1, p->C, dd < t1 ? dd : t1); hist_add(&d->h2, p->C, dm < t2 ? dm : t2); } /* winsorised at the threshold */
    }
    if (!rebuilt) d->dprev = dd;
    d->bprev = B; d->R3 = R3; d->RH = RH;
    if (R3 > R) R = R3;
    if (RH > R) R = RH;
    { double hd = p->hdecay * d->Hs; d->Hs = R > hd ? R : hd; }
    if (p->target > 0 && scoring) {   /* adaptive knob: EW rate of alarm starts (memory C events), adjusted once a day */
        int started = flag && d->age == 0 && d->state == 1;
        d->start_rate += (started - d->start_rate) / p->C;
        d->nscored++;
        if (d->nscored >= p->C && d->nscored % (long)p->epd_i == 0) {
            double pages = d->start_rate * p->epd, lo = p->target / 4;
            double ratio = p->target / (pages > lo ? pages : lo);
            double f = sqrt(ratio); if (f < 0.7) f = 0.7; if (f > 1.4) f = 1.4;
            d->rho_cur *= f; if (d->rho_cur < 1e-4) d->rho_cur = 1e-4; if (d->rho_cur > 10) d->rho_cur = 10;
        }
    }   /* peak-hold with decay: the episode score */
    d->d = dd; d->dm = dm; d->R1 = R1; d->R2 = R2; d->R = R; d->flag = flag;
    d->t++;
    return flag;
}

/* batch helper for Python: X n x M; returns R (score), flags, contributions (n x M, may be NULL), z (may be NULL) */
void codev_run(const Params *p, const double *X, long n, int M, long score_from,
               double *out_R, int *out_flag, double *out_contrib, double *out_z, double *out_H) {
    Detector *d = codev_new(p, M);
    for (long t = 0; t < n; t++) {
        int f = codev_update(d, X + t * M);
        out_R[t] = d->R; out_flag[t] = t >= score_from ? f : 0;
        if (out_H) out_H[t] = d->Hs;
        if (out_contrib) memcpy(out_contrib + t * M, d->contrib, sizeof(double) * M);
        if (out_z) memcpy(out_z + t * M, d->z, sizeof(double) * M);
    }
    codev_free(d);
}

#ifdef CODEV_BENCH
#include <time.h>
int main(int argc, char **argv) {
    int M = argc > 1 ? atoi(argv[1]) : 3; long n = argc > 2 ? atol(argv[2]) : 1000000;
    int K = argc > 3 ? atoi(argv[3]) : 7, TK = argc > 4 ? atoi(argv[4]) : 0, RG = argc > 5 ? atoi(argv[5]) : 1, W = argc > 6 ? atoi(argv[6]) : 72;
    Params p = {.W = 72, .K = 7, .P = 288, .zclip = 10, .relmin = 0, .dir = 0, .ridge = 0.3, .C = 2016, .Ccov = 8640,
                .inv_every = 288, .rho = 0.1, .target = 0, .kappa = 1, .epd = 288, .epd_i = 288, .pt = 0.02, .ximax = 0, .a1 = 1, .thr = 1,
                .thr_off = 0.5, .maxhold = 12, .confirm = 1, .warm = 0, .freeze = 1, .calall = 0, .jointlearn = 0, .CU = 0, .LR = 0, .tfloor = 3.0, .diag = 0, .hdecay = 0.97, .SZ = 1, .sgate = 1, .RG = 1, .TK = 0, .rebuild = 0, .span = 0, .qf = 1, .qz = 0, .rf = 1440, .still = 1, .BR = 0, .brate = 1, .PZ = 0, .hold = 0, .hspan = 0, .hfast = 1440, .hcal = 0, .hrate = 1, .hpt = 0, .hraw = 0, .covmin = 20};
    p.K = K; p.TK = TK; p.RG = RG; p.W = W;
    double *X = malloc(sizeof(double) * n * M);
    uint64_t s = 12345;
    for (long i = 0; i < n * M; i++) {   /* daily cycle + noise + rare steps */
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        double u = ((s >> 11) * (1.0 / 9007199254740992.0));
        long t = i / M;
        X[i] = 100 + 20 * sin(2 * M_PI * (t % 288) / 288.0) + 5 * (u - 0.5) + ((t / 5000) % 2) * 10 * (i % M == 0);
    }
    Detector *d = codev_new(&p, M);
    struct timespec a, b; long flags = 0;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long t = 0; t < n; t++) flags += codev_update(d, X + t * M);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double ns = ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n;
    printf("M=%d n=%ld: %.1f ns/event (%.0f events/s), flags %ld\n", M, n, ns, 1e9 / ns, flags);
    codev_free(d); free(X);
    return 0;
}
#endif
