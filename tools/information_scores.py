"""Print each modality's information score, and its share, for a trained model on a split.

Usage: python tools/information_scores.py CHECKPOINT --data DIR [--split test] [--nocp]
       [--n_samples 3] [--estimation ent|var] [--no-grad] [--output scores.json]
A modality with a small share is one the model barely relies on.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vqa_cp.argtypes import positive_int  # noqa: E402
from vqa_cp.errors import run_cli  # noqa: E402


def main(argv: list[str]) -> dict[str, float]:
    p = argparse.ArgumentParser(prog="information_scores.py", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="checkpoint file (ours or the published state_dict) or output folder")
    p.add_argument("--data", default="data")
    p.add_argument("--split", choices=("train", "test"), default="test")
    p.add_argument("--nocp", action="store_true")
    p.add_argument("--n_samples", type=positive_int, default=3)
    p.add_argument("--estimation", choices=("ent", "var", "dif_ent"), default="ent")
    p.add_argument("--grad", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--batch_size", type=positive_int, default=256)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dictionary", default=None)
    p.add_argument("--answers", default=None)
    p.add_argument("--output", default=None, help="also write the scores to this JSON file (atomically)")
    args = p.parse_args(argv)

    from vqa_cp.files import check_output_file, write_json
    from vqa_cp.prediction import information_scores, load_model_for_data, open_split
    from vqa_cp.regularization import RegParameters
    from vqa_cp.training import pick_device

    if args.output is not None:
        check_output_file(args.output, "scores file")  # before the model and the features are read
    loaded = load_model_for_data(args.checkpoint, args.data, nocp=args.nocp, dictionary=args.dictionary,
                                 answers=args.answers)
    dataset = open_split(args.data, args.split, nocp=args.nocp)
    params = RegParameters(n_samples=args.n_samples, estimation=args.estimation, grad=args.grad)
    scores = information_scores(loaded, dataset, params, args.batch_size, str(pick_device(args.device)),
                                args.seed)
    total = sum(scores.values())
    print(f"information scores on {args.split} ({len(dataset)} questions, estimation {args.estimation}, "
          f"{'gradient bound' if args.grad else 'gradient-free'}):")
    for name, value in scores.items():
        share = f"{100 * value / total:.1f}%" if total > 0 else "n/a"
        print(f"  {name:<8} {value:.6g}  ({share})")
    if args.output is not None:
        write_json(args.output, {"checkpoint": str(args.checkpoint), "split": args.split, "nocp": args.nocp,
                                 "estimation": args.estimation, "grad": args.grad, "n_samples": args.n_samples,
                                 "seed": args.seed, "questions": len(dataset), "scores": scores}, indent=2)
        print(f"wrote {args.output}", file=sys.stderr)
    return scores


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
