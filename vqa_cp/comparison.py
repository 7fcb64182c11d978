"""Honest method comparisons: every (method, seed) trained in its own `python main.py` process, the
official accuracy of each finished run read back from its results.json, and per method

    mean = (1/n) sum_s a_s,    std = sqrt( sum_s (a_s - mean)^2 / (n - 1) )    over the n finished seeds,

with crashed runs counted (never dropped). The output folder remembers the data digest and every
method's resolved trainer flags in comparison.json, and refuses runs made with other ones.

Layout of an output folder:
    comparison.json                  data digest and per-method trainer flags (written first)
    runs/METHOD_seedS/               one trainer output folder per run (+ train_output.txt, crashed.json)
    table.json, table.md, table.png  the comparison
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from tqdm import tqdm

from vqa_cp.checkpoints import list_checkpoints
from vqa_cp.config import MODES, TOY_DEFAULTS, build_parser, parse_args
from vqa_cp.dataset import EVAL_NAMES
from vqa_cp.errors import VQAError
from vqa_cp.files import atomic_path, load_json, write_json, write_text
from vqa_cp.losses import DEFAULT_ENTROPY_PENALTY
from vqa_cp.processing import ANSWER_TYPES, ANSWERS_FILE, DATASETS, DICTIONARY_FILE, processed_dir
from vqa_cp.toy import ensure_toy_data

MAIN_SCRIPT = Path(__file__).resolve().parent.parent / "main.py"
REG_SUFFIX = "+reg"
DEFAULT_METHODS = ("none", "learned_mixin", "learned_mixin+reg")
LMH_ENTROPY_PENALTY = DEFAULT_ENTROPY_PENALTY
REAL_INF_LAMBDA = 1e-10  # the published VQA-CP command's lambda
COLUMNS = ("overall", *ANSWER_TYPES)
SCORES = ("score_q", "score_v")
COMPARISON_FILE = "comparison.json"
COMPARISON_VERSION = 1
RUNS_DIR = "runs"
RESULTS_FILE = "results.json"
CRASH_FILE = "crashed.json"
RUN_OUTPUT_FILE = "train_output.txt"
# Trainer flags the comparison sets itself: dest -> the compare_methods flag that controls it.
RESERVED = {"output": "--output", "seed": "--seeds", "data": "--data", "toy": "--toy", "mode": "--methods",
            "entropy_penalty": "--methods", "inf_lambda": "--inf_lambda", "val_fraction": "--val_fraction",
            "select_on": "--val_fraction", "resume": "(resumed automatically)"}
# Resolved trainer flags that do not change what a run computes, left out of the folder's identity.
RUN_INDEPENDENT = ("output", "seed", "data", "num_workers", "resume", "checkpoint_every")

Runner = Callable[[list[str], Path], int]


@dataclass(frozen=True)
class ComparisonConfig:
    """What to compare. data None: the trainer's default (data, or data/toy with toy); inf_lambda None:
    the trainer's toy default with toy, else REAL_INF_LAMBDA."""

    output: Path
    seeds: int
    data: Path | None = None
    methods: tuple[str, ...] = DEFAULT_METHODS
    toy: bool = False
    inf_lambda: float | None = None
    val_fraction: float = 0.0
    extra_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class MethodPlan:
    """A method's trainer flags (without --output / --seed) and their resolved values."""

    name: str
    argv: list[str]
    settings: dict[str, Any]


def _argparse(parse: Callable[[], Any], what: str) -> Any:
    """Run an argparse parse; its usage error (argparse exits) becomes a one-line VQAError."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured), contextlib.redirect_stdout(captured):
            return parse()
    except SystemExit:
        lines = captured.getvalue().strip().splitlines()
        raise VQAError(f"{what}: {lines[-1] if lines else 'rejected'}") from None


def check_extra_args(extra: Sequence[str]) -> None:
    """Refuse pass-through flags that would override what the comparison sets per method or run."""
    parser = build_parser()
    unset = object()
    parser.set_defaults(**{dest: unset for dest in vars(parser.parse_args([]))})
    given = vars(_argparse(lambda: parser.parse_args(list(extra)), f"main.py flags after --: {' '.join(extra)}"))
    clashes = sorted({f"--{dest} (set by {flag})" for dest, flag in RESERVED.items()
                      if given.get(dest, unset) is not unset})
    if clashes:
        raise VQAError(f"main.py flags after -- may not set {', '.join(clashes)}: the comparison sets them")


def method_flags(method: str, inf_lambda: float) -> list[str]:
    """Trainer flags of a method: MODE or MODE+reg, MODE one of the trainer's --mode choices."""
    mode = method.removesuffix(REG_SUFFIX)
    if mode not in MODES:
        known = ", ".join([*MODES, *(m + REG_SUFFIX for m in MODES)])
        raise VQAError(f"unknown method {method!r}; expected one of {known}")
    flags = ["--mode", mode]
    if mode == "learned_mixin":
        flags += ["-p", str(LMH_ENTROPY_PENALTY)]
    if method.endswith(REG_SUFFIX):
        if not inf_lambda > 0:
            raise VQAError(f"method {method}: --inf_lambda {inf_lambda} turns the regulariser off; "
                           "give a positive lambda")
        return flags + ["--inf_lambda", repr(inf_lambda)]
    return flags + ["--inf_lambda", "0"]


