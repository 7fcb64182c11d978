"""A run folder holds one run: refusals, --overwrite, fresh default folders, --resume's flags, and the checks
made before the first step (issue: state you can trust)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import tiny_args
from vqa_cp import checkpoints as ckpts
from vqa_cp import training
from vqa_cp.errors import VQAError
from vqa_cp.run_folder import RUN_FILE, remove_checkpoint_temps
from vqa_cp.training import check_inputs, main

ROOT = Path(__file__).resolve().parents[1]
FAST = ("--inf_lambda", "0", "--max_steps", "2")


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_a_second_run_into_the_same_output_is_refused_and_the_first_kept(toy_data, tmp_path):
    out = tmp_path / "run"
    main(tiny_args(toy_data, out, "--inf_lambda", "0"))
    before = _snapshot(out)
    proc = subprocess.run([sys.executable, "main.py", *tiny_args(toy_data, out, *FAST)], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --output ")
    assert f"--resume {out}" in err[0] and "--overwrite" in err[0]
    assert _snapshot(out) == before


def test_overwrite_replaces_the_previous_run_whole(toy_data, tmp_path):
    out = tmp_path / "run"
    main(tiny_args(toy_data, out, "--inf_lambda", "0", "--epochs", "2"))
    first_id = json.loads((out / RUN_FILE).read_text())["run_id"]
    main(tiny_args(toy_data, out, "--inf_lambda", "0", "--overwrite"))
    run = json.loads((out / RUN_FILE).read_text())
    assert run["run_id"] != first_id
    assert [ckpts.CHECKPOINT_PATTERN.match(p.name).group(1) for p in ckpts.list_checkpoints(out)] == ["001"]
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    assert ckpts.safe_load(out / "model.pth")["run_id"] == run["run_id"]


def test_without_output_a_second_run_takes_a_fresh_folder(toy_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [a for a in tiny_args(toy_data, tmp_path, "--inf_lambda", "0") if a != str(tmp_path)]
    args.remove("--output")
    main(args)
    main(args)
    for name in ("saved_models", "saved_models_2"):
        assert (tmp_path / name / "results.json").is_file(), name
    assert not (tmp_path / "saved_models_3").exists()


def test_resume_refuses_flags_it_would_ignore_and_applies_epochs(toy_data, tmp_path):
    out = tmp_path / "run"
    main(tiny_args(toy_data, out, "--inf_lambda", "0", "--epochs", "2"))
    with pytest.raises(VQAError) as info:
        main(["--resume", str(out), "--epochs", "3", "--lr", "5", "--data", "/elsewhere"])
    message = str(info.value)
    assert "--lr 5.0 (the run has 0.002)" in message and "--data /elsewhere" in message
    assert "--epochs" not in message  # --epochs is applied, not refused
    with pytest.raises(VQAError, match="already trained 2 epochs"):
        main(["--resume", str(out), "--epochs", "1", "--num_hid", "32"])  # the run's own value is fine
    main(["--resume", str(out), "--epochs", "3", "--num_workers", "0"])
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert json.loads((out / "results.json").read_text())["epochs"] == 3


def test_resume_takes_only_checkpoints_of_the_run_that_wrote_the_folder(toy_data, tmp_path):
    own, other = tmp_path / "own", tmp_path / "other"
    main(tiny_args(toy_data, own, *FAST))
    main(tiny_args(toy_data, other, "--inf_lambda", "0", "--epochs", "2"))
    foreign = ckpts.list_checkpoints(other)[0]  # epoch 2: newer than anything in `own`
    shutil.copy(foreign, own / foreign.name)
    with pytest.warns(UserWarning, match="another run"):
        main(["--resume", str(own), "--max_steps", "1"])
    assert "resumed from checkpoint_e000_s0000002.pth" in (own / "log.txt").read_text()


def test_stale_checkpoint_temporaries_are_removed(tmp_path):
    stale = [tmp_path / ".checkpoint_e001_s0000000.pth.ab12cd34.tmp", tmp_path / ".model.pth.x1y2z3w4.tmp"]
    keep = tmp_path / ".notes.tmp"
    for p in [*stale, keep]:
        p.write_bytes(b"half a checkpoint")
    remove_checkpoint_temps(tmp_path)
    assert not any(p.exists() for p in stale) and keep.exists()


def test_checkpoint_every_must_not_be_negative(toy_data, tmp_path):
    proc = subprocess.run([sys.executable, "main.py", *tiny_args(toy_data, tmp_path / "r", "--checkpoint_every",
                                                               "-1")], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "--checkpoint_every: must be a non-negative integer, got -1" in proc.stderr
    assert not (tmp_path / "r").exists()


def _copy_data(toy_data: Path, tmp_path: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(toy_data / "processed", data / "processed")
    return data


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_a_broken_test_annotation_file_is_found_before_training(toy_data, tmp_path, damage):
    data = _copy_data(toy_data, tmp_path)
    path = data / "processed" / "cp" / "test_annotations.json"
    if damage == "deleted":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    out = tmp_path / "run"
    with pytest.raises(VQAError, match="test_annotations.json"):
        main(tiny_args(data, out, "--inf_lambda", "0"))
    assert not out.exists() or not ckpts.list_checkpoints(out)


def test_empty_splits_are_refused():
    data = SimpleNamespace(train=[1, 2], eval=[], eval_name="test", val=None)
    with pytest.raises(VQAError, match="the test split has no questions"):
        check_inputs(data)
    data = SimpleNamespace(train=[], eval=[1], eval_name="test", val=None)
    with pytest.raises(VQAError, match="the train split has no questions"):
        check_inputs(data)


def test_an_unwritable_output_is_refused_before_training(toy_data, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(VQAError, match="exists and is not a folder"):
        main(tiny_args(toy_data, blocker, *FAST))
    with pytest.raises(VQAError, match=r"not writable \(Not a directory\)"):
        main(tiny_args(toy_data, blocker / "run", *FAST))


def test_too_little_disk_is_refused_before_training(toy_data, tmp_path, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr("vqa_cp.run_folder.shutil.disk_usage", lambda p: usage._replace(free=1000))
    with pytest.raises(VQAError, match="GiB free, the run's checkpoints need"):
        main(tiny_args(toy_data, tmp_path / "run", *FAST))
    assert not (tmp_path / "run" / RUN_FILE).exists()


def test_a_failing_evaluation_keeps_the_trained_model(toy_data, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("evaluation broke")

    monkeypatch.setattr(training, "evaluate", broken)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="evaluation broke"):
        main(tiny_args(toy_data, out, "--inf_lambda", "0"))
    saved = ckpts.safe_load(out / "model.pth")
    assert saved["epoch"] == 1 and "model" in saved
    assert "the trained model is saved" in (out / "log.txt").read_text()


def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_last_checkpoint(toy_data, tmp_path, monkeypatch,
                                                                                capsys):
    import errno

    from vqa_cp.errors import run_cli

    out = tmp_path / "run"
    real_save, calls = ckpts.torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) == 2:  # the second checkpoint: the disk is full
            with open(f, "wb") as half:
                half.write(b"PK\x03\x04 half")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(ckpts.torch, "save", save)
    with pytest.raises(SystemExit) as info:
        run_cli(lambda: main(tiny_args(toy_data, out, "--inf_lambda", "0", "--checkpoint_every", "3")))
    assert info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert err == [f"error: {out / ckpts.checkpoint_name(0, 6)}: No space left on device"]
    assert [p.name for p in ckpts.list_checkpoints(out)] == [ckpts.checkpoint_name(0, 3)]
    assert ckpts.safe_load(out / ckpts.checkpoint_name(0, 3))["step"] == 3
    assert not list(out.glob(".*.tmp"))


def test_resume_edge_cases(toy_data, tmp_path):
    out = tmp_path / "run"
    main(tiny_args(toy_data, out, "--inf_lambda", "0", "--max_steps", "3"))  # stops mid-epoch 1
    ckpt = ckpts.list_checkpoints(out)[0]
    state = ckpts.safe_load(ckpt)
    state["epoch"] = 1  # as if it were a mid-epoch checkpoint of the second epoch of a 1-epoch run
    ckpts.save_checkpoint(ckpt, state)
    with pytest.raises(VQAError, match="already trained 1 epochs and part of the next; give --epochs 2 or more"):
        main(["--resume", str(out)])
    with pytest.raises(VQAError, match="--overwrite deletes it"):
        main(["--resume", str(out), "--overwrite"])
    state = ckpts.safe_load(ckpts.list_checkpoints(out)[0])
    state["epoch"] = 0
    del state["args"]["inf_score_scale"]  # a run started before the flag existed
    ckpts.save_checkpoint(ckpts.list_checkpoints(out)[0], state)
    main(["--resume", str(out), "--inf_score_scale", "paper", "--max_steps", "1"])  # its default: not refused


def test_nocp_runs_log_their_val2014_evaluation(toy_data, tmp_path):
    out = tmp_path / "run"
    main(tiny_args(toy_data, out, "--inf_lambda", "0", "--nocp"))
    log = (out / "log.txt").read_text()
    assert "\teval score: " in log and "official val2014 accuracy: " in log
