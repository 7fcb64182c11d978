"""The rehearsal: the whole user path on real-shape stand-in data at several scales, fitted and extrapolated.

For each scale S (a fraction of the real VQA-CP v2 counts; vqa_cp.rehearsal) every stage runs in a fresh
process: generating the data, `download.sh --dry-run`, `process.sh`, `main.py` for --steps steps at batch 512
with lambda 1e-10 (without and with --cache_features; through bench/rehearsal_train.py, which records each
step), `save_predictions.py` and `eval/evaluate.py`. Per stage: wall time, peak RSS (os.wait4 of the stage's
process: the largest of it and its descendants) and bytes written (growth of the data folder). Each is fitted
as c * S^k over the scales and extrapolated to S = 1, with an affine fit a + b * S beside it.

    python bench/bench_rehearsal.py [--scales 0.02,0.05] [--steps 3] [--root /work/rehearsal-data/rehearsal]
                                    [--write] [--keep]

Prints the table; --write also writes bench/REHEARSAL.md and bench/rehearsal.png (never by default).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from vqa_cp.errors import VQAError, run_cli  # noqa: E402
from vqa_cp.files import write_text  # noqa: E402
from vqa_cp.rehearsal import REAL  # noqa: E402

FULL_FEATURE_BYTES = REAL["images"] * 36 * 2048 * 2  # the float16 cache at full size
STAGES = ("generate", "download --dry-run", "process.sh", "main.py", "main.py --cache_features",
          "save_predictions.py", "eval/evaluate.py")
# derived: a training run's wall time less its steps (start-up, data loading, caching, checkpoint)
OUTSIDE = {"main.py": "main.py outside the steps", "main.py --cache_features": "main.py --cache_features outside"}
TARGETS = {"process.sh": 12e9, "main.py": 4e9}


@dataclass
class Stage:
    seconds: float
    peak_rss: int      # bytes
    written: int       # bytes
    extra: dict = field(default_factory=dict)


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def run_stage(cmd: list[str], folder: Path, env: dict[str, str] | None = None) -> Stage:
    """Run `cmd` in a fresh process; its wall time, peak RSS (itself and reaped descendants), bytes written."""
    before = folder_bytes(folder)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if proc.returncode:
        tail = output.decode(errors="replace").replace("\r", "\n").strip().splitlines()[-5:]
        raise VQAError(f"stage failed (exit {proc.returncode}): {' '.join(cmd)}: {' | '.join(tail)}")
    return Stage(seconds, usage.ru_maxrss * 1024, folder_bytes(folder) - before)


def train_cmd(data: Path, out: Path, steps: int, cache: bool) -> list[str]:
    return [sys.executable, "bench/rehearsal_train.py", "--data", str(data), "--output", str(out), "--max_steps",
            str(steps), "--batch_size", "512", "--inf_lambda", "1e-10", "--num_workers", "0",
            *(["--cache_features"] if cache else [])]


def rehearse(scale: float, root: Path, steps: int) -> dict[str, Stage]:
    """Every stage at one scale, in order; the data folder is removed first."""
    data = root / f"scale_{scale:g}"
    if data.exists():
        shutil.rmtree(data)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    py = sys.executable
    stages = {"generate": run_stage([py, "tools/make_toy_data.py", "--shape", "real", "--scale", str(scale),
                                     "--out", str(data)], root)}
    stages["download --dry-run"] = run_stage(["bash", "tools/download.sh", "--dry-run", "--data", str(data)], data)
    stages["process.sh"] = run_stage(["bash", "tools/process.sh", "--data", str(data)], data)
    answers = json.loads((data / "processed" / "cp" / "answers.json").read_text())["answers"]
    stages["process.sh"].extra = {"answers": len(answers)}
    for name, cache in (("main.py", False), ("main.py --cache_features", True)):
        record = data / f"steps_{'cache' if cache else 'lazy'}.json"
        stage = run_stage(train_cmd(data, data / f"run_{'cache' if cache else 'lazy'}", steps, cache), data,
                          dict(env, REHEARSAL_RECORD=str(record)))
        stage.extra = json.loads(record.read_text())
        stages[name] = stage
        inside = sum(r["step_s"] for r in stage.extra["steps"])
        stages[OUTSIDE[name]] = Stage(stage.seconds - inside, stage.peak_rss, stage.written)
    stages["save_predictions.py"] = run_stage([py, "save_predictions.py", str(data / "run_lazy"),
                                               str(data / "results.json"), "--data", str(data)], data, env)
    stages["eval/evaluate.py"] = run_stage(
        [py, "eval/evaluate.py", "--questions", str(data / "vqacp_v2_test_questions.json"), "--annotations",
         str(data / "vqacp_v2_test_annotations.json"), "--results", str(data / "results.json"), "--output",
         str(data / "eval")], data, env)
    stages["eval/evaluate.py"].extra = json.loads((data / "eval" / "accuracy.json").read_text())
    print(f"scale {scale:g}: " + ", ".join(f"{k} {v.seconds:.0f} s / {v.peak_rss / 1e9:.2f} GB"
                                           for k, v in stages.items()), file=sys.stderr, flush=True)
    return stages


def fit(scales: list[float], values: list[float]) -> tuple[float, float, float]:
    """(exponent k of c * S^k, its value at S = 1, the affine fit's value at S = 1); least squares."""
    x, y = np.log(scales), np.log(np.maximum(values, 1e-12))
    k, log_c = np.polyfit(x, y, 1)
    b, a = np.polyfit(scales, values, 1)
    return float(k), float(math.exp(log_c)), float(a + b)


def _gb(x: float) -> str:
    return f"{x / 1e9:.2f}"


def table(scales: list[float], runs: dict[float, dict[str, Stage]]) -> tuple[list[str], dict[str, dict]]:
    """Markdown rows: per stage and quantity, the measured values, fitted exponent, both extrapolations."""
    head = " | ".join(f"S={s:g}" for s in scales)
    rows = [f"| stage | quantity | {head} | exponent k | full size (c S^k) | full size (a + b S) |",
            "|---|---|" + "---|" * len(scales) + "---|---|---|"]
    fits: dict[str, dict] = {}
    for stage in (*STAGES, *OUTSIDE.values()):
        fits[stage] = {}
        for quantity, get, fmt in (("time s", lambda s: s.seconds, lambda v: f"{v:.1f}"),
                                   ("peak RSS GB", lambda s: s.peak_rss, _gb),
                                   ("written GB", lambda s: s.written, _gb)):
            values = [get(runs[s][stage]) for s in scales]
            k, power, affine = fit(scales, values)
            fits[stage][quantity] = (k, power, affine)
            rows.append(f"| {stage} | {quantity} | " + " | ".join(fmt(v) for v in values)
                        + f" | {k:.2f} | {fmt(power)} | {fmt(affine)} |")
    return rows, fits


def regulariser_rows(scales: list[float], runs: dict[float, dict[str, Stage]]) -> list[str]:
    rows = ["| scale | run | step | step s | data s before it | loss | reg term | score q | score v | floored |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for s in scales:
        for name in ("main.py", "main.py --cache_features"):
            for i, r in enumerate(runs[s][name].extra["steps"]):
                wait = "-" if r["wait_s"] is None else f"{r['wait_s']:.2f}"
                rows.append(f"| {s:g} | {name} | {i + 1} | {r['step_s']:.2f} | {wait} | {r['loss']:.4g} | "
                            f"{r.get('reg_term', float('nan')):.4g} | {r.get('score_q', float('nan')):.3g} | "
                            f"{r.get('score_v', float('nan')):.3g} | {r.get('floored', float('nan')):.0f} |")
    return rows


def target_lines(fits: dict[str, dict]) -> list[str]:
    """Each target against the fits: exponents k of c S^k; full-size memory from the affine fit a + b S (a
    fixed base plus a part linear in the data; the power law is shown beside it)."""
    lines = []
    user = [st for st in (*STAGES, *OUTSIDE.values()) if st not in ("generate", "download --dry-run", *OUTSIDE)]
    worst = max((fits[st][q][0], st, q) for st in user for q in ("time s", "peak RSS GB"))
    lines.append(f"- largest fitted exponent of time / peak RSS (user stages; training time counted outside its "
                 f"fixed steps): {worst[0]:.2f} ({worst[1]}, {worst[2]}); target <= 1.1: "
                 f"{'met' if worst[0] <= 1.1 else 'NOT met'}")
    for stage, limit in TARGETS.items():
        k, power, affine = fits[stage]["peak RSS GB"]
        lines.append(f"- {stage} peak RSS at full size: {_gb(affine)} GB affine ({_gb(power)} GB power law); "
                     f"target <= {_gb(limit)} GB: {'met' if affine <= limit else 'NOT met'}")
    k, power, affine = fits["main.py --cache_features"]["peak RSS GB"]
    lines.append(f"- main.py --cache_features peak RSS at full size minus the {_gb(FULL_FEATURE_BYTES)} GB float16 "
                 f"features: {_gb(affine - FULL_FEATURE_BYTES)} GB affine ({_gb(power - FULL_FEATURE_BYTES)} GB "
                 f"power law); target <= 3 GB: {'met' if affine - FULL_FEATURE_BYTES <= 3e9 else 'NOT met'}")
    return lines


def plot(scales: list[float], runs: dict[float, dict[str, Stage]], fits: dict[str, dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    grid = np.geomspace(min(scales), 1.0, 50)
    for ax, quantity, get, unit in ((axes[0], "time s", lambda s: s.seconds, 1.0),
                                    (axes[1], "peak RSS GB", lambda s: s.peak_rss, 1e9)):
        for stage in STAGES:
            values = [get(runs[s][stage]) / unit for s in scales]
            k, power, _ = fits[stage][quantity]
            line, = ax.plot(scales, values, "o", label=f"{stage} (k={k:.2f})")
            ax.plot(grid, power / unit * grid ** k, "--", color=line.get_color(), linewidth=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("scale (fraction of the real VQA-CP v2 counts)")
        ax.set_ylabel("seconds" if unit == 1.0 else "GB")
        ax.set_title(f"{quantity.split(' ')[0] if unit == 1.0 else 'peak RSS'} per stage, fits c S^k to S = 1")
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(scales: list[float], runs: dict[float, dict[str, Stage]], steps: int, took: float) -> tuple[str, dict]:
    rows, fits = table(scales, runs)
    answers = {s: runs[s]["process.sh"].extra.get("answers") for s in scales}
    same = [s for s in scales if answers[s] >= 0.98 * max(answers.values())]  # (1,996 and 2,000 are one model)
    targets = [f"Fitted over all scales ({', '.join(f'{s:g}' for s in scales)}):\n", *target_lines(fits)]
    if 2 <= len(same) < len(scales):  # the smaller scales have fewer answers, so a smaller model
        targets += ["", f"Fitted over the scales with the full answer list only ({', '.join(f'{s:g}' for s in same)}; "
                    "the same model, so only the data grows):\n", *target_lines(table(same, runs)[1])]
    accuracy = {s: runs[s]["eval/evaluate.py"].extra.get("overall") for s in scales}
    text = ["# Rehearsal: the user path on real-shape stand-in data\n",
            f"{datetime.date.today()}; `python bench/bench_rehearsal.py --scales {','.join(f'{s:g}' for s in scales)} "
            f"--steps {steps} --write`, {took / 60:.1f} min. main.py runs {steps} steps at batch 512, lambda 1e-10, "
            "--num_workers 0 (peak RSS is then the whole process). Peak RSS: os.wait4 of the stage's process "
            "(the largest of it and its descendants); written: growth of the data folder.\n",
            *rows, "", "## Targets (extrapolated)\n", *targets, "",
            "Answers after the min-count filter (the classifier's width, so part of the training memory): "
            + ", ".join(f"S={s:g}: {runs[s]['process.sh'].extra.get('answers')}" for s in scales) + "\n",
            f"Official accuracy after {steps} steps (not a result, a check that the path runs end to end): "
            + ", ".join(f"S={s:g}: {a}" for s, a in accuracy.items()), "",
            "## Regulariser over the steps\n", *regulariser_rows(scales, runs), ""]
    return "\n".join(text), fits


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scales", default="0.02,0.05", help="comma-separated fractions of the real counts")
    p.add_argument("--steps", type=int, default=3, help="main.py steps per training run")
    p.add_argument("--root", default="/work/rehearsal-data/rehearsal", help="folder for the generated data")
    p.add_argument("--write", action="store_true", help="write bench/REHEARSAL.md and bench/rehearsal.png")
    p.add_argument("--keep", action="store_true", help="keep the generated data (default: removed after)")
    args = p.parse_args(argv)
    scales = sorted(float(s) for s in args.scales.split(","))
    if len(scales) < 2:
        raise VQAError("the rehearsal needs at least two scales to fit how each stage grows")
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    runs = {}
    for s in scales:
        runs[s] = rehearse(s, root, args.steps)
        if not args.keep:
            shutil.rmtree(root / f"scale_{s:g}")
    text, _ = report(scales, runs, args.steps, time.perf_counter() - start)
    print(text)
    if args.write:
        write_text(ROOT / "bench" / "REHEARSAL.md", text)
        plot(scales, runs, table(scales, runs)[1], ROOT / "bench" / "rehearsal.png")
        print("wrote bench/REHEARSAL.md and bench/rehearsal.png", file=sys.stderr)


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