def data_digest(data_dir: str | os.PathLike) -> str:
    """sha256 over the processed answer lists of cp and v2 and the dictionary (names and bytes)."""
    root = processed_dir(data_dir)
    h = hashlib.sha256()
    for rel in [f"{d}/{ANSWERS_FILE}" for d in DATASETS] + [DICTIONARY_FILE]:
        path = root / rel
        if not path.is_file():
            raise VQAError(f"processed data not found: {path}; run `bash tools/process.sh --data {data_dir}` "
                           "(or pass --toy)")
        h.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def run_name(method: str, seed: int) -> str:
    return f"{method}_seed{seed}"


def plan_methods(config: ComparisonConfig) -> tuple[Path, float, dict[str, MethodPlan]]:
    """Resolve the data folder and lambda, and each method's trainer flags, all checked up front."""
    if config.seeds < 1:
        raise VQAError(f"--seeds must be at least 1, got {config.seeds}")
    if not config.methods:
        raise VQAError("--methods is empty")
    repeated = sorted({m for m in config.methods if config.methods.count(m) > 1})
    if repeated:
        raise VQAError(f"--methods lists {', '.join(repeated)} more than once")
    check_extra_args(config.extra_args)
    toy = ["--toy"] if config.toy else []
    given = toy + (["--data", str(config.data)] if config.data is not None else [])
    data = Path(_argparse(partial(parse_args, given), f"main.py {' '.join(given)}").data).resolve()
    common = toy + ["--data", str(data)]
    if config.val_fraction:
        common += ["--val_fraction", repr(config.val_fraction), "--select_on", "val"]
    inf_lambda = config.inf_lambda
    if inf_lambda is None:
        inf_lambda = TOY_DEFAULTS["inf_lambda"] if config.toy else REAL_INF_LAMBDA
    plans = {}
    for method in config.methods:
        argv = common + method_flags(method, inf_lambda) + list(config.extra_args)
        args = vars(_argparse(partial(parse_args, argv), f"method {method}: main.py {' '.join(argv)}"))
        settings = {k: v for k, v in sorted(args.items()) if k not in RUN_INDEPENDENT}
        plans[method] = MethodPlan(method, argv, json.loads(json.dumps(settings)))
    return data, inf_lambda, plans


def record_or_check(output: Path, digest: str, data: Path, plans: dict[str, MethodPlan]) -> None:
    """First call: write comparison.json. Later calls: refuse other data or other flags of a method
    already in the folder; methods new to the folder are added."""
    path = output / COMPARISON_FILE
    methods = {m: {"argv": p.argv, "settings": p.settings} for m, p in plans.items()}
    record = {"version": COMPARISON_VERSION, "data": str(data), "data_digest": digest, "methods": methods}
    if not path.exists():
        runs = output / RUNS_DIR
        if runs.is_dir() and any(runs.iterdir()):
            raise VQAError(f"{output} holds {RUNS_DIR}/ but no {COMPARISON_FILE}, so the flags of its runs "
                           "are unknown; choose another --output")
        write_json(path, record, indent=2)
        return
    saved = load_json(path, what="comparison record")
    if not (isinstance(saved, dict) and isinstance(saved.get("methods"), dict) and "data_digest" in saved):
        raise VQAError(f"{path}: expected {{\"data_digest\", \"methods\": {{...}}}}")
    if saved["data_digest"] != digest:
        raise VQAError(f"{output} holds runs on other data ({saved.get('data')}, digest "
                       f"{str(saved['data_digest'])[:12]}) than {data} (digest {digest[:12]}); "
                       "choose another --output")
    for method, plan in plans.items():
        if method not in saved["methods"]:
            continue
        theirs = saved["methods"][method].get("settings", {})
        keys = sorted(set(theirs) | set(plan.settings))
        diff = [f"--{k} {theirs.get(k)!r} there, {plan.settings.get(k)!r} now" for k in keys
                if theirs.get(k) != plan.settings.get(k)]
        if diff:
            raise VQAError(f"{output} holds {method} runs made with other flags ({'; '.join(diff)}); "
                           "choose another --output")
    merged = {**record["methods"], **saved["methods"]}
    if merged != saved["methods"]:
        write_json(path, {**saved, "methods": merged}, indent=2)


