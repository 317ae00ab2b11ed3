import numpy as np, ctypes, load, opmetrics as om, sys, paths
lib = ctypes.CDLL(paths.build_so("feat"))
P = ctypes.POINTER(ctypes.c_double)
def feats(X, W=288, K=7, c=1.0):
    n, M = X.shape
    X = np.ascontiguousarray(X, float)
    outs = [np.empty((n, M)) for _ in range(4)]
    lib.features(X.ctypes.data_as(P), ctypes.c_long(n), M, W, K, 288, ctypes.c_double(c), *[o.ctypes.data_as(P) for o in outs])
    return outs
ds = sys.argv[1] if len(sys.argv) > 1 else "d2"
Xtr, Xte, y, _, _ = load.load(ds)
