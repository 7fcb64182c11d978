"""Step 1 of tools/process.sh: question dictionary and GloVe init matrix (DATA/processed/)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Run as a script from anywhere: make the repository's package importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vqa_cp.errors import run_cli  # noqa: E402
from vqa_cp.processing import process_text  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="data", help="raw data directory (outputs go to DATA/processed/)")
    args = parser.parse_args()
    process_text(args.data)


if __name__ == "__main__":
    run_cli(main)
