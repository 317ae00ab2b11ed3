"""ctypes wrapper around det.c."""
import ctypes, os
import numpy as np
import paths

HERE = os.path.dirname(os.path.abspath(__file__))
FIELDS = [("W", ctypes.c_int), ("K", ctypes.c_int), ("P", ctypes.c_int), ("C", ctypes.c_int),
          ("qcal", ctypes.c_double), ("zfloor", ctypes.c_double), ("relmin", ctypes.c_double),
          ("c_step", ctypes.c_double), ("dir", ctypes.c_int), ("ctx", ctypes.c_int), ("vcap", ctypes.c_double),
          ("comb", ctypes.c_int), ("thr", ctypes.c_double), ("thr_off", ctypes.c_double), ("hold", ctypes.c_int),
          ("rebase", ctypes.c_int), ("confirm", ctypes.c_int), ("freeze", ctypes.c_int), ("warm", ctypes.c_int), ("cal", ctypes.c_int), ("xw", ctypes.c_double), ("maxhold", ctypes.c_int), ("dlearn", ctypes.c_int)]


class Params(ctypes.Structure):
    _fields_ = FIELDS


DEFAULTS = dict(W=288, K=7, P=288, C=2016, qcal=0.99, zfloor=1.0, relmin=0.0, c_step=1.0, dir=0, ctx=2,
                vcap=5.0, comb=0, thr=3.0, thr_off=0.5, hold=3, rebase=36, confirm=1, freeze=1, warm=0, cal=1, xw=0.0, maxhold=12, dlearn=1)


def build():
    lib = ctypes.CDLL(paths.build_so("det"))
    return lib


_lib = None
DP = ctypes.POINTER(ctypes.c_double)
IP = ctypes.POINTER(ctypes.c_int)


def run(X, score_from=0, want_contrib=False, want_z=False, want_v=False, **kw):
    global _lib
    if _lib is None:
        _lib = build()
    prm = dict(DEFAULTS); prm.update(kw)
    p = Params(**prm)
    X = np.ascontiguousarray(X, dtype=np.float64)
    n, M = X.shape
    sc = np.zeros(n); fl = np.zeros(n, np.int32)
    co = np.zeros((n, M)) if want_contrib else None
    zz = np.zeros((n, M)) if want_z else None
    vv = np.zeros((n, M)) if want_v else None
    _lib.detect_series(ctypes.byref(p), X.ctypes.data_as(DP), ctypes.c_long(n), ctypes.c_int(M), ctypes.c_long(score_from),
                       sc.ctypes.data_as(DP), fl.ctypes.data_as(IP),
                       co.ctypes.data_as(DP) if co is not None else None, zz.ctypes.data_as(DP) if zz is not None else None, vv.ctypes.data_as(DP) if vv is not None else None)
    if want_v:
        return sc, fl.astype(bool), co, zz, vv
    return sc, fl.astype(bool), co, zz
