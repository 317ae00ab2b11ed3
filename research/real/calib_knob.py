"""Label-free calibration of the sensitivity knob: run CoDev on the unlabelled TRAIN split only
(first 7 days warm-up, not counted), count pages of all alarms (no labels exist there) per service-day."""
import sys, json
import numpy as np
import opmetrics as om, codev
from run_services import data
cfg = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
ds = sys.argv[2] if len(sys.argv) > 2 else "d2"
rhos = [float(v) for v in (sys.argv[3] if len(sys.argv) > 3 else "0.01,0.03,0.1,0.3,1").split(",")]
Xtr, _, _, _, _ = data(ds)
S, ntr = Xtr.shape[0], Xtr.shape[1]
WARM = 2016
if ntr <= WARM:
    raise SystemExit(f"{ds} train split has {ntr} events per service; the calibration needs more than the "
                     f"{WARM}-event (7-day) warm-up. Use the full data set (--data DIR).")
for r in rhos:
    pages = 0
    for s in range(S):
        k = dict(cfg); k["rho"] = r
        R, fl, _, _ = codev.run(Xtr[s], score_from=WARM, **k)
        pages += om.false_pages(fl[WARM:], np.zeros(ntr - WARM, bool))[0]
    days = S * (ntr - WARM) * 300 / 86400
    print(f"{ds} train rho {r}: alarm pages/service-day {pages/days:.3f}", flush=True)
