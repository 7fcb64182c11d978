"""Bottom-up features made from the COCO images with our detector (`tools/extract_features.py`).

Images are read straight from folders or zips (COCO `train2014.zip`: `train2014/COCO_train2014_000000123456.jpg`,
image_id = the last run of digits in the file's stem), decoded in DataLoader workers and run through
`vqa_cp.extraction.BottomUpDetector` in batches. Sorted by image_id, the images are cut into blocks of
`block_size`; each finished block is written atomically as an .npz (no pickle) in the work folder
`DATA/processed/.extract/<key>/`, the key being a digest of the settings that decide the features (weights, config,
selection, amp, the block size), the block's file name holding its index and the digest of its own image list. A
restarted run skips the blocks whose file exists, so a run killed at any point resumes without recomputing them,
and a rerun after one image was fixed extracts only that image's block (the blocks are kept when images failed).
Under torchrun the ranks take disjoint shares of the blocks still to do; rank 0 then assembles every block, in
image_id order, into `DATA/processed/features.h5` (`features.write_features_h5`, optionally also the TSV form) with
a step "features" provenance record, and removes the work folder (kept when images failed). A run whose failed
images the features.h5 in place has rows for does not replace it: the new file stays in the work folder, named in
the error. The key leaves out --fp16 and --tsv (blocks are float32): `assembled.json` names what was assembled, and
a rerun with other flags assembles again from the blocks. The record names the TSV (path, size, SHA-256); a TSV
that no longer matches is written again, a file at --tsv it does not name needs --force. A run whose images lack
some of the extracted features.h5's is refused without --force (forgetting a zip would delete their features); a
run that finds features.h5 up to date removes this key's work folder (keeping only the blocks of its images when
the record lists failed images).
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import errno
import functools
import hashlib
import io
import json
import os
import re
import shutil
import signal
import sys
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import h5py
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from vqa_cp import distributed as dist_utils
from vqa_cp.errors import VQAError
from vqa_cp.features import BOX_COORDS, FEATURES_FILE, FEATURES_STEP, TSVRow, h5_summary, write_features_h5
from vqa_cp.files import atomic_path, check_output_file, remove_stale_temps, write_json
from vqa_cp.processing import processed_dir, save_npz
from vqa_cp.provenance import digest_cache, file_entry, make_record, output_problem, read_record, record_path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
WEIGHTS_FILE = "pytorch_model.bin"
CONFIG_FILE = "config.yaml"
WORK_DIR = ".extract"
ASSEMBLED_FILE = "assembled.json"  # written in the work folder once its features.h5 is complete
TSV_NAME = "features.tsv"  # default --tsv output, in DATA/processed/ (not the raw layout: it is not a copy)
BLOCK_IMAGES = 256
FORMAT = 2  # of the work folder's blocks: part of the key
POLL_S = 2.0  # rank 0 waiting for the other ranks' blocks
FLOAT32_BYTES = 4
SHOWN_FAILURES = 20
PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h): the signal a process gets when its parent dies
_ID_PATTERN = re.compile(r"(\d+)$")


class Detector(Protocol):
    """What the extraction needs of `vqa_cp.extraction.BottomUpDetector`."""

    num_boxes: int
    feature_dim: int

    def extract(self, images: list[np.ndarray], select: str = "caffe", amp: str | None = None) -> list[dict]: ...


def load_detector(folder: Path, device: str = "cpu") -> Detector:
    """`BottomUpDetector.from_pretrained(folder, device)` (imported here: the module is heavy)."""
    from vqa_cp.extraction import BottomUpDetector
    return BottomUpDetector.from_pretrained(folder, device=device)


# ------------------------------------------------------------------------------------------ image sources


@dataclass(frozen=True)
class ImageEntry:
    image_id: int
    source: str  # the folder or zip it is read from
    name: str  # member name inside the zip, or path relative to the folder
    size: int  # bytes (part of the image list's digest)

    @property
    def where(self) -> str:
        return str(Path(self.source, self.name)) if os.path.isdir(self.source) else f"{self.source}:{self.name}"


def image_id_of(name: str) -> int | None:
    """123456 for `.../COCO_train2014_000000123456.jpg`: the last run of digits of the stem, or None."""
    match = _ID_PATTERN.search(Path(name).stem)
    return int(match.group(1)) if match else None


def _is_image_name(name: str) -> bool:
    parts = Path(name).parts
    return (Path(name).suffix.lower() in IMAGE_SUFFIXES and not parts[-1].startswith(".")
            and "__MACOSX" not in parts)


def _list_source(source: Path) -> list[tuple[str, int]]:
    """(name, size) of every image file of a folder (recursively) or a zip."""
    if source.is_dir():
        return sorted((p.relative_to(source).as_posix(), p.stat().st_size) for p in source.rglob("*")
                      if p.is_file() and _is_image_name(p.relative_to(source).as_posix()))
    if not source.is_file():
        raise VQAError(f"image source not found: {source} (give a folder of images or a zip such as train2014.zip)")
    try:
        with zipfile.ZipFile(source) as zf:
            return sorted((i.filename, i.file_size) for i in zf.infolist()
                          if not i.is_dir() and _is_image_name(i.filename))
    except zipfile.BadZipFile as exc:
        raise VQAError(f"{source}: not a readable zip ({exc}); give a folder of images or a zip") from None


def list_images(sources: Sequence[str | os.PathLike], log: Callable[[str], None] = print) -> list[ImageEntry]:
    """Every image of `sources`, sorted by image_id; an id found twice is kept once (the first source given).

    A file whose name holds no image id is a VQAError naming it; a source without images is one too.
    """
    first: dict[int, ImageEntry] = {}
    duplicates: list[str] = []
    for source in sources:
        source = Path(source)
        names = _list_source(source)
        if not names:
            raise VQAError(f"{source}: no {'/'.join(IMAGE_SUFFIXES)} images found")
        for name, size in names:
            image_id = image_id_of(name)
            if image_id is None:
                raise VQAError(f"{source}: {name}: no image id in the file name (expected e.g. "
                               "COCO_train2014_000000123456.jpg)")
            if image_id in first:
                duplicates.append(f"{image_id} ({first[image_id].name} kept, {source}:{name} skipped)")
            else:
                first[image_id] = ImageEntry(image_id, str(source), name, size)
    if duplicates:
        log(f"{len(duplicates)} duplicate image ids, each extracted once: {', '.join(duplicates[:3])}"
            + (" ..." if len(duplicates) > 3 else ""))
    return [first[i] for i in sorted(first)]


def list_digest(entries: Sequence[ImageEntry]) -> str:
    """SHA-256 of (image_id, file name, size) of every image: the same images from a zip or its extracted
    folder, wherever they lie, give the same digest."""
    digest = hashlib.sha256()
    for e in entries:
        digest.update(f"{e.image_id}\t{Path(e.name).name}\t{e.size}\n".encode())
    return digest.hexdigest()


def block_paths(work: Path, entries: Sequence[ImageEntry], block_size: int) -> list[Path]:
    """Block b's file: `block_<b>_<digest of its own images>.npz`, valid for exactly those images, so that
    a changed image makes only its block's file name change."""
    return [work / f"block_{b:06d}_{list_digest(entries[start:start + block_size])[:16]}.npz"
            for b, start in enumerate(range(0, len(entries), block_size))]


