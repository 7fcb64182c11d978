"""Data-pipeline speed: TSV decode vs a plain base64 loop, TSV -> HDF5, dataset items/s (lazy vs cached),
and whole batches: DataLoader over VQADataset against batch_loader (gathered by index), side by side.

Generates its own synthetic TSV with the real shapes (36 boxes x 2048 float32) in a temporary
directory, plus a minimal processed cp split over those images. Prints medians of --repeats runs,
side-by-side ratios and the peak RSS.

    python bench/bench_data.py [--images 300] [--repeats 3] [--items 2000] [--batch 512] [--batches 6]
"""

from __future__ import annotations

import argparse
import base64
import binascii
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vqa_cp.dataset import Processed, VQADataset, batch_loader  # noqa: E402
from vqa_cp.errors import run_cli  # noqa: E402
from vqa_cp.features import FeatureStore, iter_tsv, tsv_to_hdf5  # noqa: E402
from vqa_cp.files import write_json  # noqa: E402
from vqa_cp.processing import processed_dir, save_npy, save_npz  # noqa: E402
from vqa_cp.text import MAX_QUESTION_LENGTH, Dictionary  # noqa: E402


def write_synthetic_tsv(path: Path, images: int, boxes: int, dim: int, rng: np.random.Generator) -> None:
    with open(path, "w") as f:
        for image_id in range(images):
            box = rng.uniform(0, 600, (boxes, 4)).astype(np.float32)
            feat = rng.exponential(1.0, (boxes, dim)).astype(np.float32)
            f.write(f"{image_id}\t640\t480\t{boxes}\t{base64.b64encode(box.tobytes()).decode()}\t"
                    f"{base64.b64encode(feat.tobytes()).decode()}\n")


def write_synthetic_split(data: Path, images: int, questions: int, rng: np.random.Generator) -> Processed:
    """A minimal processed cp dataset: random tokens, 1-3 soft targets per question, 3 question types.

    Returned as the `Processed` the datasets are built with (it has no processing records to verify)."""
    out = processed_dir(data)
    words, answers, types = 1000, 2000, 3
    write_json(out / "dictionary.json", {"words": [f"w{i}" for i in range(words)]})
    save_npy(out / "glove6b_init_300d.npy", np.zeros((words, 300), dtype=np.float32))
    write_json(out / "cp" / "answers.json", {"answers": [f"a{i}" for i in range(answers)]})
    write_json(out / "cp" / "question_types.json", [f"t{i}" for i in range(types)])
    save_npy(out / "cp" / "bias.npy", rng.random((types, answers), dtype=np.float32))
    per_question = rng.integers(1, 4, questions)
    save_npz(out / "cp" / "train.npz",
             question_id=np.arange(questions, dtype=np.int64),
             image_id=rng.integers(0, images, questions),
             tokens=rng.integers(0, words + 1, (questions, MAX_QUESTION_LENGTH)),
             question_type=rng.integers(0, types, questions),
             answer_type=rng.integers(0, 3, questions),
             target_ptr=np.concatenate([[0], np.cumsum(per_question)]).astype(np.int64),
             target_label=rng.integers(0, answers, int(per_question.sum())),
             target_score=np.full(int(per_question.sum()), 0.3, dtype=np.float32))
    return Processed(Dictionary([f"w{i}" for i in range(words)]), np.zeros((words, 300), dtype=np.float32),
                     [f"a{i}" for i in range(answers)], [f"t{i}" for i in range(types)],
                     np.load(out / "cp" / "bias.npy"))


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def plain_base64_loop(path: Path) -> None:
    with open(path, "rb") as f:
        for line in f:
            fields = line.split(b"\t")
            binascii.a2b_base64(fields[4])
            binascii.a2b_base64(fields[5])


def our_decode(path: Path) -> None:
    for _ in iter_tsv(path, progress=False):
        pass


def items(ds: VQADataset, order: np.ndarray) -> None:
    for i in order:
        ds[int(i)]


def drain(batches: object) -> None:
    for _ in batches:
        pass


