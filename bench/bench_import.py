"""Feature import speed, every form: `process_features` (detect, first pass over the ids, checked conversion to
features.h5 in ascending image_id order, digests, record) side by side with merely reading the copy's files
(and base64-decoding the two big fields for the TSV forms, inflating the members for npz).
Goal: import within 1.5x of that floor.

Writes the rehearsal data (36 x 2048 float32 features) once at --scale in a temporary folder, then each form
of the same features. Prints the medians of --repeats interleaved runs of each; with --write also bench/IMPORT.md.

    python bench/bench_import.py [--scale 0.008] [--repeats 2] [--write]
"""

from __future__ import annotations

import argparse
import binascii
import hashlib
import io
import shutil
import statistics
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vqa_cp import feature_forms as forms  # noqa: E402
from vqa_cp.errors import run_cli  # noqa: E402
from vqa_cp.features import TSV_FILE, process_features  # noqa: E402
from vqa_cp.rehearsal import RehearsalConfig, generate_rehearsal_data  # noqa: E402

OUT = Path(__file__).resolve().parent / "IMPORT.md"
BLOCK = 1 << 22


def read_floor(copy: forms.FeatureCopy, digest: bool = False) -> None:
    """Read every byte of the copy; base64-decode the boxes and features of each TSV row, inflate each npz; with
    `digest` also SHA-256 every byte (what the provenance record needs)."""
    h = hashlib.sha256()
    for p in copy.files:
        files = sorted(p.glob("*.npz")) if p.is_dir() else [p]
        for f in files:
            with open(f, "rb") as fh:
                if copy.form in ("tsv", "lxmert_tsv"):
                    for line in fh:
                        fields = line.split(b"\t")
                        binascii.a2b_base64(fields[-2])
                        binascii.a2b_base64(fields[-1])
                        if digest:
                            h.update(line)
                elif copy.form == "npz":  # and inflate its members (np.savez_compressed, as published)
                    data = fh.read()
                    with zipfile.ZipFile(io.BytesIO(data)) as z:
                        for name in z.namelist():
                            z.read(name)
                    if digest:
                        h.update(data)
                else:
                    while block := fh.read(BLOCK):
                        if digest:
                            h.update(block)


def write_output(path: Path, nbytes: int) -> None:
    """Write `nbytes` (the size of features.h5's features) to a file: the import's unavoidable output."""
    block = bytes(BLOCK)
    with open(path, "wb") as f:
        for start in range(0, nbytes, BLOCK):
            f.write(block[: min(BLOCK, nbytes - start)])
    path.unlink()


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def fresh_data(src: Path, dst: Path) -> Path:
    """DATA holding links to the generated raw files (no processed/): each import starts from nothing."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir()
    for item in src.iterdir():
        if item.name != "processed":
            (dst / item.name).symlink_to(item)
    return dst


def make_forms(root: Path, scale: float) -> dict[str, Path]:
    """The rehearsal data once, then each other form written from a copy of its TSV."""
    base = root / "tsv"
    generate_rehearsal_data(base, RehearsalConfig(scale=scale), progress=False)
    summary = (base / "rehearsal.json").read_text()
    out = {"tsv": base}
    split_of = split_map(base)
    for form in forms.FORMS[1:]:
        data = root / form
        data.mkdir()
        for item in base.iterdir():
            if item.name not in ("trainval_36",):
                (data / item.name).symlink_to(item)
        (data / "trainval_36").mkdir()
        shutil.copyfile(base / TSV_FILE, data / TSV_FILE)
        forms.write_form(data / TSV_FILE, form, data, split_of, progress=False)
        out[form] = data
    assert summary
    return out


def copy_ids(copy: forms.FeatureCopy) -> np.ndarray:
    return forms.open_copy(copy, progress=False).image_ids


def split_map(data: Path) -> dict[int, str]:
    """COCO split of every image, from the VQA v2 question files."""
    images = forms.question_images(data)
    out = {int(i): "train2014" for i in images["v2_OpenEnded_mscoco_train2014_questions.json"]}
    out.update({int(i): "val2014" for i in images["v2_OpenEnded_mscoco_val2014_questions.json"]})
    return out


def bench_form(form: str, data: Path, work: Path, repeats: int) -> dict[str, float]:
    copy = forms.identify_copy(forms.form_files(data))
    nbytes = sum(sum(f.stat().st_size for f in p.glob("*.npz")) if p.is_dir() else p.stat().st_size
                 for p in copy.files)
    read_floor(copy)  # warm the page cache: both sides read from memory
    times: dict[str, list[float]] = {"floor_s": [], "digest_s": [], "write_s": [], "import_s": []}
    out_bytes = len(copy_ids(copy)) * 36 * 2048 * 4
    for _ in range(repeats):  # interleaved, so that the load of other processes hits all three alike
        times["floor_s"].append(timed(lambda: read_floor(copy)))
        times["digest_s"].append(timed(lambda: read_floor(copy, digest=True)))
        times["write_s"].append(timed(lambda: write_output(work.parent / "out.bin", out_bytes)))
        fresh = fresh_data(data, work)  # (setting up and removing the previous output is not timed)
        times["import_s"].append(timed(lambda d=fresh: process_features(d, log=lambda _: None, progress=False)))
    row = {"MB": nbytes / 1e6, **{k: statistics.median(v) for k, v in times.items()}}
    row["ratio"] = row["import_s"] / row["floor_s"]
    row["ratio_digest"] = row["import_s"] / row["digest_s"]
    row["ratio_bound"] = row["import_s"] / (row["digest_s"] + row["write_s"])
    if form in ("tsv", "lxmert_tsv"):
        row["index_s"] = statistics.median(timed(lambda: [forms.tsv_index(p, form, 2048, progress=False)
                                                          for p in copy.files]) for _ in range(repeats))
    return row


def report(results: dict[str, dict[str, float]], images: int, scale: float) -> str:
    lines = [f"# Feature import, every form ({images:,} images x 36 x 2048 float32, rehearsal scale {scale})", "",
             "Medians of the runs (interleaved); files in the page cache. floor = read every byte (TSV: and",
             "base64-decode boxes and features; npz: and inflate the members, saved compressed as published);",
             "import = `process_features` from an empty processed/ (detect, first pass over the ids,",
             "checked conversion in ascending image_id order, digests, record). index = the TSV first pass alone.", "",
             "floor+sha = the floor plus SHA-256 of every byte (the record's digest, computed in the same read);",
             "write = writing features.h5's features' bytes (the import's output); bound = floor+sha + write.",
             "",
             "| form | MB | floor s | floor+sha s | write s | import s | import / floor | import / floor+sha | "
             "import / bound | index pass s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for form, r in results.items():
        index = f"{r['index_s']:.3f}" if "index_s" in r else "-"
        lines.append(f"| {form} | {r['MB']:.0f} | {r['floor_s']:.2f} | {r['digest_s']:.2f} | {r['write_s']:.2f} | "
                     f"{r['import_s']:.2f} | {r['ratio']:.2f} | {r['ratio_digest']:.2f} | {r['ratio_bound']:.2f} | "
                     f"{index} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.008, help="rehearsal scale (0.008: 986 images)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--write", action="store_true", help=f"write {OUT.name} beside this script")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        made = make_forms(root, args.scale)
        results = {form: bench_form(form, data, root / "work", args.repeats) for form, data in made.items()}
        images = len(copy_ids(forms.identify_copy(forms.form_files(made["tsv"]))))
    text = report(results, images, args.scale)
    print(text)
    if args.write:
        OUT.write_text(text)
    return results


if __name__ == "__main__":
    run_cli(main)
