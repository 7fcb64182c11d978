"""A run folder holds one run.

`run.json` names the run (an id, its start time and flags); every checkpoint carries the id. A new run
refuses a folder that holds another run's files (or deletes them with `--overwrite`); without `--output`
it takes the first free folder of saved_models, saved_models_2, ... `--resume` continues only checkpoints
of the run that run.json names. Temporaries of a checkpoint write killed midway are removed.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from vqa_cp.config import DEFAULT_OUTPUT
from vqa_cp.errors import VQAError
from vqa_cp.files import load_json, remove_stale_temps, write_json

RUN_FILE = "run.json"
# What a training run writes into its folder (compare_methods' train_output.txt / crashed.json are not ours).
RUN_FILES = ("run.json", "log.txt", "metrics.jsonl", "steps.jsonl", "results.json", "model.pth", "best_val.pth")
RUN_GLOBS = ("checkpoint_e*_s*.pth",)
RUN_DIRS = ("tensorboard",)


def run_files(out_dir: Path) -> list[Path]:
    """The files and folders of a run that `out_dir` holds."""
    if not out_dir.is_dir():
        return []
    found = [out_dir / name for name in RUN_FILES + RUN_DIRS if (out_dir / name).exists()]
    for pattern in RUN_GLOBS:
        found.extend(sorted(out_dir.glob(pattern)))
    return found


def choose_output(output: str | None) -> Path:
    """--output as given, or the first of saved_models, saved_models_2, ... that holds no run."""
    if output is not None:
        return Path(output)
    k = 1
    while True:
        candidate = Path(DEFAULT_OUTPUT if k == 1 else f"{DEFAULT_OUTPUT}_{k}")
        if not run_files(candidate):
            return candidate
        k += 1


def check_new_output(out_dir: Path, overwrite: bool) -> None:
    """Refuse an output that is not a folder, or that holds another run unless --overwrite."""
    if out_dir.exists() and not out_dir.is_dir():
        raise VQAError(f"--output {out_dir}: exists and is not a folder")
    found = run_files(out_dir)
    if found and not overwrite:
        raise VQAError(f"--output {out_dir} holds another run ({', '.join(p.name for p in found[:3])}"
                       f"{', ...' if len(found) > 3 else ''}): continue it with --resume {out_dir}, "
                       "delete it with --overwrite, or choose another --output")


def check_writable(out_dir: Path) -> None:
    """Create the folder and write a probe file there (a read-only or full disk is found before training)."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write_probe.{os.getpid()}.tmp"
        probe.write_bytes(b"\0" * 4096)
        probe.unlink()
    except OSError as exc:
        raise VQAError(f"--output {out_dir}: not writable ({exc.strerror or exc})") from None


def check_free_space(out_dir: Path, needed: int) -> None:
    """Refuse to start when the folder's disk lacks the bytes the run's checkpoints will need."""
    free = shutil.disk_usage(out_dir).free
    if free < needed:
        raise VQAError(f"--output {out_dir}: {free / 2**30:.2f} GiB free, the run's checkpoints need "
                       f"{needed / 2**30:.2f} GiB (two checkpoints, one being written, and model.pth)")


def start_run(out_dir: Path, args: dict[str, Any], overwrite: bool) -> str:
    """Delete the previous run's files when overwriting, then write run.json; returns the new run's id."""
    if overwrite:
        for path in run_files(out_dir):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    run_id = uuid.uuid4().hex
    write_json(out_dir / RUN_FILE, {"run_id": run_id, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                    "args": args}, indent=2)
    return run_id


def resumed_run_id(out_dir: Path) -> str | None:
    """The id of the run that `out_dir` holds (None for a folder written before run.json existed)."""
    path = out_dir / RUN_FILE
    if not path.is_file():
        return None
    saved = load_json(path, what="run record")
    if not isinstance(saved, dict) or not isinstance(saved.get("run_id"), str):
        raise VQAError(f"{path}: expected {{\"run_id\": \"...\", ...}}")
    return saved["run_id"]


def remove_checkpoint_temps(out_dir: Path) -> None:
    """Remove temporaries that a checkpoint or model write killed midway left (files.atomic_path's naming)."""
    for name in (*RUN_GLOBS, "model.pth", "best_val.pth"):
        remove_stale_temps(out_dir / name)