def batch_section(data: Path, h5_path: Path, questions: int, processed: Processed, args: argparse.Namespace,
                  rng: np.random.Generator) -> None:
    """Questions/s of whole batches (features, tokens, dense targets, bias, ids): DataLoader, the path the
    trainer takes today (num_workers 0: these cores are shared), against batch_loader, and the floor of the
    feature gather alone (index_select of the float16 cache, then the float32 copy)."""
    order = rng.integers(0, questions, args.batch * args.batches).tolist()
    n = len(order)
    print(f"\n{'batches of ' + str(args.batch) + ', random order':<34}{'DataLoader q/s':>15}{'batch_loader q/s':>19}"
          f"{'ratio':>7}")
    for label, mode in (("lazy HDF5 (float32 file)", None), ("cache float16", "cache"),
                        ("cache float16, rows only (GPU)", "device")):
        store = FeatureStore(h5_path)
        if mode:
            store.cache(torch.float16, log=lambda _: None)
        if mode == "device":
            store.keep_on_device(torch.device("cpu"), log=lambda _: None)
        ds = VQADataset(data, "cp", "train", features=store, processed=processed)
        old = median_seconds(lambda ds=ds: drain(DataLoader(ds, batch_size=args.batch, sampler=order)), args.repeats)
        new = median_seconds(lambda ds=ds: drain(batch_loader(ds, order, args.batch)), args.repeats)
        print(f"{label:<34}{n / old:>15.0f}{n / new:>19.0f}{old / new:>7.1f}")
    store = FeatureStore(h5_path)
    store.cache(torch.float16, log=lambda _: None)
    cache = store._cache
    rows = [torch.from_numpy(np.asarray(order[i:i + args.batch])) % len(store) for i in range(0, n, args.batch)]
    gather = median_seconds(lambda: [cache.index_select(0, r) for r in rows], args.repeats)
    widen = median_seconds(lambda: [cache.index_select(0, r).float() for r in rows], args.repeats)
    mb = args.batch * args.boxes * args.dim * 2 / 1e6
    print(f"{'floor: float16 gather only':<34}{n / gather:>15.0f}  ({mb * len(rows) / gather / 1e3:.1f} GB/s read)")
    print(f"{'floor: gather + float32 copy':<34}{n / widen:>15.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--boxes", type=int, default=36)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--items", type=int, default=2000, help="dataset items read per timing")
    parser.add_argument("--batch", type=int, default=512, help="batch size of the batch section")
    parser.add_argument("--batches", type=int, default=6, help="batches per timing in the batch section")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        tsv = data / "features.tsv"
        write_synthetic_tsv(tsv, args.images, args.boxes, args.dim, rng)
        mb = tsv.stat().st_size / 1e6
        print(f"synthetic TSV: {args.images} images x {args.boxes} x {args.dim}, {mb:.0f} MB")
        plain_base64_loop(tsv)  # warm the page cache

        plain = median_seconds(lambda: plain_base64_loop(tsv), args.repeats)
        decode = median_seconds(lambda: our_decode(tsv), args.repeats)
        h5_path = processed_dir(data) / "features.h5"
        to_h5 = {fp16: median_seconds(lambda fp16=fp16: tsv_to_hdf5(tsv, h5_path, fp16, progress=False),
                                      args.repeats) for fp16 in (True, False)}
        print(f"{'TSV pass (median of ' + str(args.repeats) + ')':<34}{'MB/s':>9}{'vs plain':>10}")
        for name, seconds in (("plain base64 loop", plain), ("decode + validate (iter_tsv)", decode),
                              ("tsv_to_hdf5 float16", to_h5[True]), ("tsv_to_hdf5 float32", to_h5[False])):
            print(f"{name:<34}{mb / seconds:>9.0f}{plain / seconds:>10.2f}")

        questions = 4 * args.images
        processed = write_synthetic_split(data, args.images, questions, rng)
        order = rng.integers(0, questions, args.items)
        print(f"\n{'dataset items, random order':<34}{'items/s':>9}{'vs lazy':>10}")
        lazy_seconds = None
        for label, cache in (("lazy HDF5 (float32 file)", None), ("cache float16", torch.float16),
                             ("cache float32", torch.float32)):
            store = FeatureStore(h5_path)
            if cache is not None:
                store.cache(cache, log=lambda _: None)
            ds = VQADataset(data, "cp", "train", features=store, processed=processed)
            seconds = median_seconds(lambda ds=ds: items(ds, order), args.repeats)
            lazy_seconds = lazy_seconds or seconds
            print(f"{label:<34}{args.items / seconds:>9.0f}{lazy_seconds / seconds:>10.2f}")
        batch_section(data, h5_path, questions, processed, args, rng)
        cache_gb = args.images * args.boxes * args.dim * 2 / 1e9
        print(f"\nfloat16 cache of these {args.images} images: {cache_gb:.2f} GB")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3
    print(f"peak RSS: {peak:.0f} MB")


if __name__ == "__main__":
    run_cli(main)
