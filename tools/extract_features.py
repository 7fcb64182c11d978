"""Make DATA/processed/features.h5 from the COCO images with the bottom-up detector (vqa_cp.image_features).

python tools/extract_features.py --images train2014.zip val2014.zip --weights data/detector --data data
torchrun --nproc_per_node 8 tools/extract_features.py --images ... --weights data/detector --data data
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Run as a script from anywhere: make the repository's package importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vqa_cp.distributed import under_torchrun  # noqa: E402
from vqa_cp.errors import run_cli  # noqa: E402
from vqa_cp.image_features import main  # noqa: E402

if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
    if under_torchrun():
        # every file is written and closed; skip interpreter finalization, where leftover gloo threads can abort
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
