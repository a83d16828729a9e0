#!/usr/bin/env bash
# The GPU check of eyefuse as one command (about 8 minutes on one H200; steps skipped past the
# budget are listed as skipped): environment line, the tests that use the device, `eyefuse train` of
# each preset on synthetic data against bench_train.py's model-only figure, bench_train.py eager and
# compiled at 224 and 448 px, and with --real DIR the paper preset trained and evaluated on real
# photographs with a held-out test part, and with --study the real-study grid at full size (13
# epochs, 3 seeds; its table in WORK/real-study.md). Ends with one summary table (also in
# WORK/summary.txt).
#
#   scripts/device_check.sh [--wheels DIR] [--real DIR [--study]] [--device cuda|cpu] [--smoke] [--work DIR]
#                           [--budget-s SECONDS] [--patients N] [--epochs N]
#   scripts/device_check.sh --device cpu --smoke        # the same steps, tiny, without a GPU
#   scripts/device_check.sh --fetch-wheels DIR          # here, with internet: the wheels the device lacks
#
# On a lent GPU (wheels/ and data/ are ignored, so name them in the device tool's carry, e.g.
# carry ["wheels", "data/kaggle_224_dev"] after `cp -r ../shared/real/kaggle_224_dev data/`):
#   scripts/device_check.sh --wheels wheels --real data/kaggle_224_dev --study --budget-s 540; \
#     cp /tmp/eyefuse-device-check/{summary.txt,device_check.log,real-study.md} "$OUT"/
#
# --wheels DIR: install the wheels in DIR (no index, no dependencies) into a private folder first:
# the device's Python lacks openpyxl (and its et-xmlfile), which reading ODIR's .xlsx annotations
# needs. eyefuse itself is used from src/ (PYTHONPATH), never installed with its dependencies.
# Uses .venv/bin/python when there is one, else python3.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
WHEELS=""
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) WHEELS="$2"; shift 2 ;;
    --fetch-wheels)
      # The device runs CPython 3.12 on x86-64; pure-Python wheels work anywhere.
      "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --platform manylinux2014_x86_64 --platform any -d "$2" "openpyxl>=3.1" et-xmlfile
      exit 0 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done

if [ -n "$WHEELS" ]; then
  SITE="${TMPDIR:-/tmp}/eyefuse-device-site"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$WHEELS"/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" scripts/device_check.py "${ARGS[@]}"
