"""tools/compare_methods.py and vqa_cp.comparison: tables recomputed from the runs' results.json, resume
without retraining, refusal of other flags or data, crashed runs reported."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vqa_cp import config as trainer_config
from vqa_cp import training
from vqa_cp.comparison import ComparisonConfig, mean_std, run_comparison
from vqa_cp.errors import VQAError
from vqa_cp.toy import ToyConfig, ensure_toy_data

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "compare_methods.py"
TINY = ToyConfig(seed=3, images=48, boxes=12, feature_dim=16, questions_per_image=5, test_images=2,
                 categories=3, colours=3, max_count=2)
METHODS = ("none", "learned_mixin+reg")
EXTRA = ("--num_hid", "32", "--epochs", "1", "--batch_size", "64")
TYPES = ("yes/no", "number", "other")


class InProcess:
    """Runs the trainer in this process (no interpreter start per run) and records each argv."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str], log_path: Path) -> int:
        self.calls.append(argv)
        try:
            training.main(argv)
        except VQAError as exc:
            log_path.write_text(f"error: {exc}\n")
            return 2
        log_path.write_text("done\n")
        return 0


def never(argv: list[str], log_path: Path) -> int:
    raise AssertionError(f"no training expected, got {argv}")


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("data") / "toy"
    ensure_toy_data(data, TINY, log=lambda _: None)
    return data


def config(data: Path, output: Path, **kw) -> ComparisonConfig:
    args = {"output": output, "seeds": 2, "data": data, "methods": METHODS, "toy": True, "extra_args": EXTRA}
    return ComparisonConfig(**{**args, **kw})


@pytest.fixture(scope="module")
def compared(toy, tmp_path_factory) -> tuple[Path, dict, InProcess]:
    out = tmp_path_factory.mktemp("cmp") / "two_by_two"
    runner = InProcess()
    table = run_comparison(config(toy, out), runner=runner)
    return out, table, runner


def run_args(run_dir: Path) -> dict:
    """The flags the trainer logged for a run (first line of log.txt)."""
    first = (run_dir / "log.txt").read_text().splitlines()[0]
    assert first.startswith("args: ")
    return json.loads(first[len("args: "):])


def test_mean_std_by_hand():
    assert mean_std([1.0, 2.0, 3.0, 4.0]) == pytest.approx({"mean": 2.5, "std": math.sqrt(5 / 3), "n": 4})
    assert mean_std([7.0]) == {"mean": 7.0, "std": None, "n": 1}
    assert mean_std([]) == {"mean": None, "std": None, "n": 0}


def test_each_method_and_seed_trained_with_its_flags(compared):
    out, _, runner = compared
    assert len(runner.calls) == 4
    for method in METHODS:
        for seed in (0, 1):
            args = run_args(out / "runs" / f"{method}_seed{seed}")
            assert args["seed"] == seed
            assert args["num_hid"] == 32 and args["epochs"] == 1
            if method == "none":
                # --toy would default lambda to the toy value: the method must switch it off
                assert args["mode"] == "none" and args["inf_lambda"] == 0
            else:
                assert args["mode"] == "learned_mixin" and args["entropy_penalty"] == 0.36
                assert args["inf_lambda"] == trainer_config.TOY_DEFAULTS["inf_lambda"]


