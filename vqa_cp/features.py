"""Bottom-up attention features: TSV decode, any copy -> features.h5 (`process_features`, the forms are in
`vqa_cp.feature_forms`), and `FeatureStore` (lazy HDF5 or RAM cache).

Original TSV row: image_id, image_w, image_h, num_boxes, boxes (base64 float32 [num_boxes, 4]),
features (base64 float32 [num_boxes, D]); tab separated, no header.
"""

from __future__ import annotations

import binascii
import hashlib
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np
import torch
from tqdm import tqdm

from vqa_cp.errors import VQAError
from vqa_cp.feature_forms import ORIGINAL_TSV
from vqa_cp.files import atomic_path, remove_stale_temps, write_json
from vqa_cp.processing import processed_dir
from vqa_cp.provenance import (
    DigestCache,
    digest_cache,
    file_entry,
    is_current,
    make_record,
    output_problem,
    read_record,
    record_path,
    sha256_file,
    stat_key,
)

TSV_FIELDS = ("image_id", "image_w", "image_h", "num_boxes", "boxes", "features")
TSV_FILE = ORIGINAL_TSV  # the raw layout's original TSV (feature_forms owns the raw feature paths)
FEATURES_FILE = "features.h5"
FLOAT32_BYTES = 4
BOX_COORDS = 4
WRITE_BLOCK = 64  # images buffered per HDF5 write
CACHE_BLOCK = 256  # images read per step while caching
MEMINFO = "/proc/meminfo"
SMALL_DATASETS = ("image_id", "image_w", "image_h")
SAMPLED_ROWS = 64  # rows of features and boxes digested by `h5_summary`
FEATURES_STEP = "features"

if TYPE_CHECKING:  # feature_forms imports this module
    from vqa_cp.feature_forms import FeatureCopy, Reader


@dataclass
class TSVRow:
    image_id: int
    image_w: int
    image_h: int
    boxes: np.ndarray  # float32 [K, 4]
    features: np.ndarray  # float32 [K, D]


def decode_row(line: bytes, path: str | os.PathLike = "<tsv>", lineno: int = 0) -> TSVRow:
    """Decode one TSV line; a wrong field count, number or base64 length is a VQAError naming the line."""
    where = f"{path}: line {lineno}"
    fields = line.split(b"\t")  # the last keeps its line end, which base64 decoding skips (no 400 KB copy)
    if len(fields) != len(TSV_FIELDS):
        raise VQAError(f"{where}: {len(fields)} tab-separated fields, expected {len(TSV_FIELDS)} "
                       f"({', '.join(TSV_FIELDS)})")
    try:
        image_id, image_w, image_h, num_boxes = (int(x) for x in fields[:4])
    except ValueError:
        raise VQAError(f"{where}: image_id, image_w, image_h and num_boxes must be integers") from None
    where = f"{where} (image_id {image_id})"
    if num_boxes < 1:
        raise VQAError(f"{where}: num_boxes is {num_boxes}")
    try:
        boxes = binascii.a2b_base64(fields[4])
        features = binascii.a2b_base64(fields[5])
    except binascii.Error as exc:
        raise VQAError(f"{where}: bad base64 ({exc})") from None
    if len(boxes) != num_boxes * BOX_COORDS * FLOAT32_BYTES:
        raise VQAError(f"{where}: boxes decode to {len(boxes)} bytes, expected {num_boxes} x "
                       f"{BOX_COORDS} float32 = {num_boxes * BOX_COORDS * FLOAT32_BYTES}")
    row_bytes = num_boxes * FLOAT32_BYTES
    if len(features) == 0 or len(features) % row_bytes:
        raise VQAError(f"{where}: features decode to {len(features)} bytes, not num_boxes {num_boxes} "
                       "rows of float32")
    return TSVRow(image_id, image_w, image_h,
                  np.frombuffer(boxes, dtype=np.float32).reshape(num_boxes, BOX_COORDS),
                  np.frombuffer(features, dtype=np.float32).reshape(num_boxes, -1))


