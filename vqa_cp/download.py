"""Download the raw data (tools/download.sh) or import a local copy of it (--from), into the raw layout.

Every file comes from the manifest vqa_cp/sources.json; its sources are tried in order until one serves a
file that passes its checks (vqa_cp.copy_checks); the report names the source that served each file, or,
when none did, every source's reason on one line. Exit codes: 0 all done, 1 a file failed (or a local
problem), 2 a usage error.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vqa_cp import copy_checks as checks
from vqa_cp import feature_forms
from vqa_cp.errors import VQAError, describe_os_error, run_cli
from vqa_cp.processing import processed_dir
from vqa_cp.provenance import read_record, record_path
from vqa_cp.sources import Item, Manifest, add_user_sources, load_manifest
from vqa_cp.transfer import LocalWriteFailed, Settings, SourceFailed, fetch

PROG = "download.sh"

USAGE = """\
usage: {prog} [--data DIR] [--only NAME[,NAME...]] [--from PATH]... [--mirror BASE_URL]... [--sources FILE]...
       [--dry-run] [--min-free-gb N] [--help]

Download the raw data into DIR (default: data/) with the layout of docs/DESIGN.md ("Raw layout"):
  glove     glove.6B.zip (822 MB)            -> DIR/glove/glove.6B.{{50,100,200,300}}d.txt
  vqa2      five VQA v2 zips (~140 MB)       -> DIR/v2_OpenEnded_mscoco_*_questions.json,
                                                DIR/v2_mscoco_{{train,val}}2014_annotations.json
  vqacp     four VQA-CP v2 json files        -> DIR/vqacp_v2_{{train,test}}_{{questions,annotations}}.json
  features  trainval_36.zip (~25 GB)         -> DIR/trainval_36/trainval_resnet101_faster_rcnn_genome_36.tsv
  images    COCO train2014.zip, val2014.zip (20 GB, kept zipped) -> DIR/images/  (only with --only)
  detector  config.yaml, pytorch_model.bin of unc-nlp/frcnn-vg-finetuned -> DIR/detector/  (only with --only)
Default: {defaults}. The sources of every file, tried in order, are in vqa_cp/sources.json.

Sources: your own come first (--sources files, then --mirror bases, then $VQA_CP_SOURCES, $VQA_CP_MIRRORS),
then the manifest's (the canonical URL, which VQA_CP_*_URL / _BASE replace, then the known mirrors). The
report names the source that served each file; when all fail it prints one line per file with every
source's reason (DNS failure, refused, timeout or stall, HTTP status and the first words of the error body,
a file that failed its check) and what to do next.

Downloads go to NAME.part; an interrupted download resumes where it stopped when run again. A download
counts as fetched only when it is complete and passes its checks: the size and digest the manifest knows,
a zip's CRCs, a json's look and the content checks of vqa_cp.verify, a features copy's structure. One that
fails (say an HTML error page served with 200) is moved aside to NAME.bad (replacing an older NAME.bad;
never removed by the script) and the next source is tried. A file whose final outputs are present is
skipped, except a json in place that is not JSON, or an images/detector file whose digest is wrong: it is
moved to NAME.bad and fetched again. A zip is extracted into a temporary folder, checked, its files moved
into place, and only then removed. Digests of big files are remembered (DIR/.download/digests.json).
--data must be writable: that is checked before any download, and a local write failure (folder not
writable, disk full) is reported on one line naming the cause, never retried. A file that fails is reported
on one line; the others still download, and the script exits 1 at the end with the list of failures (2 for
a usage error). The default set needs about 100 GB free.

Import a copy instead (no network): --from PATH, repeatable. PATH is a folder, a zip, a tar or tar.gz, or a
single file, holding any raw files under their usual names and sub-folders (cp_v2_questions/, data/glove/,
the VQA v2 zips or their json files, glove.6B.zip or its txt files, trainval_36.zip or the TSV, features in
any form vqa_cp.feature_forms reads). Each file is checked like a download (the release's counts and sizes
are reported, not refused, so a subset imports) and put in place by a hard link where the file system
allows, else a copy, atomically; your copy is never changed. The report lists what was imported from where,
what was refused and why, and what is still missing.

