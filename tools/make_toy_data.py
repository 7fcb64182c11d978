"""Generate the toy VQA-CP v2 benchmark in the raw formats of docs/DESIGN.md (thin front over vqa_cp.toy).

Usage: python tools/make_toy_data.py --out data/toy [--seed S] [--images N] [--boxes 36] [--feature-dim D]
       [--questions-per-image Q] [--force]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

# Run as a script from anywhere: make the repository's package importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vqa_cp.errors import run_cli  # noqa: E402
from vqa_cp.toy import ToyConfig, generate_toy_data  # noqa: E402

DEFAULTS = ToyConfig()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder (written atomically)")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed)
    parser.add_argument("--images", type=int, default=DEFAULTS.images, help="train2014 + val2014 images")
    parser.add_argument("--boxes", type=int, default=DEFAULTS.boxes, help="boxes per image")
    parser.add_argument("--feature-dim", type=int, default=DEFAULTS.feature_dim, help="region feature size")
    parser.add_argument("--questions-per-image", type=int, default=DEFAULTS.questions_per_image)
    parser.add_argument("--force", action="store_true", help="replace an existing toy dataset in --out")
    args = parser.parse_args(argv)
    config = ToyConfig(seed=args.seed, images=args.images, boxes=args.boxes, feature_dim=args.feature_dim,
                       questions_per_image=args.questions_per_image)
    summary = generate_toy_data(args.out, config, force=args.force)
    images, questions = summary["images"], summary["questions"]
    missing = ", ".join(summary["glove_missing"]) or "none"
    print(f"wrote {summary['out_dir']}: {images['train2014']} train2014 + {images['val2014']} val2014 "
          f"images, {questions['vqacp_train']} VQA-CP train / {questions['vqacp_test']} test questions, "
          f"{summary['dictionary_words']} words ({missing} not in GloVe)")
    return summary


if __name__ == "__main__":
    run_cli(main)
