"""Operator-metric curve for precomputed scores (per service lists, test part only)."""
import ctypes
import numpy as np
import opmetrics as om
import paths
_lib = ctypes.CDLL(paths.build_so("alarm"))
DP = ctypes.POINTER(ctypes.c_double); IP = ctypes.POINTER(ctypes.c_int)

def flags_for(score, thr, thr_off=0.5, hold=3, maxhold=12, confirm=1):
    s = np.ascontiguousarray(score, float); f = np.zeros(len(s), np.int32)
    _lib.alarm_run(s.ctypes.data_as(DP), ctypes.c_long(len(s)), ctypes.c_double(thr), ctypes.c_double(thr_off),
                   hold, maxhold, confirm, ctypes.c_long(0), f.ctypes.data_as(IP))
    return f.astype(bool)

def curve(scores, ys, thrs, per_service_thr=None, **kw):
    rows = []
    for thr in thrs:
        fl = [flags_for(scores[s], thr if per_service_thr is None else per_service_thr[s] * thr, **kw) for s in range(len(ys))]
        m = om.evaluate(fl, list(ys), scores)
        rows.append((thr, m))
    return rows

def at_pages(rows, target=1.0):
    """best early among thresholds with pages/day <= target"""
    ok = [m for t, m in rows if m["pages_day"] <= target]
    return max(ok, key=lambda m: m["early"]) if ok else None

def show(name, rows):
    for target in (0.3, 1.0):
        m = at_pages(rows, target)
        print(f"  {name} @<= {target} p/d:", om.fmt(m) if m else "none")
