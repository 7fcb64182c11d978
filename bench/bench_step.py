"""Benchmark one training step: BUTD + debiasing loss (+ functional-entropy regulariser), Adamax, clip 0.25.

Part 1 (batch 128 on CPU, 512 on CUDA): learned-mixin +H plain vs + regulariser reusing the trunk
(perturb q_emb, v_emb; head only) vs + regulariser the published way (second trunk pass, legacy).
Part 1 also counts each variant's matrix-product work in one profiled step (GFLOP of mm/addmm/bmm and
the seconds spent in them) and derives the lowest ratio the regulariser could reach at that matrix
product rate with every other cost removed: (t_plain + extra GFLOP / rate) / t_plain.
Part 2 (batch 64 on CPU): every debiasing mode with and without the regulariser.
Steps run round-robin across the variants so that load from other processes hits them alike;
medians are reported. Synthetic data at real sizes (36 boxes x 2048, 2,000 answers, 14 tokens).

    python -m bench.bench_step [--quick] [--batch N] [--device cpu|cuda] [--part 1|2|all] [--amp]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.profiler import ProfilerActivity, profile
from tqdm import tqdm

from vqa_cp.errors import VQAError, run_cli
from vqa_cp.losses import LOSS_MODES, build_loss
from vqa_cp.model import build_model
from vqa_cp.objective import Objective
from vqa_cp.regularization import RegParameters
from vqa_cp.training import train_step

Batch = tuple[Tensor, Tensor, Tensor, Tensor]


@dataclass
class Variant:
    name: str
    mode: str
    reg: bool
    legacy: bool = False


def synthetic_batch(batch: int, boxes: int, v_dim: int, ntoken: int, answers: int, device: torch.device,
                    seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    v = torch.rand(batch, boxes, v_dim, generator=g)
    q = torch.randint(0, ntoken, (batch, 14), generator=g)
    target = (torch.rand(batch, answers, generator=g) > 0.998).float() * 0.9
    bias = torch.softmax(4 * torch.randn(batch, answers, generator=g), dim=1)
    return tuple(t.to(device) for t in (v, q, target, bias))  # type: ignore[return-value]


def make_runner(variant: Variant, batch: Batch, args: argparse.Namespace, device: torch.device
                ) -> Callable[[], Tensor]:
    torch.manual_seed(0)
    model = build_model("baseline0_newatt", ntoken=args.ntoken, num_hid=args.num_hid, v_dim=args.v_dim,
                        num_answers=args.answers).to(device)
    loss_fn = build_loss(variant.mode, num_hid=args.num_hid).to(device)
    reg = RegParameters(lambda_=1e-10 if variant.reg else 0.0, n_samples=args.n_samples)
    objective = Objective(model, loss_fn, reg, legacy=variant.legacy).to(device)
    optimizer = torch.optim.Adamax(objective.parameters(), lr=2e-3)
    steps = iter(range(10**9))
    return lambda: train_step(objective, optimizer, batch, next(steps), grad_clip=0.25, amp=args.amp)[0]


MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


@dataclass
class MatmulWork:
    gflop: float  # floating-point operations of the matrix products in one step (2 per multiply-add)
    seconds: float  # time spent inside them (CPU self time; the kernels' time on CUDA)


def matmul_work(run: Callable[[], Tensor], device: torch.device) -> MatmulWork:
    """Matrix-product GFLOP and seconds of one (already warmed-up) step, from torch.profiler."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, with_flops=True) as prof:
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    flops = seconds = 0.0
    for event in prof.key_averages():
        if event.key in MATMUL_OPS:
            flops += event.flops
            seconds += (event.device_time_total if device.type == "cuda" else event.self_cpu_time_total) / 1e6
    return MatmulWork(flops / 1e9, seconds)


def report_floor(times: dict[str, list[float]], work: dict[str, MatmulWork], plain: str) -> None:
    """Matrix-product work per variant and the ratio left if everything but that extra work were free."""
    base_time, base = statistics.median(times[plain]), work[plain]
    rate = base.gflop / base.seconds
    print(f"\nMatrix products in one step (torch.profiler; the plain step runs them at {rate:.0f} GFLOP/s):")
    print(f"{'variant':<34} {'GFLOP':>8} {'x plain':>8} {'mm s':>7} {'GFLOP/s':>8} {'floor ratio':>12}")
    for name, w in work.items():
        floor = (base_time + (w.gflop - base.gflop) / rate) / base_time
        print(f"{name:<34} {w.gflop:>8.1f} {w.gflop / base.gflop:>7.2f}x {w.seconds:>7.3f} "
              f"{w.gflop / w.seconds:>8.0f} {floor:>11.2f}x")
    print("floor ratio: the plain step's median time plus the variant's extra matrix-product work at the "
          "plain step's rate, over the plain step's time (every other extra cost taken as zero)")


