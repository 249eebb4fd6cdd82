#!/usr/bin/env bash
# The GPU check: SD 1.5 architecture (random weights, fp16, 512x512, 30 steps) seconds per
# image, images/s at batch 8 and peak memory, plus one DDPO epoch of the gpu preset. Run it
# whenever a GPU is lent and record what it prints (or --out FILE, JSON) with the card's name.
#   tests/bench/gpu_check.sh [--out result.json] [--repeats N]
#   tests/bench/gpu_check.sh --dry-run     # no GPU: every step, small, on the CPU (seconds)
# Exits 2 with a message when torch sees no CUDA device. PYTHON picks the interpreter
# (default: the project's .venv, else python3).
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${PYTHON:-.venv/bin/python}
[ -x "$python" ] || python=python3
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec "$python" tests/bench/gpu_check.py "$@"
