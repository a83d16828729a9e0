#!/usr/bin/env bash
# The whole test suite as CI runs it: lint, then pytest (all extras installed by `make install`).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check src tests benchmarks
.venv/bin/python -m pytest -q "$@"
