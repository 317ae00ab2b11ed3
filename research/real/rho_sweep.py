"""Sweep the sensitivity knob rho on d2/d3: python rho_sweep.py '{cfg}' d2 0.3,0.5,1,2"""
import sys, json
import opmetrics as om
from run_services import run_ds
cfg = json.loads(sys.argv[1]); ds = sys.argv[2]; rhos = [float(v) for v in sys.argv[3].split(",")]
for r in rhos:
    k = dict(cfg); k["rho"] = r
    m, _, _ = run_ds(ds, **k)
    print(ds, f"rho {r}", om.fmt(m), flush=True)