def iter_tsv(path: str | os.PathLike, progress: bool = True, digest=None) -> Iterator[tuple[int, TSVRow]]:
    """Yield (line number, decoded row) for each non-empty line, with a byte progress bar.

    `digest` (a hashlib object), when given, is fed every byte read: after the last row it is the file's.
    """
    path = Path(path)
    if not path.is_file():
        raise VQAError(f"feature TSV not found: {path}")
    with open(path, "rb") as f, tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=path.name,
                                     disable=not progress, leave=False) as bar:
        for lineno, line in enumerate(f, start=1):
            bar.update(len(line))
            if digest is not None:
                digest.update(line)
            if not line.isspace():  # (lines read from a file are never empty)
                yield lineno, decode_row(line, path, lineno)


def tsv_to_hdf5(tsv_path: str | os.PathLike, h5_path: str | os.PathLike, fp16: bool = False,
                progress: bool = True, digest=None) -> int:
    """Convert the TSV to one HDF5 file (`write_features_h5`); returns the number of images.

    `digest`: see `iter_tsv`. A bad row leaves no file.
    """
    tsv_path = Path(tsv_path)
    return write_features_h5(((f"{tsv_path}: line {lineno}", row) for lineno, row in iter_tsv(tsv_path, progress,
                                                                                            digest)),
                             h5_path, fp16, source=tsv_path)


def write_features_h5(rows: Iterable[tuple[str, TSVRow]], h5_path: str | os.PathLike, fp16: bool = False,
                      source: str | os.PathLike = "<features>") -> int:
    """Write (where, row) pairs, in order, to one HDF5 file; returns the number of images.

    `where` names the row in errors (e.g. "FILE: line 12"). Datasets: features [N, K, D] (float32, or
    float16 with fp16) chunked one image per chunk, boxes [N, K, 4] float32, image_w [N], image_h [N],
    image_id [N] int64, all in the rows' order. Every image must have the same K and D; image ids must be
    unique. Written to a temporary name, so a bad row leaves no file. No object times are stored, so the
    same rows give the same bytes.
    """
    dtype = np.float16 if fp16 else np.float32
    with atomic_path(h5_path) as tmp, h5py.File(tmp, "w") as h5:
        first_seen: dict[int, str] = {}
        buffer: list[TSVRow] = []
        n = 0
        shape = None

        def flush() -> None:
            nonlocal n
            end = n + len(buffer)
            for name in ("features", "boxes", "image_w", "image_h", "image_id"):
                h5[name].resize(end, axis=0)
            h5["features"][n:end] = np.stack([r.features for r in buffer]).astype(dtype, copy=False)
            h5["boxes"][n:end] = np.stack([r.boxes for r in buffer])
            h5["image_w"][n:end] = [r.image_w for r in buffer]
            h5["image_h"][n:end] = [r.image_h for r in buffer]
            h5["image_id"][n:end] = [r.image_id for r in buffer]
            n = end
            buffer.clear()

        for where, row in rows:
            if row.image_id in first_seen:
                raise VQAError(f"{where}: duplicate image_id {row.image_id} (first at {first_seen[row.image_id]})")
            first_seen[row.image_id] = where
            if shape is None:
                shape = row.features.shape
                k, d = shape
                h5.create_dataset("features", (0, k, d), maxshape=(None, k, d), chunks=(1, k, d), dtype=dtype,
                                  track_times=False)
                h5.create_dataset("boxes", (0, k, BOX_COORDS), maxshape=(None, k, BOX_COORDS),
                                  chunks=(1, k, BOX_COORDS), dtype=np.float32, track_times=False)
                for name in ("image_w", "image_h", "image_id"):
                    h5.create_dataset(name, (0,), maxshape=(None,), chunks=(WRITE_BLOCK * 16,),
                                      dtype=np.int64, track_times=False)
            elif row.features.shape != shape:
                raise VQAError(f"{where} (image_id {row.image_id}): features {row.features.shape[0]} x "
                               f"{row.features.shape[1]}, but earlier images have {shape[0]} x {shape[1]}")
            buffer.append(row)
            if len(buffer) == WRITE_BLOCK:
                flush()
        if shape is None:
            raise VQAError(f"{source}: no feature rows")
        if buffer:
            flush()
    return n


