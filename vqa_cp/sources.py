"""The download manifest (vqa_cp/sources.json): every raw file, where it can be had, how it is checked.

A file's sources are tried in this order: the user's own (--sources FILE, then each --mirror BASE_URL,
then $VQA_CP_SOURCES and $VQA_CP_MIRRORS), then the manifest's, whose first (canonical) URL an
environment variable such as VQA_CP_GLOVE_URL (a URL) or VQA_CP_VQACP_BASE (a base URL) replaces.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vqa_cp.errors import VQAError

MANIFEST = Path(__file__).with_name("sources.json")
MANIFEST_ENV = "VQA_CP_MANIFEST"
MIRRORS_ENV = "VQA_CP_MIRRORS"
SOURCES_ENV = "VQA_CP_SOURCES"
FILE_CHECKS = {"zip", "raw", "json", "text", "none"}
OUTPUT_CHECKS = {"raw", "json", "features", "none"}


@dataclass(frozen=True)
class Output:
    """A final file in DATA (relative path) and how its content is checked before it is put in place."""

    path: str
    check: str


@dataclass
class Item:
    """One download unit of the manifest."""

    group: str
    name: str  # the file's name at its sources (a mirror serves it as BASE_URL/name)
    path: str  # where the download lands, relative to DATA
    sources: list[str]
    outputs: list[Output]
    check: str = "none"
    size: int | None = None
    md5: str | None = None
    sha256: str | None = None
    extract: str | None = None  # "zip": extracted into `into`, then removed
    into: str = "."
    need_mb: int = 0
    optional: list[str] = field(default_factory=list)  # extracted outputs that are kept but not required
    env: str | None = None
    env_base: str | None = None

    @property
    def output_paths(self) -> list[str]:
        return [o.path for o in self.outputs]


@dataclass
class Manifest:
    items: list[Item]
    default_groups: list[str]
    advice: dict[str, str]
    path: Path

    @property
    def groups(self) -> list[str]:
        return list(dict.fromkeys(item.group for item in self.items))

    def item(self, name: str) -> Item:
        for item in self.items:
            if item.name == name:
                return item
        raise KeyError(name)


def _item(entry: Mapping[str, Any], where: str) -> Item:
    try:
        outputs = [Output(o["path"], o.get("check", "none")) for o in entry["outputs"]]
        item = Item(group=entry["group"], name=entry["name"], path=entry.get("path", entry["name"]),
                    sources=list(entry["sources"]), outputs=outputs, check=entry.get("check", "none"),
                    size=entry.get("size"), md5=entry.get("md5"), sha256=entry.get("sha256"),
                    extract=entry.get("extract"), into=entry.get("into", "."), need_mb=int(entry.get("need_mb", 0)),
                    optional=list(entry.get("optional", [])), env=entry.get("env"), env_base=entry.get("env_base"))
    except (KeyError, TypeError, ValueError) as exc:
        raise VQAError(f"{where}: a file entry is malformed ({type(exc).__name__}: {exc})") from None
    if item.check not in FILE_CHECKS or any(o.check not in OUTPUT_CHECKS for o in outputs):
        raise VQAError(f"{where}: {item.name}: unknown check (file checks {sorted(FILE_CHECKS)}, "
                       f"output checks {sorted(OUTPUT_CHECKS)})")
    return item


def load_manifest(env: Mapping[str, str] | None = None) -> Manifest:
    """Read the manifest ($VQA_CP_MANIFEST or vqa_cp/sources.json) and apply the VQA_CP_*_URL / _BASE overrides."""
    env = os.environ if env is None else env
    path = Path(env.get(MANIFEST_ENV) or MANIFEST)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise VQAError(f"{path}: cannot read the download manifest: {exc}") from None
    items = [_item(entry, str(path)) for entry in data.get("files", [])]
    for item in items:
        override = env.get(item.env) if item.env else None
        if item.env_base and env.get(item.env_base):
            override = f"{env[item.env_base].rstrip('/')}/{item.name}"
        if override:
            item.sources = [override, *item.sources[1:]]
    return Manifest(items, list(data.get("default_groups", [])), dict(data.get("advice", {})), path)


def read_sources_file(path: Path, manifest: Manifest) -> dict[str, list[str]]:
    """A user's sources file: {"file name": "URL" or ["URL", ...]} for names of the manifest."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise VQAError(f"{path}: cannot read the sources file: {exc}") from None
    if not isinstance(data, dict):
        raise VQAError(f"{path}: a sources file is a JSON object {{\"file name\": [\"URL\", ...]}}")
    known = {item.name for item in manifest.items}
    extra: dict[str, list[str]] = {}
    for name, urls in data.items():
        if name not in known:
            raise VQAError(f"{path}: unknown file name '{name}' (the manifest's names: {', '.join(sorted(known))})")
        urls = [urls] if isinstance(urls, str) else urls
        if not isinstance(urls, list) or not all(isinstance(u, str) and "://" in u for u in urls):
            raise VQAError(f"{path}: '{name}' needs a URL or a list of URLs")
        extra[name] = urls
    return extra


def add_user_sources(manifest: Manifest, mirrors: list[str], sources_files: list[Path],
                     env: Mapping[str, str]) -> None:
    """Put the user's sources before the manifest's: sources files, then mirrors (BASE_URL/name), flags before env."""
    files = list(sources_files)
    if env.get(SOURCES_ENV):
        files.append(Path(env[SOURCES_ENV]))
    bases = list(mirrors) + env.get(MIRRORS_ENV, "").split()
    per_file: dict[str, list[str]] = {}
    for path in files:
        for name, urls in read_sources_file(path, manifest).items():
            per_file.setdefault(name, []).extend(urls)
    for item in manifest.items:
        user = per_file.get(item.name, []) + [f"{base.rstrip('/')}/{item.name}" for base in bases]
        item.sources = list(dict.fromkeys(user + item.sources))
