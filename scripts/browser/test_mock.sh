#!/usr/bin/env bash
# Tests the live view alone, without kanary: starts mock_server.py on a free port and runs the
# browser check against it.  Usage: scripts/browser/test_mock.sh [OUT_DIR]  (default: a temp dir)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-$(mktemp -d)}"
log="$(mktemp)"

python3 "$here/mock_server.py" --port 0 --quiet >"$log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; rm -f "$log"' EXIT

url=""
for _ in $(seq 50); do
  url="$(head -n1 "$log" 2>/dev/null || true)"
  case "$url" in http://*) break ;; esac
  kill -0 "$pid" 2>/dev/null || { echo "test_mock.sh: mock server died:" >&2; cat "$log" >&2; exit 1; }
  sleep 0.1
done
case "$url" in http://*) ;; *) echo "test_mock.sh: mock server did not start" >&2; exit 1 ;; esac

"$here/run.sh" --url "$url" --out "$out" --models if,ae
echo "test_mock.sh: screenshots in $out" >&2