def test_table_means_and_stds_match_the_runs(compared):
    out, table, _ = compared
    on_disk = json.loads((out / "table.json").read_text())
    assert on_disk == json.loads(json.dumps(table))
    assert on_disk["split"] == "test" and on_disk["seeds"] == [0, 1]
    md = (out / "table.md").read_text()
    for method in METHODS:
        results = [json.loads((out / "runs" / f"{method}_seed{s}" / "results.json").read_text()) for s in (0, 1)]
        row = on_disk["methods"][method]
        assert (row["finished"], row["crashed"]) == (2, 0)
        columns = {"overall": [r["test"]["overall"] for r in results],
                   **{t: [r["test"]["perAnswerType"][t] for r in results] for t in TYPES}}
        cells = []
        for column, values in columns.items():
            assert row[column]["mean"] == pytest.approx(np.mean(values))
            assert row[column]["std"] == pytest.approx(np.std(values, ddof=1))
            cells.append(f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}")
        assert f"| {method} | 2 | 0 | " + " | ".join(cells) in md
        if method.endswith("+reg"):
            for score in ("score_q", "score_v"):
                assert row[score] == pytest.approx(np.mean([r["history"][-1][score] for r in results]))
                assert row[score] > 0
        else:
            assert all("score_q" not in r["history"][-1] for r in results)
            assert "score_q" not in row
    with Image.open(out / "table.png") as png:
        assert png.format == "PNG" and png.size == (1030, 480)


def test_rerun_through_the_cli_trains_nothing(compared, toy):
    out, _, _ = compared
    results = sorted(out.glob("runs/*/results.json"))
    stamps = [p.stat().st_mtime_ns for p in results]
    table_before = (out / "table.json").read_text()
    cmd = [sys.executable, str(TOOL), "--data", str(toy), "--toy", "--seeds", "2", "--output", str(out),
           "--methods", ",".join(METHODS), "--", *EXTRA]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert [p.stat().st_mtime_ns for p in results] == stamps
    assert not list(out.glob("runs/*/crashed.json"))
    assert (out / "table.json").read_text() == table_before
    assert "| none | 2 | 0 |" in done.stdout


def test_other_flags_or_data_are_refused(compared, toy, tmp_path):
    out, _, _ = compared
    record = (out / "comparison.json").read_text()
    with pytest.raises(VQAError, match=r"other flags.*--num_hid 32 there, 64 now"):
        run_comparison(config(toy, out, extra_args=("--num_hid", "64", "--epochs", "1")), runner=never)
    with pytest.raises(VQAError, match=r"learned_mixin\+reg runs made with other flags.*inf_lambda"):
        run_comparison(config(toy, out, inf_lambda=0.5), runner=never)
    other = tmp_path / "other"
    shutil.copytree(toy / "processed", other / "processed")
    answers = json.loads((other / "processed/cp/answers.json").read_text())
    answers["answers"] = answers["answers"][::-1]
    (other / "processed/cp/answers.json").write_text(json.dumps(answers))
    with pytest.raises(VQAError, match="holds runs on other data"):
        run_comparison(config(other, out, toy=False), runner=never)
    assert (out / "comparison.json").read_text() == record
    # a method new to the folder is welcome (same data, its own flags); a run folder without record is not
    orphan = tmp_path / "orphan"
    (orphan / "runs" / "none_seed0").mkdir(parents=True)
    with pytest.raises(VQAError, match="no comparison.json"):
        run_comparison(config(toy, orphan), runner=never)


@pytest.mark.parametrize("extra, message", [
    (("--seed", "3"), r"--seed \(set by --seeds\)"),
    (("--out", "x"), r"--output \(set by --output\)"),  # argparse abbreviation of --output
    (("--entropy_penalty", "0"), r"--entropy_penalty \(set by --methods\)"),
    (("--num_hid", "zero"), "argument --num_hid: must be a positive integer, got zero"),
])
def test_bad_pass_through_flags(toy, tmp_path, extra, message):
    with pytest.raises(VQAError, match=message):
        run_comparison(config(toy, tmp_path / "x", extra_args=extra), runner=never)
    assert not (tmp_path / "x").exists()


def test_bad_methods(toy, tmp_path):
    with pytest.raises(VQAError, match="unknown method 'lmh'"):
        run_comparison(config(toy, tmp_path / "x", methods=("none", "lmh")), runner=never)
    with pytest.raises(VQAError, match="more than once"):
        run_comparison(config(toy, tmp_path / "x", methods=("none", "none")), runner=never)
    with pytest.raises(VQAError, match="turns the regulariser off"):
        run_comparison(config(toy, tmp_path / "x", inf_lambda=0.0), runner=never)


