"""Detector throughput: images/s of `BottomUpDetector.extract` at several batch sizes, side by side, and where
the time goes (preprocess + backbone + RPN per image, RoI heads = RoI pooling + res5 + predictors, selection).

Images are generated at 600 x 1000 (the published input size: no resize). Without --weights, random weights of
the published shapes are written to a temporary folder (--proposals overrides POST_NMS_TOPK_TEST there; res5 on
300 RoIs of 14 x 14 is ~0.9 TMAC an image, so on a CPU fewer proposals keep the run short).

    python -m bench.bench_extraction [--device cpu|cuda] [--amp bf16] [--batches 1 8] [--images 3] [--proposals N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vqa_cp.errors import run_cli
from vqa_cp.extraction import BottomUpDetector, write_random_detector


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def stages(det: BottomUpDetector, images: list[np.ndarray], select: str, amp: str | None) -> dict[str, float]:
    """Seconds of each stage of one extract call (the same steps as `extract`)."""
    times = {}
    autocast = torch.autocast(det.device.type, dtype=torch.bfloat16, enabled=amp == "bf16")
    with torch.inference_mode(), autocast:
        start = time.perf_counter()
        features, sizes, proposals, hws = det._propose(images)
        sync(det.device)
        times["backbone+rpn"] = time.perf_counter() - start
        start = time.perf_counter()
        rois = torch.cat([torch.cat((torch.full((len(p), 1), i, device=det.device), p), dim=1)
                          for i, p in enumerate(proposals)])
        outputs = det.model.roi_heads(features, sizes, rois)
        sync(det.device)
        times["roi_heads"] = time.perf_counter() - start
    start = time.perf_counter()
    with torch.inference_mode():
        parts = [t.float().split([len(p) for p in proposals]) for t in outputs]
        det._results(images, proposals, hws, parts, select)
    sync(det.device)
    times["selection"] = time.perf_counter() - start
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, help="a detector folder (default: random published weights)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", choices=["bf16"], default=None)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--proposals", type=int, default=None)
    parser.add_argument("--select", choices=["caffe", "lxmert"], default="caffe")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.weights
        if folder is None:
            overrides = {} if args.proposals is None else {"POST_NMS_TOPK_TEST": args.proposals}
            folder = write_random_detector(Path(tmp) / "detector", **overrides)
        det = BottomUpDetector.from_pretrained(folder, device=args.device)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (600, 1000, 3), dtype=np.uint8) for _ in range(args.images)]
    det.extract(images[:1], select=args.select, amp=args.amp)  # warm-up
    device = torch.device(args.device)
    rates = {}
    for batch in args.batches:
        sync(device)
        start = time.perf_counter()
        for i in range(0, len(images), batch):
            det.extract(images[i:i + batch], select=args.select, amp=args.amp)
        sync(device)
        rates[batch] = len(images) / (time.perf_counter() - start)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"{name}, {args.images} images of 600 x 1000, select={args.select}, amp={args.amp}, "
          f"proposals={det.model.proposal_generator.post_topk}")
    print("  ".join(f"batch {b}: {r:.3f} images/s" for b, r in rates.items()))
    split = stages(det, images[:max(args.batches)], args.select, args.amp)
    total = sum(split.values())
    print("time at batch", min(len(images), max(args.batches)), ": " + ", ".join(
        f"{k} {v:.2f} s ({100 * v / total:.0f}%)" for k, v in split.items()))


if __name__ == "__main__":
    run_cli(main)
