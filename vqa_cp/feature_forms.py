"""The forms the 36-box bottom-up features circulate in: detect a copy's form from its content, read any form
as rows, and write any form (for the toy and rehearsal generators).

Forms (docs/notes/forms.md):
- "tsv": the original `trainval_resnet101_faster_rcnn_genome_36.tsv` (image_id, image_w, image_h, num_boxes,
  boxes, features);
- "lxmert_tsv": LXMERT's `train2014_obj36.tsv` / `val2014_obj36.tsv` (img_id, img_h, img_w, objects_id,
  objects_conf, attrs_id, attrs_conf, num_boxes, boxes, features; height before width);
- "hdf5_trainval36": `trainval36.hdf5` (image_features only) + `trainval36_imgid2idx.pkl`;
- "hdf5_split36": `train36.hdf5` / `val36.hdf5` (image_features, image_bb, spatial_features) + their
  `*_imgid2idx.pkl` (or `*_imgid2img.pkl`) index pickles;
- "npz": a folder (or zip) of per-image `.npz` files (keys x, bbox, num_bbox, image_h, image_w, info).
Index pickles are read by a restricted unpickler that admits a dict of ints and nothing else; `info` of an
npz (an object array) is never loaded.
"""

from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import io
import pickle
import queue
import re
import threading
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import msgspec
import numpy as np
from tqdm import tqdm

from vqa_cp.errors import VQAError
from vqa_cp.files import looks_like_html, read_head

FEATURES_DIR = "features"
FORMS = ("tsv", "lxmert_tsv", "hdf5_trainval36", "hdf5_split36", "npz")
ORIGINAL_TSV = "trainval_36/trainval_resnet101_faster_rcnn_genome_36.tsv"
LXMERT_FILES = {"train2014": "train2014_obj36.tsv", "val2014": "val2014_obj36.tsv"}
TRAINVAL_H5 = "trainval36.hdf5"
SPLIT_H5 = {"train2014": "train36.hdf5", "val2014": "val36.hdf5"}
INDEX_SUFFIXES = ("_imgid2idx.pkl", "_imgid2img.pkl")
NPZ_DIR = "npz"
NPZ_KEYS = ("x", "bbox", "num_bbox", "image_h", "image_w")  # `info` needs pickle: never read
TSV_FIELDS = ("image_id", "image_w", "image_h", "num_boxes", "boxes", "features")
LXMERT_FIELDS = ("img_id", "img_h", "img_w", "objects_id", "objects_conf", "attrs_id", "attrs_conf", "num_boxes",
                 "boxes", "features")
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"
HEAD_BYTES = 8192  # a TSV row's fields before `features` fit in this (36 boxes: about 2 KB)
MAX_LINE = 1 << 26  # a 36-box row is about 400 KB
READ_BLOCK = 64  # HDF5 rows read per step
SPATIAL_TOLERANCE = 1e-6  # relative: a few float32 roundings of x / w (a pixel off at w = 640 is 1.6e-3)
TRAILING_DIGITS = re.compile(rb"(\d+)$")
RELEASE_IMAGES = 123_287
RELEASE_BOXES, RELEASE_DIM = 36, 2048
EOCD_SEARCH = 22 + 65535  # the end record and the longest comment
NAME_PATTERNS = ("*.tsv", "*.hdf5", "*.h5", "*_imgid2idx.pkl", "*_imgid2img.pkl", "*.zip")
TEST_SPLIT_PREFIXES = ("test2014", "test2015")  # test2015_resnet101_faster_rcnn_genome_36.tsv, test2015_obj36.tsv


@dataclass
class FeatureCopy:
    """A copy of the features in one form: `files` are its files (a folder or zip for "npz")."""

    form: str
    files: list[Path]


@dataclass
class Row:
    """One image of a copy; `boxes` [K, 4] pixels and the sizes are None where the form lacks them."""

    image_id: int
    image_w: int | None
    image_h: int | None
    boxes: np.ndarray | None
    features: np.ndarray  # float32 [K, D]


@dataclass
class Reader:
    """An identified copy opened for conversion: the image ids (the copy's own order), what it holds, and
    `rows(progress)` yielding (where, Row) in the copy's order, each file's digest fed as it is read."""

    copy: FeatureCopy
    image_ids: np.ndarray
    num_boxes: int
    dim: int
    has_boxes: bool
    has_image_size: bool
    rows: Callable[[bool], Iterator[tuple[str, Row]]]
    digests: dict[Path, BackgroundDigest | FilesDigest] = field(default_factory=dict)  # fed while `rows` runs


class BackgroundDigest:
    """SHA-256 fed from the reading thread but computed in another (hashlib releases the GIL on large buffers,
    so hashing overlaps decoding); `hexdigest()` waits for every byte given so far."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._done: str | None = None

    def _run(self) -> None:
        while (data := self._queue.get()) is not None:
            self._hash.update(data)

    def update(self, data: bytes) -> None:
        self._queue.put(data)

    def hexdigest(self) -> str:
        if self._done is None:
            self._queue.put(None)
            self._thread.join()
            self._done = self._hash.hexdigest()
        return self._done

    def close(self) -> None:
        """Stop the hashing thread (after a failed conversion)."""
        self.hexdigest()


class FilesDigest:
    """One SHA-256 over many files: sha256 of the lines "name<TAB>sha256 of the file", in the order added."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    def add(self, name: str, file_sha256: str) -> None:
        self._hash.update(f"{name}\t{file_sha256}\n".encode())

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------- sniffing and detection


