"""Toy VQA-CP benchmark: does the prior shift hurt the baseline, does learned-mixin +H recover, does the
functional-entropy regulariser move anything? And how long does `python main.py --toy` take?

For each toy seed s (data generated with ToyConfig(seed=s), trainer --seed s) it trains, at the trainer's
toy defaults plus --flags:
    VQA v2 (--nocp) mode none          -> official accuracy on val2014 (unshifted)
    VQA-CP mode none                   -> official accuracy on VQA-CP test (shifted)
    VQA-CP learned-mixin +H            -> same
    VQA-CP learned-mixin +H + regulariser, one row per --reg LAMBDA:ESTIMATION
and writes a markdown table of mean +- std over the seeds (plus the information scores per modality of
the last epoch) to --out. Then it times `python main.py --toy` into a fresh folder (generation,
processing, learned-mixin +H + regulariser training): wall time and the median epoch time.

    python -m bench.bench_toy [--seeds 0 1 2] [--reg 1e-8:ent] [--flags "--epochs 8"] [--jobs 1]
                              [--threads N] [--work DIR] [--out bench/TOY_RESULTS.md] [--no-timing]
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from vqa_cp.comparison import LMH_ENTROPY_PENALTY
from vqa_cp.errors import VQAError, run_cli
from vqa_cp.files import load_json, write_text
from vqa_cp.processing import ANSWER_TYPES
from vqa_cp.toy import ToyConfig, ensure_toy_data

ROOT = Path(__file__).resolve().parent.parent
MAIN = ROOT / "main.py"


@dataclass(frozen=True)
class Variant:
    """One row of the table: a name and the trainer flags that make it."""

    name: str
    flags: tuple[str, ...]

    @property
    def split(self) -> str:
        return "val2014" if "--nocp" in self.flags else "test"


def variants(regs: list[tuple[str, str]]) -> list[Variant]:
    """Baseline on VQA v2 and VQA-CP, learned-mixin +H, and + regulariser per (lambda, estimation)."""
    lmh = ("--mode", "learned_mixin", "-p", str(LMH_ENTROPY_PENALTY))
    rows = [Variant("VQA v2 (--nocp), mode none", ("--nocp", "--mode", "none", "--inf_lambda", "0")),
            Variant("VQA-CP, mode none", ("--mode", "none", "--inf_lambda", "0")),
            Variant("VQA-CP, learned-mixin +H", (*lmh, "--inf_lambda", "0"))]
    for lam, est in regs:
        lam_flags = () if lam == "default" else ("--inf_lambda", lam)
        rows.append(Variant(f"VQA-CP, learned-mixin +H + regulariser (lambda {lam}, {est})",
                            (*lmh, *lam_flags, "--estimation", est)))
    return rows


def parse_reg(text: str) -> tuple[str, str]:
    """'1e-8:ent' -> ('1e-8', 'ent'); 'default' uses the trainer's toy lambda."""
    lam, _, est = text.partition(":")
    est = est or "ent"
    if est not in ("ent", "var"):
        raise argparse.ArgumentTypeError(f"estimation must be ent or var, got {est!r} in {text!r}")
    if lam != "default":
        try:
            if float(lam) <= 0:
                raise ValueError
        except ValueError:
            message = f"lambda must be a positive number or 'default', got {lam!r}"
            raise argparse.ArgumentTypeError(message) from None
    return lam, est


def child_env(threads: int | None) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def train(data: Path, out: Path, seed: int, flags: list[str], env: dict[str, str]) -> dict[str, Any]:
    """`python main.py --toy --data DATA ...` in a subprocess; its results.json."""
    cmd = [sys.executable, str(MAIN), "--toy", "--data", str(data), "--output", str(out), "--seed", str(seed),
           *flags]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise VQAError(f"training failed ({shlex.join(cmd)}): {tail[0]}")
    return load_json(out / "results.json", "run results")


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def scores_cell(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.3g} ({min(values):.2g}..{max(values):.2g})"