def _rgb_from_16bit(image: Image.Image) -> np.ndarray:
    """A 16-bit grayscale image as 8 bits (value >> 8, as OpenCV's imread reduces it), repeated 3 times."""
    gray = np.asarray(image).astype(np.int64)
    if gray.min() < 0 or gray.max() > 0xFFFF:
        raise ValueError(f"{image.mode} values outside 16 bits")
    return np.repeat((gray >> 8).astype(np.uint8)[..., None], 3, axis=2)


def decode_image(data: bytes) -> np.ndarray:
    """Encoded image bytes -> H x W x 3 uint8 RGB. Grayscale, palette, CMYK and alpha images are converted
    (alpha dropped, as OpenCV's imread does); pixels are taken as stored (no EXIF rotation). A truncated or
    unreadable image raises (OSError, ValueError, ...)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. "palette images with transparency expressed in bytes"
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # decodes everything: a truncated file raises here
            if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
                return _rgb_from_16bit(image)
            rgb = np.array(image.convert("RGB"), dtype=np.uint8)  # writable (torch.from_numpy warns otherwise)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"decoded to an array of shape {rgb.shape}")
    return rgb


class ImageDataset(Dataset):
    """entries[i] -> (i, RGB array or None, error or None, decode seconds); zips are opened once per process."""

    def __init__(self, entries: Sequence[ImageEntry]) -> None:
        self.entries = list(entries)
        self._zips: dict[str, zipfile.ZipFile] = {}
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.entries)

    def _read(self, entry: ImageEntry) -> bytes:
        if os.path.isdir(entry.source):
            return Path(entry.source, entry.name).read_bytes()
        if self._pid != os.getpid():  # a handle inherited through fork must not be shared
            self._zips, self._pid = {}, os.getpid()
        if entry.source not in self._zips:
            self._zips[entry.source] = zipfile.ZipFile(entry.source)
        return self._zips[entry.source].read(entry.name)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, str | None, float]:
        start = time.perf_counter()
        try:
            image = decode_image(self._read(self.entries[i]))
        except Exception as exc:  # noqa: BLE001 - any decoder fault is this image's, reported by name
            return i, None, f"{type(exc).__name__}: {' '.join(str(exc).split())}", time.perf_counter() - start
        return i, image, None, time.perf_counter() - start

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_zips": {}, "_pid": None}


def _as_list(batch: list) -> list:
    return batch


def die_with_parent(parent: int, worker_id: int = 0) -> None:
    """DataLoader worker_init_fn: on Linux, have the kernel SIGKILL this worker when its parent dies (a kill -9
    of the command leaves no decoding worker behind); exit at once if the parent is already gone."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # died before the prctl took effect
        os._exit(1)


# ------------------------------------------------------------------------------------------ options and checks


@dataclass
class ExtractOptions:
    images: list[Path]
    weights: Path
    data: Path
    device: str = "auto"
    batch_size: int = 8
    amp: str = "none"  # or "bf16"
    select: str = "caffe"  # or "lxmert"
    tsv: Path | None = None  # also write the TSV form there
    num_workers: int = 2
    block_size: int = BLOCK_IMAGES
    fp16: bool = False
    force: bool = False
    progress: bool = True


