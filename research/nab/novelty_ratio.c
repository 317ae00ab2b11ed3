/* Reference C port of NoveltyRatio (detectors.py), used only to measure the per-row cost of a
 * compiled implementation and to cross-check the Python streaming code.
 *
 *   gcc -O2 -o /tmp/novelty_ratio novelty_ratio.c -lm
 *   /tmp/novelty_ratio FILE.csv [repeat]  > scores.txt     (one score per data row)
 *
 * Defaults = the recommended configuration in FINDINGS.md.
 */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define H 1000          /* baseline median over the previous H values */
#define EVERY 10        /* median refreshed on rows i % EVERY == 0 */
#define MIN_HIST 10     /* median undefined until this many previous values */
#define W 16            /* window of the windowed mean */
#define DAYS 7          /* seasonal lags: 1..DAYS days */
#define DAY 86400L
#define WARM 10         /* ratio forced to 0 on rows < WARM */
#define ALERT 1.05      /* ratio at which an alarm fires; score 0.5 */
#define COOLDOWN 20     /* rows capped after an alarm */
#define CAP 1.0         /* ratio cap while cooling down */
#define HORIZON 4032    /* running maxima over the previous HORIZON rows */
#define EPS 1e-12
#define NF 4

typedef struct { long idx; double v; } Item;
typedef struct { Item *buf; long head, len, cap; } Deque; /* ring-buffer deque */

static void dq_init(Deque *d, long cap) { d->buf = malloc(sizeof(Item) * cap); d->head = 0; d->len = 0; d->cap = cap; }
static Item *dq_at(Deque *d, long k) { return &d->buf[(d->head + k) % d->cap]; }
static void dq_push_back(Deque *d, Item it) { *dq_at(d, d->len) = it; d->len++; }
static void dq_pop_back(Deque *d) { d->len--; }
static void dq_pop_front(Deque *d) { d->head = (d->head + 1) % d->cap; d->len--; }

/* k-th smallest (0-based) with a 3-way partition quickselect (robust to many duplicates) */
static double select_kth(double *a, long n, long k) {
    long lo = 0, hi = n - 1;
    while (lo < hi) {
        double x = a[lo], y = a[(lo + hi) / 2], z = a[hi];
        double p = (x < y) ? ((y < z) ? y : (x < z ? z : x)) : ((x < z) ? x : (y < z ? z : y));
        long lt = lo, i = lo, gt = hi;
        while (i <= gt) {
            if (a[i] < p) { double t = a[lt]; a[lt] = a[i]; a[i] = t; lt++; i++; }
            else if (a[i] > p) { double t = a[gt]; a[gt] = a[i]; a[i] = t; gt--; }
            else i++;
        }
        if (k < lt) hi = lt - 1;
        else if (k > gt) lo = gt + 1;
        else return p;
    }
    return a[k];
}

static double median(double *a, long n) {
    long mid = n / 2;
    double hi = select_kth(a, n, mid);
    if (n % 2) return hi;
    double lo = -INFINITY;
    for (long i = 0; i < mid; i++) if (a[i] > lo) lo = a[i];
    return (lo + hi) / 2.0;  /* numpy: mean of the two middle values */
}

typedef struct {
    double ring[H]; long ring_len, ring_pos;   /* previous H values */
    double scratch[H];
    double win[W]; long win_len, win_pos; double win_sum;
    double med;
    long i;
    long *ts; double *xs;                      /* seasonal history (all rows, for simplicity) */
    long ptr[DAYS];
    Deque maxq[NF];
    long cool_until;
} State;

static void init(State *s, long n) {
    memset(s, 0, sizeof(*s));
    s->med = NAN;
    s->ts = malloc(sizeof(long) * n); s->xs = malloc(sizeof(double) * n);
    for (int k = 0; k < DAYS; k++) s->ptr[k] = -1;
    for (int f = 0; f < NF; f++) dq_init(&s->maxq[f], HORIZON + 2);
    s->cool_until = -1;
}

static double cmp_med7(double *v, int n) {
    /* median of up to DAYS values (insertion sort) */
    for (int a = 1; a < n; a++) { double t = v[a]; int b = a - 1; while (b >= 0 && v[b] > t) { v[b + 1] = v[b]; b--; } v[b + 1] = t; }
    return (n % 2) ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2.0;
}

