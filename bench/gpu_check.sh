#!/usr/bin/env bash
# One short GPU session: the CUDA tests, then the throughput benchmark at the real shapes
# (learned-mixin +H + functional-entropy regulariser, batch 512), float32 and bf16.
# Prints samples/s, seconds per full VQA-CP v2 epoch and peak GPU memory.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python -m pytest -q tests/test_cuda.py
for amp in none bf16; do
  python bench/bench_throughput.py --device cuda --batch 512 --steps 30 --amp "$amp"
done
python bench/bench_throughput.py --device cuda --batch 512 --steps 30 --amp bf16 --inf_lambda 0
