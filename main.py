"""Train BUTD on VQA-CP v2 (debiasing ensemble + functional-entropy regulariser). See README.md."""

import os
import sys

from vqa_cp.distributed import under_torchrun
from vqa_cp.errors import run_cli
from vqa_cp.training import main

if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
    if under_torchrun():
        # Every file is written and closed; skip interpreter finalization, where leftover gloo
        # worker threads can abort the process after a successful run.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
