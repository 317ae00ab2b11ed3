/* Exploration helper: per-metric robust deviations for one series (n events x M metrics, row-major).
 * level  = median of previous W values; scale = max(MAD of previous W, c_step * median |dx| over previous W)
 * seas   = median over k=1..K of x[t - k*P]; z_seas = (x - seas)/scale
 * out: zl[n*M] (vs level), zs[n*M] (vs seasonal; NAN if unavailable), sc[n*M] (scale), lv[n*M]
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

static void ins(double *a, int *n, double v) { int lo = 0, hi = *n; while (lo < hi) { int m = (lo + hi) / 2; if (a[m] < v) lo = m + 1; else hi = m; } memmove(a + lo + 1, a + lo, sizeof(double) * (*n - lo)); a[lo] = v; (*n)++; }
static void del(double *a, int *n, double v) { int lo = 0, hi = *n; while (lo < hi) { int m = (lo + hi) / 2; if (a[m] < v) lo = m + 1; else hi = m; } memmove(a + lo, a + lo + 1, sizeof(double) * (*n - lo - 1)); (*n)--; }
static double med_sorted(double *a, int n) { return n % 2 ? a[n / 2] : 0.5 * (a[n / 2 - 1] + a[n / 2]); }
/* MAD from a sorted array: k-th smallest of |a_i - m| via two-pointer merge */
static double mad_sorted(double *a, int n, double m) {
    int k = n / 2; int lo, hi; /* lo: last idx with a<=m going down; hi: first idx > m going up */
    int p = 0; while (p < n && a[p] <= m) p++;
    lo = p - 1; hi = p; double v = 0;
    for (int c = 0; c <= k; c++) {
        double dl = lo >= 0 ? m - a[lo] : INFINITY, dh = hi < n ? a[hi] - m : INFINITY;
        if (dl <= dh) { v = dl; lo--; } else { v = dh; hi++; }
    }
    return v;
}
static int cmpd(const void *a, const void *b) { double x = *(double *)a, y = *(double *)b; return (x > y) - (x < y); }

void features(const double *X, long n, int M, int W, int K, int P, double c_step,
              double *zl, double *zs, double *sc, double *lv) {
    double *sw = malloc(sizeof(double) * W), *dw = malloc(sizeof(double) * W);
    for (int j = 0; j < M; j++) {
        int ns = 0, nd = 0; double dsum = 0;
        for (long t = 0; t < n; t++) {
            double x = X[t * M + j];
            double level = NAN, scale = NAN;
            if (ns >= 10) {
                level = med_sorted(sw, ns);
                double mad = mad_sorted(sw, ns, level) * 1.4826;
                double st = nd ? med_sorted(dw, nd) * c_step : 0;
                scale = mad > st ? mad : st; double mf = nd ? dsum / nd : 0; if (mf > scale) scale = mf; double ab = 1e-6 * fabs(level) + 1e-12; if (ab > scale) scale = ab;
            }
            lv[t * M + j] = level; sc[t * M + j] = scale;
            zl[t * M + j] = ns >= 10 ? (x - level) / scale : NAN;
            double lag[64]; int nl = 0;
            for (int k = 1; k <= K; k++) if (t - (long)k * P >= 0) lag[nl++] = X[(t - (long)k * P) * M + j];
            if (nl && ns >= 10) { qsort(lag, nl, sizeof(double), cmpd); zs[t * M + j] = (x - med_sorted(lag, nl)) / scale; }
            else zs[t * M + j] = NAN;
            /* update windows */
            if (ns == W) del(sw, &ns, X[(t - W) * M + j]);
            ins(sw, &ns, x);
            if (t >= 1) {
                if (nd == W) { double o = fabs(X[(t - W) * M + j] - X[(t - W - 1) * M + j]); del(dw, &nd, o); dsum -= o; }
                ins(dw, &nd, fabs(x - X[(t - 1) * M + j])); dsum += fabs(x - X[(t - 1) * M + j]);
            }
        }
    }
    free(sw); free(dw);
}
