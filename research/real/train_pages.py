"""Pages per service-day on the unlabelled train splits (every alarm counts, no labels exist there):
the detector's first week (days 1-7, its quiet start) and the rest (days 8-20).
   python train_pages.py ['{"hold": 8}']"""
import sys, json
import numpy as np
import codev, load, opmetrics as om

kw = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
for ds in ("d2", "d3"):
    Xtr, _, _, _, _ = load.load(ds)
    S, n = Xtr.shape[:2]
    first = rest = 0
    for s in range(S):
        _, f, _, _ = codev.run(Xtr[s], P=288, epd=288.0, **kw)
        first += om.false_pages(f[288:8 * 288], np.zeros(7 * 288))[0]
        rest += om.false_pages(f[8 * 288:], np.zeros(n - 8 * 288))[0]
    print(ds, kw, "train pages/service-day: days 1-7 %.2f, days 8-%d %.2f" % (first / S / 7, n // 288, rest / S / (n / 288 - 8)))
