"""Small file helpers: atomic writes and JSON loading with clear errors."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from vqa_cp.errors import VQAError

_TEMP_SUFFIX = ".tmp"


def _temp_prefix(path: Path) -> str:
    """Temporaries of `path` are named .{name}.XXXXXXXX.tmp beside it."""
    return f".{path.name}."


def remove_stale_temps(path: Path) -> None:
    """Delete temporaries that an interrupted atomic write of `path` left behind."""
    if path.parent.is_dir():
        for stale in path.parent.glob(f"{_temp_prefix(path)}*{_TEMP_SUFFIX}"):
            stale.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    An interrupted or failed write leaves `path` as it was (absent or the previous complete file).
    """
    path = Path(path)
    with _naming(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=_TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the permissions open() would
    tmp_path = Path(tmp)
    try:
        with _naming(path):
            yield tmp_path
            os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """Give an OSError that names no file, or only our temporary, the name of the file being written
    (a full disk raises ENOSPC from a write that names no file)."""
    try:
        yield
    except OSError as exc:
        name = None if exc.filename is None else Path(exc.filename)
        if name is not None and not (name.parent == path.parent and name.name.startswith(_temp_prefix(path))):
            raise
        raise type(exc)(exc.errno, exc.strerror or str(exc), str(path)) from exc


@contextlib.contextmanager
def atomic_paths(paths: Sequence[str | os.PathLike]) -> Iterator[list[Path]]:
    """Temporaries for several files written as one set: all are renamed into place only after the block
    has written every one of them, so a failure while writing (a full disk) leaves the previous set whole.
    """
    stack = contextlib.ExitStack()
    with stack:
        temps = [stack.enter_context(atomic_path(p)) for p in paths]
        yield temps
    # ExitStack renames in reverse order, each only once the block and every write have succeeded


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = None) -> None:
    """Write `obj` as JSON to `path` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=indent)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def load_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Load JSON, raising VQAError naming the file (missing, truncated or not JSON)."""
    path = Path(path)
    if not path.is_file():
        raise VQAError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise VQAError(
            f"{path}: not valid JSON (truncated or corrupt?) at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    except UnicodeDecodeError as exc:
        raise VQAError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
