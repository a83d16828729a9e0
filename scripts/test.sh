#!/usr/bin/env bash
# The whole test suite as CI runs it: lint, then pytest with every extra installed by `make install`.
# Arguments go to pytest: `bash scripts/test.sh -m "not slow"` is the fast lane (`make test-fast`).
# The browser test drives Debian's Chromium through Playwright (never a downloaded browser build):
# install it when missing and we are root on a Debian-like system; otherwise that test skips with
# its reason.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's chromium for the browser test"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "warning: could not install chromium; the browser test will be skipped"
fi
.venv/bin/ruff check src tests benchmarks
.venv/bin/python -m pytest -q --durations=15 "$@"
