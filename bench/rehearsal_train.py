"""main.py with a recorder around the training step, for bench/bench_rehearsal.py and bench/gpu_check.sh.

    REHEARSAL_RECORD=steps.json python bench/rehearsal_train.py MAIN_PY_FLAGS...

Runs `vqa_cp.training.main` exactly as main.py does and writes, per step, the seconds inside the training
step (forward, backward, optimiser, synchronised), the seconds spent before it since the previous step
ended (the data path and the loop's own work), the loss and the regulariser's parts (term, information
scores, floored count), and at the end the peak GPU memory.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from vqa_cp import training  # noqa: E402
from vqa_cp.errors import run_cli  # noqa: E402

_STEP = training.train_step
_RECORDS: list[dict[str, float]] = []
_LAST = {"end": None}


def recorded_step(*args, **kwargs):
    """training.train_step, timed, with its figures read out (one host sync, as the loop does anyway)."""
    start = time.perf_counter()
    loss, logits, parts = _STEP(*args, **kwargs)
    values = torch.stack([loss.detach().float(), *(v.detach().float() for v in parts.values())]).tolist()
    end = time.perf_counter()
    wait = None if _LAST["end"] is None else start - _LAST["end"]
    _RECORDS.append({"step_s": end - start, "wait_s": wait, "loss": values[0], **dict(zip(parts, values[1:]))})
    _LAST["end"] = end
    return loss, logits, parts


def main(argv: list[str]) -> None:
    training.train_step = recorded_step
    start = time.perf_counter()
    try:
        run_cli(lambda: training.main(argv))
    finally:
        out = {"wall_s": time.perf_counter() - start, "steps": _RECORDS,
               "peak_gpu_bytes": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None}
        path = os.environ.get("REHEARSAL_RECORD")
        if path:
            Path(path).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
