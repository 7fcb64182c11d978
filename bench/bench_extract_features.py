"""Feature extraction speed: images/s at several batch sizes side by side, where the time goes, and bf16's effect.

Generated COCO-like JPEGs (640 x 480 and 480 x 640, smooth random content) go through (1) decoding alone
(`image_features.decode_image`, one core), (2) `detector.extract` at each batch size (images/s, one run, side
by side), (3) one batch with the time split over the detector's parts (forward hooks on its modules' children;
"other" = preprocessing, selection, copies), (4) the whole command's loop (`image_features.extract_blocks`:
DataLoader workers decoding from a zip while the detector runs) at the largest batch size (on CUDA, or with
--whole-loop), and (5) float32
against bf16 autocast on the same images: max / mean absolute and relative difference of the features of
matched boxes, cosine, and how many of the 36 boxes bf16 also selects.

Without --weights the detector has random weights (`write_random_detector`): the timings hold for the real
weights (same shapes), the bf16 figures do not (random weights give other proposals and scores).

    python bench/bench_extract_features.py                      # CPU: 8 images, small config (SMALL_CONFIG), < 1 min
    python bench/bench_extract_features.py --device cuda --images 64 --batch-sizes 1 8 16 32 --published
    python bench/bench_extract_features.py ... --write          # also append the figures to bench/EXTRACTION.md
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vqa_cp import image_features as imf  # noqa: E402
from vqa_cp.errors import run_cli  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "EXTRACTION.md"
COCO_SIZES = ((640, 480), (480, 640))
# CPU default: a small input, 40 proposals and 7 x 7 pooling, so that 8 images take seconds, not minutes (at the
# published sizes res5 on 300 pooled 14 x 14 proposals is about 1.8 TFLOP an image: minutes on two CPU cores)
SMALL_CONFIG = {"MIN_SIZE_TEST": 96, "MAX_SIZE_TEST": 160, "PRE_NMS_TOPK_TEST": 200, "POST_NMS_TOPK_TEST": 40,
                "POOLER_RESOLUTION": 7}


def coco_like_jpegs(n: int, seed: int = 0) -> list[bytes]:
    """n JPEGs (quality 90) of smooth random content: upsampled noise, so they compress like photographs."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        w, h = COCO_SIZES[i % len(COCO_SIZES)]
        coarse = Image.fromarray(rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8))
        fine = np.asarray(coarse.resize((w, h), Image.BICUBIC)).astype(np.int16)
        fine = np.clip(fine + rng.integers(-12, 13, fine.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(fine).save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_extract(detector, images: list[np.ndarray], batch: int, select: str, device, amp: str = "none") -> list:
    outs = []
    with torch.inference_mode():
        for s in range(0, len(images), batch):
            outs += detector.extract(images[s:s + batch], select=select, amp=None if amp == "none" else amp)
    sync(device)
    return outs


def timed(detector, images, batch, select, device, amp="none") -> tuple[float, list]:
    """images/s of one pass over `images` (after a warm-up pass at the same batch size over both orientations:
    every new input shape costs the kernels a first-call setup) and the pass's results."""
    run_extract(detector, images[:max(batch, len(COCO_SIZES))], batch, select, device, amp)
    start = time.perf_counter()
    outs = run_extract(detector, images, batch, select, device, amp)
    return len(images) / (time.perf_counter() - start), outs


def _module(detector) -> torch.nn.Module | None:
    if isinstance(detector, torch.nn.Module):
        return detector
    return next((v for v in vars(detector).values() if isinstance(v, torch.nn.Module)), None)


def stage_times(detector, images, batch, select, device) -> dict[str, float]:
    """Seconds an image in each child of the detector's network (forward hooks that synchronise the device, so
    a pass of their own, after the timed ones), the rest as "other"."""
    module = _module(detector)
    spent: dict[str, float] = {}
    handles = []
    if module is not None:
        for name, child in module.named_children():
            def before(_m, _i, name=name):
                sync(device)
                spent[f"_{name}"] = time.perf_counter()

            def after(_m, _i, _o, name=name):
                sync(device)
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - spent.pop(f"_{name}")

            handles += [child.register_forward_pre_hook(before), child.register_forward_hook(after)]
    try:
        start = time.perf_counter()
        run_extract(detector, images[:batch], batch, select, device)
        total = time.perf_counter() - start
    finally:
        for h in handles:
            h.remove()
    n = min(batch, len(images))
    parts = {name: t / n for name, t in spent.items() if not name.startswith("_")}
    parts["other (preprocess, selection, copies)"] = total / n - sum(parts.values())
    return parts


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[len(a), len(b)] IoU of x1 y1 x2 y2 boxes."""
    x1, y1 = np.maximum(a[:, None, 0], b[None, :, 0]), np.maximum(a[:, None, 1], b[None, :, 1])
    x2, y2 = np.minimum(a[:, None, 2], b[None, :, 2]), np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda z: (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter + 1e-9)


def amp_effect(full: list[dict], half: list[dict]) -> dict[str, float]:
    """bf16 against float32: each float32 box matched to the bf16 box of highest IoU; feature differences over
    matched pairs; |a - b|, |a - b| / max|a|, cosine per box, and the boxes found again (IoU >= 0.9)."""
    diffs, rel, cos, same_boxes, same_sets = [], [], [], 0, 0
    for a, b in zip(full, half):
        overlap = iou(np.asarray(a["boxes"]), np.asarray(b["boxes"]))
        match = overlap.argmax(axis=1)
        found = overlap.max(axis=1) >= 0.9
        same_boxes += int(found.sum())
        same_sets += int(np.array_equal(np.sort(np.asarray(a["boxes"]), axis=0), np.sort(np.asarray(b["boxes"]),
                                                                                           axis=0)))
        fa, fb = np.asarray(a["features"], np.float64), np.asarray(b["features"], np.float64)[match]
        d = np.abs(fa - fb)
        diffs.append(d)
        rel.append(d / max(np.abs(fa).max(), 1e-12))
        cos.append((fa * fb).sum(1) / (np.linalg.norm(fa, axis=1) * np.linalg.norm(fb, axis=1) + 1e-12))
    d, r, c = np.concatenate(diffs), np.concatenate(rel), np.concatenate(cos)
    boxes = sum(len(a["boxes"]) for a in full)
    return {"max_abs": float(d.max()), "mean_abs": float(d.mean()), "max_rel": float(r.max()),
            "mean_rel": float(r.mean()), "cosine_mean": float(c.mean()), "cosine_min": float(c.min()),
            "boxes_found_again": same_boxes / boxes, "images_same_boxes_exactly": same_sets / len(full)}


def pipeline_images_per_s(detector, jpegs: list[bytes], batch: int, workers: int, select: str,
                          device: torch.device, folder: Path) -> float:
    """The command's own loop (`extract_blocks`) over a zip of the images, decoding in `workers` processes."""
    zipped = folder / "train2014.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        for i, data in enumerate(jpegs):
            zf.writestr(f"train2014/COCO_train2014_{i + 1:012d}.jpg", data)
    entries = imf.list_images([zipped], log=lambda m: None)
    opts = imf.ExtractOptions(images=[zipped], weights=folder, data=folder, batch_size=batch, select=select,
                              num_workers=workers, block_size=len(entries))
    work = folder / "work"
    work.mkdir()
    stats = imf.extract_blocks(detector, entries, [0], work, opts, device, progress=False)
    return stats.images / stats.wall_s


def make_detector(args, folder: Path, device: torch.device):
    from vqa_cp.extraction import BottomUpDetector, write_random_detector
    weights = args.weights
    if weights is None:
        weights = write_random_detector(folder / "detector", seed=0, **({} if args.published else SMALL_CONFIG))
    return BottomUpDetector.from_pretrained(weights, device=str(device))


def main(argv: list[str]) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=Path, help="detector folder (default: random weights)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--images", type=int, default=8, help="generated images timed at each batch size")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    p.add_argument("--workers", type=int, default=2, help="decoding workers of the whole-loop measurement")
    p.add_argument("--select", choices=("caffe", "lxmert"), default="caffe")
    p.add_argument("--published", action="store_true",
                   help="random weights at the published input size and proposal counts (default on CUDA)")
    p.add_argument("--whole-loop", action="store_true",
                   help="also time the command's loop with decoding workers (always on CUDA)")
    p.add_argument("--no-amp", dest="amp", action="store_false", help="skip the bf16 comparison")
    p.add_argument("--write", nargs="?", const=RESULTS, type=Path, metavar="MD",
                   help=f"append the figures to this file (default {RESULTS.name})")
    args = p.parse_args(argv)
    device = imf.pick_device(args.device)
    args.published = args.published or (device.type == "cuda" and args.weights is None)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    jpegs = coco_like_jpegs(args.images)
    start = time.perf_counter()
    images = [imf.decode_image(j) for j in jpegs]
    decode_s = (time.perf_counter() - start) / len(images)
    results: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                     "threads": torch.get_num_threads(), "images": len(images),
                     "weights": str(args.weights) if args.weights else "random, " + (
                         "published sizes" if args.published else f"small config {SMALL_CONFIG}"),
                     "decode_ms_per_image_one_core": 1000 * decode_s}
    with tempfile.TemporaryDirectory() as tmp:
        detector = make_detector(args, Path(tmp), device)
        top = max(args.batch_sizes)
        results["images_per_s"], outs = {}, {}
        for b in args.batch_sizes:
            results["images_per_s"][b], outs[b] = timed(detector, images, b, args.select, device)
        if args.amp:
            speed, half = timed(detector, images, top, args.select, device, "bf16")
            results["images_per_s_bf16"] = {top: speed}
            results["bf16_vs_float32"] = amp_effect(outs[top], half)
        results["seconds_per_image_by_stage"] = stage_times(detector, images, top, args.select, device)
        if args.whole_loop or device.type == "cuda":
            results["whole_loop_images_per_s"] = {
                f"batch {top}, {args.workers} workers": pipeline_images_per_s(detector, jpegs, top, args.workers,
                                                                              args.select, device, Path(tmp))}
    report(results)
    if args.write:
        with open(args.write, "a", encoding="utf-8") as f:
            f.write(f"\n## {time.strftime('%Y-%m-%d %H:%M')} {results['device']}\n\n```json\n"
                    f"{json.dumps(results, indent=1)}\n```\n")
    return results


def report(r: dict) -> None:
    print(f"device {r['device']} ({r['threads']} threads), {r['images']} images, weights: {r['weights']}")
    print(f"decode: {r['decode_ms_per_image_one_core']:.1f} ms an image on one core "
          f"({1000 / r['decode_ms_per_image_one_core']:.0f} images/s per decoding worker)")
    print("detector images/s by batch: " + "  ".join(f"batch {b}: {v:.2f}" for b, v in r["images_per_s"].items()))
    for b, v in r.get("images_per_s_bf16", {}).items():
        print(f"  bf16 autocast, batch {b}: {v:.2f} images/s")
    print("seconds an image by stage: " + ", ".join(f"{k} {v:.4f}" for k, v in
                                                      r["seconds_per_image_by_stage"].items()))
    for k, v in r.get("whole_loop_images_per_s", {}).items():
        print(f"whole loop (zip -> workers -> detector -> blocks), {k}: {v:.2f} images/s")
    if "bf16_vs_float32" in r:
        print("bf16 vs float32: " + ", ".join(f"{k} {v:.4g}" for k, v in r["bf16_vs_float32"].items()))


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
