"""Train BUTD on VQA-CP v2 (debiasing ensemble + functional-entropy regulariser). See README.md."""

import sys

from vqa_cp.distributed import run_front
from vqa_cp.training import main

if __name__ == "__main__":
    run_front(main, sys.argv[1:])
