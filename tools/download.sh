#!/usr/bin/env bash
# Download the raw data the pipeline needs (GloVe 6B, VQA v2, VQA-CP v2, bottom-up features; COCO images and
# the detector with --only) into the "Raw layout" of docs/DESIGN.md, or import a local copy with --from.
# A thin front: the sources are in vqa_cp/sources.json, the logic in vqa_cp/download.py. Run with --help.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
if ! command -v "$PYTHON" >/dev/null; then
    echo "error: $PYTHON is not installed; download.sh runs vqa_cp/download.py with it (set PYTHON to another" \
        "interpreter)" >&2
    exit 1
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" -m vqa_cp.download "$@"