static double update(State *s, long t, double x) {
    long i = s->i;
    if (i % EVERY == 0 && s->ring_len >= MIN_HIST) {
        memcpy(s->scratch, s->ring, sizeof(double) * s->ring_len);
        s->med = median(s->scratch, s->ring_len);
    }
    if (s->win_len == W) s->win_sum -= s->win[s->win_pos];
    else s->win_len++;
    s->win[s->win_pos] = x; s->win_pos = (s->win_pos + 1) % W; s->win_sum += x;

    double f[NF] = {0, 0, 0, 0};
    double med = s->med;
    if (!isnan(med)) {
        f[0] = x - med > 0 ? x - med : 0;
        f[1] = med - x > 0 ? med - x : 0;
        if (s->win_len == W) f[2] = fabs(s->win_sum / W - med);
    }
    double lagv[DAYS]; int nl = 0;
    for (int k = 1; k <= DAYS; k++) {
        long target = t - k * DAY, p = s->ptr[k - 1];
        while (p + 1 < i && s->ts[p + 1] <= target) p++;
        s->ptr[k - 1] = p;
        if (p >= 0) lagv[nl++] = s->xs[p];
    }
    if (nl) f[3] = fabs(x - cmp_med7(lagv, nl));

    double r = 0;
    for (int j = 0; j < NF; j++) {
        double M = s->maxq[j].len ? dq_at(&s->maxq[j], 0)->v : 0.0;
        double q = (f[j] <= EPS) ? 0.0 : (M <= EPS ? 1e6 : f[j] / M);
        if (q > r) r = q;
    }
    if (i < WARM) r = 0;
    for (int j = 0; j < NF; j++) {
        Deque *d = &s->maxq[j];
        while (d->len && dq_at(d, d->len - 1)->v <= f[j]) dq_pop_back(d);
        dq_push_back(d, (Item){i, f[j]});
        while (dq_at(d, 0)->idx <= i - HORIZON) dq_pop_front(d);
    }
    if (i <= s->cool_until) { if (r > CAP) r = CAP; }
    else if (r >= ALERT) s->cool_until = i + COOLDOWN;

    s->ring[s->ring_pos] = x; s->ring_pos = (s->ring_pos + 1) % H; if (s->ring_len < H) s->ring_len++;
    s->ts[i] = t; s->xs[i] = x;
    s->i++;
    return r / (ALERT + r);
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: %s FILE.csv [repeat]\n", argv[0]); return 2; }
    int repeat = argc > 2 ? atoi(argv[2]) : 1;
    FILE *fp = fopen(argv[1], "r");
    if (!fp) { perror("open"); return 1; }
    long cap = 1 << 16, n = 0;
    long *ts = malloc(sizeof(long) * cap); double *xs = malloc(sizeof(double) * cap);
    char line[256];
    fgets(line, sizeof line, fp); /* header */
    while (fgets(line, sizeof line, fp)) {
        struct tm tm; memset(&tm, 0, sizeof tm);
        char *rest = strptime(line, "%Y-%m-%d %H:%M:%S", &tm);
        if (!rest) continue;
        while (*rest && *rest != ',') rest++;
        if (n == cap) { cap *= 2; ts = realloc(ts, sizeof(long) * cap); xs = realloc(xs, sizeof(double) * cap); }
        ts[n] = (long)timegm(&tm); xs[n] = strtod(rest + 1, NULL); n++;
    }
    fclose(fp);
    double *out = malloc(sizeof(double) * n);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int rep = 0; rep < repeat; rep++) {
        State *s = malloc(sizeof(State));
        init(s, n);
        for (long i = 0; i < n; i++) out[i] = update(s, ts[i], xs[i]);
        free(s->ts); free(s->xs); for (int f = 0; f < NF; f++) free(s->maxq[f].buf); free(s);
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    double ns = ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / ((double)n * repeat);
    for (long i = 0; i < n; i++) printf("%.17g\n", out[i]);
    fprintf(stderr, "%ld rows, %.1f ns/row\n", n, ns);
    return 0;
}
