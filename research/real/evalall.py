"""One-line-per-dataset evaluation of a CoDev configuration.
   python evalall.py '{"rho":0.3}' [--d3] [--nab]"""
import sys, json, time
import opmetrics as om
import run_services, run_sim
cfg = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
t0 = time.time()
for ds in (["d2", "d3"] if "--d3" in sys.argv else ["d2"]):
    m, _, _ = run_services.run_ds(ds, **cfg)
    print(f"  {ds}:", om.fmt(m))
sd = run_sim.seed_f1(**cfg)
print(f"  seed: F1 {sd['f1']:.4f} (P {sd['precision']:.3f} R {sd['recall']:.3f})")
print("  micro:", om.fmt(run_sim.micro(**cfg)))
if "--nab" in sys.argv:
    import run_nab
    fixed, best = run_nab.nab(**cfg)
    print("  NAB fixed:", {k: round(float(v), 2) for k, v in fixed.items()}, "raw-R corpus-optimal:", best)
print(f"  ({time.time()-t0:.0f}s)", flush=True)
