/* kanary research/real: streaming label-free multi-metric detector ("CoDev": context deviation,
 * calibrated per metric, combined per service).  One State per service; detect_series() runs a whole
 * series (train events first with score_from = index of first test event).
 *
 * gcc -O2 -shared -fPIC -o det.so det.c -lm
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAXM 32
#define NB 128           /* log-histogram bins for |z| calibration */
#define LB_LO -2.0       /* log10 of lowest bin edge (|z| = 0.01) */
#define LB_W 0.125       /* bin width in log10 units (8 bins per decade) -> top edge 10^14 */

typedef struct {
    /* windows / contexts */
    int W;            /* level window (events) */
    int K;            /* seasonal days (0 = off) */
    int P;            /* events per day */
    int C;            /* calibration horizon (events) for |z| quantile */
    double qcal;      /* calibration quantile (e.g. 0.99) */
    double zfloor;    /* floor for the calibration quantile (in z units) */
    double relmin;    /* minimum relative change |x-L| >= relmin*|L| */
    double c_step;    /* weight of mean |dx| in the scale floor */
    int dir;          /* 0 both, 1 up, -1 down */
    int ctx;          /* 0 level only, 1 seasonal only, 2 sign-consistent min of both */
    double vcap;      /* cap on per-metric evidence */
    int comb;         /* 0 sum of v, 1 max v, 2 sum of top2 */
    /* alarm */
    double thr;       /* alarm on when S >= thr */
    double thr_off;   /* alarm holds while S >= thr_off (fraction of thr) */
    int hold;         /* minimum events flagged after the last event with S >= thr_off */
    int rebase;       /* after this many alarm events, learning resumes (re-baseline) */
    int confirm;      /* number of consecutive events >= thr needed to start */
    int freeze;       /* 1: do not learn during alarms (until rebase) */
    int warm;         /* events before scoring is allowed (per series) */
    int cal;          /* 0: ratio to quantile qcal; 1: tail probability vs alpha=1-qcal */
    double xw;        /* weight of the beyond-record extrapolation (cal=1) */
    int maxhold;      /* max flagged events per alarm (0 = unlimited); then disarmed until the episode ends */
    int dlearn;       /* learn while disarmed */
} Params;

typedef struct {
    double *sw; int ns;          /* sorted level window */
    double *ring; int rpos, rlen; /* raw (accepted) values of the last W events for removal */
    double *dring; double dsum; int dlen; /* last W |dx| */
    double last; int has_last;
    double *hist; int hlen, hpos; /* seasonal history (accepted values), length K*P */
    int *cring; int clen, cpos;  /* bin index ring for calibration */
    int cnt[NB + 1];             /* bin counts; NB = overflow */
    double zmax;                 /* max |z| in calibration horizon (approx: top edge of highest non-empty bin) */
} Metric;

static void ins(double *a, int *n, double v) { int lo = 0, hi = *n; while (lo < hi) { int m = (lo + hi) / 2; if (a[m] < v) lo = m + 1; else hi = m; } memmove(a + lo + 1, a + lo, sizeof(double) * (*n - lo)); a[lo] = v; (*n)++; }
static void del(double *a, int *n, double v) { int lo = 0, hi = *n; while (lo < hi) { int m = (lo + hi) / 2; if (a[m] < v) lo = m + 1; else hi = m; } if (lo < *n) { memmove(a + lo, a + lo + 1, sizeof(double) * (*n - lo - 1)); (*n)--; } }
static double med_sorted(const double *a, int n) { return n % 2 ? a[n / 2] : 0.5 * (a[n / 2 - 1] + a[n / 2]); }
static double mad_sorted(const double *a, int n, double m) {
    int k = n / 2, lo, hi, p = 0;
    while (p < n && a[p] <= m) p++;
    lo = p - 1; hi = p; double v = 0;
    for (int c = 0; c <= k; c++) {
        double dl = lo >= 0 ? m - a[lo] : INFINITY, dh = hi < n ? a[hi] - m : INFINITY;
        if (dl <= dh) { v = dl; lo--; } else { v = dh; hi++; }
    }
    return v;
}
static int zbin(double az) {
    if (!(az > 0)) return 0;
    double b = (log10(az) - LB_LO) / LB_W;
    if (b < 0) return 0;
    if (b >= NB) return NB;
    return (int)b;
}
/* upper quantile of |z| from the histogram: value v with P(|z| > v) ~= 1-q */
static double hist_quant(const Metric *m, double q) {
    if (m->clen == 0) return 0;
    double tail = (1.0 - q) * m->clen, acc = 0;
    for (int b = NB; b >= 0; b--) {
        double c = m->cnt[b];
        if (acc + c >= tail && c > 0) {
            if (b == NB) return pow(10, LB_LO + NB * LB_W);
            if (b == 0) return pow(10, LB_LO + LB_W);
            double frac = (tail - acc) / c;  /* fraction of this bin above the quantile */
            return pow(10, LB_LO + (b + 1 - frac) * LB_W);
        }
        acc += c;
    }
    return pow(10, LB_LO);
}

