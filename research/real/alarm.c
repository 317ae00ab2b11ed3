/* Alarm state machine on a precomputed score (exploration). Same rules as det.c. */
void alarm_run(const double *S, long n, double thr, double thr_off, int hold, int maxhold, int confirm, long score_from, int *flag_out) {
    int state = 0, age = 0, since_hi = 0, run = 0;
    double toff = thr * thr_off;
    for (long t = 0; t < n; t++) {
        int flag = 0;
        if (S[t] >= thr) run++; else run = 0;
        if (state == 1) {
            age++;
            if (S[t] >= toff) since_hi = 0; else since_hi++;
            if (since_hi >= hold) state = 0;
            else if (maxhold > 0 && age >= maxhold) state = 2;
            else flag = 1;
        } else if (state == 2) {
            if (S[t] >= toff) since_hi = 0; else since_hi++;
            if (since_hi >= hold) state = 0;
        }
        if (state == 0 && run >= confirm) { state = 1; age = 0; since_hi = 0; flag = 1; }
        flag_out[t] = t >= score_from ? flag : 0;
    }
}