def sniff(path: Path) -> str:
    """What a file is by content: "hdf5", "pickle", "zip", "tsv6" / "tsv10" (fields of the first row), "npzdir",
    else VQAError naming the file (an HTML / XML page, an empty or unknown file)."""
    if path.is_dir():
        return "npzdir"
    head = read_head(path)
    if not head:
        raise VQAError(f"{path}: empty file")
    if looks_like_html(head):
        raise VQAError(f"{path}: an HTML/XML page, not a feature file (an error page saved under its name?)")
    if head.startswith(HDF5_MAGIC):
        return "hdf5"
    if head.startswith(ZIP_MAGIC):
        return "zip"
    if head[:1] == b"\x80" or head[:2] in (b"(d", b"}q", b"}("):
        return "pickle"
    if b"\t" in head:
        with open(path, "rb") as f:
            count = f.readline(MAX_LINE).count(b"\t") + 1
        if count in (len(TSV_FIELDS), len(LXMERT_FIELDS)):
            return f"tsv{count}"
        raise VQAError(f"{path}: line 1: {count} tab-separated fields, neither the original TSV's "
                       f"{len(TSV_FIELDS)} nor LXMERT's {len(LXMERT_FIELDS)}")
    raise VQAError(f"{path}: not a feature file of any known form (first bytes {head[:16]!r})")


def find_feature_files(root: Path) -> list[Path]:
    """Files and folders under `root` named like feature files of any form (TSV, HDF5, index pickles, zips holding
    .npz files or damaged zips, folders holding .npz files), skipping hidden and `processed` folders (our own
    outputs) and the COCO test splits' feature files (no VQA-CP question uses those images). Their content is
    judged by `identify_copy`, so that a damaged file or an HTML page under a feature file's name is refused by
    name rather than passed over."""
    root = Path(root)
    if root.is_file():
        return [root]
    found: list[Path] = []
    npz_dirs: set[Path] = set()
    for path in sorted(root.rglob("*")):
        if any(part.startswith(".") or part == "processed" for part in path.relative_to(root).parts[:-1]):
            continue
        if path.is_file() and path.suffix == ".npz":
            npz_dirs.add(path.parent)
        elif path.is_file() and any(path.match(p) for p in NAME_PATTERNS):
            if path.name.startswith(TEST_SPLIT_PREFIXES):  # the test images' features: no VQA-CP question uses them
                continue
            if path.suffix == ".zip" and not _zip_holds_npz(path):
                continue
            found.append(path)
    return sorted(found + sorted(npz_dirs))


def zip_intact(path: Path) -> bool:
    """True when the zip's end-of-central-directory record ends the file (a truncated zip of .npz files would
    otherwise open on the record of an inner .npz, itself a zip)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(max(0, size - EOCD_SEARCH))
        tail = f.read()
    at = tail.rfind(b"PK\x05\x06")
    return at >= 0 and at + 22 + int.from_bytes(tail[at + 20:at + 22], "little") == len(tail)


def _zip_holds_npz(path: Path) -> bool:
    """A zip of .npz files, or a damaged zip (kept, so that `identify_copy` refuses it by name)."""
    if not zip_intact(path):
        return True
    try:
        with zipfile.ZipFile(path) as z:
            return any(name.endswith(".npz") for name in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return True


def identify_copy(paths: list[Path]) -> FeatureCopy:
    """Detect the form of a copy from the content of its files and check its structure cheaply (headers, first
    rows, HDF5 shapes, index pickles); VQAError naming the file and item on a bad copy or on two forms at once."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise VQAError("no feature files given")
    kinds = {p: sniff(p) for p in paths}
    forms: dict[str, list[Path]] = {}
    for p, kind in kinds.items():
        if kind == "tsv6":
            forms.setdefault("tsv", []).append(p)
        elif kind == "tsv10":
            forms.setdefault("lxmert_tsv", []).append(p)
        elif kind in ("npzdir", "zip"):
            forms.setdefault("npz", []).append(p)
        elif kind == "hdf5":
            form = "hdf5_trainval36" if _h5_names(p) == {"image_features"} else "hdf5_split36"
            forms.setdefault(form, []).append(p)
    pickles = [p for p, k in kinds.items() if k == "pickle"]
    if len(forms) > 1:
        (a, fa), (b, fb) = list(forms.items())[:2]
        raise VQAError(f"two forms of the features at once: {a} ({fa[0]}) and {b} ({fb[0]}); keep one")
    if not forms:
        raise VQAError(f"{paths[0]}: no feature file among {', '.join(p.name for p in paths)} (only index pickles?)")
    form, files = next(iter(forms.items()))
    if form.startswith("hdf5"):
        files = files + pickles
    elif pickles:
        raise VQAError(f"{pickles[0]}: an index pickle beside a {form} copy, which has none")
    copy = FeatureCopy(form, sorted(files))
    open_copy(copy, check_only=True)
    return copy


def _h5_names(path: Path) -> set[str]:
    try:
        with h5py.File(path, "r") as h5:
            return set(h5.keys())
    except OSError as exc:
        raise VQAError(f"{path}: not a readable HDF5 file (truncated?): {' '.join(str(exc).split())}") from None


# ----------------------------------------------------------------------------- restricted index pickles