def table(rows: list[Variant], results: dict[tuple[str, int], dict[str, Any]], seeds: list[int]) -> str:
    """Markdown: official accuracy mean ± std over seeds, per answer type, information scores, epoch time."""
    lines = ["| run | split | overall | yes/no | number | other | info score q | info score v | s / epoch |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        runs = [results[row.name, s] for s in seeds]
        final = [r[row.split] for r in runs]
        last = [r["history"][-1] for r in runs]
        cells = [mean_std([f["overall"] for f in final])]
        cells += [mean_std([f["perAnswerType"].get(t, float("nan")) for f in final]) for t in ANSWER_TYPES]
        cells += [scores_cell([h[k] for h in last if k in h]) for k in ("score_q", "score_v")]
        cells.append(f"{statistics.median(h['seconds'] for r in runs for h in r['history']):.1f}")
        lines.append(f"| {row.name} | {row.split} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def time_main_toy(work: Path, flags: list[str], env: dict[str, str]) -> tuple[float, float, list[float]]:
    """Wall and CPU (user + system) seconds of `python main.py --toy` into a fresh data folder, and its epoch
    times. On a shared machine the CPU seconds bound what an idle one would take from above."""
    data, out = work / "timing_data", work / "timing_run"
    cmd = [sys.executable, str(MAIN), "--toy", "--data", str(data), "--output", str(out), *flags]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    if proc.returncode != 0:
        raise VQAError(f"timing run failed ({shlex.join(cmd)}): {proc.stderr.strip().splitlines()[-1:]}")
    history = load_json(out / "results.json", "run results")["history"]
    return wall, cpu, [h["seconds"] for h in history]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--reg", type=parse_reg, nargs="*", default=[("default", "ent")],
                        help="LAMBDA:ESTIMATION rows of learned-mixin +H + regulariser (default default:ent)")
    parser.add_argument("--flags", default="", help="extra trainer flags for every run, e.g. '--epochs 8'")
    parser.add_argument("--jobs", type=int, default=1, help="training runs at once (for timings keep 1)")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of each run")
    parser.add_argument("--work", default=None, help="folder for data and runs (default: a temporary one)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "TOY_RESULTS.md"))
    parser.add_argument("--no-timing", action="store_true", help="skip timing `python main.py --toy`")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        raise VQAError(f"--jobs must be >= 1, got {args.jobs}")
    flags = shlex.split(args.flags)
    env = child_env(args.threads)
    rows = variants(args.reg)

    with tempfile.TemporaryDirectory(prefix="bench_toy_") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        for seed in tqdm(args.seeds, desc="toy data"):
            ensure_toy_data(work / f"seed{seed}", ToyConfig(seed=seed), log=lambda _: None)
        jobs = [(row, seed) for seed in args.seeds for row in rows]

        def run(job: tuple[Variant, int]) -> dict[str, Any]:
            row, seed = job
            out = work / "runs" / f"seed{seed}_{rows.index(row)}"
            return train(work / f"seed{seed}", out, seed, [*row.flags, *flags], env)

        with ThreadPoolExecutor(args.jobs) as pool:
            done = list(tqdm(pool.map(run, jobs), total=len(jobs), desc="training runs"))
        results = {(row.name, seed): r for (row, seed), r in zip(jobs, done)}
        text = table(rows, results, args.seeds)
        print(text)
        timing = ""
        if not args.no_timing:
            wall, cpu, epochs = time_main_toy(work, flags, env)
            timing = (f"\n`python main.py --toy {args.flags}` (generate + process + learned-mixin +H + "
                      f"regulariser, {len(epochs)} epochs): wall {wall:.0f} s, CPU {cpu:.0f} s, median epoch "
                      f"{statistics.median(epochs):.1f} s (1-min load average at the end: "
                      f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)\n")
            print(timing)

    header = (f"# Toy VQA-CP benchmark\n\n`python -m bench.bench_toy` with seeds {args.seeds} (toy data "
              f"ToyConfig(seed=s), trainer --seed s), trainer toy defaults plus `{args.flags or '(none)'}`, "
              f"OMP_NUM_THREADS={args.threads or 'unset'}, {args.jobs} run(s) at once. Official VQA "
              "accuracy, mean ± std over the seeds; information scores: median (min..max) over the seeds "
              "of the last epoch's mean.\n\n")
    write_text(args.out, header + text + timing)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_cli(main)