/* number of calibration samples with |z| above az (fractional within az's bin, log-uniform) */
static double hist_above(const Metric *m, double az) {
    if (!(az > 0)) return m->clen;
    double bf = (log10(az) - LB_LO) / LB_W;
    if (bf < 0) return m->clen;
    int b = bf >= NB ? NB : (int)bf;
    double acc = 0;
    for (int k = NB; k > b; k--) acc += m->cnt[k];
    if (b < NB) acc += m->cnt[b] * (b + 1 - bf);
    return acc;
}
/* X: n x M row-major. out_score[n], out_flag[n], out_contrib[n*M] (may be NULL), out_v[n*M] (may be NULL) */
void detect_series(const Params *p, const double *X, long n, int M, long score_from,
                   double *out_score, int *out_flag, double *out_contrib, double *out_z, double *out_v) {
    Metric *mt = calloc(M, sizeof(Metric));
    int HL = p->K * p->P;
    for (int j = 0; j < M; j++) {
        mt[j].sw = malloc(sizeof(double) * p->W); mt[j].ring = malloc(sizeof(double) * p->W);
        mt[j].dring = malloc(sizeof(double) * p->W);
        mt[j].hist = HL ? malloc(sizeof(double) * HL) : NULL;
        mt[j].cring = malloc(sizeof(int) * p->C);
    }
    int in_alarm = 0, state = 0, age = 0, since_hi = 0, run = 0;
    double v[MAXM], zz[MAXM], learnval[MAXM];
    for (long t = 0; t < n; t++) {
        double S = 0, vmax = 0, v1 = 0, v2 = 0;
        int ready = 1;
        for (int j = 0; j < M; j++) {
            Metric *m = &mt[j];
            double x = X[t * M + j];
            v[j] = 0; zz[j] = 0;
            double L = NAN, sc = NAN;
            if (m->ns >= 12) {
                L = med_sorted(m->sw, m->ns);
                double mad = 1.4826 * mad_sorted(m->sw, m->ns, L);
                double st = m->dlen ? p->c_step * m->dsum / m->dlen : 0;
                sc = mad > st ? mad : st;
                double ab = 1e-9 * fabs(L) + 1e-12;
                if (ab > sc) sc = ab;
                double d = x - L;
                if (p->ctx >= 1 && m->hlen >= p->P) {
                    double lag[16]; int nl = 0;
                    for (int k = 1; k <= p->K && k * p->P <= m->hlen; k++) {
                        int idx = (m->hpos - k * p->P + HL) % HL;
                        lag[nl++] = m->hist[idx];
                    }
                    for (int a = 1; a < nl; a++) { double tv = lag[a]; int b = a - 1; while (b >= 0 && lag[b] > tv) { lag[b + 1] = lag[b]; b--; } lag[b + 1] = tv; }
                    double sm = nl % 2 ? lag[nl / 2] : 0.5 * (lag[nl / 2 - 1] + lag[nl / 2]);
                    double ds = x - sm;
                    if (p->ctx == 1) d = ds;
                    else d = (d > 0) == (ds > 0) ? (fabs(d) < fabs(ds) ? d : ds) : 0;
                }
                if (fabs(x - L) < p->relmin * fabs(L)) d = 0;
                if (p->dir > 0 && d < 0) d = 0;
                if (p->dir < 0 && d > 0) d = 0;
                double z = d / sc;
                zz[j] = z;
                /* calibration */
                if (m->clen >= 288 && p->cal == 1) {
                    double nab = hist_above(m, fabs(z));
                    double pt = (nab + 1.0) / (m->clen + 1.0);
                    v[j] = log((1.0 - p->qcal) / pt);
                    if (v[j] < 0) v[j] = 0;
                    if (nab < 0.5 && p->xw > 0 && m->zmax > 0 && fabs(z) > m->zmax) v[j] += p->xw * log(fabs(z) / m->zmax);
                    if (v[j] > p->vcap) v[j] = p->vcap;
                } else if (m->clen >= 288) {
                    double Q = hist_quant(m, p->qcal);
                    if (Q < p->zfloor) Q = p->zfloor;
                    double e = fabs(z) / Q;
                    v[j] = e > 1 ? log(e) : 0;
                    if (v[j] > p->vcap) v[j] = p->vcap;
                } else ready = 0;
            } else ready = 0;
            learnval[j] = isnan(L) ? x : L;
        }
        if (ready) {
            for (int j = 0; j < M; j++) {
                S += v[j];
                if (v[j] > v1) { v2 = v1; v1 = v[j]; } else if (v[j] > v2) v2 = v[j];
            }
            if (p->comb == 1) S = v1; else if (p->comb == 2) S = v1 + v2;
        }
        if (t < p->warm) S = 0;
        /* alarm logic: 0 armed, 1 alarm (flagged), 2 disarmed (episode continues unflagged) */
        int flag = 0;
        double toff = p->thr * p->thr_off;
        if (S >= p->thr) run++; else run = 0;
        if (state == 1) {
            age++;
            if (S >= toff) since_hi = 0; else since_hi++;
            if (since_hi >= p->hold) state = 0;
            else if (p->maxhold > 0 && age >= p->maxhold) state = 2;
            else flag = 1;
        } else if (state == 2) {
            if (S >= toff) since_hi = 0; else since_hi++;
            if (since_hi >= p->hold) state = 0;
        }
        if (state == 0 && run >= p->confirm) { state = 1; age = 0; since_hi = 0; flag = 1; }
        if (t < score_from) flag = 0;
        int learn = !(p->freeze && state == 1 && age < p->rebase);
        if (state == 2 && !p->dlearn) learn = 0;
        in_alarm = state;
        /* outputs */
        out_score[t] = S; out_flag[t] = flag;
        if (out_contrib) { double tot = 0; for (int j = 0; j < M; j++) tot += v[j]; for (int j = 0; j < M; j++) out_contrib[t * M + j] = tot > 0 ? v[j] / tot : 0; }
        if (out_z) for (int j = 0; j < M; j++) out_z[t * M + j] = zz[j];
        if (out_v) for (int j = 0; j < M; j++) out_v[t * M + j] = v[j];
        /* learning */
        for (int j = 0; j < M; j++) {
            Metric *m = &mt[j];
            double x = X[t * M + j];
            double xl = learn ? x : learnval[j];
            if (HL) { m->hist[m->hpos] = xl; m->hpos = (m->hpos + 1) % HL; if (m->hlen < HL) m->hlen++; }
            if (!learn) continue;
            /* calibration histogram gets |z| of learned events */
            if (m->ns >= 12) {
                int b = zbin(fabs(zz[j]));
                if (m->clen == p->C) { m->cnt[m->cring[m->cpos]]--; } else m->clen++;
                m->cring[m->cpos] = b; m->cnt[b]++; m->cpos = (m->cpos + 1) % p->C;
                { int k = NB; while (k > 0 && m->cnt[k] == 0) k--; m->zmax = pow(10, LB_LO + (k + 1) * LB_W); }
            }
            if (m->rlen == p->W) { del(m->sw, &m->ns, m->ring[m->rpos]); }
            ins(m->sw, &m->ns, x);
            m->ring[m->rpos] = x;
            if (m->has_last) {
                double dx = fabs(x - m->last);
                if (m->dlen == p->W) m->dsum -= m->dring[m->rpos]; else m->dlen++;
                m->dring[m->rpos] = dx; m->dsum += dx;
            }
            m->rpos = (m->rpos + 1) % p->W; if (m->rlen < p->W) m->rlen++;
            m->last = x; m->has_last = 1;
        }
    }
    for (int j = 0; j < M; j++) { free(mt[j].sw); free(mt[j].ring); free(mt[j].dring); free(mt[j].hist); free(mt[j].cring); }
    free(mt);
}