def _array_digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def h5_summary(path: Path) -> dict:
    """A cheap fingerprint of features.h5 (no full read of 36 GB): shape, dtype and digest of image_id,
    image_w and image_h, and of SAMPLED_ROWS evenly spaced rows of features and boxes (those present), and the
    file's attributes (form, has_boxes, has_image_size)."""
    try:
        with h5py.File(path, "r") as h5:
            out = {}
            for name in SMALL_DATASETS:
                if name in h5 or name == "image_id":
                    out[name] = [list(h5[name].shape), str(h5[name].dtype), _array_digest(h5[name][:])]
            n = h5["features"].shape[0]
            rows = np.unique(np.linspace(0, n - 1, min(n, SAMPLED_ROWS)).astype(np.int64)) if n else []
            for name in ("features", "boxes"):
                if name not in h5 and name == "boxes":
                    continue
                data = h5[name]
                sample = hashlib.sha256()
                for r in rows:
                    sample.update(np.ascontiguousarray(data[int(r)]).tobytes())
                out[name] = [list(data.shape), str(data.dtype), sample.hexdigest()]
            attrs = {key: h5.attrs[key] for key in sorted(h5.attrs)}
            if attrs:
                out["attrs"] = {key: value.item() if hasattr(value, "item") else str(value)
                                for key, value in attrs.items()}
    except (OSError, KeyError, ValueError) as exc:
        reason = " ".join(str(exc).split())
        raise VQAError(f"{path}: not a readable features file (truncated or corrupt?): {reason}") from None
    return out


def features_problem(processed: Path, cache: DigestCache | None = None) -> str | None:
    """None when features.h5 matches its record (size, then `h5_summary`), else why not (one line)."""
    record = read_record(record_path(processed, FEATURES_STEP))
    if record is None:
        return f"{record_path(processed, FEATURES_STEP)}: no readable processing record for {FEATURES_FILE}"
    return output_problem(processed, record, cache or DigestCache(processed, writable=False),
                          {FEATURES_FILE: h5_summary})


EXTRACT_HINT = ("python tools/extract_features.py --images {data}/images/train2014.zip {data}/images/val2014.zip "
                "--weights {data}/detector --data {data}")


def _check_row(where: str, row, shape: tuple[int, int]) -> None:
    """A converted row: the copy's K x D, finite features, finite boxes inside their image (when it has them)."""
    if row.features.shape != shape:
        raise VQAError(f"{where} (image_id {row.image_id}): features {row.features.shape[0]} x "
                       f"{row.features.shape[1]}, but earlier images have {shape[0]} x {shape[1]}")
    if not np.isfinite(row.features).all():
        raise VQAError(f"{where} (image_id {row.image_id}): features hold NaN or infinite values")
    if row.boxes is None:
        return
    b = row.boxes
    inside = np.isfinite(b).all(axis=1) & (b >= 0).all(axis=1)
    if row.image_w is not None:
        inside &= (b[:, 0] <= row.image_w) & (b[:, 2] <= row.image_w) & (b[:, 1] <= row.image_h) & (
            b[:, 3] <= row.image_h)
    if not inside.all():
        i = int(np.argmin(inside))
        raise VQAError(f"{where} (image_id {row.image_id}): box {i} ({', '.join(f'{x:g}' for x in b[i])}) lies "
                       f"outside its {row.image_w} x {row.image_h} image")


