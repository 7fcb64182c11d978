"""Small file helpers: atomic writes and JSON loading with clear errors."""

from __future__ import annotations

import contextlib
import errno
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
    """Delete temporaries that an interrupted atomic write of `path` left behind (its name may be a glob
    pattern, e.g. `checkpoint_e*_s*.pth`)."""
    if path.parent.is_dir():
        for stale in path.parent.glob(f"{_temp_prefix(path)}*{_TEMP_SUFFIX}"):
            stale.unlink()


# Errors of a write that names no file (f.write on a full disk): inside atomic_path they are the temporary's.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def _naming(exc: OSError, path: Path, tmp: str | None) -> OSError:
    """`exc` naming `path` where it is about the temporary `tmp`: `PATH: No space left on device`.

    With `tmp` None (mkstemp failed) the error is the temporary's; an error naming another file, or none
    with an errno a write does not give (a read of an input file), is left as it is.
    """
    if exc.errno is None:
        return exc
    if tmp is None or (exc.filename is not None and str(exc.filename) == tmp) or (
            exc.filename is None and exc.errno in _WRITE_ERRNOS):
        return type(exc)(exc.errno, exc.strerror, str(path))
    return exc


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    An interrupted or failed write leaves `path` as it was (absent or the previous complete file). An
    OSError while creating, writing or renaming the temporary names `path`, not the temporary.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next(p for p in path.parents if p.exists())
        raise NotADirectoryError(errno.ENOTDIR, f"{blocker} is a file, not a folder", str(path)) from None
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=_TEMP_SUFFIX, dir=path.parent)
    except OSError as exc:
        raise _naming(exc, path, tmp) from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the permissions open() would
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as exc:
        raise _naming(exc, path, tmp) from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def check_output_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """Refuse, before any work, an output path that cannot be written: a folder, a path under a regular
    file, or one in a folder where no file can be created (read-only mount, permissions)."""
    path = Path(path)
    if path.is_dir():
        raise VQAError(f"{path}: is a folder; give a file name for the {what}")
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise VQAError(f"{path}: cannot create the {what}: {folder} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=_TEMP_SUFFIX, dir=folder)
    except OSError as exc:
        raise VQAError(f"{path}: cannot write the {what} in {folder}: {exc.strerror or exc}") from None
    os.close(fd)
    os.unlink(probe)
    return path


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


HEAD_BYTES = 512  # what the cheap look at a file's start reads


def read_head(path: str | os.PathLike, n: int = HEAD_BYTES) -> bytes:
    """The first `n` bytes of a file."""
    with open(path, "rb") as f:
        return f.read(n)


def looks_like_html(head: bytes) -> bool:
    """Does a file starting with `head` look like an HTML or XML page (an error page saved under a data file's
    name)? A byte-order mark and white space before the tag are skipped."""
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n")[:200].lower()
    return start.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body", b"<error"))
