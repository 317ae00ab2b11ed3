#!/usr/bin/env bash
# Checks kanary's live view in a real headless Chromium:
#
#   scripts/browser/run.sh --url http://127.0.0.1:PORT/ --out DIR [--models if,ae]
#
# Installs what it needs when missing: the npm dependencies into scripts/browser/node_modules
# (no lock file is written) and, as root on Debian, the chromium package. Then runs
# check_page.mjs with the same arguments (see that file for what is checked).
# Environment: CHROMIUM=/path/to/chromium (default /usr/bin/chromium).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"

if ! command -v node >/dev/null 2>&1; then
  echo "run.sh: node (18 or newer) is required" >&2
  exit 2
fi

if [ ! -f "$here/node_modules/playwright-core/package.json" ]; then
  echo "run.sh: installing npm dependencies into $here/node_modules" >&2
  (cd "$here" && npm install --no-audit --no-fund --no-package-lock --loglevel=error) >&2
fi

if [ ! -x "$CHROMIUM" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "run.sh: installing Debian's chromium" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt_opts=(-y -q --no-install-recommends -o DPkg::Lock::Timeout=600)
    apt-get install "${apt_opts[@]}" chromium >&2 \
      || { apt-get update -q -o DPkg::Lock::Timeout=600 >&2 && apt-get install "${apt_opts[@]}" chromium >&2; }
  fi
  if [ ! -x "$CHROMIUM" ]; then
    echo "run.sh: no Chromium at $CHROMIUM; install Debian's chromium package or set CHROMIUM" >&2
    exit 2
  fi
fi

exec node "$here/check_page.mjs" "$@"