def run_main_subprocess(argv: list[str], log_path: Path) -> int:
    """`python main.py ARGV` with stdout and stderr into log_path; returns the exit status."""
    with open(log_path, "w", encoding="utf-8") as log:
        return subprocess.run([sys.executable, str(MAIN_SCRIPT), *argv], stdout=log, stderr=subprocess.STDOUT,
                              check=False).returncode


def last_error(log_path: Path) -> str:
    """The trainer's `error: ...` line, else the last line it printed (a traceback's exception)."""
    if not log_path.is_file():
        return "no output"
    lines = [s.strip() for s in log_path.read_text(errors="replace").replace("\r", "\n").splitlines()]
    lines = [s for s in lines if s]
    errors = [s for s in lines if s.startswith("error:")]
    return (errors or lines or ["no output"])[-1]


def train_run(run_dir: Path, argv: list[str], runner: Runner) -> dict[str, Any] | None:
    """Run one training (resuming from its newest checkpoint when one exists); None if it finished,
    else the crash record also written to run_dir/crashed.json."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CRASH_FILE).unlink(missing_ok=True)
    if list_checkpoints(run_dir):
        argv = ["--resume", str(run_dir)]
    else:  # a run that crashed before its first checkpoint left nothing worth keeping
        argv = [*argv, "--overwrite"]
    log_path = run_dir / RUN_OUTPUT_FILE
    status = runner(argv, log_path)
    if status == 0 and (run_dir / RESULTS_FILE).is_file():
        return None
    if status == 0:
        error = f"exit 0 but no {RESULTS_FILE} was written"
    elif status < 0:
        error = f"killed by signal {-status}"
    else:
        error = f"exit {status}: {last_error(log_path)}"
    crash = {"returncode": status, "error": error, "argv": argv, "output": RUN_OUTPUT_FILE}
    write_json(run_dir / CRASH_FILE, crash, indent=2)
    return crash


def read_run(run_dir: Path, split: str, with_scores: bool) -> dict[str, Any]:
    """Accuracies (overall and per answer type) of a finished run, its selected epoch and, with the
    regulariser, the last epoch's information scores."""
    path = run_dir / RESULTS_FILE
    results = load_json(path, what="run results")
    final = results.get(split) if isinstance(results, dict) else None
    if not (isinstance(final, dict) and "overall" in final and isinstance(final.get("perAnswerType"), dict)):
        raise VQAError(f"{path}: no official {split} accuracy ({split!r}: {{overall, perAnswerType}})")
    run = {"status": "finished", "selected_epoch": results.get("selected_epoch"), "overall": final["overall"],
           **{t: final["perAnswerType"].get(t) for t in ANSWER_TYPES}}
    if with_scores:
        history = results.get("history")
        last = history[-1] if isinstance(history, list) and history else {}
        missing = [s for s in SCORES if not isinstance(last.get(s), (int, float))]
        if missing:
            raise VQAError(f"{path}: the last epoch of history has no {', '.join(missing)} (was the "
                           "regulariser on?)")
        run.update({s: last[s] for s in SCORES})
    return run


def mean_std(values: Sequence[float]) -> dict[str, Any]:
    """{"mean", "std", "n"}: std is the sample standard deviation (n - 1), None below two values."""
    n = len(values)
    if n == 0:
        return {"mean": None, "std": None, "n": 0}
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"mean": mean, "std": std, "n": n}


def summarize(runs: dict[str, dict[int, dict[str, Any]]], split: str, selection: str, seeds: list[int],
              data: Path, digest: str, inf_lambda: float) -> dict[str, Any]:
    """The table: per method, mean / std of each column over its finished runs, and run counts."""
    methods = {}
    for method, by_seed in runs.items():
        finished = [r for r in by_seed.values() if r["status"] == "finished"]
        row: dict[str, Any] = {
            "finished": len(finished), "crashed": len(by_seed) - len(finished),
            "runs": {str(s): r for s, r in by_seed.items()},
            **{c: mean_std([r[c] for r in finished if r[c] is not None]) for c in COLUMNS}}
        if method.endswith(REG_SUFFIX):
            row.update({s: mean_std([r[s] for r in finished])["mean"] for s in SCORES})
        methods[method] = row
    return {"split": split, "selection": selection, "seeds": seeds, "data": str(data), "data_digest": digest,
            "inf_lambda": inf_lambda, "methods": methods}


def _cell(stats: dict[str, Any]) -> str:
    if stats["mean"] is None:
        return "–"
    std = "–" if stats["std"] is None else f"{stats['std']:.2f}"
    return f"{stats['mean']:.2f} ± {std}"


