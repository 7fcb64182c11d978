#!/usr/bin/env bash
# Raw data -> DATA/processed/ (docs/DESIGN.md). Each step skips itself when its record (inputs' contents,
# parameters, outputs) matches; see docs/DESIGN.md "Processed layout".
# Usage: bash tools/process.sh [--data DIR] [--fp16] [--min-count N]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA="$ROOT/data"
FP16=()
MIN_COUNT=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --data) DATA="${2:?--data needs a directory}"; shift 2 ;;
        --fp16) FP16=(--fp16); shift ;;
        --min-count) MIN_COUNT=(--min-count "${2:?--min-count needs a number}"); shift 2 ;;
        -h|--help) echo "usage: bash tools/process.sh [--data DIR] [--fp16] [--min-count N]"; exit 0 ;;
        *) echo "error: unknown argument $1 (usage: bash tools/process.sh [--data DIR] [--fp16] [--min-count N])" >&2
           exit 2 ;;
    esac
done
if [[ -e "$DATA" && ! -d "$DATA" ]]; then
    echo "error: --data $DATA is a file, not a folder" >&2
    exit 2
elif [[ ! -d "$DATA" ]]; then
    echo "error: data directory not found: $DATA" >&2
    exit 2
fi

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
PYTHON="${PYTHON:-python}"
"$PYTHON" "$ROOT/tools/process_text.py" --data "$DATA"
"$PYTHON" "$ROOT/tools/process_answers.py" --data "$DATA" "${MIN_COUNT[@]}"
"$PYTHON" "$ROOT/tools/process_features.py" --data "$DATA" "${FP16[@]}"
echo "processed data in $DATA/processed"
