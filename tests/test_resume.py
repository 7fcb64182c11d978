"""--resume after SIGKILL in the middle of an epoch gives the metrics of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import tiny_args
from vqa_cp import checkpoints as ckpts
from vqa_cp.training import main

ROOT = Path(__file__).resolve().parents[1]
TIMING = ("seconds", "samples_per_s")


def _history(output: Path) -> list[dict]:
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(toy_data, tmp_path):
    flags = ["--epochs", "2", "--batch_size", "64", "--deterministic", "--checkpoint_every", "2",
             "--inf_lambda", "1e-4", "--eval_each_epoch"]
    reference = tmp_path / "reference"
    main(tiny_args(toy_data, reference, *flags))

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "main.py", *tiny_args(toy_data, killed, *flags)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = killed / ckpts.checkpoint_name(1, 4)  # step 4 of the second epoch (of 14): mid-epoch
    deadline = time.time() + 300
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert target.exists(), "the run never reached the mid-epoch checkpoint"
    assert not (killed / "model.pth").exists(), "the run finished before it was killed"

    main(["--resume", str(killed)])
    assert _history(killed) == _history(reference)
    log = (killed / "log.txt").read_text()
    assert "resumed from" in log
    for epoch in (1, 2):
        assert log.count(f"epoch {epoch}, time:") == 1
    final_a = ckpts.safe_load(reference / "model.pth")["model"]
    final_b = ckpts.safe_load(killed / "model.pth")["model"]
    assert all((final_a[k] == final_b[k]).all() for k in final_a)


def test_resume_refuses_data_with_another_answer_list(toy_data, tmp_path):
    from vqa_cp.errors import VQAError

    out = tmp_path / "run"
    main(tiny_args(toy_data, out, "--inf_lambda", "0", "--max_steps", "2"))
    path = ckpts.list_checkpoints(out)[0]
    ckpt = ckpts.safe_load(path)
    ckpt["answers_digest"] = ckpts.digest(["yes", "no"])
    ckpt["num_answers"] = 2
    ckpts.save_checkpoint(path, ckpt)
    with pytest.raises(VQAError, match=r"answer list differs from the processed data's \(2 entries against \d+;"):
        main(["--resume", str(out)])
    n = len(json.loads((Path(toy_data) / "processed" / "cp" / "answers.json").read_text())["answers"])
    ckpt["num_answers"] = n  # as many answers as the data's, other ones
    ckpts.save_checkpoint(path, ckpt)
    with pytest.raises(VQAError, match=rf"answer list differs from the processed data's \(the same {n} entries in "
                                       r"number, but other entries or another order;"):
        main(["--resume", str(out)])
