"""Draw OUTPUT_DIR/curves.png from a training run's metrics.jsonl (thin front over vqa_cp.plotting).

Usage: python tools/plot.py OUTPUT_DIR [--inf_lambda L]

Panels: loss terms by epoch (train_loss, task_loss, lambda * reg_term), official accuracy per answer type
and overall for each evaluated split, information score per modality (log scale) with the regulariser.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Run as a script from anywhere: make the repository's package importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vqa_cp.errors import run_cli  # noqa: E402
from vqa_cp.plotting import plot_run  # noqa: E402


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", type=Path, help="training output folder holding metrics.jsonl")
    parser.add_argument("--inf_lambda", type=float, default=None,
                        help="the run's regulariser lambda (default: read from its log.txt)")
    args = parser.parse_args(argv)
    path = plot_run(args.output_dir, inf_lambda=args.inf_lambda)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    run_cli(main)
