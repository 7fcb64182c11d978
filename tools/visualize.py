"""Draw a trained model's attention on n questions: one PNG each plus index.png and index.json
(thin front over vqa_cp.plotting).

Usage: python tools/visualize.py CHECKPOINT --data DIR --split test --n 8 --out DIR [--images COCO_DIR]
       [--seed S] [--nocp]

CHECKPOINT: a model.pth / checkpoint file or a training output folder. Pictures: the COCO image with
--images (COCO_DIR/{train2014,val2014}/COCO_<split>_<12-digit id>.jpg), else the toy scene when DIR holds
toy_scenes.json, else a blank canvas of the image's size.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Run as a script from anywhere: make the repository's package importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vqa_cp.errors import run_cli  # noqa: E402
from vqa_cp.plotting import TOP_BOXES, Shown, visualize  # noqa: E402
from vqa_cp.processing import SPLITS  # noqa: E402


def main(argv: list[str] | None = None) -> list[Shown]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="data folder holding processed/")
    parser.add_argument("--split", choices=SPLITS, default="test")
    parser.add_argument("--n", type=int, default=8, help="number of questions (chosen at random)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--images", type=Path, default=None, help="COCO image folder (train2014/, val2014/)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the question choice")
    parser.add_argument("--nocp", action="store_true", help="VQA v2 splits instead of VQA-CP v2")
    parser.add_argument("--top", type=int, default=TOP_BOXES, help="most attended boxes to draw")
    args = parser.parse_args(argv)
    shown = visualize(args.checkpoint, args.data, args.out, split=args.split, n=args.n, images_dir=args.images,
                      seed=args.seed, nocp=args.nocp, top=args.top)
    right = sum(s.soft_score > 0 for s in shown)
    print(f"wrote {len(shown)} pictures and index.png to {args.out} ({right} of {len(shown)} predictions score > 0)")
    return shown


if __name__ == "__main__":
    run_cli(main)
