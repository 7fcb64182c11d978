"""Train BUTD on VQA-CP v2 (debiasing ensemble + functional-entropy regulariser). See README.md."""

import sys

from vqa_cp.errors import run_cli
from vqa_cp.training import main

if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
