"""Training throughput at the real shapes: samples/s, seconds per full VQA-CP v2 epoch, peak memory.

A synthetic feature store of the real shapes (36 boxes x 2048, float16) lives on the device, as with
`--cache_features --features_on_gpu`; each step gathers a batch there and runs the trainer's own step
(vqa_cp.training.train_step): learned-mixin +H plus the functional-entropy regulariser by default.

    python bench/bench_throughput.py [--device cuda] [--batch 512] [--steps 30] [--amp bf16] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vqa_cp.errors import run_cli  # noqa: E402
from vqa_cp.losses import build_loss  # noqa: E402
from vqa_cp.model import build_model  # noqa: E402
from vqa_cp.objective import Objective  # noqa: E402
from vqa_cp.regularization import RegParameters  # noqa: E402
from vqa_cp.training import train_step  # noqa: E402

TRAIN_QUESTIONS = 438_183  # VQA-CP v2 train


def main(argv: list[str]) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--steps", type=int, default=30, help="timed steps (after --warmup)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--images", type=int, default=20_000, help="synthetic images held on the device")
    p.add_argument("--amp", choices=("none", "bf16"), default="none")
    p.add_argument("--mode", default="learned_mixin")
    p.add_argument("--inf_lambda", type=float, default=1e-10, help="0: no regulariser")
    p.add_argument("--num_hid", type=int, default=1024)
    p.add_argument("--answers", type=int, default=2000)
    p.add_argument("--quick", action="store_true", help="tiny run (CPU smoke test)")
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.steps, args.warmup, args.images = 32, 3, 1, 200
    device = torch.device(args.device)
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.cuda.reset_peak_memory_stats(device)
    features = torch.randn(args.images, 36, 2048, device=device, dtype=torch.float16)
    tokens = torch.randint(0, 20_000, (args.images * 4, 14), device=device)
    model = build_model("baseline0_newatt", ntoken=20_000, num_hid=args.num_hid, v_dim=2048,
                        num_answers=args.answers).to(device)
    loss_fn = build_loss(args.mode, num_hid=args.num_hid)
    objective = Objective(model, loss_fn, RegParameters(lambda_=args.inf_lambda)).to(device)
    optimizer = torch.optim.Adamax(objective.parameters(), lr=2e-3)

    def batch(step: int) -> tuple[torch.Tensor, ...]:
        g = torch.Generator(device=device).manual_seed(step)
        rows = torch.randint(0, args.images, (args.batch,), device=device, generator=g)
        q = tokens[torch.randint(0, len(tokens), (args.batch,), device=device, generator=g)]
        target = (torch.rand(args.batch, args.answers, device=device, generator=g) > 0.998).float()
        bias = torch.softmax(torch.randn(args.batch, args.answers, device=device, generator=g), dim=1)
        return features[rows].float(), q, target, bias

    times = []
    for step in range(args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        train_step(objective, optimizer, batch(step), step, 0.25, amp=args.amp == "bf16")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    samples = args.batch / median
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, mode {args.mode}, inf_lambda {args.inf_lambda}, "
          f"amp {args.amp}, batch {args.batch}, {args.steps} timed steps")
    print(f"median step {median * 1000:.1f} ms, {samples:,.0f} samples/s, full epoch ({TRAIN_QUESTIONS:,} "
          f"questions) {TRAIN_QUESTIONS / samples:.1f} s, peak GPU memory {peak:.2f} GiB")
    return {"samples_per_s": samples, "epoch_s": TRAIN_QUESTIONS / samples, "peak_gib": peak}


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
