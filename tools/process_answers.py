"""Step 2 of tools/process.sh: answer vocabulary, soft targets, question-type bias and split files
for VQA-CP v2 (cp) and VQA v2 (v2), each when its raw files exist."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Run as a script from anywhere: make the repository's package importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vqa_cp.errors import run_cli  # noqa: E402
from vqa_cp.processing import DEFAULT_MIN_COUNT, process_answers  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="data", help="raw data directory (outputs go to DATA/processed/)")
    parser.add_argument("--min-count", type=int, default=DEFAULT_MIN_COUNT,
                        help="keep answers given for at least this many training questions")
    args = parser.parse_args()
    process_answers(args.data, args.min_count)


if __name__ == "__main__":
    run_cli(main)