def format_markdown(table: dict[str, Any]) -> str:
    """table.md: one row per method, then each crashed run with its error."""
    seeds = table["seeds"]
    lines = [f"# Official VQA accuracy (%) on {table['split']}, {table['selection']}", "",
             f"data: {table['data']} (digest {table['data_digest'][:12]}); "
             f"seeds {', '.join(map(str, seeds))}; regulariser lambda {table['inf_lambda']:g} (+reg methods)",
             "",
             "Cells: mean ± sample std (n - 1) over the finished runs. Information scores (+reg methods): "
             "mean over the finished runs of the last epoch's mean score per modality.", "",
             "| method | finished | crashed | " + " | ".join(COLUMNS) + " | info score q | info score v |",
             "|---|---|---|" + "---|" * (len(COLUMNS) + 2)]
    crashes = []
    for method, row in table["methods"].items():
        scores = [f"{row[s]:.3g}" if row.get(s) is not None else "–" for s in SCORES]
        lines.append(f"| {method} | {row['finished']} | {row['crashed']} | "
                     + " | ".join(_cell(row[c]) for c in COLUMNS) + " | " + " | ".join(scores) + " |")
        crashes += [f"- {run_name(method, int(s))}: {r['error']} (see {RUNS_DIR}/{run_name(method, int(s))}/"
                    f"{RUN_OUTPUT_FILE})" for s, r in row["runs"].items() if r["status"] == "crashed"]
    if crashes:
        lines += ["", "## Crashed runs (not in the means)", "", *crashes]
    return "\n".join(lines) + "\n"


def plot_table(table: dict[str, Any], path: Path) -> None:
    """table.png: bars of the mean per column, grouped by column, one colour per method, std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(table["methods"])
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(2.2 * len(COLUMNS) + 1.5, 4.8), dpi=100)
    for i, method in enumerate(methods):
        row = table["methods"][method]
        means = [row[c]["mean"] for c in COLUMNS]
        stds = [row[c]["std"] or 0.0 for c in COLUMNS]
        xs = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(COLUMNS))]
        label = f"{method} ({row['finished']} finished" + (f", {row['crashed']} crashed)" if row["crashed"] else ")")
        shown = [(x, m, s) for x, m, s in zip(xs, means, stds) if m is not None]
        if not shown:
            ax.bar([], [], width, label=label)
            continue
        xs, means, stds = zip(*shown)
        bars = ax.bar(xs, means, width, yerr=stds, capsize=3, label=label)
        ax.bar_label(bars, labels=[f"{m:.1f}" for m in means], fontsize=7, padding=2)
    ax.set_xticks(range(len(COLUMNS)), COLUMNS)
    ax.set_xlim(-0.5, len(COLUMNS) - 0.5)
    ax.set_ylabel("official VQA accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title(f"{table['split']} accuracy, {table['selection']}: mean ± std over seeds")
    ax.legend(fontsize=8, loc="upper left", ncols=min(len(methods), 3))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def run_comparison(config: ComparisonConfig, runner: Runner = run_main_subprocess) -> dict[str, Any]:
    """Train every (method, seed) not yet finished, then write table.json, table.md and table.png."""
    output = Path(config.output).resolve()
    data, inf_lambda, plans = plan_methods(config)
    if config.toy:
        ensure_toy_data(data)
    digest = data_digest(data)
    record_or_check(output, digest, data, plans)
    split = EVAL_NAMES["v2" if next(iter(plans.values())).settings["nocp"] else "cp"]
    selection = (f"epoch selected on val ({config.val_fraction:g} of train)" if config.val_fraction > 0
                 else "last epoch")
    seeds = list(range(config.seeds))
    runs: dict[str, dict[int, dict[str, Any]]] = {m: {} for m in plans}
    bar = tqdm(total=len(plans) * len(seeds), desc="runs", unit="run", dynamic_ncols=True)
    for method, plan in plans.items():
        for seed in seeds:
            name = run_name(method, seed)
            run_dir = output / RUNS_DIR / name
            bar.set_postfix_str(name)
            if (run_dir / RESULTS_FILE).is_file():
                crash = None
            else:
                argv = plan.argv + ["--output", str(run_dir), "--seed", str(seed)]
                crash = train_run(run_dir, argv, runner)
            if crash is None:
                runs[method][seed] = read_run(run_dir, split, method.endswith(REG_SUFFIX))
                tqdm.write(f"{name}: {split} overall {runs[method][seed]['overall']:.2f}")
            else:
                runs[method][seed] = {"status": "crashed", "error": crash["error"]}
                tqdm.write(f"{name}: crashed: {crash['error']}")
            bar.update()
    bar.close()
    table = summarize(runs, split, selection, seeds, data, digest, inf_lambda)
    write_json(output / "table.json", table, indent=2)
    write_text(output / "table.md", format_markdown(table))
    plot_table(table, output / "table.png")
    return table
