"""What each processing step was made from, judged by content, and replacing a step's outputs as one set.

A step's record (JSON, written after every output) lists its inputs (size and SHA-256 of each), its
parameters and its outputs (size and SHA-256, or for features.h5 a cheap summary). A step is up to date
only when its record exists and matches all three exactly. Digests are cached by (device, inode, size,
mtime_ns, ctime_ns): a replaced file (`cp -p`, unzip, rsync) has a new inode or ctime, so it is digested
again; no state is ever judged by modification time alone.

Steps whose outputs fill a folder (processed/cp, processed/v2) are built in a staging folder beside it,
record last, then swapped in by two renames; `recover_folder` finishes or undoes an interrupted swap.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from vqa_cp.errors import VQAError
from vqa_cp.files import write_json

RECORDS_DIR = ".records"
DIGEST_CACHE_FILE = "digests.json"
RECORD_FILE = ".record.json"  # inside a folder step's folder
RECORD_FORMAT = 1
DIGEST_BLOCK = 1 << 20
CACHE_ENTRIES = 2000
STAGING_SUFFIX = ".staging"
OLD_SUFFIX = ".old"

Summary = Callable[[Path], dict[str, Any]]


def stat_key(path: Path) -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(DIGEST_BLOCK):
            digest.update(block)
    return digest.hexdigest()


class DigestCache:
    """SHA-256 of files, remembered by (device, inode, size, mtime_ns, ctime_ns) in processed/.records/.

    Read-only users (training) pass `writable=False`; a missing or unreadable cache is just empty.
    """

    def __init__(self, processed: Path, writable: bool = True) -> None:
        self.path = processed / RECORDS_DIR / DIGEST_CACHE_FILE
        self.writable = writable
        self.entries: dict[str, str] = {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                self.entries = {k: v for k, v in data.items() if isinstance(v, str)}
        except (OSError, ValueError):
            pass  # no cache yet, or a damaged one: digests are recomputed
        self.dirty = False

    def digest(self, path: Path) -> str:
        key = stat_key(path)
        if key not in self.entries:
            self.entries[key] = sha256_file(path)
            self.dirty = True
        return self.entries[key]

    def remember(self, path: Path, digest: str) -> None:
        """Record a digest computed elsewhere (while the file was written or read)."""
        self.entries[stat_key(path)] = digest
        self.dirty = True

    def save(self) -> None:
        if self.writable and self.dirty:
            keep = dict(list(self.entries.items())[-CACHE_ENTRIES:])
            write_json(self.path, keep)
            self.dirty = False


@contextlib.contextmanager
def digest_cache(processed: Path) -> Iterator[DigestCache]:
    """A writable DigestCache, saved when the block ends; after a failure, saving is only attempted
    (the block's own error is the one to report)."""
    cache = DigestCache(processed)
    try:
        yield cache
    except BaseException:
        with contextlib.suppress(OSError):
            cache.save()
        raise
    cache.save()


def file_entry(path: Path, cache: DigestCache, summary: Summary | None = None) -> dict[str, Any]:
    """{"size", "sha256"} of a file, or {"size", "summary"} when `summary` is given (big HDF5 files)."""
    entry: dict[str, Any] = {"size": path.stat().st_size}
    if summary is not None:
        entry["summary"] = summary(path)
    else:
        entry["sha256"] = cache.digest(path)
    return entry


def record_path(processed: Path, step: str) -> Path:
    return processed / RECORDS_DIR / f"{step}.json"


def make_record(step: str, params: dict[str, Any], inputs: dict[str, dict], outputs: dict[str, dict]
                ) -> dict[str, Any]:
    return {"step": step, "format": RECORD_FORMAT, "params": params, "inputs": inputs, "outputs": outputs}


def read_record(path: Path) -> dict[str, Any] | None:
    """The record at `path`, or None when absent or unreadable (the step is then redone)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("outputs"), dict) else None


def output_problem(base: Path, record: dict[str, Any], cache: DigestCache,
                   summaries: dict[str, Summary] | None = None) -> str | None:
    """None when every output listed in `record` (paths relative to `base`) matches it, else why not."""
    summaries = summaries or {}
    for name, want in record["outputs"].items():
        path = base / name
        if not path.is_file():
            return f"{path}: missing"
        size = path.stat().st_size
        if size != want.get("size"):
            return f"{path}: {size} bytes, its record says {want.get('size')} (truncated or replaced)"
        try:
            have = file_entry(path, cache, summaries.get(name))
        except VQAError as exc:
            return str(exc)
        if have != want:
            return f"{path}: content differs from its record (corrupt or replaced)"
    return None


def is_current(record: dict[str, Any] | None, step: str, params: dict[str, Any], inputs: dict[str, dict]) -> bool:
    """True when `record` was made by this step from exactly these inputs and parameters."""
    return (record is not None and record.get("step") == step and record.get("format") == RECORD_FORMAT
            and record.get("params") == params and record.get("inputs") == inputs)


# ------------------------------------------------------------------------------- folder swap


def staging_of(folder: Path) -> Path:
    return folder.with_name(f".{folder.name}{STAGING_SUFFIX}")


def old_of(folder: Path) -> Path:
    return folder.with_name(f".{folder.name}{OLD_SUFFIX}")


def recover_folder(folder: Path) -> None:
    """Finish or undo an interrupted `swap_in`, and drop an abandoned staging folder.

    A staging folder holding its record is complete (the record is written last): if the swap stopped
    between its two renames, that new set goes into place; otherwise the old set goes back.
    """
    staging, old = staging_of(folder), old_of(folder)
    if old.exists() and not folder.exists():
        source = staging if (staging / RECORD_FILE).is_file() else old
        os.rename(source, folder)
    for leftover in (old, staging):
        if leftover.exists():
            shutil.rmtree(leftover)


def new_staging(folder: Path) -> Path:
    """An empty staging folder beside `folder` (after recovering any interrupted swap)."""
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "a file where the processed folder belongs", str(folder))
    recover_folder(folder)
    staging = staging_of(folder)
    staging.mkdir(parents=True)
    return staging


def swap_in(folder: Path) -> None:
    """Replace `folder` by its complete staging folder: rename old away, rename new in, remove old."""
    staging, old = staging_of(folder), old_of(folder)
    if folder.exists():
        os.rename(folder, old)
    os.rename(staging, folder)
    if old.exists():
        shutil.rmtree(old)


def check_record_file(path: Path, what: str) -> dict[str, Any]:
    """The record of a finished step, for loaders: a missing or unreadable one is a VQAError."""
    record = read_record(path)
    if record is None:
        raise VQAError(f"{path}: {what} has no readable processing record (interrupted or older processing?); "
                       "rerun tools/process.sh")
    return record
