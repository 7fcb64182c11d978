"""Make DATA/processed/features.h5 from the COCO images with the bottom-up detector (vqa_cp.image_features).

python tools/extract_features.py --images train2014.zip val2014.zip --weights data/detector --data data
torchrun --nproc_per_node 8 tools/extract_features.py --images ... --weights data/detector --data data
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script from anywhere: make the repository's package importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vqa_cp.distributed import run_front  # noqa: E402
from vqa_cp.image_features import main  # noqa: E402

if __name__ == "__main__":
    run_front(main, sys.argv[1:])