class _IntDictUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global (class, function): only built-in dicts, ints and strings can load."""

    def __init__(self, file, path: Path) -> None:
        super().__init__(file, encoding="latin1")
        self.path = path

    def find_class(self, module: str, name: str):  # noqa: ANN201 - never returns
        raise VQAError(f"{self.path}: refers to {module}.{name}; an index pickle may hold only a dict of ints "
                       "(refused without running it)")

    def persistent_load(self, pid):  # noqa: ANN001, ANN201 - never returns
        raise VQAError(f"{self.path}: holds a persistent reference; an index pickle may hold only a dict of ints")


def load_index_pickle(path: Path) -> dict[int, int]:
    """{image_id: row} of a Python 2 cPickle index (protocol 0 or 2), read without admitting any object."""
    try:
        with open(path, "rb") as f:
            data = _IntDictUnpickler(f, path).load()
    except VQAError:
        raise
    except Exception as exc:  # a truncated or garbled pickle fails in many ways
        raise VQAError(f"{path}: not a readable index pickle (truncated?): {type(exc).__name__}: {exc}") from None
    if not isinstance(data, dict):
        raise VQAError(f"{path}: holds a {type(data).__name__}, not a dict {{image_id: row}}")
    for key, value in data.items():
        if type(key) is not int:
            raise VQAError(f"{path}: key {key!r} is a {type(key).__name__}, not an int image id")
        if type(value) is not int:
            raise VQAError(f"{path}: image_id {key}: value {value!r} is a {type(value).__name__}, not an int row")
    return data


def write_index_pickle(path: Path, index: dict[int, int]) -> None:
    """{image_id: row} as Python 2's cPickle writes it (protocol 2)."""
    path.write_bytes(pickle.dumps({int(k): int(v) for k, v in index.items()}, protocol=2))


def _index_rows(path: Path, index: dict[int, int], n: int) -> tuple[np.ndarray, np.ndarray]:
    """(image ids, their rows) of an index over an HDF5 file of `n` rows: every row exactly once."""
    ids = np.fromiter(index.keys(), dtype=np.int64, count=len(index))
    rows = np.fromiter(index.values(), dtype=np.int64, count=len(index))
    if len(ids) != n:
        raise VQAError(f"{path}: indexes {len(ids)} images, but its HDF5 file holds {n} rows")
    bad = (rows < 0) | (rows >= n)
    if bad.any():
        raise VQAError(f"{path}: image_id {ids[bad][0]}: row {rows[bad][0]} outside 0..{n - 1}")
    if len(np.unique(rows)) != n:
        raise VQAError(f"{path}: two image ids point at the same row")
    return ids, rows


# ----------------------------------------------------------------------------- TSV forms