def pick_device(name: str) -> torch.device:
    """auto: cuda when available (this rank's GPU under torchrun), else cpu."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise VQAError("--device cuda: no CUDA device is available (use --device cpu or auto)")
        return torch.device("cuda", dist_utils.local_rank() if dist_utils.under_torchrun() else 0)
    return torch.device(name)


def _input_name(path: Path, data: Path) -> str:
    """A record's input name: relative to DATA when inside it, else the absolute path."""
    try:
        return path.resolve().relative_to(data.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


def weights_files(folder: Path) -> tuple[Path, Path]:
    """(pytorch_model.bin, config.yaml) of a detector folder; a missing one is a VQAError naming it."""
    weights, config = folder / WEIGHTS_FILE, folder / CONFIG_FILE
    for path in (weights, config):
        if not path.is_file():
            raise VQAError(f"{path}: missing; --weights needs a folder holding {WEIGHTS_FILE} and {CONFIG_FILE} "
                           "(bash tools/download.sh --only detector fetches them into data/detector/)")
    return weights, config


def per_image_bytes(num_boxes: int, dim: int, fp16: bool) -> dict[str, int]:
    """Disk bytes an image takes: work-folder block (float32), features.h5 and TSV (base64 of float32)."""
    boxes, feats = num_boxes * BOX_COORDS * FLOAT32_BYTES, num_boxes * dim * FLOAT32_BYTES
    b64 = 4 * (-(-boxes // 3)) + 4 * (-(-feats // 3))
    return {"block": boxes + feats + 3 * 8, "h5": boxes + feats // (2 if fp16 else 1) + 3 * 8, "tsv": b64 + 40}


def check_disk(folder: Path, need: dict[str, int]) -> None:
    """Refuse when `folder`'s file system has less free space than the sum of `need` (name -> bytes)."""
    free = shutil.disk_usage(folder).free
    total = sum(need.values())
    if total > free:
        parts = ", ".join(f"{name} {size / 1e9:.2f} GB" for name, size in need.items() if size)
        raise VQAError(f"{folder}: extraction needs about {total / 1e9:.2f} GB free ({parts}) but "
                       f"{free / 1e9:.2f} GB is free")


def _existing_refusal(h5_path: Path, record: dict | None, params: dict, inputs: dict,
                      image_ids: Sequence[int]) -> str | None:
    """Why an existing features.h5 may not be replaced without --force (None: it may): not this extraction's
    (a copy, other weights or flags), or of images that `image_ids` (this run's) do not all include."""
    if not h5_path.exists():
        return None
    if record is None:
        what = "of unknown origin (no processing record)"
    elif record.get("params", {}).get("form") != "extracted":
        what = "made from a feature copy by tools/process.sh"
    elif record.get("params") != params or _without_images(record.get("inputs")) != _without_images(inputs):
        old = record.get("params", {})
        what = (f"extracted with other weights or flags (select {old.get('select')}, amp "
                f"{old.get('amp')}, fp16 {old.get('fp16')}, weights {str(old.get('weights_sha256'))[:12]})")
    elif lacking := _ids_lacking(h5_path, image_ids):
        return (f"{h5_path}: this run's images lack {len(lacking)} of the {_h5_rows(h5_path)} images it holds "
                f"(image_id {', '.join(map(str, lacking[:5]))}{' ...' if len(lacking) > 5 else ''}); add their "
                "sources to --images (e.g. train2014.zip) to continue it, or pass --force to replace it with "
                "features of these images only")
    else:
        return None  # this extraction, damaged, without its TSV or of more images (some fixed, added): continued
    return f"{h5_path}: already exists, {what}; pass --force to replace it with the extracted features"


def _h5_ids(h5_path: Path) -> np.ndarray | None:
    """The image_id column of a features.h5 (None when unreadable: a damaged file is continued)."""
    try:
        with h5py.File(h5_path, "r") as h5:
            return np.asarray(h5["image_id"][:], dtype=np.int64)
    except (OSError, KeyError, ValueError, TypeError):
        return None


def _h5_rows(h5_path: Path) -> int:
    ids = _h5_ids(h5_path)
    return 0 if ids is None else len(ids)


def _ids_lacking(h5_path: Path, image_ids: Sequence[int]) -> list[int]:
    """The image ids the features.h5 at `h5_path` holds that `image_ids` lacks, sorted."""
    held = _h5_ids(h5_path)
    if held is None:
        return []
    return np.setdiff1d(held, np.asarray(image_ids, dtype=np.int64)).tolist()


def _without_images(inputs: dict | None) -> dict:
    return {name: entry for name, entry in (inputs or {}).items() if name != "images"}


def _record_is_current(processed: Path, record: dict | None, params: dict, inputs: dict) -> bool:
    if record is None or record.get("step") != FEATURES_STEP or record.get("params") != params:
        return False
    if record.get("inputs") != inputs:
        return False
    with digest_cache(processed) as cache:
        return output_problem(processed, record, cache, {FEATURES_FILE: h5_summary}) is None


def _tsv_entry(path: Path, digest: str, processed: Path) -> dict[str, Any]:
    """The record's entry of a TSV written by the extraction: where it is, its size and SHA-256."""
    return {"path": _input_name(path, processed), "size": path.stat().st_size, "sha256": digest}


def _tsv_matches(path: Path, want: dict | None, processed: Path) -> bool:
    """True when the file at `path` has the size and SHA-256 of `want` (a TSV entry; None: no TSV)."""
    if not want or not path.is_file() or path.stat().st_size != want.get("size"):
        return False
    with digest_cache(processed) as cache:
        return cache.digest(path) == want.get("sha256")


def _is_ours(path: Path, record: dict | None, processed: Path) -> bool:
    """A file at `path` is this project's TSV when the features record names that path (relative to
    DATA/processed/ when inside it, so that a moved data folder keeps it)."""
    return bool(record and (record.get("tsv") or {}).get("path") == _input_name(path, processed))


def failure_message(failed: Sequence[Sequence[Any]], h5_path: Path) -> str:
    """One line naming every image that could not be used (the first SHOWN_FAILURES with reasons)."""
    shown = "; ".join(f"{where} ({reason})" for _, where, reason in failed[:SHOWN_FAILURES])
    rest = f"; and {len(failed) - SHOWN_FAILURES} more: " + ", ".join(
        str(where) for _, where, _ in failed[SHOWN_FAILURES:]) if len(failed) > SHOWN_FAILURES else ""
    return (f"{len(failed)} images could not be used and have no features in {h5_path}: {shown}{rest}")


@dataclass
class Plan:
    """What rank 0 decided and every rank follows."""

    status: str = "extract"  # "current" (nothing to do), "tsv" (only the TSV to write from features.h5),
    # "finish" (assembled, not yet in place), "assemble" (assembled with other --fp16/--tsv: again from the
    # blocks, no detector), "extract"
    error: str | None = None
    key: str = ""
    images_sha256: str = ""
    params: dict = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)
    failed: list = field(default_factory=list)  # of a current features.h5 (its record's list)
    remaining: list[int] = field(default_factory=list)  # block indices still to compute


def _share(plan: Plan | None) -> Plan:
    """Rank 0's plan, on every rank (the plan itself outside torchrun)."""
    if not dist_utils.is_distributed():
        return plan
    box = [plan]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _guarded(make: Callable[[], Plan]) -> Plan:
    """`make()`, or a plan carrying its one-line error, so that the other ranks stop with it too."""
    try:
        return make()
    except VQAError as exc:
        return Plan(error=str(exc))
    except OSError as exc:
        return Plan(error=f"{exc.filename or ''}: {exc.strerror or exc}")


def work_folder(processed: Path, key: str) -> Path:
    return processed / WORK_DIR / key


def _prepare(opts: ExtractOptions, entries: list[ImageEntry], log: Callable[[str], None]) -> Plan:
    """Rank 0's checks before any image is decoded: the digests that key the run, an up-to-date result,
    an existing features.h5 that must not be silently replaced, writable outputs."""
    processed = processed_dir(opts.data)
    if not opts.data.is_dir():
        raise VQAError(f"data folder not found: {opts.data}")
    weights, config = weights_files(opts.weights)
    h5_path = processed / FEATURES_FILE
    check_output_file(h5_path, "features file")
    if opts.tsv is not None:
        check_output_file(opts.tsv, "TSV file")
    with digest_cache(processed) as cache:
        weights_entry, config_entry = file_entry(weights, cache), file_entry(config, cache)
    plan = Plan(images_sha256=list_digest(entries))
    plan.params = {"form": "extracted", "select": opts.select, "weights_sha256": weights_entry["sha256"],
                   "amp": opts.amp, "fp16": opts.fp16}
    plan.inputs = {_input_name(weights, opts.data): weights_entry, _input_name(config, opts.data): config_entry,
                   "images": {"count": len(entries), "sha256": plan.images_sha256}}
    plan.key = hashlib.sha256(json.dumps({
        "format": FORMAT, "weights": weights_entry["sha256"], "config": config_entry["sha256"],
        "select": opts.select, "amp": opts.amp, "block_size": opts.block_size,
    }, sort_keys=True).encode()).hexdigest()[:16]
    work = work_folder(processed, plan.key)
    record = read_record(record_path(processed, FEATURES_STEP))
    assembled = _read_assembled(work)
    _refuse_foreign_tsv(opts, record, assembled, processed)
    if assembled is not None and assembled.get("images_sha256") == plan.images_sha256:
        # these images, (being) assembled: finished, or assembled again to these flags
        same = (not assembled.get("assembling") and assembled.get("fp16") == opts.fp16
                and (opts.tsv is None or assembled.get("tsv") is not None))
        plan.status = "finish" if same else "assemble"
        if not same:
            log(f"{work}: not assembled with these --fp16/--tsv flags; assembling again from its blocks")
        return plan
    tsv_ok = opts.tsv is None or (_is_ours(opts.tsv, record, processed)
                                  and _tsv_matches(opts.tsv, record["tsv"], processed))
    if _record_is_current(processed, record, plan.params, plan.inputs) and (tsv_ok or not opts.fp16):
        # a float32 features.h5 gives the TSV a later --tsv asks for; a float16 one cannot
        plan.status = "current" if tsv_ok else "tsv"
        plan.failed = list(record.get("failed_images", []))
    elif not opts.force and (refusal := _existing_refusal(h5_path, record, plan.params, plan.inputs,
                                                                [e.image_id for e in entries])):
        raise VQAError(refusal)
    return plan


def _read_assembled(work: Path) -> dict | None:
    """The work folder's assembled.json (None when absent or unreadable: the assembly is then redone)."""
    try:
        info = json.loads((work / ASSEMBLED_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _refuse_foreign_tsv(opts: ExtractOptions, record: dict | None, assembled: dict | None, processed: Path) -> None:
    """A file at --tsv that this extraction did not write (not named by the record, not the assembled TSV
    already moved there) is not replaced without --force."""
    if opts.tsv is None or opts.force or not opts.tsv.exists() or _is_ours(opts.tsv, record, processed):
        return
    if assembled is not None and _tsv_matches(opts.tsv, assembled.get("tsv"), processed):
        return
    raise VQAError(f"{opts.tsv}: already exists and was not written by this extraction (no features record "
                   "names it); pass --force to replace it with the TSV form of the extracted features")


def _plan_blocks(plan: Plan, opts: ExtractOptions, entries: Sequence[ImageEntry], detector: Detector,
                 log: Callable[[str], None]) -> Plan:
    """Rank 0, once the detector loaded: the blocks still to do, and enough free disk for them and the output."""
    processed = processed_dir(opts.data)
    work = work_folder(processed, plan.key)
    work.mkdir(parents=True, exist_ok=True)
    for other in sorted(p for p in work.parent.iterdir() if p.is_dir() and p != work):
        size = sum(f.stat().st_size for f in other.iterdir())
        log(f"note: {other} holds {size / 1e9:.2f} GB of blocks of an extraction with other weights or "
            "flags; delete it unless you will go back to that one")
    paths = block_paths(work, entries, opts.block_size)
    stale = sorted(set(work.glob("block_*.npz")) - set(paths))
    for path in stale:  # blocks of images that changed since: never read again
        path.unlink()
    if stale:
        log(f"{len(stale)} blocks in {work} were of other images (fixed, added or removed since): deleted")
    blocks = len(paths)
    plan.remaining = [b for b, path in enumerate(paths) if not path.is_file()]
    done = blocks - len(plan.remaining)
    if done:
        log(f"resuming: {done} of {blocks} blocks of {opts.block_size} images already done in {work}")
    sizes = per_image_bytes(detector.num_boxes, detector.feature_dim, opts.fp16)
    n_images = len(entries)
    todo = min(len(plan.remaining) * opts.block_size, n_images)
    check_disk(processed, {"blocks": todo * sizes["block"], FEATURES_FILE: n_images * sizes["h5"],
                           "TSV": n_images * sizes["tsv"] if opts.tsv else 0})
    return plan


# ------------------------------------------------------------------------------------------ extraction


@dataclass
class _Block:
    """Results of one block, gathered batch by batch until its last image is in."""

    index: int
    size: int
    seen: int = 0
    image_id: list[int] = field(default_factory=list)
    image_w: list[int] = field(default_factory=list)
    image_h: list[int] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)
    features: list[np.ndarray] = field(default_factory=list)
    failed: list[tuple[int, str, str]] = field(default_factory=list)

    def save(self, path: Path, num_boxes: int, dim: int) -> None:
        """Write the block atomically (an .npz without pickles): it exists only once complete."""
        failed = list(zip(*self.failed)) if self.failed else [[], [], []]
        save_npz(path,
                 image_id=np.array(self.image_id, dtype=np.int64), image_w=np.array(self.image_w, dtype=np.int64),
                 image_h=np.array(self.image_h, dtype=np.int64),
                 boxes=np.stack(self.boxes) if self.boxes else np.zeros((0, num_boxes, BOX_COORDS), np.float32),
                 features=np.stack(self.features) if self.features else np.zeros((0, num_boxes, dim), np.float32),
                 failed_id=np.array(failed[0], dtype=np.int64), failed_name=np.array(failed[1], dtype=str),
                 failed_reason=np.array(failed[2], dtype=str))


def _check_output(out: dict, image: np.ndarray, num_boxes: int, dim: int) -> str | None:
    """Why the detector's result for `image` cannot be stored (None when it can)."""
    boxes, features = np.asarray(out["boxes"]), np.asarray(out["features"])
    if boxes.shape != (num_boxes, BOX_COORDS) or features.shape != (num_boxes, dim):
        return f"detector gave boxes {boxes.shape} and features {features.shape}, expected ({num_boxes}, 4/{dim})"
    if (int(out["image_h"]), int(out["image_w"])) != image.shape[:2]:
        return f"detector gave size {out['image_w']} x {out['image_h']} for an image of {image.shape[1]} x " \
               f"{image.shape[0]}"
    if not (np.isfinite(boxes).all() and np.isfinite(features).all()):
        return "detector gave non-finite boxes or features"
    return None


def _detect(detector: Detector, good: list[tuple[int, np.ndarray]], select: str, amp: str,
            refuse: Callable[[int, str], None]) -> list[tuple[tuple[int, np.ndarray], dict]]:
    """detector.extract on a batch (amp "bf16": the network under bfloat16 autocast, the detector's own option).
    Images the detector refuses with a VQAError carrying `indices` (positions in the batch: fewer boxes than asked
    for) are reported through `refuse` and the rest run again."""
    try:
        outs = detector.extract([image for _, image in good], select=select, amp=None if amp == "none" else amp)
        return list(zip(good, outs, strict=True))
    except VQAError as exc:
        bad = getattr(exc, "indices", None)
        if not bad:
            raise
        reason = " ".join(str(exc).split())
        for j in sorted(set(bad)):
            refuse(good[j][0], reason)
        rest = [item for j, item in enumerate(good) if j not in set(bad)]
        return _detect(detector, rest, select, amp, refuse) if rest else []


def _batches(blocks: Sequence[int], n_images: int, block_size: int, batch_size: int) -> list[list[int]]:
    """Image indices of each batch; a batch never spans two blocks (a block's result is then defined)."""
    out = []
    for b in blocks:
        start, stop = b * block_size, min((b + 1) * block_size, n_images)
        out += [list(range(s, min(s + batch_size, stop))) for s in range(start, stop, batch_size)]
    return out


@dataclass
class ExtractStats:
    images: int = 0  # images decoded and run through the detector by this process
    blocks: int = 0
    decode_s: float = 0.0  # summed over the DataLoader workers (they run in parallel with the detector)
    detector_s: float = 0.0
    wall_s: float = 0.0


def _run_batch(detector: Detector, batch: list, block: _Block, entries: Sequence[ImageEntry], select: str,
               amp: str, stats: ExtractStats, say: Callable[[str], None]) -> None:
    """One decoded batch through the detector, its results (or each image's failure) into `block`."""

    def refuse(i: int, why: str) -> None:
        block.failed.append((entries[i].image_id, entries[i].where, why))
        say(f"image skipped: {entries[i].where}: {why}")

    good = []
    for i, image, error, seconds in batch:
        stats.decode_s += seconds
        if image is None:
            refuse(i, f"corrupt image: {error}")
        else:
            good.append((i, image))
    if good:
        t0 = time.perf_counter()
        with torch.inference_mode():
            outs = _detect(detector, good, select, amp, refuse)
        stats.detector_s += time.perf_counter() - t0
        for (i, image), out in outs:
            problem = _check_output(out, image, detector.num_boxes, detector.feature_dim)
            if problem:
                refuse(i, problem)
                continue
            block.image_id.append(entries[i].image_id)
            block.image_w.append(image.shape[1])
            block.image_h.append(image.shape[0])
            block.boxes.append(np.asarray(out["boxes"], dtype=np.float32))
            block.features.append(np.asarray(out["features"], dtype=np.float32))
    block.seen += len(batch)
    stats.images += len(batch)


def extract_blocks(detector: Detector, entries: Sequence[ImageEntry], blocks: Sequence[int], work: Path,
                   opts: ExtractOptions, device: torch.device, progress: bool = True) -> ExtractStats:
    """Decode the images of `blocks` in DataLoader workers, run the detector in batches, write each finished
    block to `work`. A corrupt image is reported by name (and recorded in its block); the run goes on."""
    stats, start = ExtractStats(), time.perf_counter()
    n = len(entries)
    batches = _batches(blocks, n, opts.block_size, opts.batch_size)
    paths = block_paths(work, entries, opts.block_size)
    loader = DataLoader(ImageDataset(entries), batch_sampler=batches, num_workers=opts.num_workers,
                        collate_fn=_as_list, worker_init_fn=functools.partial(die_with_parent, os.getpid()))
    current: _Block | None = None
    saving: Future | None = None  # one block written in the background while the detector goes on
    with ThreadPoolExecutor(max_workers=1) as writer, tqdm(
            total=sum(map(len, batches)), unit="img", desc=f"extract {opts.select}", disable=not progress,
            smoothing=0.1) as bar:
        for batch in loader:
            index = batch[0][0] // opts.block_size
            if current is None or current.index != index:
                current = _Block(index, min((index + 1) * opts.block_size, n) - index * opts.block_size)
            _run_batch(detector, batch, current, entries, opts.select, opts.amp, stats, bar.write)
            bar.update(len(batch))
            if current.seen == current.size:
                if saving is not None:
                    saving.result()  # its error, if any, here; and at most one block waits in memory
                saving = writer.submit(current.save, paths[index], detector.num_boxes, detector.feature_dim)
                stats.blocks += 1
        if saving is not None:
            saving.result()
    stats.wall_s = time.perf_counter() - start
    return stats


# ------------------------------------------------------------------------------------------ assembly


def read_block(path: Path, expected_ids: np.ndarray) -> dict[str, np.ndarray]:
    """A block's arrays; one that does not hold exactly `expected_ids` (written or failed) is a VQAError."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {name: npz[name] for name in npz.files}
        ids = np.concatenate([data["image_id"], data["failed_id"]])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise VQAError(f"{path}: unreadable block ({' '.join(str(exc).split())}); delete it and run again "
                       "to recompute it") from None
    if not np.array_equal(np.sort(ids), expected_ids):
        raise VQAError(f"{path}: holds other images than its block of the image list; delete it and run again")
    return data


def tsv_line(row: TSVRow) -> bytes:
    """One row of the original TSV form (base64 float32, rows ending in \\r\\n)."""
    boxes = base64.b64encode(np.ascontiguousarray(row.boxes, dtype=np.float32).tobytes())
    features = base64.b64encode(np.ascontiguousarray(row.features, dtype=np.float32).tobytes())
    return (f"{row.image_id}\t{row.image_w}\t{row.image_h}\t{len(row.boxes)}\t".encode() + boxes + b"\t"
            + features + b"\r\n")


class _HashingWriter:
    """A binary file that also computes the SHA-256 of what is written to it."""

    def __init__(self, f: io.BufferedWriter) -> None:
        self.f, self.sha256 = f, hashlib.sha256()

    def write(self, data: bytes) -> None:
        self.f.write(data)
        self.sha256.update(data)


def _rows(work: Path, entries: Sequence[ImageEntry], block_size: int, failed: list, tsv: _HashingWriter | None
          ) -> Iterator[tuple[str, TSVRow]]:
    ids = np.array([e.image_id for e in entries], dtype=np.int64)
    for b, path in enumerate(block_paths(work, entries, block_size)):
        data = read_block(path, ids[b * block_size:(b + 1) * block_size])
        failed += [[int(i), str(w), str(r)] for i, w, r in zip(data["failed_id"], data["failed_name"],
                                                               data["failed_reason"])]
        for j, image_id in enumerate(data["image_id"].tolist()):
            row = TSVRow(image_id, int(data["image_w"][j]), int(data["image_h"][j]), data["boxes"][j],
                         data["features"][j])
            if tsv is not None:
                tsv.write(tsv_line(row))
            yield f"{path}: image_id {image_id}", row


def assemble(work: Path, entries: Sequence[ImageEntry], opts: ExtractOptions) -> None:
    """Every block, in image_id order, -> WORK/features.h5 (and WORK/features.tsv); then WORK/assembled.json,
    which names the flags the files were made with (fp16, the TSV's size and SHA-256 or null)."""
    h5_tmp, tsv_tmp = work / FEATURES_FILE, work / TSV_NAME
    # no description of the old files may outlive them; the marker keeps a TSV already moved to --tsv known
    old = _read_assembled(work) or {}
    images = list_digest(entries)
    write_json(work / ASSEMBLED_FILE, {"assembling": True, "images_sha256": images, "tsv": old.get("tsv")})
    tsv_tmp.unlink(missing_ok=True)
    remove_stale_temps(h5_tmp)
    failed: list = []
    with contextlib.ExitStack() as stack:
        tsv = _HashingWriter(stack.enter_context(open(f"{tsv_tmp}.partial", "wb"))) if opts.tsv else None
        bar = stack.enter_context(tqdm(total=len(entries), unit="img", desc="assemble features.h5",
                                       disable=not opts.progress, leave=False))
        rows = _rows(work, entries, opts.block_size, failed, tsv)
        try:
            n = write_features_h5((bar.update(1) or row for row in rows), h5_tmp, opts.fp16, source=work)
        except VQAError:
            if failed and len(failed) == len(entries):
                raise VQAError(failure_message(failed, h5_tmp) + " (no image left)") from None
            raise
    tsv_entry = None
    if tsv is not None:
        os.replace(f"{tsv_tmp}.partial", tsv_tmp)
        tsv_entry = {"size": tsv_tmp.stat().st_size, "sha256": tsv.sha256.hexdigest()}
    write_json(work / ASSEMBLED_FILE, {"images": n, "images_sha256": images, "summary": h5_summary(h5_tmp),
                                       "failed": failed, "fp16": opts.fp16, "tsv": tsv_entry})


def write_tsv_from_h5(h5_path: Path, tsv_path: Path) -> str:
    """The TSV form of a float32 features.h5, written atomically; returns its SHA-256."""
    with h5py.File(h5_path, "r") as h5, atomic_path(tsv_path) as tmp, open(tmp, "wb") as f:
        out = _HashingWriter(f)
        for r in range(h5["features"].shape[0]):
            out.write(tsv_line(TSVRow(int(h5["image_id"][r]), int(h5["image_w"][r]), int(h5["image_h"][r]),
                                      h5["boxes"][r], h5["features"][r])))
    return out.sha256.hexdigest()


def tsv_from_current(processed: Path, tsv_path: Path) -> None:
    """Write the TSV of an up-to-date float32 features.h5, then name it in the features record."""
    digest = write_tsv_from_h5(processed / FEATURES_FILE, tsv_path)
    with digest_cache(processed) as cache:
        cache.remember(tsv_path, digest)
    record_file = record_path(processed, FEATURES_STEP)
    record = read_record(record_file)
    write_json(record_file, {**record, "tsv": _tsv_entry(tsv_path, digest, processed)})


def _move(source: Path, target: Path) -> None:
    """Rename, or copy then delete across file systems (the copy atomic)."""
    try:
        os.replace(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
        source.unlink()


def _ids_held(h5_path: Path, image_ids: Sequence[int]) -> list[int]:
    """Those of `image_ids` that the features.h5 at `h5_path` has rows for (none when absent or unreadable)."""
    if not image_ids or not h5_path.is_file():
        return []
    try:
        with h5py.File(h5_path, "r") as h5:
            held = np.asarray(h5["image_id"][:])
    except (OSError, KeyError, ValueError):
        return []
    return sorted(int(i) for i in np.intersect1d(np.asarray(image_ids, dtype=np.int64), held))


def finish(work: Path, plan: Plan, opts: ExtractOptions, log: Callable[[str], None]) -> list:
    """Put the assembled files in place, write the record (last), remove the work folder; returns the failures.

    Safe to repeat after a kill at any point: the work folder goes only after the record is written."""
    processed = processed_dir(opts.data)
    info = json.loads((work / ASSEMBLED_FILE).read_text(encoding="utf-8"))
    if info.get("assembling") or info.get("fp16") != opts.fp16 or (opts.tsv and not info.get("tsv")):
        raise VQAError(f"{work / ASSEMBLED_FILE}: assembled with other --fp16/--tsv flags; run again")
    h5_path, record_file = processed / FEATURES_FILE, record_path(processed, FEATURES_STEP)
    if (work / FEATURES_FILE).is_file() and (lost := _ids_held(h5_path, [f[0] for f in info["failed"]])):
        raise VQAError(failure_message(info["failed"], work / FEATURES_FILE) + f"; {h5_path} kept: it has features "
                       f"for {len(lost)} of them (image_id {', '.join(map(str, lost[:5]))}); fix the images and "
                       "run again (only their blocks are extracted again), or move the new file into place")
    if (work / FEATURES_FILE).is_file():
        record_file.unlink(missing_ok=True)  # no old record may describe the new file
        os.replace(work / FEATURES_FILE, h5_path)
    elif not h5_path.is_file() or h5_summary(h5_path) != info["summary"]:
        raise VQAError(f"{work}: its assembled features.h5 is neither there nor in {processed}; delete {work} "
                       "and run again")
    if opts.tsv and (work / TSV_NAME).is_file():
        opts.tsv.parent.mkdir(parents=True, exist_ok=True)
        _move(work / TSV_NAME, opts.tsv)
    elif opts.tsv and not _tsv_matches(opts.tsv, info["tsv"], processed):
        raise VQAError(f"{work}: its assembled TSV is neither there nor in {opts.tsv}; delete {work} and run again")
    with digest_cache(processed) as cache:
        outputs = {FEATURES_FILE: file_entry(h5_path, cache, h5_summary)}
        if opts.tsv:
            cache.remember(opts.tsv, info["tsv"]["sha256"])
    record = make_record(FEATURES_STEP, plan.params, plan.inputs, outputs)
    record["failed_images"] = info["failed"]
    if opts.tsv:
        record["tsv"] = _tsv_entry(opts.tsv, info["tsv"]["sha256"], processed)
    write_json(record_file, record)
    if info["failed"]:  # the blocks stay: once the images are fixed, only theirs are extracted again
        (work / ASSEMBLED_FILE).unlink()
        log(f"kept the blocks in {work} for a rerun once the failed images are fixed (or delete it)")
    else:
        shutil.rmtree(work)
        with contextlib.suppress(OSError):
            work.parent.rmdir()  # when no other extraction's folder is left
    log(f"wrote {h5_path}: {info['images']} images ({'float16' if opts.fp16 else 'float32'}, select "
        f"{opts.select}, amp {opts.amp})" + (f" and {opts.tsv}" if opts.tsv else ""))
    return info["failed"]


def _drop_unneeded_work(work: Path, needed: Sequence[Path], log: Callable[[str], None]) -> None:
    """With features.h5 up to date, delete what this key's work folder holds beyond `needed` (the blocks of its
    images when the record lists failed images, kept for the rerun once they are fixed; else nothing): blocks of
    other images, a features.h5 a failed run could not put in place; the folder too when nothing is left."""
    if not work.is_dir():
        return
    keep, h5_path = set(needed), work.parent.parent / FEATURES_FILE
    drop = [path for path in work.iterdir() if path not in keep]
    size = sum(path.stat().st_size for path in drop if path.is_file())
    for path in drop:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    if not any(work.iterdir()):
        work.rmdir()
        with contextlib.suppress(OSError):
            work.parent.rmdir()  # when no other extraction's folder is left
        log(f"removed {work} ({size / 1e9:.2f} GB): not needed, {h5_path} is up to date")
    elif drop:
        log(f"removed {len(drop)} files ({size / 1e9:.2f} GB) of {work} not needed: {h5_path} is up to date (the "
            "blocks of its images stay for a rerun once the failed images are fixed)")


def _wait_for_blocks(paths: Sequence[Path], log: Callable[[str], None], progress: bool = True) -> None:
    """Rank 0: wait until every block file exists (the other ranks' shares). A rank that dies makes torchrun
    stop every rank, so this cannot wait for ever."""
    n_blocks = len(paths)
    missing = [path for path in paths if not path.is_file()]
    if missing:
        log(f"waiting for {len(missing)} blocks of the other ranks")
    with tqdm(total=n_blocks, initial=n_blocks - len(missing), unit="block", desc="other ranks",
              disable=not (missing and progress), leave=False) as bar:
        while missing:
            time.sleep(POLL_S)
            left = [path for path in missing if not path.is_file()]
            bar.update(len(missing) - len(left))
            missing = left


def extract_features(opts: ExtractOptions, make_detector: Callable[..., Detector] = load_detector,
                     log: Callable[[str], None] = print) -> ExtractStats:
    """The whole command (one process or a torchrun rank); see the module docstring. Ends with a VQAError
    listing the corrupt images, after everything else is written."""
    dist_utils.setup()
    rank, world = dist_utils.rank(), dist_utils.world_size()
    say = log if rank == 0 else (lambda message: None)
    device = pick_device(opts.device)
    entries = list_images(opts.images, say)
    plan = _share(_guarded(lambda: _prepare(opts, entries, say)) if rank == 0 else None)
    if plan.error:
        raise VQAError(plan.error)
    if plan.images_sha256 != list_digest(entries):
        raise VQAError(f"rank {rank} lists other images than rank 0 in {', '.join(map(str, opts.images))}")
    processed = processed_dir(opts.data)
    stats = ExtractStats()
    if plan.status in ("current", "tsv"):
        say(f"skip: {processed / FEATURES_FILE} is up to date (select {opts.select}, amp {opts.amp})")
        if rank == 0:
            work = work_folder(processed, plan.key)
            _drop_unneeded_work(work, block_paths(work, entries, opts.block_size) if plan.failed else [], say)
        if plan.status == "tsv" and rank == 0:
            tsv_from_current(processed, opts.tsv)
            say(f"wrote {opts.tsv} from it")
        failed = plan.failed
    else:
        work = work_folder(processed, plan.key)
        if plan.status == "extract":
            detector = make_detector(opts.weights, device=str(device))
            plan = _share(_guarded(lambda: _plan_blocks(plan, opts, entries, detector, say))
                          if rank == 0 else None)
            if plan.error:
                raise VQAError(plan.error)
            say(f"{len(entries)} images, {len(plan.remaining)} blocks to extract on {world} x {device}, "
                f"batch {opts.batch_size}, {opts.num_workers} decoding workers")
            stats = extract_blocks(detector, entries, plan.remaining[rank::world], work, opts, device,
                                   progress=opts.progress and rank == 0)
            say(f"rank 0: {stats.images} images in {stats.wall_s:.1f} s ({stats.images / max(stats.wall_s, 1e-9):.1f}"
                f" images/s); detector {stats.detector_s:.1f} s, decoding {stats.decode_s:.1f} s of worker time")
        if rank != 0:
            return stats
        if plan.status == "extract":
            _wait_for_blocks(block_paths(work, entries, opts.block_size), say, opts.progress)
        if plan.status in ("extract", "assemble"):
            assemble(work, entries, opts)
        failed = finish(work, plan, opts, say)
    if failed and rank == 0:
        raise VQAError(failure_message(failed, processed / FEATURES_FILE))
    return stats


# ------------------------------------------------------------------------------------------ command line


def default_workers() -> int:
    """Decoding workers per process: the CPU cores shared by this machine's ranks, at most 8."""
    world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(8, (os.cpu_count() or 1) // world - 1))


def build_parser():
    import argparse

    from vqa_cp.argtypes import non_negative_int, positive_int
    p = argparse.ArgumentParser(description="Bottom-up 36-box features from the COCO images -> "
                                "DATA/processed/features.h5 (resumable; torchrun for several GPUs)")
    p.add_argument("--images", nargs="+", required=True, type=Path, metavar="DIR_OR_ZIP",
                   help="folders or zips of images (COCO train2014.zip val2014.zip); image_id from the file name")
    p.add_argument("--weights", required=True, type=Path, help="detector folder (config.yaml, pytorch_model.bin)")
    p.add_argument("--data", default=Path("data"), type=Path, help="data folder (writes DATA/processed/)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--batch-size", type=positive_int, default=8, help="images per detector call")
    p.add_argument("--amp", choices=("none", "bf16"), default="none", help="bf16 autocast for the detector")
    p.add_argument("--select", choices=("caffe", "lxmert"), default="caffe",
                   help="how the boxes are picked: caffe = the original trainval_36, lxmert = the hub demo's")
    p.add_argument("--tsv", nargs="?", const="", default=None, metavar="PATH",
                   help=f"also write the original TSV form (default PATH: DATA/processed/{TSV_NAME})")
    p.add_argument("--num-workers", type=non_negative_int, default=default_workers(),
                   help="DataLoader workers decoding images (per process)")
    p.add_argument("--block-size", type=positive_int, default=BLOCK_IMAGES,
                   help="images per resumable block (a kill loses at most one block per process)")
    p.add_argument("--fp16", action="store_true", help="store features.h5 as float16 (half the disk)")
    p.add_argument("--force", action="store_true", help="replace a features.h5 made otherwise (e.g. from a copy)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None, make_detector: Callable[..., Detector] = load_detector,
         log: Callable[[str], None] = print) -> ExtractStats:
    args = build_parser().parse_args(argv)
    tsv = None if args.tsv is None else (Path(args.tsv) if args.tsv else processed_dir(args.data) / TSV_NAME)
    opts = ExtractOptions(images=args.images, weights=args.weights, data=args.data, device=args.device,
                          batch_size=args.batch_size, amp=args.amp, select=args.select, tsv=tsv,
                          num_workers=args.num_workers, block_size=args.block_size, fp16=args.fp16,
                          force=args.force, progress=args.progress)
    try:
        return extract_features(opts, make_detector, log)
    finally:
        dist_utils.teardown()
