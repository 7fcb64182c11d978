"""torchrun with the gloo backend, 2 CPU processes, on the toy data."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_args
from vqa_cp import checkpoints as ckpts
from vqa_cp.training import main

ROOT = Path(__file__).resolve().parents[1]


def torchrun(nproc: int, args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", VQA_CP_COLLECTIVE_TIMEOUT="60")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "main.py", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def _params(path: Path) -> dict[str, torch.Tensor]:
    ckpt = ckpts.safe_load(path)
    return {**{f"model.{k}": v for k, v in ckpt["model"].items()},
            **{f"loss.{k}": v for k, v in ckpt["loss_fn"].items()}}


def test_two_process_run_writes_the_files_of_a_single_process_run(toy_data, tmp_path):
    flags = ["--epochs", "2", "--inf_lambda", "1e-4", "--eval_each_epoch", "--device", "cpu"]
    single, double = tmp_path / "single", tmp_path / "double"
    main(tiny_args(toy_data, single, *flags))
    proc = torchrun(2, tiny_args(toy_data, double, *flags))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in single.iterdir()) == sorted(p.name for p in double.iterdir())
    records = [json.loads(line) for line in (double / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert "overall" in records[-1]["test"]
    assert (double / "log.txt").read_text().count("epoch 2, time:") == 1  # rank 0 alone writes


@pytest.mark.parametrize("reg", [[], ["--inf_lambda", "1e-4"]], ids=["plain", "regulariser"])
def test_two_ranks_half_batch_equal_one_rank_full_batch(toy_data, tmp_path, reg):
    flags = ["--batch_size", "32", "--no_dropout", "--max_steps", "4", "--device", "cpu", *reg]
    main(tiny_args(toy_data, tmp_path / "one", *flags, "--checkpoint_every", "1"))
    proc = torchrun(2, tiny_args(toy_data, tmp_path / "two", *flags))
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = (_params(tmp_path / run / ckpts.checkpoint_name(0, 4)) for run in ("one", "two"))
    assert one.keys() == two.keys()
    # The attention logit's bias has an exactly zero gradient (the softmax over boxes ignores a shift):
    # what autograd returns for it is rounding noise, which Adamax scales up to lr-sized steps.
    for key in [k for k in one if k != "model.v_att.linear.bias"]:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, msg=key)
    before = _params(tmp_path / "one" / ckpts.checkpoint_name(0, 3))
    assert any(not torch.equal(before[k], one[k]) for k in one), "the fourth step changed nothing"


def test_batch_not_divisible_by_world_size_is_a_clear_error(toy_data, tmp_path):
    proc = torchrun(2, tiny_args(toy_data, tmp_path / "odd", "--batch_size", "33", "--device", "cpu"))
    assert proc.returncode != 0
    assert "--batch_size 33 is not divisible by the world size 2" in proc.stderr


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry.name))
    return kids


def test_a_dead_rank_stops_the_others_and_resume_continues(toy_data, tmp_path):
    out = tmp_path / "dies"
    args = tiny_args(toy_data, out, "--epochs", "2", "--batch_size", "32", "--device", "cpu",
                     "--checkpoint_every", "3")
    env = dict(os.environ, OMP_NUM_THREADS="1", VQA_CP_COLLECTIVE_TIMEOUT="30")
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "main.py", *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not ckpts.list_checkpoints(out) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    workers = _children(proc.pid)
    assert len(workers) == 2 and proc.poll() is None, "the run ended before a rank could be killed"
    os.kill(workers[1], signal.SIGKILL)
    proc.communicate(timeout=120)  # a hang guard, not a speed check: the survivor must exit
    assert proc.returncode != 0
    assert not (out / "model.pth").exists()
    results = main(["--resume", str(out)])
    assert results["history"][-1]["epoch"] == 2
    assert (out / "model.pth").is_file()
