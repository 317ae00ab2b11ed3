"""Load the JumpStarter service data (kanary event format, jsonl.gz) into numpy arrays.

The folder comes from paths.data_dir() (--data DIR, $KANARY_SERVICES_DATA, or the repository's cut at
data/services). Parsed arrays are cached as .npz under ${KANARY_CACHE:-~/.cache/kanary}/real/services."""
import gzip, json, os
import numpy as np
import paths

NM = 19


def _load(ds, split):
    src = paths.service_file(ds, split)
    path = os.path.join(paths.cache_dir("services"), f"{ds}-{split}-{paths.file_key(src)}.npz")
    if os.path.exists(path):
        z = np.load(path)
        return z["X"], z["y"], z["ts"], [str(v) for v in z["names"]]
    rows = {}
    with gzip.open(src, "rt") as f:
        for line in f:
            d = json.loads(line)
            rows.setdefault(d["service"], []).append(([d.get(f"m{j:02d}", np.nan) for j in range(NM)], d.get("label", 0), d["ts"]))
    names = sorted(rows, key=lambda k: int(k.split("-s")[1]))
    lens = {len(rows[k]) for k in names}
    if len(lens) != 1:
        raise SystemExit(f"{src}: services have different lengths {sorted(lens)}; expected equal-length series")
    S, n = len(names), lens.pop()
    X = np.zeros((S, n, NM)); y = np.zeros((S, n), np.int8); ts = np.zeros((S, n), np.int64)
    for s, k in enumerate(names):
        r = rows[k]
        X[s] = np.array([a for a, _, _ in r], float)
        y[s] = [b for _, b, _ in r]
        ts[s] = [c for _, _, c in r]
    np.savez(path, X=X, y=y, ts=ts, names=np.array(names))
    return X, y, ts, names


def load(ds):
    """returns Xtr (S,ntr,19), Xte (S,nte,19), yte (S,nte), tstr, tste; services in the order of services(ds)"""
    Xtr, _, ttr, ntr = _load(ds, "train")
    Xte, yte, tte, nte = _load(ds, "test")
    if ntr != nte:
        raise SystemExit(f"{ds}: train and test hold different services ({ntr} vs {nte})")
    return Xtr, Xte, yte, ttr, tte


def services(ds):
    """service names (e.g. 'd2-s13'), in the row order of load(ds)"""
    return _load(ds, "train")[3]


if __name__ == "__main__":
    print("data:", paths.data_dir())
    for ds in ("d2", "d3"):
        Xtr, Xte, yte, ttr, tte = load(ds)
        print(ds, services(ds), Xtr.shape, Xte.shape, yte.mean(), np.isnan(Xtr).sum(), np.isnan(Xte).sum())