def _b64_len(nbytes: int) -> int:
    return 4 * ((nbytes + 2) // 3)


def image_id_of(text: bytes | str, where: str) -> int:
    """The integer image id of `132417` or `COCO_train2014_000000132417` (an image file's stem)."""
    raw = text.encode() if isinstance(text, str) else text
    match = TRAILING_DIGITS.search(raw)
    if not match:
        raise VQAError(f"{where}: image id {raw[:40]!r} holds no number")
    return int(match.group(1))


def _tsv_layout(form: str) -> tuple[int, int]:
    """(fields, index of num_boxes) of a TSV form."""
    return (len(TSV_FIELDS), 3) if form == "tsv" else (len(LXMERT_FIELDS), 7)


def _check_tail(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(max(0, size - 1))
        if f.read(1) != b"\n":
            raise VQAError(f"{path}: truncated (the last row does not end in a newline)")


def _row_end(head: bytes, pos: int, nfields: int, kcol: int, dim: int) -> int | None:
    """Predicted end (offset of the terminator) of the row at `pos` whose first bytes are `head`."""
    parts = head.split(b"\t", nfields - 1)
    if len(parts) < nfields:
        return None
    try:
        k = int(parts[kcol])
    except ValueError:
        return None
    return pos + sum(len(p) + 1 for p in parts[:-1]) + _b64_len(k * dim * 4)


def tsv_index(path: Path, form: str, dim: int, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(image ids, byte offsets) of a TSV's rows without reading the features: each row's end is predicted
    from its header (num_boxes x `dim` float32 = a known base64 length), and one read there confirms the
    terminator and brings the next row's header; a row that is not as predicted is read through to its end
    (the conversion pass then reports it)."""
    nfields, kcol = _tsv_layout(form)
    size = path.stat().st_size
    ids, offsets = [], []
    pos = 0
    with open(path, "rb") as f, tqdm(total=size, unit="B", unit_scale=True, desc=f"index {path.name}",
                                     disable=not progress, leave=False) as bar:
        head = f.read(HEAD_BYTES)
        while pos < size:
            blank = len(head) - len(head.lstrip(b"\r\n"))
            if blank:  # blank lines between rows
                pos += blank
                f.seek(pos)
                head = f.read(HEAD_BYTES)
                continue
            ids.append(image_id_of(head.split(b"\t", 1)[0], f"{path}: row at byte {pos}"))
            offsets.append(pos)
            end = _row_end(head, pos, nfields, kcol, dim)
            nxt = None
            if end is not None and end < size:
                f.seek(end)
                block = f.read(2 + HEAD_BYTES)
                cut = 2 if block[:2] == b"\r\n" else 1 if block[:1] == b"\n" else 0
                nxt, head = (end + cut, block[cut:]) if cut else (None, head)
            if nxt is None:
                f.seek(pos)
                nxt = pos + len(f.readline())
                head = f.read(HEAD_BYTES)
            bar.update(nxt - pos)
            pos = nxt
    return np.array(ids, dtype=np.int64), np.array(offsets, dtype=np.int64)


def decode_lxmert_row(line: bytes, where: str) -> Row:
    """One LXMERT row: img_id, img_h, img_w, objects_id, objects_conf, attrs_id, attrs_conf, num_boxes, boxes,
    features (base64; ids int64, the rest float32)."""
    fields = line.split(b"\t")  # the last keeps its line end, which base64 decoding skips (no 400 KB copy)
    if len(fields) != len(LXMERT_FIELDS):
        raise VQAError(f"{where}: {len(fields)} tab-separated fields, expected {len(LXMERT_FIELDS)} "
                       f"({', '.join(LXMERT_FIELDS)})")
    image_id = image_id_of(fields[0], where)
    where = f"{where} (image_id {image_id})"
    try:
        image_h, image_w, k = int(fields[1]), int(fields[2]), int(fields[7])
    except ValueError:
        raise VQAError(f"{where}: img_h, img_w and num_boxes must be integers") from None
    if k < 1:
        raise VQAError(f"{where}: num_boxes is {k}")
    try:
        decoded = [binascii.a2b_base64(fields[i]) for i in (3, 4, 5, 6, 8, 9)]
    except binascii.Error as exc:
        raise VQAError(f"{where}: bad base64 ({exc})") from None
    for name, data, nbytes in zip(("objects_id", "objects_conf", "attrs_id", "attrs_conf", "boxes"), decoded,
                                  (8 * k, 4 * k, 8 * k, 4 * k, 16 * k)):
        if len(data) != nbytes:
            raise VQAError(f"{where}: {name} decode to {len(data)} bytes, expected {nbytes} for {k} boxes")
    features = decoded[5]
    if len(features) == 0 or len(features) % (4 * k):
        raise VQAError(f"{where}: features decode to {len(features)} bytes, not num_boxes {k} rows of float32")
    return Row(image_id, image_w, image_h, np.frombuffer(decoded[4], dtype=np.float32).reshape(k, 4),
               np.frombuffer(features, dtype=np.float32).reshape(k, -1))


def _first_row(path: Path, form: str) -> Row:
    from vqa_cp.features import decode_row

    with open(path, "rb") as f:
        lineno, line = 1, f.readline(MAX_LINE)
        while line and line.isspace():
            lineno, line = lineno + 1, f.readline(MAX_LINE)
    if not line:
        raise VQAError(f"{path}: no feature rows")
    if not line.endswith(b"\n"):
        raise VQAError(f"{path}: line {lineno} is longer than {MAX_LINE >> 20} MB: not a feature TSV")
    return _decode(line, path, lineno, form, decode_row)


def _decode(line: bytes, path: Path, lineno: int, form: str, decode_row) -> Row:
    if form == "tsv":
        r = decode_row(line, path, lineno)
        return Row(r.image_id, r.image_w, r.image_h, r.boxes, r.features)
    return decode_lxmert_row(line, f"{path}: line {lineno}")


def _tsv_reader(copy: FeatureCopy, check_only: bool, progress: bool = True) -> Reader | None:
    from vqa_cp.features import decode_row

    if copy.form == "lxmert_tsv":
        names = set(LXMERT_FILES.values())
        for p in copy.files:
            if p.name not in names:
                raise VQAError(f"{p}: an LXMERT feature TSV must be named {' or '.join(sorted(names))}")
    elif len(copy.files) != 1:
        raise VQAError(f"{copy.files[1]}: a second original-form TSV beside {copy.files[0]}; keep one")
    firsts = []
    for p in copy.files:
        _check_tail(p)
        firsts.append(_first_row(p, copy.form))
    k, dim = firsts[0].features.shape
    if check_only:
        return None
    indexes = [tsv_index(p, copy.form, dim, progress) for p in copy.files]
    image_ids = np.concatenate([ids for ids, _ in indexes])
    digests = {p: BackgroundDigest() for p in copy.files}

    def rows(progress: bool) -> Iterator[tuple[str, Row]]:
        for p in copy.files:
            with open(p, "rb") as f, tqdm(total=p.stat().st_size, unit="B", unit_scale=True, desc=p.name,
                                          disable=not progress, leave=False) as bar:
                digest = digests[p]
                for lineno, line in enumerate(f, start=1):
                    bar.update(len(line))
                    digest.update(line)
                    if not line.isspace():
                        yield f"{p}: line {lineno}", _decode(line, p, lineno, copy.form, decode_row)

    return Reader(copy, image_ids, k, dim, True, True, rows, digests)


# ----------------------------------------------------------------------------- HDF5 forms


def _index_file(h5_path: Path, files: list[Path]) -> Path:
    stem = h5_path.name[: -len(h5_path.suffix)]
    for p in files:
        if p.name in (stem + s for s in INDEX_SUFFIXES):
            return p
    raise VQAError(f"{h5_path}: its index pickle {stem}{INDEX_SUFFIXES[0]} (or {stem}{INDEX_SUFFIXES[1]}) is "
                   "missing")


def _h5_dataset(h5: h5py.File, path: Path, name: str, ndim: int, n: int | None, k: int | None,
                last: int | None) -> h5py.Dataset:
    if name not in h5:
        raise VQAError(f"{path}: no dataset {name}")
    data = h5[name]
    shape = data.shape
    if (len(shape) != ndim or (n is not None and shape[0] != n) or (k is not None and shape[1] != k)
            or (last is not None and shape[-1] != last) or data.dtype.kind != "f"):
        raise VQAError(f"{path}: {name} has shape {shape} {data.dtype}, expected float (N, K"
                       f"{'' if ndim == 2 else ', ' + str(last or 'D')})" + (f" with N = {n}" if n else ""))
    return data


def _h5_parts(copy: FeatureCopy) -> list[tuple[Path, Path]]:
    h5s = [p for p in copy.files if sniff(p) == "hdf5"]
    if copy.form == "hdf5_trainval36":
        if [p.name for p in h5s] != [TRAINVAL_H5]:
            raise VQAError(f"{h5s[0]}: a features-only HDF5 must be {TRAINVAL_H5} (one file)")
    else:
        names = set(SPLIT_H5.values())
        for p in h5s:
            if p.name not in names:
                raise VQAError(f"{p}: an HDF5 with boxes must be named {' or '.join(sorted(names))}")
    return [(p, _index_file(p, copy.files)) for p in h5s]


def recover_sizes(where: str, boxes: np.ndarray, spatial: np.ndarray) -> tuple[int, int]:
    """(w, h) from boxes (x1, y1, x2, y2 pixels) and spatial features (x1/w, y1/h, x2/w, y2/h, bw/w, bh/h):
    w = round(bw / (bw/w)) at the widest box, checked against every box's four coordinates."""
    sizes = []
    for c in (0, 1):  # width, height
        extent = boxes[:, 2 + c].astype(np.float64) - boxes[:, c]
        i = int(np.argmax(extent))
        if not extent[i] > 0 or not spatial[i, 4 + c] > 0:
            raise VQAError(f"{where}: no box with a positive extent to recover the image size")
        sizes.append(int(round(extent[i] / float(spatial[i, 4 + c]))))
    w, h = sizes
    want = np.concatenate([boxes / np.array([w, h, w, h], dtype=np.float64),
                           (boxes[:, 2:] - boxes[:, :2]) / np.array([w, h], dtype=np.float64)], axis=1)
    if not np.allclose(spatial, want, rtol=SPATIAL_TOLERANCE, atol=1e-7):
        raise VQAError(f"{where}: spatial_features disagree with image_bb for any image size "
                       f"(recovered {w} x {h})")
    return w, h


def _h5_reader(copy: FeatureCopy, check_only: bool) -> Reader | None:
    parts = _h5_parts(copy)
    has_boxes = copy.form == "hdf5_split36"
    plan, shape = [], None
    for h5_path, pkl in parts:
        index = load_index_pickle(pkl)
        try:
            with h5py.File(h5_path, "r") as h5:
                feats = _h5_dataset(h5, h5_path, "image_features", 3, None, None, None)
                n, k, d = feats.shape
                if shape is not None and (k, d) != shape:
                    raise VQAError(f"{h5_path}: image_features {k} x {d}, but {parts[0][0].name} has "
                                   f"{shape[0]} x {shape[1]}")
                shape = (k, d)
                if has_boxes:
                    _h5_dataset(h5, h5_path, "image_bb", 3, n, k, 4)
                    _h5_dataset(h5, h5_path, "spatial_features", 3, n, k, 6)
        except OSError as exc:
            raise VQAError(f"{h5_path}: not a readable HDF5 file (truncated?): {' '.join(str(exc).split())}") from None
        ids, rows = _index_rows(pkl, index, n)
        plan.append((h5_path, pkl, ids, rows))
    if check_only:
        return None
    k, d = shape
    image_ids = np.concatenate([ids[np.argsort(rows)] for _, _, ids, rows in plan])
    digests = {h5_path: BackgroundDigest() for h5_path, *_ in plan if _raw_offset(h5_path) is not None}

    def rows_of(progress: bool) -> Iterator[tuple[str, Row]]:
        for h5_path, _pkl, ids, rows in plan:
            id_of_row = ids[np.argsort(rows)]
            try:
                with h5py.File(h5_path, "r") as h5:
                    yield from _h5_rows(h5, h5_path, id_of_row, has_boxes, digests.get(h5_path), progress)
            except OSError as exc:
                raise VQAError(f"{h5_path}: read failed (truncated?): {' '.join(str(exc).split())}") from None

    return Reader(copy, image_ids, k, d, has_boxes, has_boxes, rows_of, digests)


def _raw_offset(path: Path) -> int | None:
    """Byte offset of image_features when it is stored contiguously, unfiltered, as little-endian float32 (as
    the published conversions store it): then the file is read once, in order, hashed and sliced into rows."""
    with h5py.File(path, "r") as h5:
        feats = h5["image_features"]
        if feats.chunks is None and feats.compression is None and feats.dtype == np.dtype("<f4"):
            return feats.id.get_offset()
    return None


def _feature_blocks(h5: h5py.File, path: Path, digest: BackgroundDigest | None, progress: bool
                    ) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, float32 [m, K, D]) blocks of image_features: by h5py, or with `digest` from one ordered read of
    the whole file whose every byte is hashed."""
    feats = h5["image_features"]
    n, k, d = feats.shape
    starts = tqdm(range(0, n, READ_BLOCK), desc=path.name, unit="block", disable=not progress, leave=False)
    if digest is None:
        for start in starts:
            yield start, np.asarray(feats[start:min(start + READ_BLOCK, n)], dtype=np.float32)
        return
    offset, row_bytes = feats.id.get_offset(), k * d * 4
    with open(path, "rb") as f:
        digest.update(f.read(offset))
        for start in starts:
            m = min(start + READ_BLOCK, n) - start
            data = f.read(m * row_bytes)
            if len(data) != m * row_bytes:
                raise VQAError(f"{path}: row {start + len(data) // row_bytes}: image_features end early (truncated?)")
            digest.update(data)
            yield start, np.frombuffer(data, dtype="<f4").reshape(m, k, d)
        while block := f.read(1 << 22):
            digest.update(block)


def _h5_rows(h5: h5py.File, path: Path, id_of_row: np.ndarray, has_boxes: bool, digest: BackgroundDigest | None,
             progress: bool) -> Iterator[tuple[str, Row]]:
    for start, block in _feature_blocks(h5, path, digest, progress):
        stop = start + len(block)
        if has_boxes:
            bb = np.asarray(h5["image_bb"][start:stop], dtype=np.float32)
            sp = np.asarray(h5["spatial_features"][start:stop])
        for i in range(stop - start):
            image_id = int(id_of_row[start + i])
            where = f"{path}: row {start + i}"
            if has_boxes:
                if not np.isfinite(bb[i]).all() or not np.isfinite(sp[i]).all():
                    raise VQAError(f"{where} (image_id {image_id}): image_bb or spatial_features hold NaN or "
                                   "infinite values")
                w, h = recover_sizes(f"{where} (image_id {image_id})", bb[i], sp[i])
                yield where, Row(image_id, w, h, bb[i], block[i])
            else:
                yield where, Row(image_id, None, None, None, block[i])


# ----------------------------------------------------------------------------- npz form


def _npz_members(copy: FeatureCopy) -> list[tuple[str, Callable[[], bytes], Path]]:
    """(name, read bytes, where) of every .npz file of the copy (folders and zips), sorted by name."""
    members = []
    for p in copy.files:
        if p.is_dir():
            members += [(f.name, f.read_bytes, str(f)) for f in sorted(p.glob("*.npz"))]
        else:
            if not zip_intact(p):
                raise VQAError(f"{p}: not a readable zip (truncated: no end record at its end)")
            try:
                with zipfile.ZipFile(p) as z:
                    bad = z.testzip() if p.stat().st_size < (1 << 26) else None
                    names = sorted(n for n in z.namelist() if n.endswith(".npz"))
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise VQAError(f"{p}: not a readable zip (truncated?): {exc}") from None
            if bad is not None:
                raise VQAError(f"{p}: member {bad} is damaged (CRC mismatch; truncated?)")
            members += [(n, _zip_reader(p, n), f"{p}: member {n}") for n in names]
    if not members:
        raise VQAError(f"{copy.files[0]}: holds no .npz files")
    return members


def _zip_reader(path: Path, name: str) -> Callable[[], bytes]:
    def read() -> bytes:
        try:
            with zipfile.ZipFile(path) as z:
                return z.read(name)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise VQAError(f"{path}: member {name}: unreadable (truncated?): {exc}") from None
    return read


_NPY_HEADERS: dict[bytes, tuple[np.dtype, tuple[int, ...], bool]] = {}  # one producer: few distinct headers


def _npy_array(data: bytes, where: str, key: str) -> np.ndarray:
    """A .npy member's array, parsed once per distinct header (np.load parses every header anew); an object
    dtype (which needs pickle) is refused."""
    end = data.find(b"\n") + 1
    head = data[:end]
    if head not in _NPY_HEADERS:
        fp = io.BytesIO(data)
        version = np.lib.format.read_magic(fp)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
            np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(fp)
        if fp.tell() != end:
            raise ValueError("unexpected .npy header length")
        if dtype.hasobject:
            raise VQAError(f"{where}: {key} is an object array (needs pickle; refused)")
        _NPY_HEADERS[head] = (dtype, shape, fortran)
    dtype, shape, fortran = _NPY_HEADERS[head]
    count = int(np.prod(shape))
    if len(data) - end != count * dtype.itemsize:
        raise ValueError(f"{key}: {len(data) - end} bytes for shape {shape} {dtype}")
    array = np.frombuffer(data, dtype=dtype, count=count, offset=end)
    return array.reshape(shape, order="F" if fortran else "C")


def load_npz(data: bytes, where: str) -> Row:
    """One bottom-up-attention.pytorch .npz (x, bbox, num_bbox, image_h, image_w; `info` is never read)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            names = z.namelist()
            missing = [k for k in NPZ_KEYS if f"{k}.npy" not in names]
            if missing:
                raise VQAError(f"{where}: lacks {', '.join(missing)} (keys: {', '.join(n[:-4] for n in names)})")
            x, bbox, num, h, w = (_npy_array(z.read(f"{k}.npy"), where, k) for k in NPZ_KEYS)
            num, h, w = int(num), int(h), int(w)
    except VQAError:
        raise
    except (ValueError, TypeError, OSError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise VQAError(f"{where}: not a readable .npz (truncated?): {' '.join(str(exc).split())}") from None
    if x.ndim != 2 or bbox.shape != (num, 4) or x.shape[0] != num:
        raise VQAError(f"{where}: x {x.shape} and bbox {bbox.shape} do not match num_bbox {num}")
    return Row(0, w, h, np.asarray(bbox, dtype=np.float32), np.asarray(x, dtype=np.float32))


def _npz_reader(copy: FeatureCopy, check_only: bool) -> Reader | None:
    members = _npz_members(copy)
    ids = np.array([image_id_of(Path(name).stem, where) for name, _, where in members], dtype=np.int64)
    first = load_npz(members[0][1](), members[0][2])
    if check_only:
        return None
    k, d = first.features.shape
    digest = FilesDigest()

    def load(member: tuple[str, Callable[[], bytes], str]) -> tuple[str, Row]:
        name, read, where = member
        data = read()
        return hashlib.sha256(data).hexdigest(), load_npz(data, where)

    def rows(progress: bool) -> Iterator[tuple[str, Row]]:
        loaded = prefetch(load, members)
        for (name, _, where), image_id in tqdm(list(zip(members, ids.tolist())), desc="npz files", unit="file",
                                               disable=not progress, leave=False):
            sha, row = next(loaded)
            digest.add(name, sha)
            row.image_id = image_id
            yield where, row

    folder = len(copy.files) == 1 and copy.files[0].is_dir()  # a zip is digested as a file
    return Reader(copy, ids, k, d, True, True, rows, {copy.files[0]: digest} if folder else {})


def prefetch(fn: Callable, items: list, workers: int = 2, window: int = 16) -> Iterator:
    """fn(item) for each item, in order, computed by `workers` threads at most `window` items ahead (reading,
    CRC and SHA-256 release the GIL, so files load while the caller writes)."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = collections.deque(pool.submit(fn, item) for item in items[:window])
        for item in items[window:]:
            yield pending.popleft().result()
            pending.append(pool.submit(fn, item))
        while pending:
            yield pending.popleft().result()


def open_copy(copy: FeatureCopy, check_only: bool = False, progress: bool = True) -> Reader | None:
    """The reader of an identified copy (None with `check_only`: the structural checks alone). For the TSV
    forms this makes the first pass over the rows' image ids (`tsv_index`)."""
    if copy.form in ("tsv", "lxmert_tsv"):
        return _tsv_reader(copy, check_only, progress)
    if copy.form in ("hdf5_trainval36", "hdf5_split36"):
        return _h5_reader(copy, check_only)
    if copy.form == "npz":
        return _npz_reader(copy, check_only)
    raise VQAError(f"unknown feature form {copy.form!r} (one of {', '.join(FORMS)})")


# ----------------------------------------------------------------------------- writing a form


def _b64(array: np.ndarray) -> bytes:
    return base64.b64encode(np.ascontiguousarray(array).tobytes())


def _extras(rng: np.random.Generator, k: int) -> tuple[np.ndarray, ...]:
    """LXMERT's detector outputs that the pipeline does not use: object / attribute ids and confidences."""
    return (rng.integers(0, 1600, k).astype(np.int64), np.sort(rng.random(k, dtype=np.float32))[::-1].copy(),
            rng.integers(0, 400, k).astype(np.int64), rng.random(k, dtype=np.float32))


def coco_name(split: str, image_id: int) -> str:
    return f"COCO_{split}_{image_id:012d}"


def check_form(form: str) -> None:
    if form not in FORMS:
        raise VQAError(f"unknown feature form {form!r} (one of {', '.join(FORMS)})")


def write_form(tsv_path: Path, form: str, data_dir: Path, split_of: dict[int, str], seed: int = 0,
               progress: bool = True) -> list[Path]:
    """Write the features of an original-form TSV as `form` under DATA/features/, then delete the TSV (and its
    folder when empty); "tsv" leaves it in place. `split_of` gives each image's COCO split (train2014 /
    val2014). Rows are kept in the TSV's order within a split, except that the val2014 part is shuffled (as
    LXMERT lists its minival images first): every form orders its images differently. Returns the files."""
    check_form(form)
    if form == "tsv":
        return [tsv_path]
    from vqa_cp.features import iter_tsv

    rng = np.random.default_rng(seed)
    by_split: dict[str, list[Row]] = {"train2014": [], "val2014": []}
    for _, r in iter_tsv(tsv_path, progress=progress):
        by_split[split_of[r.image_id]].append(Row(r.image_id, r.image_w, r.image_h, r.boxes, r.features))
    val = by_split["val2014"]
    by_split["val2014"] = [val[i] for i in rng.permutation(len(val))]
    out = data_dir / FEATURES_DIR
    out.mkdir(parents=True, exist_ok=True)
    written = {"lxmert_tsv": _write_lxmert, "hdf5_trainval36": _write_trainval36, "hdf5_split36": _write_split36,
               "npz": _write_npz}[form](out, by_split, rng)
    tsv_path.unlink()
    if not any(tsv_path.parent.iterdir()):
        tsv_path.parent.rmdir()
    return written


def _write_lxmert(out: Path, by_split: dict[str, list[Row]], rng: np.random.Generator) -> list[Path]:
    paths = []
    for split, rows in by_split.items():
        path = out / LXMERT_FILES[split]
        with open(path, "wb") as f:
            for r in rows:
                k = len(r.boxes)
                oid, oconf, aid, aconf = _extras(rng, k)
                f.write(b"\t".join([coco_name(split, r.image_id).encode(), b"%d" % r.image_h, b"%d" % r.image_w,
                                    _b64(oid), _b64(oconf), _b64(aid), _b64(aconf), b"%d" % k, _b64(r.boxes),
                                    _b64(r.features)]) + b"\r\n")
        paths.append(path)
    return paths


def _spatial(r: Row) -> np.ndarray:
    """x1/w, y1/h, x2/w, y2/h, bw/w, bh/h (float64, stored as float32)."""
    b = r.boxes.astype(np.float64)
    size = np.array([r.image_w, r.image_h], dtype=np.float64)
    return np.concatenate([b[:, :2] / size, b[:, 2:] / size, (b[:, 2:] - b[:, :2]) / size], axis=1)


def _write_h5(path: Path, rows: list[Row], boxes: bool) -> None:
    with h5py.File(path, "w") as h5:
        h5["image_features"] = np.stack([r.features for r in rows])
        if boxes:
            h5["image_bb"] = np.stack([r.boxes for r in rows])
            h5["spatial_features"] = np.stack([_spatial(r) for r in rows]).astype(np.float32)
    write_index_pickle(path.with_name(path.stem + INDEX_SUFFIXES[0]), {r.image_id: i for i, r in enumerate(rows)})


def _write_trainval36(out: Path, by_split: dict[str, list[Row]], rng: np.random.Generator) -> list[Path]:
    rows = by_split["train2014"] + by_split["val2014"]
    rows = [rows[i] for i in rng.permutation(len(rows))]
    path = out / TRAINVAL_H5
    _write_h5(path, rows, boxes=False)
    return [path, out / f"trainval36{INDEX_SUFFIXES[0]}"]


def _write_split36(out: Path, by_split: dict[str, list[Row]], rng: np.random.Generator) -> list[Path]:
    paths = []
    for split, rows in by_split.items():
        path = out / SPLIT_H5[split]
        _write_h5(path, rows, boxes=True)
        paths += [path, path.with_name(path.stem + INDEX_SUFFIXES[0])]
    return paths


def _write_npz(out: Path, by_split: dict[str, list[Row]], rng: np.random.Generator) -> list[Path]:
    folder = out / NPZ_DIR
    folder.mkdir()
    for split, rows in by_split.items():
        for r in rows:
            k = len(r.boxes)
            oid, oconf, _, _ = _extras(rng, k)
            info = np.array({"objects_id": oid, "objects_conf": oconf, "image_id": r.image_id}, dtype=object)
            # as bottom-up-attention.pytorch's extractor saves them: compressed, `info` an object array
            np.savez_compressed(folder / f"{coco_name(split, r.image_id)}.npz", x=r.features, bbox=r.boxes,
                                num_bbox=k, image_h=r.image_h, image_w=r.image_w, info=info)
    return [folder]


def form_files(data_dir: Path) -> list[Path]:
    """Every feature copy in DATA's raw layout: the original TSV, and what lies in DATA/features/."""
    found = []
    tsv = data_dir / ORIGINAL_TSV
    if tsv.exists():
        found.append(tsv)
    if (data_dir / FEATURES_DIR).is_dir():
        found += find_feature_files(data_dir / FEATURES_DIR)
    return found


class _Question(msgspec.Struct):
    image_id: int


class _V2Questions(msgspec.Struct):
    questions: list[_Question]


QUESTION_FILES = ("vqacp_v2_train_questions.json", "vqacp_v2_test_questions.json",
                  "v2_OpenEnded_mscoco_train2014_questions.json", "v2_OpenEnded_mscoco_val2014_questions.json")


def question_images(data_dir: Path) -> dict[str, np.ndarray]:
    """{file name: image ids its questions use} of the VQA-CP v2 and VQA v2 train2014 / val2014 question files
    present in DATA (the images the features must cover)."""
    out = {}
    for name in QUESTION_FILES:
        path = data_dir / name
        if not path.is_file():
            continue
        kind = list[_Question] if name.startswith("vqacp") else _V2Questions
        try:
            parsed = msgspec.json.decode(path.read_bytes(), type=kind)
        except msgspec.DecodeError as exc:
            raise VQAError(f"{path}: {exc}") from None
        questions = parsed if isinstance(parsed, list) else parsed.questions
        out[name] = np.unique(np.fromiter((q.image_id for q in questions), dtype=np.int64, count=len(questions)))
    return out


def coverage_problem(data_dir: Path, image_ids: np.ndarray, source: str) -> str | None:
    """One line when the questions in DATA use images that the features lack: how many and the first ids."""
    have = np.unique(image_ids)
    for name, used in question_images(data_dir).items():
        missing = used[~np.isin(used, have)]
        if len(missing):
            first = ", ".join(str(i) for i in missing[:5].tolist())
            return (f"{source}: {len(missing):,} images that {name} uses have no features (first ids: {first}); "
                    "the copy is refused")
    return None


def relative_name(path: Path, data_dir: Path) -> str:
    try:
        return path.relative_to(data_dir).as_posix()
    except ValueError:
        return str(path)


def release_notes(n: int, num_boxes: int, dim: int) -> list[str]:
    """One line for each way a copy is not the release's size (its image count; its boxes x features an image)."""
    notes = [] if n == RELEASE_IMAGES else [f"{n:,} images: not the full release's {RELEASE_IMAGES:,}"]
    if (num_boxes, dim) != (RELEASE_BOXES, RELEASE_DIM):
        notes.append(f"{num_boxes} boxes x {dim} features an image: not the release's {RELEASE_BOXES} x {RELEASE_DIM}")
    return notes