def write_canonical_h5(reader: Reader, h5_path: str | os.PathLike, fp16: bool = False, progress: bool = True) -> int:
    """Convert an opened copy (`feature_forms.Reader`) to features.h5 in the canonical order: ascending image_id.

    Each row is checked (`_check_row`) and written at its sorted position (one chunk an image, so the copy is
    read once, in its own order). Datasets as `write_features_h5`; `boxes`, `image_w`, `image_h` only where the
    form has them; attributes `form`, `has_boxes`, `has_image_size`. A bad row leaves no file.
    """
    ids = reader.image_ids
    if len(ids) == 0:
        raise VQAError(f"{reader.copy.files[0]}: no feature rows")
    sorted_ids = np.sort(ids)
    dup = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1])
    if len(dup):
        raise VQAError(f"{reader.copy.files[0]}: duplicate image_id {sorted_ids[dup[0]]} ({len(dup)} duplicates)")
    n, k, d = len(ids), reader.num_boxes, reader.dim
    dtype = np.float16 if fp16 else np.float32
    boxes = np.zeros((n, k, BOX_COORDS), dtype=np.float32) if reader.has_boxes else None
    sizes = np.zeros((2, n), dtype=np.int64)
    written = np.zeros(n, dtype=bool)
    with atomic_path(h5_path) as tmp, h5py.File(tmp, "w") as h5:
        feats = h5.create_dataset("features", (n, k, d), chunks=(1, k, d), dtype=dtype, track_times=False)
        for where, row in reader.rows(progress):
            pos = int(np.searchsorted(sorted_ids, row.image_id))
            if pos == n or sorted_ids[pos] != row.image_id or written[pos]:
                raise VQAError(f"{where}: image_id {row.image_id} is not where the first pass found it "
                               "(the file changed while it was read?)")
            _check_row(where, row, (k, d))
            # one chunk an image, no filters: the chunk's bytes are the row's (5x faster than feats[pos] = ...)
            feats.id.write_direct_chunk((pos, 0, 0), np.ascontiguousarray(row.features, dtype=dtype))
            written[pos] = True
            if boxes is not None:
                boxes[pos] = row.boxes
            if reader.has_image_size:
                sizes[:, pos] = (row.image_w, row.image_h)
        if not written.all():
            raise VQAError(f"{reader.copy.files[0]}: image_id {sorted_ids[np.argmin(written)]} was never read "
                           "(the file changed while it was read?)")
        if boxes is not None:
            h5.create_dataset("boxes", data=boxes, chunks=(1, k, BOX_COORDS), track_times=False)
        names = [("image_id", sorted_ids)] + ([("image_w", sizes[0]), ("image_h", sizes[1])]
                                              if reader.has_image_size else [])
        for name, values in names:
            h5.create_dataset(name, data=values, chunks=(min(n, WRITE_BLOCK * 16),), track_times=False)
        h5.attrs.update({"form": reader.copy.form, "has_boxes": reader.has_boxes,
                         "has_image_size": reader.has_image_size})
    return n


def _input_entries(data_dir: Path, reader_or_copy: Reader | FeatureCopy, cache: DigestCache) -> dict[str, dict]:
    """{name relative to DATA: {"size", "sha256"}} of a copy's files; a folder of .npz files gets one entry
    {"files", "size", "sha256"} whose digest covers every file's name and digest."""
    from vqa_cp.feature_forms import relative_name

    copy = getattr(reader_or_copy, "copy", reader_or_copy)
    digests = getattr(reader_or_copy, "digests", {})
    out = {}
    for p in copy.files:
        name = relative_name(p, data_dir)
        if p.is_dir():
            files = sorted(p.glob("*.npz"))
            key = "npz:" + hashlib.sha256("\n".join(stat_key(f) for f in files).encode()).hexdigest()
            if p in digests:
                cache.entries[key] = digests[p].hexdigest()
                cache.dirty = True
            entry = {"files": len(files), "size": sum(f.stat().st_size for f in files)}
            if key not in cache.entries:
                combined = hashlib.sha256()
                for f in files:
                    combined.update(f"{f.name}\t{cache.digest(f)}\n".encode())
                cache.entries[key] = combined.hexdigest()
                cache.dirty = True
            out[name] = {**entry, "sha256": cache.entries[key]}
        else:
            if p in digests:
                cache.remember(p, digests[p].hexdigest())
            out[name] = {"size": p.stat().st_size, "sha256": cache.digest(p)}
    return out


def _sizes_known(record: dict | None, params: dict, data_dir: Path, copy: FeatureCopy) -> bool:
    """The record's parameters and input sizes match (cheap: no digest of a 45 GB file when they do not)."""
    from vqa_cp.feature_forms import relative_name

    if record is None or record.get("params") != params:
        return False
    inputs = record.get("inputs", {})
    for p in copy.files:
        size = sum(f.stat().st_size for f in p.glob("*.npz")) if p.is_dir() else p.stat().st_size
        if inputs.get(relative_name(p, data_dir), {}).get("size") != size:
            return False
    return len(inputs) == len(copy.files)


