"""Generate the toy VQA-CP v2 benchmark, or its real-shape stand-in, in the raw formats of docs/DESIGN.md.

Usage: python tools/make_toy_data.py --out data/toy [--seed S] [--images N] [--boxes 36] [--feature-dim D]
       [--questions-per-image Q] [--force] [--features-form tsv|lxmert_tsv|hdf5_trainval36|hdf5_split36|npz]
       python tools/make_toy_data.py --shape real --scale 0.1 --out DIR [--seed S] [--force] [--features-form F]
       (36 x 2048 features, ~2,000 answers, ~19,900 words, scale x the VQA-CP v2 counts; vqa_cp.rehearsal)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

# Run as a script from anywhere: make the repository's package importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vqa_cp.errors import VQAError, run_cli  # noqa: E402
from vqa_cp.feature_forms import FORMS  # noqa: E402
from vqa_cp.rehearsal import RehearsalConfig, generate_rehearsal_data  # noqa: E402
from vqa_cp.toy import ToyConfig, generate_toy_data  # noqa: E402

DEFAULTS = ToyConfig()
TOY_ONLY = ("images", "boxes", "feature_dim", "questions_per_image")


def _real(args: argparse.Namespace) -> dict[str, Any]:
    given = [f"--{name.replace('_', '-')}" for name in TOY_ONLY if getattr(args, name) is not None]
    if given:
        raise VQAError(f"{', '.join(given)}: toy-shape flags; --shape real fixes the real shapes (use --scale)")
    summary = generate_rehearsal_data(args.out, RehearsalConfig(scale=args.scale, seed=args.seed),
                                      force=args.force, features_form=args.features_form)
    q = summary["questions"]
    print(f"wrote {summary['out_dir']}: {summary['images']} images x 36 x 2048, {q['vqacp_train']} VQA-CP "
          f"train / {q['vqacp_test']} test questions, {summary['designed_answers']} designed answers, "
          f"{summary['dictionary_words']} words (scale {args.scale})")
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder (written atomically)")
    parser.add_argument("--shape", choices=("toy", "real"), default="toy",
                        help="toy shapes (default) or the real ones at --scale of the real counts")
    parser.add_argument("--scale", type=float, default=0.1, help="with --shape real: fraction of the real counts")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed)
    parser.add_argument("--images", type=int, default=None, help=f"train2014 + val2014 images ({DEFAULTS.images})")
    parser.add_argument("--boxes", type=int, default=None, help=f"boxes per image ({DEFAULTS.boxes})")
    parser.add_argument("--feature-dim", type=int, default=None, help=f"region feature size ({DEFAULTS.feature_dim})")
    parser.add_argument("--questions-per-image", type=int, default=None,
                        help=f"questions per image ({DEFAULTS.questions_per_image})")
    parser.add_argument("--force", action="store_true", help="replace an existing generated dataset in --out")
    parser.add_argument("--features-form", choices=FORMS, default="tsv",
                        help="write the features in this form (the original TSV by default; the others in "
                             "DATA/features/, as a copy of that form would lie there)")
    args = parser.parse_args(argv)
    if args.shape == "real":
        return _real(args)
    config = ToyConfig(seed=args.seed, **{name: getattr(args, name) if getattr(args, name) is not None
                                          else getattr(DEFAULTS, name) for name in TOY_ONLY})
    summary = generate_toy_data(args.out, config, force=args.force, features_form=args.features_form)
    images, questions = summary["images"], summary["questions"]
    missing = ", ".join(summary["glove_missing"]) or "none"
    print(f"wrote {summary['out_dir']}: {images['train2014']} train2014 + {images['val2014']} val2014 "
          f"images, {questions['vqacp_train']} VQA-CP train / {questions['vqacp_test']} test questions, "
          f"{summary['dictionary_words']} words ({missing} not in GloVe)")
    return summary


if __name__ == "__main__":
    run_cli(main)
