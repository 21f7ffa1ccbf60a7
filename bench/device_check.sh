#!/usr/bin/env bash
# Read-only NVML check on a machine with NVIDIA GPUs: what each field the `nvml` backend reads
# returns, and each NVML call's latency. Sets nothing on any GPU.
#
#   bash bench/device_check.sh [--repeats 20] [--reads 10]
#
# Needs python3 and NVIDIA's driver. nvidia-ml-py (and numpy, for the part that runs Rheostat's
# own backend) are taken, in this order, from: what python3 already imports; wheels in
# $RHEOSTAT_WHEELS or bench/wheels/ (fill it on a networked machine with
#   pip download --no-deps -d bench/wheels nvidia-ml-py numpy
# for the target's Python version); otherwise the script says what is missing. The report is
# JSON on stdout, and in $OUT/device_check.json when OUT is set.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=${RHEOSTAT_WHEELS:-bench/wheels}
nvidia-smi --query-gpu=index,name,uuid,power.draw,power.limit --format=csv 2>/dev/null >&2 || \
    echo "device_check: nvidia-smi not found or failed (the check goes on with NVML)" >&2
if ! "$PY" -c "import pynvml" 2>/dev/null && [ -d "$WHEELS" ]; then
    VENV=$(mktemp -d)/venv
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --no-index --find-links "$WHEELS" nvidia-ml-py
    "$VENV/bin/python" -m pip install --quiet --no-index --find-links "$WHEELS" numpy 2>/dev/null || \
        echo "device_check: no numpy wheel for this Python; only the raw NVML part runs" >&2
    PY="$VENV/bin/python"
fi
exec "$PY" bench/device_check.py "$@"
