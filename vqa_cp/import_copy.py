"""download.sh --from PATH: import a local copy of the raw files (a folder, a zip, a tar / tar.gz or one file).

Files are recognised by their usual names, wherever they sit (cp_v2_questions/vqacp_v2_train_questions.json,
data/glove/glove.6B.300d.txt, the VQA v2 zips, glove.6B.zip, trainval_36.zip, train2014.zip, a detector
folder); features copies of any form by vqa_cp.feature_forms. Each is checked like a download (the release's
counts and sizes are reported, not refused), then put in place without changing the user's copy: a hard link
or a copy to a temporary beside the destination, then a rename. Members of an archive are first extracted into
DATA/.import-N/; an archive that cannot be read to the end gives one line and nothing is imported from it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from vqa_cp import copy_checks as checks
from vqa_cp.download import (
    Context,
    check_outputs,
    check_writable,
    error,
    features_in_place,
    install_zip,
    note,
    place,
    remember_verdict,
    stage_zip,
)
from vqa_cp.errors import VQAError
from vqa_cp.feature_forms import FEATURES_DIR, ORIGINAL_TSV, form_files, relative_name
from vqa_cp.processing import processed_dir
from vqa_cp.provenance import read_record, record_path
from vqa_cp.sources import Item

FEATURE_SUFFIXES = (".tsv", ".hdf5", ".h5", ".pkl", ".npz")
BLOCK = 1 << 20


@dataclass
class Found:
    where: str  # how the report names it: a path, or ARCHIVE:MEMBER
    path: Path  # a readable file (the user's, or our extracted temporary)
    ours: bool  # our temporary (moved into place) or the user's (linked or copied)


@dataclass
class Plan:
    """What the --from paths hold, by destination."""

    raw: dict[str, Found] = field(default_factory=dict)  # raw-layout path -> file
    units: dict[str, Found] = field(default_factory=dict)  # manifest item name -> its file (zip, images, detector)
    feature_roots: list[tuple[str, Path, bool]] = field(default_factory=list)  # (where, folder, ours)
    failed: int = 0


class Names:
    """The file names an import recognises, from the selected items of the manifest."""

    def __init__(self, items: list[Item]) -> None:
        self.raw: dict[str, str] = {}
        self.units: dict[str, Item] = {}
        self.features = any(item.group == "features" for item in items)
        self.groups = sorted({item.group for item in items})
        for item in items:
            if item.extract or all(o.check == "none" for o in item.outputs):
                self.units[item.name] = item
            for path in [o.path for o in item.outputs if o.check in ("raw", "json")] + item.optional:
                self.raw[PurePosixPath(path).name] = path

    def wanted(self, name: str) -> bool:
        base = PurePosixPath(name).name
        return base in self.raw or base in self.units or (self.features and base.endswith(FEATURE_SUFFIXES))


def _add(plan: Plan, names: Names, found: Found) -> None:
    base = found.path.name
    if base == "config.yaml" and not (found.path.parent / "pytorch_model.bin").is_file():
        return  # a config.yaml is the detector's only beside its weights
    table, key = (plan.raw, names.raw[base]) if base in names.raw else (plan.units, base)
    if base not in names.raw and base not in names.units:
        return
    if key in table:
        note(f"{found.where}: not used, {key} comes from {table[key].where}")
        return
    table[key] = found


def scan_folder(folder: Path, plan: Plan, names: Names, ours: bool, label: str | None = None) -> None:
    """Every recognised file under `folder`; `label` names an archive whose members were extracted there."""
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            where = f"{label}:{path.relative_to(folder).as_posix()}" if label else str(path)
            _add(plan, names, Found(where, path, ours))
    if names.features:
        plan.feature_roots.append((label or str(folder), folder, ours))


def _safe_member_path(tmp: Path, name: str) -> Path:
    parts = [p for p in PurePosixPath(name).parts if p not in ("", "/", "..", ".")]
    return tmp.joinpath(*parts)


class _WriteFailed(Exception):
    """Writing an extracted member failed: a local problem, not the archive's."""

    def __init__(self, error: OSError, dest: Path) -> None:
        super().__init__(str(error))
        self.error = OSError(error.errno, error.strerror, str(dest)) if error.filename is None else error