options:
  --data DIR         destination folder (default: data)
  --only NAMES       comma-separated subset of: {groups} (default: {defaults})
  --from PATH        import a local copy (repeatable); nothing is downloaded
  --mirror BASE_URL  try BASE_URL/NAME for every file, before the manifest's sources (repeatable)
  --sources FILE     JSON {{"NAME": ["URL", ...]}} of extra sources, tried first (repeatable)
  --dry-run          print one line per file (sources -> destination) and exit; no network, nothing written
  --min-free-gb N    free space (GB) to require instead of the estimate for the selected files
  -h, --help         show this help

environment (defaults in brackets):
  VQA_CP_GLOVE_URL        GloVe zip URL [https://nlp.stanford.edu/data/glove.6B.zip]
  VQA_CP_VQA2_BASE        base URL of the VQA v2 zips [https://s3.amazonaws.com/cvmlp/vqa/mscoco/vqa]
  VQA_CP_VQACP_BASE       base URL of the VQA-CP v2 json files [https://computing.ece.vt.edu/~aish/vqacp]
  VQA_CP_FEATURES_URL     bottom-up features zip URL
                          [https://storage.googleapis.com/up-down-attention/trainval_36.zip]
  VQA_CP_IMAGES_BASE      base URL of the COCO zips [http://images.cocodataset.org/zips]
  VQA_CP_DETECTOR_BASE    base URL of the detector files
                          [https://huggingface.co/unc-nlp/frcnn-vg-finetuned/resolve/main]
  VQA_CP_MIRRORS          base URLs (space-separated) tried like --mirror
  VQA_CP_SOURCES          a sources file, read like --sources
  VQA_CP_MANIFEST         a manifest to read instead of vqa_cp/sources.json
  VQA_CP_RETRIES          extra attempts per source after a failure [2]
  VQA_CP_RETRY_DELAY      seconds between attempts [5]
  VQA_CP_CONNECT_TIMEOUT  seconds to wait for a connection [30]
  VQA_CP_STALL_SECONDS    abort an attempt that stays under 1 KB/s for this many seconds [120]
"""


class UsageError(Exception):
    """A mistake in the command line: `error: ... (see download.sh --help)`, exit code 2."""


@dataclass
class Options:
    data: Path = Path("data")
    only: list[str] = field(default_factory=list)
    froms: list[Path] = field(default_factory=list)
    mirrors: list[str] = field(default_factory=list)
    sources: list[Path] = field(default_factory=list)
    dry_run: bool = False
    min_free_gb: int | None = None
    help: bool = False


_VALUED = {"--data", "--only", "--from", "--mirror", "--sources", "--min-free-gb"}


def _set_option(opts: Options, flag: str, value: str) -> None:
    if flag == "--data":
        opts.data = Path(value) if value else Path()
        if not value:
            raise UsageError("--data needs a non-empty folder")
    elif flag == "--only":
        opts.only = value.split(",") if value else []
    elif flag == "--from":
        opts.froms.append(Path(value))
    elif flag == "--mirror":
        if "://" not in value:
            raise UsageError(f"--mirror takes a base URL such as https://host/path, got '{value}'")
        opts.mirrors.append(value)
    elif flag == "--sources":
        opts.sources.append(Path(value))
    elif not value.isdigit():
        raise UsageError(f"--min-free-gb takes a whole number of GB, got '{value}'")
    else:
        opts.min_free_gb = int(value)


def parse_args(argv: list[str], manifest: Manifest) -> Options:
    """The flags of download.sh (hand-parsed so that every message is the script's own)."""
    opts = Options(only=list(manifest.default_groups))
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-h", "--help"):
            opts.help = True
            return opts
        if arg == "--dry-run":
            opts.dry_run = True
        elif arg in _VALUED:
            if not args:
                raise UsageError(f"{arg} needs a value")
            _set_option(opts, arg, args.pop(0))
        elif arg.split("=", 1)[0] in _VALUED and "=" in arg:
            _set_option(opts, *arg.split("=", 1))
        else:
            raise UsageError(f"unknown argument '{arg}'")
    groups = manifest.groups
    if not [g for g in opts.only if g]:
        raise UsageError(f"--only needs at least one name out of {','.join(groups)}")
    for name in opts.only:
        if name not in groups:
            raise UsageError(f"unknown --only name '{name}' (choose from {','.join(groups)})")
    return opts


def env_int(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name) or str(default)
    if not value.isdigit():
        raise UsageError(f"environment variable {name} must be a non-negative integer, got '{value}'")
    return int(value)


def settings_from(env: Mapping[str, str]) -> Settings:
    return Settings(connect_timeout=env_int(env, "VQA_CP_CONNECT_TIMEOUT", 30),
                    stall_seconds=env_int(env, "VQA_CP_STALL_SECONDS", 120),
                    retries=env_int(env, "VQA_CP_RETRIES", 2), retry_delay=env_int(env, "VQA_CP_RETRY_DELAY", 5))


def error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


@dataclass
class Context:
    """What every step of a run needs."""

    data: Path
    manifest: Manifest
    settings: Settings
    memory: checks.DigestMemory
    release: bool = True  # False for an imported copy: the release's counts and sizes are reported, not refused
    verdicts: dict[str, Any] = field(default_factory=dict)  # of staged zips, remembered once in place

    def output_check(self, name: str) -> str:
        for item in self.manifest.items:
            for output in item.outputs:
                if output.path == name:
                    return output.check
        return "none"

    def advice(self, item: Item) -> str:
        """What to do next; the manifest's DATA stands for --data."""
        text = self.manifest.advice.get(item.group, "check the URL and your connection, then run again")
        return text.replace("DATA", str(self.data))


# --- output checks and placing ----------------------------------------------------------------------
def check_outputs(staged: dict[str, Path], ctx: Context) -> tuple[dict[str, str], Any]:
    """Check staged raw-layout files {name: path}: refused {name: reason}, and the verify verdict (or None).

    A file refused by the cheap look is not shown to verify_raw; its notes are printed here.
    """
    refused: dict[str, str] = {}
    raw: dict[str, Path] = {}
    for name, path in staged.items():
        kind = ctx.output_check(name)
        problem = checks.sniff_problem(path, name) if kind != "features" else None
        if problem is None and kind == "json" and name.endswith(".json"):
            problem = checks.json_problem(path)
            problem = None if problem is None else f"not valid JSON: {problem}"
        if problem is None and kind == "features":
            try:
                checks.identify_copy([path])
            except VQAError as exc:
                problem = str(exc)
        if problem:
            refused[name] = problem
        elif kind == "raw":
            raw[name] = path
    verdict = None
    if raw:
        verdict = checks.verify_raw(raw, ctx.data, ctx.release)
        refused.update({name: reason for name, reason in verdict.refused.items() if name in raw})
        for line in verdict.notes:
            note(line)
    return refused, verdict


def remember_verdict(ctx: Context, verdict: Any, placed: list[str]) -> None:
    files = {name: ctx.data / name for name in placed if ctx.output_check(name) == "raw"}
    if verdict is not None and files:
        checks.remember_notes(ctx.data, verdict, files)


def place(src: Path, dest: Path, keep_source: bool) -> None:
    """Put `src` at `dest` atomically: a rename (our own temporaries), else a hard link or a copy to a temporary
    beside `dest`, then a rename. `src` is never changed when `keep_source`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not keep_source:
        os.replace(src, dest)
        return
    tmp = dest.with_name(f".{dest.name}.import.tmp")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(src, tmp)
        except OSError:  # another file system, or links not allowed: a copy
            checks.copy_with_progress(src, tmp)
        os.replace(tmp, dest)
    except OSError as exc:  # a full disk names no file, or our temporary: name the destination
        if exc.filename is None or str(exc.filename) == str(tmp):
            raise OSError(exc.errno, exc.strerror, str(dest)) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


# --- zips ---------------------------------------------------------------------------------------------
def stage_zip(item: Item, zip_path: Path, ctx: Context, tested: bool = False) -> tuple[Path | None, str | None]:
    """Test `zip_path`, extract it into DATA/.unzip-NAME and check its outputs: (folder, None) or (None, reason)."""
    problem = None if tested else checks.zip_problem(zip_path)
    if problem:
        return None, problem
    tmp = ctx.data / f".unzip-{item.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"unzipping {zip_path} into {ctx.data / item.into if item.into != '.' else ctx.data}")
    checks.extract_zip(zip_path, tmp)
    rels = {o: os.path.relpath(o, item.into) for o in item.output_paths}
    missing = [rel for rel in rels.values() if not (tmp / rel).is_file()]
    if missing:
        shutil.rmtree(tmp, ignore_errors=True)
        return None, f"the zip lacks the expected file(s) {' '.join(missing)}"
    refused, verdict = check_outputs({o: tmp / rel for o, rel in rels.items()}, ctx)
    if refused:
        shutil.rmtree(tmp, ignore_errors=True)
        return None, "; ".join(f"{name}: {reason}" for name, reason in refused.items())
    ctx.verdicts[item.name] = verdict
    return tmp, None


def install_zip(item: Item, tmp: Path, ctx: Context) -> None:
    """Move the extracted files into place, the final outputs last (their presence means the whole zip is in)."""
    dest = ctx.data if item.into == "." else ctx.data / item.into
    finals = {os.path.relpath(o, item.into) for o in item.output_paths}
    files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
    for rel in [r for r in files if r not in finals] + sorted(finals):
        place(tmp / rel, dest / rel, keep_source=False)
    shutil.rmtree(tmp)
    remember_verdict(ctx, ctx.verdicts.pop(item.name, None), item.output_paths)


# --- what is in place -------------------------------------------------------------------------------
def in_place_problem(item: Item, ctx: Context) -> str | None:
    """Why a single-file item's output in DATA is not acceptable (a json that is not JSON, a wrong digest)."""
    path = ctx.data / item.path
    if item.check == "json":
        problem = checks.json_problem(path)
        return None if problem is None else f"is not valid JSON ({problem})"
    if item.check in ("raw", "text"):
        problem = checks.sniff_problem(path, item.path if item.check == "raw" else "")
        if problem is None and item.check == "raw" and path.suffix == ".json":
            parse = checks.json_problem(path)  # a download cut short and renamed by hand starts well
            problem = None if parse is None else f"not valid JSON ({parse})"
        return None if problem is None else f"is {problem}"
    if checks.needs_digest(item):
        problem = checks.identity_problem(item, path, ctx.memory.digests(path))
        return None if problem is None else f"has {problem}"
    return None


def features_in_place(data: Path) -> str | None:
    """What stands for the features in DATA when the original TSV does not: a copy in another form in
    DATA/features/, or processed/features.h5 made by tools/extract_features.py; None when neither."""
    copies = [p for p in feature_forms.form_files(data) if p != data / feature_forms.ORIGINAL_TSV]
    if copies:
        return f"a copy in {data / feature_forms.FEATURES_DIR}/"
    record = read_record(record_path(processed_dir(data), "features"))
    if record is not None and record.get("params", {}).get("form") == "extracted":
        return f"extracted features in {processed_dir(data) / 'features.h5'}"
    return None


def is_complete(item: Item, ctx: Context) -> bool:
    """All final outputs are present (and a single file in place passes its cheap check); for the features, a copy
    in another form or extracted features count (a second form would only be refused by process.sh)."""
    if item.group == "features" and features_in_place(ctx.data):
        return True
    if not all((ctx.data / out).is_file() for out in item.output_paths):
        return False
    return item.extract is not None or in_place_problem(item, ctx) is None


def dry_run_line(item: Item, data: Path) -> str:
    line = f"{item.sources[0]} -> {data}/{item.path}"
    if item.extract:
        dest = data if item.into == "." else data / item.into
        line += f" (unzip into {dest}/, then remove the zip)"
    if len(item.sources) > 1:
        line += f" (then: {', '.join(item.sources[1:])})"
    return line


# --- checks before any download ---------------------------------------------------------------------
def free_mb(folder: Path) -> int:
    existing = folder
    while not existing.exists():
        existing = existing.parent
    return shutil.disk_usage(existing).free // (1 << 20)


def check_space(data: Path, need_mb: int) -> None:
    have = free_mb(data)
    if have < need_mb:
        raise LocalProblem(f"not enough free disk space for {data}: need about {(need_mb + 1023) // 1024} GB, "
                           f"{have // 1024} GB available (free some space, choose another --data, fetch a subset "
                           "with --only, or override the estimate with --min-free-gb)")


class LocalProblem(Exception):
    """A problem on this machine found before any download: one line, exit code 1."""


def check_writable(data: Path) -> None:
    """Refuse, on one line and before any download, a --data folder we cannot write in."""
    if data.exists() and not data.is_dir():
        raise LocalProblem(f"--data {data} is a file, not a folder (choose another --data)")
    try:
        data.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        parent = data
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise LocalProblem(f"cannot create --data {data}: {parent} is a file, not a folder "
                               "(choose another --data)") from None
        raise LocalProblem(f"cannot create --data {data}: {exc.strerror} (choose another --data, or make "
                           f"{parent} writable)") from None
    probe = data / f".download-write-test.{os.getpid()}"
    try:
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise LocalProblem(f"--data {data} is not writable: {exc.strerror} (fix its permissions or mount, "
                           "or choose another --data)") from None


# --- downloading --------------------------------------------------------------------------------------
def accept_download(item: Item, part: Path, ctx: Context) -> tuple[str | None, Path | None, dict[str, str] | None]:
    """Check a complete download: (reason it is refused or None, staged zip folder, digests)."""
    digests = checks.compute_digests(part) if checks.needs_digest(item) else None
    problem = checks.identity_problem(item, part, digests)
    if problem is None and item.check != "zip":
        problem = checks.file_problem(item, part)
    if problem is None and item.extract == "zip":
        staged, problem = stage_zip(item, part, ctx)
        return problem, staged, digests
    if problem is None and any(o.path == item.path and o.check == "raw" for o in item.outputs):
        refused, verdict = check_outputs({item.path: part}, ctx)
        problem = refused.get(item.path)
        ctx.verdicts[item.name] = verdict
    return problem, None, digests


def try_source(item: Item, url: str, ctx: Context) -> str | None:
    """Fetch `item` from `url` and put it in place; None when done, else the source's one-line reason.
    Raises LocalWriteFailed for a local problem."""
    target = ctx.data / item.path
    part, bad = target.with_name(target.name + ".part"), target.with_name(target.name + ".bad")
    print(f"downloading {url} -> {target}")
    try:
        fetch(url, part, ctx.data, ctx.settings, item.name)
    except SourceFailed as exc:
        return exc.reason
    problem, staged, digests = accept_download(item, part, ctx)
    if problem:
        os.replace(part, bad)
        return f"sent a bad file: {problem}; moved to {bad}, the next run downloads it afresh"
    if staged is not None:
        install_zip(item, staged, ctx)
        part.unlink()
    else:
        os.replace(part, target)
        if digests is not None:
            ctx.memory.remember(target, digests)
        remember_verdict(ctx, ctx.verdicts.pop(item.name, None), [item.path])
    print(f"fetched {item.name} from {url}")
    if bad.exists():
        print(f"note: {target} is good now; {bad} (a bad earlier copy) can be removed")
    return None


def download_item(item: Item, ctx: Context) -> bool:
    """Try the item's sources in order; one error line with every source's reason when none serves it."""
    reasons = []
    for url in item.sources:
        try:
            reason = try_source(item, url, ctx)
        except LocalWriteFailed as exc:
            error(f"{item.name}: {exc} (a local problem, not the server's: not retried)")
            return False
        if reason is None:
            return True
        reasons.append(f"{url}: {reason}")
        if len(item.sources) > 1:
            note(f"{item.name}: {url} failed ({reason})")
    error(f"{item.name}: could not download {'; nor '.join(reasons)} ({ctx.advice(item)})")
    return False


def extract_in_place(item: Item, ctx: Context) -> bool:
    """A complete zip already in DATA: test, extract, check and install it without network."""
    zip_path = ctx.data / item.path
    print(f"testing {zip_path}")
    staged, problem = stage_zip(item, zip_path, ctx)
    if staged is None:
        bad = zip_path.with_name(zip_path.name + ".bad")
        os.replace(zip_path, bad)
        error(f"{item.name}: {problem}; moved to {bad}, the next run downloads it afresh")
        return False
    install_zip(item, staged, ctx)
    zip_path.unlink()
    return True


def run_item(item: Item, ctx: Context) -> str:
    """Bring one item into place: "fetched", "skipped" or "failed"."""
    target = ctx.data / item.path
    if is_complete(item, ctx):
        stands_in = features_in_place(ctx.data) if item.group == "features" else None
        print(f"skip {item.name}: already in place" + (f" ({stands_in})" if stands_in else ""))
        if item.extract and target.is_file():
            print(f"note: removing {target}: its contents are already in place")
            target.unlink()
        return "skipped"
    if not item.extract and target.is_file():
        problem = in_place_problem(item, ctx)
        note(f"{target} {problem}; moved to {target}.bad, downloading it again")
        os.replace(target, target.with_name(target.name + ".bad"))
    if item.extract and target.is_file():
        return "fetched" if extract_in_place(item, ctx) else "failed"
    return "fetched" if download_item(item, ctx) else "failed"


def download_all(items: list[Item], ctx: Context, min_free_gb: int | None) -> int:
    todo = [item for item in items if not is_complete(item, ctx)]
    need = min_free_gb * 1024 if min_free_gb is not None else sum(item.need_mb for item in todo)
    check_space(ctx.data, need)
    if todo or any(item.extract and (ctx.data / item.path).is_file() for item in items):
        check_writable(ctx.data)
    counts = {"fetched": 0, "skipped": 0, "failed": 0}
    failed = []
    for item in items:
        outcome = run_item(item, ctx)
        counts[outcome] += 1
        if outcome == "failed":
            failed.append(item.name)
    print(f"summary: {counts['fetched']} fetched, {counts['skipped']} already in place, {counts['failed']} failed")
    if failed:
        error(f"failed: {' '.join(failed)} (run {PROG} again to retry; complete files are skipped)")
        return 1
    return 0


# --- the command ----------------------------------------------------------------------------------------
def run(argv: list[str], env: Mapping[str, str]) -> int:
    manifest = load_manifest(env)
    try:
        opts = parse_args(argv, manifest)
        settings = settings_from(env)
        if opts.help:
            groups = ",".join(manifest.groups)
            print(USAGE.format(prog=PROG, groups=groups, defaults=",".join(manifest.default_groups)), end="")
            return 0
        add_user_sources(manifest, opts.mirrors, opts.sources, env)
    except UsageError as exc:
        print(f"error: {exc} (see {PROG} --help)", file=sys.stderr)
        return 2
    data = Path(str(opts.data).rstrip("/") or "/")
    items = [item for item in manifest.items if item.group in opts.only]
    if opts.dry_run:
        for item in items:
            print(dry_run_line(item, data))
        return 0
    ctx = Context(data, manifest, settings, checks.DigestMemory(data))
    try:
        if opts.froms:
            from vqa_cp.import_copy import import_all

            ctx.release = False
            return import_all(opts.froms, items, ctx)
        return download_all(items, ctx, opts.min_free_gb)
    except LocalProblem as exc:
        error(str(exc))
        return 1
    except OSError as exc:  # a local file-system fault while placing files: one line, as any local problem
        error(describe_os_error(exc))
        return 1


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    return run(sys.argv[1:] if argv is None else argv, os.environ if env is None else env)


if __name__ == "__main__":
    # run as `python -m vqa_cp.download`: call the imported module's main, so that import_copy (which imports
    # vqa_cp.download) and this run share one LocalProblem class
    from vqa_cp import download

    raise SystemExit(run_cli(download.main))
