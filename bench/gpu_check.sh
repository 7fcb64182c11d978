#!/usr/bin/env bash
# One short GPU session (about 8 minutes on an H100): the CUDA tests, the throughput benchmark at the real shapes
# (learned-mixin +H + functional-entropy regulariser, batch 512), float32 and bf16, then one epoch of main.py on
# the 0.1 rehearsal data (vqa_cp.rehearsal: 12,329 images x 36 x 2048, 43,818 train questions) with
# --cache_features --features_on_gpu --amp bf16, batch 512, lambda 1e-10: epoch time, the share of it outside
# the training step, peak GPU memory. The rehearsal data is generated and processed on the CPU while the GPU
# benchmarks run. REHEARSAL_DIR (default /tmp/vqa_cp_rehearsal_0.1) holds it (about 10 GB; removed at the end).
# The feature extractor (vqa_cp.image_features, about 2 minutes): its CUDA tests (the command on the GPU against
# the CPU, and the detector's own) and bench/bench_extract_features.py with random weights at the published sizes
# on 64 generated COCO-size images: images/s at batch 1, 8 and 16, bf16, the time by stage, the whole loop with
# decoding workers.
#   bash bench/gpu_check.sh --extraction-only     only the extractor's part
#   bash bench/gpu_check.sh --extraction-cpu      the extractor's part on the CPU (small input, a few images)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
extraction() {  # $1: cuda or cpu
  if [[ "$1" == cuda ]]; then
    tests=(tests/test_image_features.py)
    if [[ -f tests/test_extraction.py ]]; then tests+=(tests/test_extraction.py); fi  # the detector's own
    python -m pytest -q "${tests[@]}" -k cuda
    python bench/bench_extract_features.py --device cuda --images 64 --batch-sizes 1 8 16 --workers 8
  else
    python bench/bench_extract_features.py --device cpu --images 8 --batch-sizes 1 8 --workers 1
  fi
}
case "${1:-}" in
  --extraction-only) extraction cuda; exit 0 ;;
  --extraction-cpu) extraction cpu; exit 0 ;;
  "") ;;
  *) echo "usage: bash bench/gpu_check.sh [--extraction-only | --extraction-cpu]" >&2; exit 2 ;;
esac
DATA="${REHEARSAL_DIR:-/tmp/vqa_cp_rehearsal_0.1}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
rm -rf "$DATA"
( python tools/make_toy_data.py --shape real --scale 0.1 --out "$DATA" > "$DATA.prepare.log" 2>&1 \
  && bash tools/process.sh --data "$DATA" >> "$DATA.prepare.log" 2>&1 ) &
prepare=$!
python -m pytest -q tests/test_cuda.py
for amp in none bf16; do
  python bench/bench_throughput.py --device cuda --batch 512 --steps 30 --amp "$amp"
done
python bench/bench_throughput.py --device cuda --batch 512 --steps 30 --amp bf16 --inf_lambda 0
extraction cuda
if ! wait "$prepare"; then
  echo "rehearsal data preparation failed:" >&2; tail -5 "$DATA.prepare.log" >&2; exit 1
fi
REHEARSAL_RECORD="$DATA/steps.json" python bench/rehearsal_train.py --data "$DATA" --output "$DATA/run" \
  --epochs 1 --batch_size 512 --inf_lambda 1e-10 --cache_features --features_on_gpu --amp bf16 --device cuda
python - "$DATA" <<'PY'
import json, sys
from pathlib import Path
data = Path(sys.argv[1])
record = json.loads((data / "steps.json").read_text())
epoch = json.loads((data / "run" / "metrics.jsonl").read_text().splitlines()[-1])
inside = sum(r["step_s"] for r in record["steps"])
print(f"rehearsal 0.1, one epoch of {len(record['steps'])} steps at batch 512 (bf16, features on the GPU): "
      f"{epoch['seconds']:.1f} s, {epoch['samples_per_s']:.0f} questions/s; outside the training step "
      f"{100 * (1 - inside / epoch['seconds']):.1f}% ({epoch['seconds'] - inside:.1f} s); peak GPU memory "
      f"{record['peak_gpu_bytes'] / 2**30:.1f} GiB; test accuracy {epoch.get('test', {}).get('overall')}")
PY
rm -rf "$DATA" "$DATA.prepare.log"