def _copy_member(read, dest: Path) -> None:
    """Copy one member to `dest`; read errors are the archive's, write errors raise _WriteFailed."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        out = open(dest, "wb")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise _WriteFailed(exc, dest) from None
    with read() as src, out:
        while block := src.read(BLOCK):
            try:
                out.write(block)
            except OSError as exc:
                raise _WriteFailed(exc, dest) from None


def extract_wanted(archive: Path, tmp: Path, names: Names) -> str | None:
    """Extract the recognised members of a zip or tar into `tmp`; the one-line reason when it cannot be read."""
    member = "(its index)"
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    member = info.filename
                    if not info.is_dir() and names.wanted(member):
                        _copy_member(lambda i=info: zf.open(i), _safe_member_path(tmp, member))
            return None
        with tarfile.open(archive, "r:*") as tf:
            for info in tf:
                member = info.name
                if info.isfile() and names.wanted(member):
                    _copy_member(lambda i=info: tf.extractfile(i), _safe_member_path(tmp, member))
            return None
    except _WriteFailed as failed:
        raise failed.error from None
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, ValueError, zlib.error) as exc:
        return f"{archive}: cannot be read to the end at member {member} ({exc}; truncated?): nothing imported from it"


ZIP_MAGIC = b"PK\x03\x04"
LOCAL_HEADER = 30


def truncated_zip_member(path: Path) -> str:
    """The member a zip without its central directory (cut short) ends in, from the local headers."""
    size = path.stat().st_size
    name, offset = "(the first)", 0
    with open(path, "rb") as f:
        while offset + LOCAL_HEADER <= size:
            f.seek(offset)
            header = f.read(LOCAL_HEADER)
            if header[:4] != ZIP_MAGIC:
                break
            flags = int.from_bytes(header[6:8], "little")
            packed = int.from_bytes(header[18:22], "little")
            name_len, extra_len = int.from_bytes(header[26:28], "little"), int.from_bytes(header[28:30], "little")
            name = f.read(name_len).decode("utf-8", "replace")
            if flags & 0x08:  # sizes follow the data: no way to skip it
                break
            offset += LOCAL_HEADER + name_len + extra_len + packed
    return name


def archive_kind(path: Path) -> str | None:
    """"zip", "tar", "cut zip" (a zip's first bytes without its central directory) or None."""
    if zipfile.is_zipfile(path):
        return "zip"
    if tarfile.is_tarfile(path):
        return "tar"
    with open(path, "rb") as f:
        return "cut zip" if f.read(4) == ZIP_MAGIC else None


def scan(source: Path, plan: Plan, names: Names, data: Path, index: int) -> None:
    """Add what `source` (folder, archive or file) holds to `plan`."""
    if source.is_dir():
        before = len(plan.raw) + len(plan.units)
        scan_folder(source, plan, names, ours=False)
        if len(plan.raw) + len(plan.units) == before and not (names.features and checks.find_feature_files(source)):
            error(f"--from {source}: holds no file download.sh knows (for the groups {', '.join(names.groups)})")
            plan.failed += 1
    elif not source.is_file():
        error(f"--from {source}: no such file or folder")
        plan.failed += 1
    elif source.name in names.raw or source.name in names.units:
        _add(plan, names, Found(str(source), source, ours=False))
    elif archive_kind(source) == "cut zip":
        error(f"{source}: a zip cut short (no central directory) in member {truncated_zip_member(source)}: "
              "nothing imported from it")
        plan.failed += 1
    elif archive_kind(source):
        tmp = data / f".import-{index}"
        shutil.rmtree(tmp, ignore_errors=True)
        problem = extract_wanted(source, tmp, names)
        if problem:
            shutil.rmtree(tmp, ignore_errors=True)
            error(problem)
            plan.failed += 1
        else:
            scan_folder(tmp, plan, names, ours=True, label=str(source))
    elif names.features and source.name.endswith(FEATURE_SUFFIXES):
        plan.feature_roots.append((str(source), source, False))
    else:
        error(f"--from {source}: not a file download.sh knows (a raw file, one of its zips, a features file, "
              "or a zip / tar holding them)")
        plan.failed += 1


# --- checking and placing ---------------------------------------------------------------------------
@dataclass
class Report:
    imported: list[str] = field(default_factory=list)
    in_place: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


def import_raw(plan: Plan, ctx: Context, report: Report) -> None:
    """Check the single raw files together (verify_raw sees them as one copy), then place those not refused."""
    todo = {}
    for name, found in plan.raw.items():
        in_place = ctx.data / name
        problem = checks.sniff_problem(in_place, name) if in_place.is_file() else None
        if problem is None and in_place.is_file() and name.endswith(".json"):
            problem = checks.json_problem(in_place)
        if problem:  # a bad file in place (an error page saved under the name): aside, as download.sh does
            os.replace(in_place, in_place.with_name(in_place.name + ".bad"))
            note(f"{in_place} in place is bad ({problem}); moved to {in_place.name}.bad")
        if in_place.exists():
            report.in_place.append(name)
            note(f"{ctx.data / name} is already in place: {found.where} not imported (remove it to import this copy)")
        else:
            todo[name] = found
    if not todo:
        return
    refused, verdict = check_outputs({name: found.path for name, found in todo.items()}, ctx)
    placed = []
    for name, found in todo.items():
        if name in refused:
            report.refused.append(f"{name} from {found.where}: {refused[name]}")
            continue
        place(found.path, ctx.data / name, keep_source=not found.ours)
        report.imported.append(f"{name} from {found.where}")
        placed.append(name)
    remember_verdict(ctx, verdict, placed)


def unit_problem(item: Item, path: Path) -> str | None:
    """What makes a copy of a release zip or of the detector's weights unusable whatever its size (a copy may be a
    subset, but not a zip or a checkpoint cut short)."""
    if archive_kind(path) == "cut zip":
        return f"a zip cut short (no central directory; {path.stat().st_size:,} bytes)"
    if item.name == "pytorch_model.bin":
        return checks.weights_problem(path)
    return None


def import_unit(item: Item, found: Found, ctx: Context, report: Report) -> None:
    """A zip of the release (checked, extracted, its outputs placed) or an images / detector file (placed)."""
    if all((ctx.data / out).is_file() for out in item.output_paths):
        report.in_place.append(item.name)
        note(f"{item.name}'s files are already in place: {found.where} not imported")
        return
    problem = unit_problem(item, found.path)
    if problem:
        report.refused.append(f"{item.name} from {found.where}: {problem}")
        return
    digests = checks.compute_digests(found.path) if checks.needs_digest(item) else None
    identity = checks.identity_problem(item, found.path, digests)
    if identity:
        note(f"{found.where}: {identity} (kept: a copy may be a subset)")
    if item.extract != "zip":
        place(found.path, ctx.data / item.path, keep_source=not found.ours)
        if digests is not None:
            ctx.memory.remember(ctx.data / item.path, digests)
        report.imported.append(f"{item.path} from {found.where}")
        return
    staged, problem = stage_zip(item, found.path, ctx)
    if staged is None:
        if archive_kind(found.path) == "cut zip":
            problem = f"a zip cut short (no central directory) in member {truncated_zip_member(found.path)}"
        report.refused.append(f"{item.name} from {found.where}: {problem}")
        return
    install_zip(item, staged, ctx)
    report.imported.extend(f"{out} from {found.where}" for out in item.output_paths)


def feature_destination(form: str, path: Path) -> Path:
    """Where a feature copy's file goes (docs/DESIGN.md raw layout): the original TSV keeps its place."""
    if form == "tsv":
        return Path(ORIGINAL_TSV)
    if form == "npz":
        return Path(FEATURES_DIR) / "npz" / path.name
    return Path(FEATURES_DIR) / path.name


def same_content(a: Path, b: Path, ctx: Context) -> bool:
    """The same file (a hard link), or the same size and SHA-256 (digests remembered by content identity)."""
    sa, sb = a.stat(), b.stat()
    if (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino):
        return True
    return sa.st_size == sb.st_size and ctx.memory.digests(a)["sha256"] == ctx.memory.digests(b)["sha256"]


def feature_clash(dests: dict[Path, Path], ctx: Context) -> str | None:
    """Why the copy `dests` {file: destination} cannot go in: another copy, or other content, in the raw layout, or
    processed/features.h5 holding extracted features (which only extract_features.py --force replaces)."""
    targets = set(dests.values())
    clash = [p for p in form_files(ctx.data)
             if p not in targets and not (p.is_dir() and all(f in targets for f in p.glob("*.npz")))]
    clash += [d for s, d in dests.items() if d.is_file() and not same_content(s, d, ctx)]
    if clash:
        shown = ", ".join(relative_name(p, ctx.data) for p in clash[:3])
        return f"another feature copy is in place ({shown}); remove it (and processed/features.h5) to import this one"
    record = read_record(record_path(processed_dir(ctx.data), "features"))
    if record is not None and record.get("params", {}).get("form") == "extracted":
        return ("processed/features.h5 holds features made by tools/extract_features.py; remove it (and its record "
                "processed/.records/features.json) to import a copy instead")
    return None


def import_features(where: str, root: Path, ours: bool, ctx: Context, report: Report) -> None:
    """Find the feature files under `root` (or `root` itself), identify the copy's form, and import it whole or not
    at all: its missing files are placed, then every row is checked and converted (`copy_checks.check_features`:
    one read, remembered by processed/features.h5's record, so a copy already checked is not read again). A copy
    that fails, or an import interrupted before its check ends, leaves none of its files in place: a failure removes
    them, and a rerun checks files left by a killed run. Another copy in place is refused, never mixed with."""
    paths = [root] if root.is_file() else checks.find_feature_files(root)
    if not paths:
        return
    try:
        copy = checks.identify_copy(paths)
    except VQAError as exc:
        report.refused.append(f"features from {where}: {exc}")
        return
    files = [f for p in copy.files for f in ([p] if p.is_file() else sorted(p.glob("*.npz")))]
    dests = {path: ctx.data / feature_destination(copy.form, path) for path in files}
    clash = feature_clash(dests, ctx)
    if clash:
        report.refused.append(f"features from {where}: {clash}")
        return
    placed: list[Path] = []
    try:
        for path, dest in dests.items():
            if not dest.exists():
                place(path, dest, keep_source=not ours)
                placed.append(dest)
        checks.check_features(ctx.data)
    except BaseException as exc:  # every destination holds this copy's content: removing them loses nothing
        for dest in dests.values():
            dest.unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # the folders the copy's files made, when nothing else is in them
                dest.parent.rmdir()
        if not isinstance(exc, VQAError):
            raise
        message = str(exc)
        for path, dest in dests.items():  # name the copy's own files, not their removed places in DATA
            message = message.replace(str(dest), label_of(path, where, root, ours))
        report.refused.append(f"features from {where}: {message}")
        return
    for path, dest in dests.items():
        if dest not in placed:
            report.in_place.append(relative_name(dest, ctx.data))
            continue
        report.imported.append(f"{relative_name(dest, ctx.data)} ({copy.form}) from "
                               f"{label_of(path, where, root, ours)}")


def label_of(path: Path, where: str, root: Path, ours: bool) -> str:
    """How the report names a file of a copy: ARCHIVE:MEMBER for our extracted temporaries, else its path."""
    return f"{where}:{path.relative_to(root).as_posix()}" if ours and root.is_dir() else str(path)


def missing_outputs(items: list[Item], data: Path) -> list[str]:
    """Final outputs of the selected items still absent (a copy of the features in another form, or extracted
    features, stand for the original TSV)."""
    return [out for item in items for out in item.output_paths
            if not (item.group == "features" and features_in_place(data)) and not (data / out).is_file()]


def import_all(sources: list[Path], items: list[Item], ctx: Context) -> int:
    """Import every recognised file of `sources` into ctx.data; 1 when something was refused or unreadable."""
    check_writable(ctx.data)
    names, plan, report = Names(items), Plan(), Report()
    try:
        for index, source in enumerate(sources):
            scan(source, plan, names, ctx.data, index)
        import_raw(plan, ctx, report)
        for name, found in plan.units.items():
            import_unit(names.units[name], found, ctx, report)
        for where, root, ours in plan.feature_roots:
            import_features(where, root, ours, ctx, report)
    finally:
        for index in range(len(sources)):
            shutil.rmtree(ctx.data / f".import-{index}", ignore_errors=True)
    for line in report.imported:
        print(f"imported {line}")
    for line in report.refused:
        error(f"refused {line}")
    missing = missing_outputs(items, ctx.data)
    print(f"still missing: {', '.join(missing)}" if missing else "nothing missing for the selected groups")
    unreadable = f", {plan.failed} --from path(s) unreadable or empty" if plan.failed else ""
    print(f"summary: {len(report.imported)} imported, {len(report.in_place)} already in place, "
          f"{len(report.refused)} refused{unreadable}")
    return 1 if report.refused or plan.failed else 0
