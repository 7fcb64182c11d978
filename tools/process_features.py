"""Step 3 of tools/process.sh: the feature copy in DATA (any form: original TSV, LXMERT TSV, HDF5, npz; detected
from content) -> DATA/processed/features.h5, in ascending image_id order."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Run as a script from anywhere: make the repository's package importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vqa_cp.errors import run_cli  # noqa: E402
from vqa_cp.features import process_features  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="data", help="raw data directory (outputs go to DATA/processed/)")
    parser.add_argument("--fp16", action="store_true", help="store features as float16 (half the disk)")
    args = parser.parse_args()
    process_features(args.data, args.fp16)


if __name__ == "__main__":
    run_cli(main)