def measure(variants: list[Variant], batch_size: int, args: argparse.Namespace, device: torch.device,
            count_work: bool = False) -> tuple[dict[str, list[float]], dict[str, MatmulWork]]:
    """Seconds per step for each variant (warm-up steps dropped), steps interleaved round-robin; with
    count_work, each variant's matrix-product work in one extra profiled step after the timed ones."""
    batch = synthetic_batch(batch_size, args.boxes, args.v_dim, args.ntoken, args.answers, device)
    runners = {v.name: make_runner(v, batch, args, device) for v in variants}
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    for step in tqdm(range(args.warmup + args.steps), desc=f"batch {batch_size}", unit="round"):
        for name, run in runners.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            loss = run()
            if not torch.isfinite(loss):
                raise VQAError(f"{name}: non-finite loss at step {step}")
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if step >= args.warmup:
                times[name].append(time.perf_counter() - start)
    work = {name: matmul_work(run, device) for name, run in runners.items()} if count_work else {}
    return times, work


def report(title: str, times: dict[str, list[float]], batch_size: int, baseline: dict[str, str]) -> None:
    print(f"\n{title}")
    print(f"{'variant':<34} {'median s/step':>13} {'min':>8} {'samples/s':>10} {'ratio':>7}")
    for name, ts in times.items():
        med = statistics.median(ts)
        base = statistics.median(times[baseline[name]])
        print(f"{name:<34} {med:>13.3f} {min(ts):>8.3f} {batch_size / med:>10.1f} {med / base:>7.2f}x")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--batch", type=int, default=None, help="part 1 batch (default 128 on CPU, 512 on CUDA)")
    p.add_argument("--batch2", type=int, default=64, help="part 2 batch (all modes)")
    p.add_argument("--part", default="all", choices=("1", "2", "all"))
    p.add_argument("--quick", action="store_true", help="fewer steps")
    p.add_argument("--steps", type=int, default=None, help="measured steps per variant (default 7, quick 3)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--num_hid", type=int, default=1024)
    p.add_argument("--v_dim", type=int, default=2048)
    p.add_argument("--boxes", type=int, default=36)
    p.add_argument("--answers", type=int, default=2000)
    p.add_argument("--ntoken", type=int, default=20000)
    p.add_argument("--n_samples", type=int, default=3)
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast, as main.py --amp bf16")
    args = p.parse_args()
    args.steps = args.steps or (3 if args.quick else 7)
    return args


def main() -> None:
    args = parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise VQAError("--device cuda: no CUDA device is available")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batch1 = args.batch or (512 if device.type == "cuda" else 128)
    print(f"device {device}, threads {torch.get_num_threads()}, torch {torch.__version__}, "
          f"{args.steps} measured steps (+{args.warmup} warm-up), n_samples {args.n_samples}, "
          f"{'bfloat16 autocast' if args.amp else 'float32'}; "
          "the trainer's own step (vqa_cp.training.train_step)")
    if args.part in ("1", "all"):
        variants = [Variant("lmh+H plain", "learned_mixin", False),
                    Variant("lmh+H + reg (reuse trunk)", "learned_mixin", True),
                    Variant("lmh+H + reg (published, 2nd trunk)", "learned_mixin", True, legacy=True)]
        times, work = measure(variants, batch1, args, device, count_work=True)
        report(f"Part 1: one training step, batch {batch1} (ratio to the plain step)", times, batch1,
               {v.name: variants[0].name for v in variants})
        report_floor(times, work, variants[0].name)
    if args.part in ("2", "all"):
        variants = [Variant(f"{mode}{' + reg' if reg else ''}", mode, reg) for mode in LOSS_MODES
                    for reg in (False, True)]
        times, _ = measure(variants, args.batch2, args, device)
        report(f"Part 2: every mode, batch {args.batch2} (ratio to the same mode without the regulariser)",
               times, args.batch2, {v.name: v.mode for v in variants})


if __name__ == "__main__":
    run_cli(main)
