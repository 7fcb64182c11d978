"""Content checks of a raw file, whether downloaded or imported: size, digest, the cheap look at its first bytes,
zip integrity, then the deep checks of other modules (`vqa_cp.verify.verify_raw` for the json and GloVe files,
`vqa_cp.feature_forms.identify_copy` for a features copy), called through the small seams below.

A check returns a one-line reason (refused) or None. Digests of big files are remembered in
DATA/.download/digests.json by (device, inode, size, mtime_ns, ctime_ns), so a 13 GB zip is read once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from vqa_cp import feature_forms
from vqa_cp.files import looks_like_html, read_head, write_json
from vqa_cp.provenance import stat_key
from vqa_cp.sources import Item

DIGESTS = Path(".download") / "digests.json"
BLOCK = 1 << 20


# --- the deep checks of vqa_cp.verify and vqa_cp.features, imported at call time (features imports torch) --------
def verify_raw(candidates: dict[str, Path], data_dir: Path, release: bool) -> Any:
    """vqa_cp.verify.verify_raw: a Verdict with `refused` {name: reason} and `notes` [line]."""
    from vqa_cp import verify

    return verify.verify_raw(candidates, data_dir, release)


def remember_notes(data_dir: Path, verdict: Any, files: dict[str, Path]) -> None:
    """vqa_cp.verify.remember: keep the verdict's notes for process.sh and main.py to repeat."""
    from vqa_cp import verify

    verify.remember(data_dir, verdict, files)


def find_feature_files(root: Path) -> list[Path]:
    return feature_forms.find_feature_files(root)


def identify_copy(paths: list[Path]) -> Any:
    """vqa_cp.feature_forms.identify_copy: a FeatureCopy (`form`, `files`); raises VQAError on a bad copy."""
    return feature_forms.identify_copy(paths)


def weights_problem(path: Path) -> str | None:
    """Why the detector's checkpoint cannot be read (vqa_cp.extraction.read_weights), or None."""
    from vqa_cp.errors import VQAError
    from vqa_cp.extraction import read_weights

    try:
        read_weights(path)
    except VQAError as exc:
        return str(exc)
    return None


def check_features(data_dir: Path) -> None:
    """Every row of the feature copy in DATA's raw layout checked (finite, shapes, boxes, the questions' images)
    while it is converted to processed/features.h5 (process.sh's step, remembered by its record); a VQAError
    names the file and row."""
    from vqa_cp.features import process_features

    process_features(data_dir)


# --- cheap checks -----------------------------------------------------------------------------------
def sniff_problem(path: Path, name: str) -> str | None:
    """Is the file at least the kind its raw-layout `name` says? Not an HTML/XML page; a .json starts with { or [;
    a GloVe .txt starts with a word and numbers."""
    head = read_head(path)
    if looks_like_html(head):
        return "an HTML or XML page (an error page?), not the file"
    if name.endswith(".json") and head.lstrip()[:1] not in (b"{", b"["):
        return f"not JSON: it starts with {head.lstrip()[:20]!r}"
    if Path(name).name.startswith("glove.") and name.endswith(".txt"):
        first, newline, _ = head.partition(b"\n")
        fields = first.split(b" ")
        if not newline:  # a GloVe line (~2,700 bytes at 300d) is longer than the head: its last field may be cut
            fields = fields[:-1]
        try:
            [float(x) for x in fields[1:]]
        except ValueError:
            return "not a GloVe text file (a word and numbers on each line)"
    return None


def json_problem(path: Path) -> str | None:
    """Does the file parse as JSON? The first line of the parser's message if not."""
    try:
        with open(path, "rb") as f:
            json.load(f)
    except ValueError as exc:
        return str(exc).splitlines()[0]
    return None