def _check_coverage(data_dir: Path, h5_path: Path, described: str) -> None:
    """Refuse (one line) features.h5 when the questions now in DATA use images it lacks."""
    from vqa_cp.feature_forms import coverage_problem

    with h5py.File(h5_path, "r") as h5:
        image_ids = h5["image_id"][:]
    problem = coverage_problem(data_dir, image_ids, described)
    if problem:
        raise VQAError(problem)


def _no_copy(data_dir: Path, processed: Path, log) -> None:
    """No feature copy in the raw layout: skip a current extracted features.h5, else say how to get one."""
    from vqa_cp.feature_forms import FEATURES_DIR, ORIGINAL_TSV

    record = read_record(record_path(processed, FEATURES_STEP))
    if record is not None and record.get("params", {}).get("form") == "extracted":
        problem = features_problem(processed)
        if problem is None:
            log(f"skip features: {processed / FEATURES_FILE} holds extracted features (no copy in the raw layout)")
            return
        raise VQAError(f"{problem}; no copy in the raw layout to convert: extract the features again with "
                       f"{EXTRACT_HINT.format(data=data_dir)}")
    raise VQAError(f"no features in {data_dir}: neither {ORIGINAL_TSV} nor a copy in {data_dir / FEATURES_DIR}/ "
                   f"(import one with tools/download.sh --from PATH, run `python main.py --toy`, or make them: "
                   f"{EXTRACT_HINT.format(data=data_dir)})")


def process_features(data_dir: str | os.PathLike, fp16: bool = False, log=print, progress: bool = True) -> None:
    """Step 3: the feature copy in DATA's raw layout (any form) -> DATA/processed/features.h5, skipped when its
    record matches.

    The form is detected from content (`feature_forms.identify_copy`); the rows are checked and written in
    ascending image_id order while the files are read and digested (one read; HDF5 files are digested by a
    second read). The questions in DATA must use no image that the copy lacks.
    """
    from vqa_cp import feature_forms as forms

    data_dir = Path(data_dir)
    processed = processed_dir(data_dir)
    h5_path = processed / FEATURES_FILE
    found = forms.form_files(data_dir)
    if not found:
        return _no_copy(data_dir, processed, log)
    copy = forms.identify_copy(found)
    want = np.dtype(np.float16 if fp16 else np.float32)
    params = {"fp16": fp16, "form": copy.form}
    described = f"{copy.form} copy ({', '.join(forms.relative_name(p, data_dir) for p in copy.files)})"
    with digest_cache(processed) as cache:
        record = read_record(record_path(processed, FEATURES_STEP))
        if _sizes_known(record, params, data_dir, copy):
            inputs = _input_entries(data_dir, copy, cache)
            if is_current(record, FEATURES_STEP, params, inputs) and features_problem(processed, cache) is None:
                _check_coverage(data_dir, h5_path, described)  # question files may have come or changed since
                log(f"skip features: {h5_path} is up to date ({want}, from the {described})")
                for note in record.get("checks", {}).get("notes", []):
                    log(f"note: {note}")
                return
        reader = forms.open_copy(copy, progress=progress)
        problem = forms.coverage_problem(data_dir, reader.image_ids, described)
        if problem:
            raise VQAError(problem)
        remove_stale_temps(h5_path)
        before = {p: stat_key(p) for p in copy.files}
        if record is not None and record.get("params", {}).get("form") == "extracted" and h5_path.is_file():
            raise VQAError(f"{h5_path} holds features made by tools/extract_features.py, and DATA also holds the "
                           f"{described}: keep one (remove the copy, or features.h5 and its record "
                           f"{record_path(processed, FEATURES_STEP)}); process.sh never replaces extracted features")
        with ThreadPoolExecutor(max_workers=1) as pool:  # files the reader does not digest: hashed meanwhile
            pending = {p: pool.submit(sha256_file, p) for p in copy.files if p not in reader.digests and p.is_file()}
            try:
                n = write_canonical_h5(reader, h5_path, fp16, progress)
            except BaseException:
                for future in pending.values():
                    future.cancel()
                for digest in reader.digests.values():
                    digest.close()
                raise
        for p, future in pending.items():
            cache.remember(p, future.result())
        if {p: stat_key(p) for p in copy.files} != before:
            raise VQAError(f"{copy.files[0]}: changed while it was converted; run again")
        inputs = _input_entries(data_dir, reader, cache)
        outputs = {FEATURES_FILE: file_entry(h5_path, cache, h5_summary)}
        notes = forms.release_notes(n, reader.num_boxes, reader.dim)
        record = make_record(FEATURES_STEP, params, inputs, outputs)
        record["checks"] = {"images": n, "questions_checked": sorted(forms.question_images(data_dir)),
                            "has_boxes": reader.has_boxes, "has_image_size": reader.has_image_size, "notes": notes}
        write_json(record_path(processed, FEATURES_STEP), record)
    log(f"wrote {h5_path}: {n} images, {want}, from the {described}")
    for note in notes:
        log(f"note: {note}")
    if not reader.has_boxes:
        log(f"note: the {copy.form} form has no boxes or image sizes: training is unaffected; tools/visualize.py "
            "cannot draw boxes from this copy")


