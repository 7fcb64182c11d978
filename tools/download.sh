#!/usr/bin/env bash
# Download the raw data the pipeline needs (GloVe 6B, VQA v2, VQA-CP v2, bottom-up features; COCO images and
# the detector with --only) into the "Raw layout" of docs/DESIGN.md, or import a local copy with --from.
# A thin front: the sources are in vqa_cp/sources.json, the logic in vqa_cp/download.py. Run with --help.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The interpreter: $PYTHON, else the active virtual environment's, else the README's $ROOT/.venv, else python3.
if [[ -z "${PYTHON:-}" ]]; then
    PYTHON=python3
    [[ -n "${VIRTUAL_ENV:-}" || ! -x "$ROOT/.venv/bin/python" ]] || PYTHON="$ROOT/.venv/bin/python"
fi
if ! command -v "$PYTHON" >/dev/null; then
    echo "error: $PYTHON is not installed; download.sh runs vqa_cp/download.py with it (set PYTHON to another" \
        "interpreter)" >&2
    exit 1
fi
if ! "$PYTHON" -c "import tqdm" 2>/dev/null; then
    echo "error: $PYTHON lacks the project's packages (tqdm); activate the environment of the README's install" \
        "step, or set PYTHON to its python" >&2
    exit 1
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" -m vqa_cp.download "$@"