def test_crash_in_a_subprocess_is_reported(toy, tmp_path):
    out = tmp_path / "crash"
    # lambda * reg_term overflows to inf at the first step: the trainer stops with a VQAError
    table = run_comparison(config(toy, out, methods=("learned_mixin+reg",), seeds=1, inf_lambda=1e300))
    row = table["methods"]["learned_mixin+reg"]
    assert (row["finished"], row["crashed"]) == (0, 1)
    assert row["overall"] == {"mean": None, "std": None, "n": 0}
    crash = json.loads((out / "runs/learned_mixin+reg_seed0/crashed.json").read_text())
    assert crash["returncode"] == 2 and "non-finite loss" in crash["error"]
    md = (out / "table.md").read_text()
    assert "| learned_mixin+reg | 0 | 1 | – |" in md
    assert "learned_mixin+reg_seed0: exit 2: error: non-finite loss" in md
    assert Image.open(out / "table.png").format == "PNG"


def test_mixed_finished_and_crashed_seeds(compared, toy, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(compared[0], out)
    (out / "runs/none_seed1/results.json").unlink()
    kept = json.loads((out / "runs/none_seed0/results.json").read_text())["test"]
    calls = []

    def crash(argv: list[str], log_path: Path) -> int:
        calls.append(argv)
        log_path.write_text("epoch 1/1:  10%|#\rTraceback (most recent call last):\nRuntimeError: boom\n")
        return 1

    table = run_comparison(config(toy, out), runner=crash)
    # the interrupted run left checkpoints behind: it is resumed, not restarted
    assert calls == [["--resume", str(out / "runs/none_seed1")]]
    row = table["methods"]["none"]
    assert (row["finished"], row["crashed"]) == (1, 1)
    assert row["overall"] == {"mean": kept["overall"], "std": None, "n": 1}
    assert row["runs"]["1"] == {"status": "crashed", "error": "exit 1: RuntimeError: boom"}
    md = (out / "table.md").read_text()
    assert f"| none | 1 | 1 | {kept['overall']:.2f} ± – |" in md
    assert "- none_seed1: exit 1: RuntimeError: boom (see runs/none_seed1/train_output.txt)" in md


def test_validation_selection_reports_test_at_the_selected_epoch(toy, tmp_path):
    out = tmp_path / "val"
    runner = InProcess()
    extra = ("--num_hid", "32", "--epochs", "2", "--batch_size", "64")
    table = run_comparison(config(toy, out, methods=("none",), seeds=1, val_fraction=0.3, extra_args=extra),
                           runner=runner)
    run = out / "runs/none_seed0"
    args = run_args(run)
    assert args["val_fraction"] == 0.3 and args["select_on"] == "val"
    results = json.loads((run / "results.json").read_text())
    history = {r["epoch"]: r for r in results["history"]}
    best = max(history, key=lambda e: (history[e]["val"]["overall"], -e))  # first best epoch on val
    assert results["selected_epoch"] == best
    row = table["methods"]["none"]
    assert row["overall"]["mean"] == results["test"]["overall"]
    assert row["runs"]["0"]["selected_epoch"] == best
    assert "epoch selected on val" in table["selection"]
    assert "epoch selected on val (0.3 of train)" in (out / "table.md").read_text().splitlines()[0]


def test_a_new_method_joins_an_existing_folder(compared, toy, tmp_path):
    out = tmp_path / "more"
    shutil.copytree(compared[0], out)
    runner = InProcess()
    table = run_comparison(config(toy, out, methods=("reweight", "none"), seeds=1), runner=runner)
    assert [call[call.index("--mode") + 1] for call in runner.calls] == ["reweight"]  # none_seed0 is done
    assert set(json.loads((out / "comparison.json").read_text())["methods"]) == {*METHODS, "reweight"}
    assert list(table["methods"]) == ["reweight", "none"]