def mem_available(meminfo: str | os.PathLike = MEMINFO) -> int:
    """MemAvailable of /proc/meminfo in bytes."""
    try:
        text = Path(meminfo).read_text()
    except OSError as exc:
        raise VQAError(f"cannot read {meminfo} to check free memory ({exc.strerror})") from None
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise VQAError(f"{meminfo}: no MemAvailable line")


class FeatureStore:
    """image_id -> [K, D] float32 features from features.h5.

    Reads lazily from HDF5, opening the file once per process (DataLoader workers get their own
    handle), or from an in-memory tensor after `cache()`: one tensor for all datasets sharing this
    store, which forked DataLoader workers share without copying.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise VQAError(f"features not found: {self.path}; run `bash tools/process.sh --data DIR` "
                           "(or `python main.py --toy`)")
        try:
            with h5py.File(self.path, "r") as h5:
                self.image_ids = h5["image_id"][:]
                n, self.num_boxes, self.dim = h5["features"].shape
                self.file_dtype = h5["features"].dtype
        except (OSError, KeyError) as exc:
            raise VQAError(f"{self.path}: not a features file ({exc})") from None
        if len(self.image_ids) != n:
            raise VQAError(f"{self.path}: {len(self.image_ids)} image ids for {n} feature rows")
        self._order = np.argsort(self.image_ids, kind="stable")
        self._sorted_ids = self.image_ids[self._order]
        self._h5: h5py.File | None = None
        self._data: h5py.Dataset | None = None  # the open file's "features", looked up once
        self._pid: int | None = None
        self._cache: torch.Tensor | None = None
        self._device_cache: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.image_ids)

    def rows(self, image_ids: np.ndarray) -> np.ndarray:
        """Row of each image id in the HDF5 file, -1 where the image has no features."""
        image_ids = np.asarray(image_ids, dtype=np.int64)
        pos = np.searchsorted(self._sorted_ids, image_ids).clip(max=len(self._sorted_ids) - 1)
        found = self._sorted_ids[pos] == image_ids
        return np.where(found, self._order[pos], -1)

    def _features_data(self) -> h5py.Dataset:
        if self._pid != os.getpid():
            # a handle inherited through fork must not be used: open our own
            self._h5 = h5py.File(self.path, "r")
            self._data = self._h5["features"]
            self._pid = os.getpid()
        return self._data

    def features(self, row: int) -> torch.Tensor:
        """float32 [K, D] features of HDF5 row `row` (its row index alone once `keep_on_device` ran)."""
        if self._device_cache is not None:
            return torch.tensor(row, dtype=torch.int64)
        if self._cache is not None:
            return self._cache[row].to(torch.float32, copy=True)
        return torch.from_numpy(self._features_data()[row]).float()

    @property
    def cached(self) -> torch.dtype | None:
        return None if self._cache is None else self._cache.dtype

    def cache_bytes(self, dtype: torch.dtype = torch.float16) -> int:
        return len(self) * self.num_boxes * self.dim * torch.tensor([], dtype=dtype).element_size()

    def cache(self, dtype: torch.dtype = torch.float16, meminfo: str | os.PathLike = MEMINFO,
              log=print) -> None:
        """Load every image's features once into one in-memory tensor of `dtype`.

        Prints the RAM needed first and refuses (VQAError) when /proc/meminfo's MemAvailable is less.
        """
        if dtype not in (torch.float16, torch.float32):
            raise VQAError(f"feature cache dtype must be float16 or float32, not {dtype}")
        if self._cache is not None and self._cache.dtype == dtype:
            return
        self._cache = None
        need = self.cache_bytes(dtype)
        available = mem_available(meminfo)
        log(f"caching {len(self)} images x {self.num_boxes} x {self.dim} features as {dtype}: "
            f"{need / 1e9:.1f} GB of RAM ({available / 1e9:.1f} GB available)")
        if need > available:
            raise VQAError(f"feature cache needs {need / 1e9:.1f} GB but only {available / 1e9:.1f} GB is "
                           f"available ({meminfo} MemAvailable); run without the cache or with float16")
        cache = torch.empty((len(self), self.num_boxes, self.dim), dtype=dtype)
        data = self._features_data()
        for start in tqdm(range(0, len(self), CACHE_BLOCK), desc="cache features", unit="block", leave=False):
            stop = min(start + CACHE_BLOCK, len(self))
            cache[start:stop] = torch.from_numpy(data[start:stop])
        self._cache = cache

    @property
    def on_device(self) -> bool:
        """True once `keep_on_device` ran: items then carry row indices, `gather` gives the features."""
        return self._device_cache is not None

    def keep_on_device(self, device: torch.device, log=print) -> None:
        """Move the cached tensor to `device` (GPU memory) and gather batches there: no per-step copy."""
        if self._cache is None:
            raise VQAError("keeping features on the device needs the in-memory cache (--cache_features)")
        need = self._cache.numel() * self._cache.element_size()
        if device.type == "cuda":
            free, _total = torch.cuda.mem_get_info(device)
            log(f"features on {device}: {need / 1e9:.1f} GB of GPU memory ({free / 1e9:.1f} GB free)")
            if need > free:
                raise VQAError(f"--features_on_gpu needs {need / 1e9:.1f} GB of GPU memory but {free / 1e9:.1f} GB "
                               "is free; use float16 (--cache_dtype float16) or drop --features_on_gpu")
        self._device_cache = self._cache.to(device)
        self._cache = None

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        """float32 [B, K, D] features of a batch of row indices, gathered where the features live."""
        return self._device_cache[rows.to(self._device_cache.device, non_blocking=True)].float()

    def batch(self, rows: np.ndarray) -> torch.Tensor:
        """The batch of `features(r)` for every r in `rows`, stacked [B, K, D]: gathered by index from the RAM
        cache in the cache's dtype (float16 by default: half the bytes to gather and to copy to the device,
        where the trainer widens it to float32, the same values), or read from HDF5 as float32 in increasing
        row order (each distinct row once); int64 [B] row indices once `keep_on_device` ran (then `gather`
        gives the features)."""
        rows = np.asarray(rows, dtype=np.int64)
        if self._device_cache is not None:
            return torch.from_numpy(rows.copy())
        if self._cache is not None:
            return self._cache.index_select(0, torch.from_numpy(rows))
        unique, inverse = np.unique(rows, return_inverse=True)
        data = self._features_data()
        block = np.empty((len(unique), self.num_boxes, self.dim), dtype=np.float32)
        for i, row in enumerate(unique.tolist()):  # one chunk a row: h5py's fancy selection is slower
            data.read_direct(block, np.s_[row], np.s_[i])
        block = torch.from_numpy(block)
        return block if len(unique) == len(rows) and np.array_equal(unique, rows) else block[torch.from_numpy(inverse)]

    def __getstate__(self) -> dict:
        # a spawned worker receives no open HDF5 handle; it opens its own
        state = self.__dict__.copy()
        state["_h5"] = None
        state["_data"] = None
        state["_pid"] = None
        return state