def zip_problem(path: Path) -> str | None:
    """A zip that opens and whose members all pass their CRC; the reason names the member when one fails."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            with tqdm(total=sum(i.file_size for i in infos), unit="B", unit_scale=True, unit_divisor=1024,
                      desc=f"testing {path.name}", disable=None, leave=False) as bar:
                for info in infos:
                    try:
                        with zf.open(info) as member:
                            while block := member.read(BLOCK):
                                bar.update(len(block))
                    except (zipfile.BadZipFile, EOFError, OSError, ValueError, zlib.error) as exc:
                        return f"corrupt zip: member {info.filename}: {exc}"
    except zipfile.BadZipFile as exc:
        return f"corrupt zip: {exc} (truncated, or not a zip)"
    return None


def copy_with_progress(src: Path, dest: Path) -> None:
    """Copy a file's bytes (a progress bar for big ones); permissions are dest's own."""
    with open(src, "rb") as f, open(dest, "wb") as out, tqdm(
            total=src.stat().st_size, unit="B", unit_scale=True, unit_divisor=1024, desc=f"copying {src.name}",
            disable=None, leave=False) as bar:
        while block := f.read(BLOCK):
            out.write(block)
            bar.update(len(block))


def extract_zip(path: Path, dest: Path) -> None:
    """Extract every member into `dest` (zipfile's own path sanitising), with a progress bar."""
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        with tqdm(total=sum(i.file_size for i in infos), unit="B", unit_scale=True, unit_divisor=1024,
                  desc=f"unzipping {path.name}", disable=None, leave=False) as bar:
            for info in infos:
                zf.extract(info, dest)
                bar.update(info.file_size)


# --- digests ----------------------------------------------------------------------------------------
@dataclass
class DigestMemory:
    """md5 / sha256 of files under DATA, remembered by stat key; written only when something was digested."""

    data_dir: Path
    entries: dict[str, dict[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            loaded = json.loads((self.data_dir / DIGESTS).read_text(encoding="utf-8"))
            if isinstance(loaded, dict):
                self.entries = {k: v for k, v in loaded.items() if isinstance(v, dict)}

    def digests(self, path: Path) -> dict[str, str]:
        """The file's digests, read once and remembered (a cache: a folder we cannot write in only costs a re-read)."""
        key = stat_key(path)
        if key not in self.entries:
            self.entries[key] = compute_digests(path)
            with contextlib.suppress(OSError):
                write_json(self.data_dir / DIGESTS, self.entries)
        return self.entries[key]

    def remember(self, path: Path, digests: dict[str, str]) -> None:
        self.entries[stat_key(path)] = digests
        write_json(self.data_dir / DIGESTS, self.entries)


def compute_digests(path: Path) -> dict[str, str]:
    """md5 and sha256 of a file in one read (with a progress bar for big files)."""
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as f, tqdm(total=path.stat().st_size, unit="B", unit_scale=True, unit_divisor=1024,
                                     desc=f"checking {path.name}", disable=None, leave=False) as bar:
        while block := f.read(BLOCK):
            md5.update(block)
            sha.update(block)
            bar.update(len(block))
    return {"md5": md5.hexdigest(), "sha256": sha.hexdigest()}


def identity_problem(item: Item, path: Path, digests: dict[str, str] | None) -> str | None:
    """Size and digest against the manifest's (None where they agree or are unknown)."""
    size = path.stat().st_size
    if item.size is not None and size != item.size:
        return f"{size:,} bytes, not the release's {item.size:,}"
    for algo in ("md5", "sha256"):
        expected = getattr(item, algo)
        if expected and digests is not None and digests[algo] != expected:
            return f"{algo} {digests[algo]}, not the release's {expected}"
    return None


def needs_digest(item: Item) -> bool:
    return bool(item.md5 or item.sha256)


def file_problem(item: Item, path: Path) -> str | None:
    """The check of the downloaded file itself, named by the manifest's `check` (`path` may be NAME.part)."""
    if item.check == "zip":
        return zip_problem(path)
    if item.check in ("json", "raw", "text"):
        sniffed = sniff_problem(path, item.path if item.check != "text" else "")
        if sniffed or item.check != "json":
            return sniffed
        problem = json_problem(path)
        if problem is not None:
            return f"the server sent something that is not valid JSON (an error page?): {problem}"
    return None
