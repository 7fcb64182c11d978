"""bench/bench_step.py: the matrix-product accounting behind its floor ratio, and a tiny end-to-end run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import torch

from bench.bench_step import matmul_work

ROOT = Path(__file__).resolve().parent.parent


def test_matmul_work_counts_two_flops_per_multiply_add() -> None:
    a, b, c, bias = torch.randn(6, 5), torch.randn(5, 7), torch.randn(7, 3), torch.randn(3)

    def run() -> torch.Tensor:
        return torch.addmm(bias, a @ b, c)  # 6x5 @ 5x7, then 6x7 @ 7x3

    work = matmul_work(run, torch.device("cpu"))
    assert work.gflop * 1e9 == 2 * (6 * 5 * 7 + 6 * 7 * 3)
    assert work.seconds > 0


def test_matmul_work_ignores_elementwise_ops() -> None:
    x = torch.randn(64, 64)
    assert matmul_work(lambda: (x * x).sum(), torch.device("cpu")).gflop == 0


def test_bench_step_part_one_runs_at_tiny_sizes() -> None:
    cmd = [sys.executable, "bench/bench_step.py", "--part", "1", "--batch", "4", "--steps", "1", "--warmup", "1",
           "--threads", "1", "--num_hid", "16", "--v_dim", "8", "--boxes", "3", "--answers", "10", "--ntoken", "30"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = proc.stdout.split("Matrix products in one step")[1]
    row = re.compile(r"^(lmh\+H.*?)\s+([\d.]+)\s+([\d.]+)x\s+([\d.]+)\s+(\d+)\s+([\d.]+)x$")
    rows = {m[1]: m for m in map(row.match, table.splitlines()) if m}
    assert list(rows) == ["lmh+H plain", "lmh+H + reg (reuse trunk)", "lmh+H + reg (published, 2nd trunk)"]
    plain, reuse, legacy = (float(rows[name][3]) for name in rows)  # work as a multiple of the plain step's
    assert plain == 1.0 and 1.0 < reuse < legacy
    assert float(rows["lmh+H plain"][6]) == 1.0  # the plain step's floor ratio is 1 by definition
