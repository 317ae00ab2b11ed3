"""ctypes wrapper for codev.c (the CoDev detector) and the service-data runner."""
import ctypes, os
import numpy as np
import paths

HERE = os.path.dirname(os.path.abspath(__file__))
FIELDS = [("W", ctypes.c_int), ("K", ctypes.c_int), ("P", ctypes.c_int), ("zclip", ctypes.c_double),
          ("relmin", ctypes.c_double), ("dir", ctypes.c_int), ("ridge", ctypes.c_double), ("C", ctypes.c_int), ("Ccov", ctypes.c_int),
          ("inv_every", ctypes.c_int), ("rho", ctypes.c_double), ("target", ctypes.c_double), ("kappa", ctypes.c_double), ("epd", ctypes.c_double), ("epd_i", ctypes.c_int), ("pt", ctypes.c_double), ("ximax", ctypes.c_double), ("a1", ctypes.c_double), ("thr", ctypes.c_double),
          ("thr_off", ctypes.c_double), ("maxhold", ctypes.c_int), ("confirm", ctypes.c_int), ("warm", ctypes.c_int), ("freeze", ctypes.c_int), ("calall", ctypes.c_int), ("jointlearn", ctypes.c_int), ("CU", ctypes.c_double), ("LR", ctypes.c_int), ("tfloor", ctypes.c_double), ("diag", ctypes.c_int), ("hdecay", ctypes.c_double), ("SZ", ctypes.c_int), ("sgate", ctypes.c_int), ("RG", ctypes.c_int), ("TK", ctypes.c_int), ("rebuild", ctypes.c_int), ("span", ctypes.c_int), ("qf", ctypes.c_int), ("qz", ctypes.c_double), ("rf", ctypes.c_double), ("still", ctypes.c_double), ("BR", ctypes.c_double), ("brate", ctypes.c_double), ("PZ", ctypes.c_int), ("hold", ctypes.c_double), ("hspan", ctypes.c_int), ("hfast", ctypes.c_double), ("hcal", ctypes.c_int), ("hrate", ctypes.c_double), ("hpt", ctypes.c_double), ("hraw", ctypes.c_int), ("covmin", ctypes.c_double)]


class Params(ctypes.Structure):
    _fields_ = FIELDS


DEFAULTS = dict(W=72, K=7, P=288, zclip=10.0, relmin=0.0, dir=0, ridge=0.3, C=2016, Ccov=8640, inv_every=288, rho=0.1, target=0.0, kappa=1.0, epd=288.0, pt=0.02, ximax=0.0,
                a1=1.0, thr=1.0, thr_off=0.5, maxhold=12, confirm=1, warm=0, freeze=1, calall=0, jointlearn=0, CU=0.0, LR=0, tfloor=3.0, diag=0, hdecay=0.97, SZ=1, sgate=1, RG=1, TK=0, rebuild=0, span=0, qf=1, qz=0.0, rf=1440.0, still=1.0, BR=0.0, brate=1.0, PZ=0, hold=0.0, hspan=0, hfast=1440.0, hcal=0, hrate=1.0, hpt=0.0, hraw=0, covmin=20.0)
_lib = None
DP = ctypes.POINTER(ctypes.c_double); IP = ctypes.POINTER(ctypes.c_int)


def lib():
    global _lib
    if _lib is None:
        _lib = ctypes.CDLL(paths.build_so("codev"))  # compiled into the cache on first use
    return _lib


def events_per_day(ts):
    """P from the median inter-arrival time; 0 (seasonality off) when not a whole-ish number of events per day <= 4032."""
    dt = np.median(np.diff(np.asarray(ts, float)[:500]))
    if not dt > 0:
        return 0
    P = int(round(86400.0 / dt))
    return P if 24 <= P <= 4032 else 0


def epd(ts):
    dt = np.median(np.diff(np.asarray(ts, float)[:500]))
    return 86400.0 / dt if dt > 0 else 288.0


def run(X, score_from=0, want_contrib=False, want_z=False, want_h=False, **kw):
    prm = dict(DEFAULTS); prm.update(kw)
    prm["epd_i"] = max(1, int(round(min(prm["epd"], 1e9))))
    p = Params(**prm)
    X = np.ascontiguousarray(X, dtype=np.float64)
    n, M = X.shape
    R = np.zeros(n); fl = np.zeros(n, np.int32)
    co = np.zeros((n, M)) if want_contrib else None
    zz = np.zeros((n, M)) if want_z else None
    H = np.zeros(n) if want_h else None
    lib().codev_run(ctypes.byref(p), X.ctypes.data_as(DP), ctypes.c_long(n), ctypes.c_int(M), ctypes.c_long(score_from),
                    R.ctypes.data_as(DP), fl.ctypes.data_as(IP),
                    co.ctypes.data_as(DP) if co is not None else None, zz.ctypes.data_as(DP) if zz is not None else None,
                    H.ctypes.data_as(DP) if H is not None else None)
    if want_h:
        return R, fl.astype(bool), co, zz, H
    return R, fl.astype(bool), co, zz
