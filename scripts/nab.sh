#!/usr/bin/env bash
# Every kanary detector on the Numenta Anomaly Benchmark, all three profiles.
#
#   scripts/nab.sh [--data NAB_DIR] [--kanary BIN] [--out DIR] [--check]
#
# NAB_DIR holds data/<category>/<file>.csv and labels/windows.json; default: the repository's
# data/nab (the 41 files, MIT, see data/nab/LICENSE.txt). Results go to
# DIR/<model>/<category>/<file>.csv and DIR/nab.json. --check fails unless the best detector's
# standard score is at least 60.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KANARY="$ROOT/target/release/kanary"
OUT="$ROOT/target/test-output/nab"
DATA="$ROOT/data/nab"
CHECK=0
while [ $# -gt 0 ]; do
  case "$1" in
    --data|--kanary|--out)
      [ $# -ge 2 ] && [ -n "$2" ] || { echo "nab.sh: $1 needs a value" >&2; exit 2; }
      case "$1" in
        --data) DATA="$2" ;;
        --kanary) KANARY="$2" ;;
        --out) OUT="$2" ;;
      esac
      shift 2 ;;
    --check) CHECK=1; shift ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "nab.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -d "$DATA" ] || {
  echo "nab.sh: NAB data folder $DATA does not exist (give --data NAB_DIR; the repository ships it as data/nab)" >&2
  exit 1
}
[ -f "$DATA/labels/windows.json" ] || {
  echo "nab.sh: $DATA is not a NAB data folder: no labels/windows.json in it" >&2
  exit 1
}
[ -d "$DATA/data" ] || {
  echo "nab.sh: $DATA is not a NAB data folder: no data/ (<category>/<file>.csv) in it" >&2
  exit 1
}
if [ ! -x "$KANARY" ]; then
  [ "$KANARY" = "$ROOT/target/release/kanary" ] \
    || { echo "nab.sh: no kanary binary at $KANARY (--kanary BIN)" >&2; exit 1; }
  (cd "$ROOT" && cargo build --release -q -p kanary)
fi
mkdir -p "$OUT"
"$KANARY" nab --data "$DATA/data" --windows "$DATA/labels/windows.json" \
  --model novelty,codev,if,ae,zscore,hst,tcn --results "$OUT" --json | tee "$OUT/nab.json"
python3 - "$OUT/nab.json" "$CHECK" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"{'model':<8} {'standard':>9} {'low_FP':>9} {'low_FN':>9}")
by = {}
for r in rows:
    by.setdefault(r["model"], {})[r["profile"]] = r["score"]
for m, p in by.items():
    print(f"{m:<8} {p['standard']:>9.2f} {p['reward_low_FP_rate']:>9.2f} {p['reward_low_FN_rate']:>9.2f}")
best = max(by, key=lambda m: by[m]["standard"])
print(f"best: {best} {by[best]['standard']:.2f} (standard)")
if sys.argv[2] == "1" and by[best]["standard"] < 60:
    sys.exit(f"FAIL: best NAB standard score {by[best]['standard']:.2f} < 60")
PY
