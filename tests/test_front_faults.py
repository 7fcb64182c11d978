"""save_predictions.py and tools/information_scores.py: bad flags, garbage checkpoints and file-system faults
give one line on stderr starting with `error:` (no traceback), and never lose a file already written."""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vqa_cp.dataset import load_processed
from vqa_cp.errors import run_cli
from vqa_cp.model import build_model

ROOT = Path(__file__).resolve().parents[1]


def _load_front(relative: str):
    spec = importlib.util.spec_from_file_location(f"front_{Path(relative).stem}", ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SAVE_PREDICTIONS = _load_front("save_predictions.py")
INFORMATION_SCORES = _load_front("tools/information_scores.py")


@pytest.fixture(scope="module")
def model_file(toy_data: Path, tmp_path_factory) -> Path:
    """An untrained model sized for the toy data, saved as a plain state_dict (like the published one)."""
    processed = load_processed(toy_data, "cp")
    torch.manual_seed(0)
    model = build_model("baseline0_newatt", ntoken=len(processed.dictionary.idx2word), num_hid=16, v_dim=32,
                        num_answers=len(processed.answers), emb_dim=processed.glove.shape[1])
    path = tmp_path_factory.mktemp("model") / "model.pth"
    torch.save(model.state_dict(), path)
    return path


def _front(front, argv: list[str], capsys) -> tuple[int, str]:
    """Run a front in this process as its __main__ does; (exit code, stderr)."""
    capsys.readouterr()
    try:
        run_cli(lambda: front.main(argv))
        code = 0
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr().err


def _one_error_line(code: int, err: str) -> str:
    """The one `error:` line, last on stderr (after any progress bar), with no traceback."""
    assert code == 2, err
    assert "Traceback" not in err, err
    assert err.endswith("\n") and err.count("error:") == 1, err
    last = err.rstrip("\n").split("\n")[-1]
    assert last.startswith("error: "), err
    return last


def _unwritable_folder() -> Path | None:
    """/sys/kernel: sysfs, where even root cannot create a file; None where that does not hold."""
    folder = Path("/sys/kernel")
    if not folder.is_dir():
        return None
    try:
        fd = os.open(folder / f".vqa_cp_probe_{os.getpid()}", os.O_CREAT | os.O_WRONLY)
    except OSError:
        return folder
    os.close(fd)
    os.unlink(folder / f".vqa_cp_probe_{os.getpid()}")
    return None


# ---- flags ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("front", "flag", "value", "message"),
    [
        (SAVE_PREDICTIONS, "--batch_size", "0", "argument --batch_size: must be a positive integer, got 0"),
        (SAVE_PREDICTIONS, "--batch_size", "many", "argument --batch_size: must be a positive integer, got 'many'"),
        (SAVE_PREDICTIONS, "--num_workers", "-3", "argument --num_workers: must be a non-negative integer, got -3"),
        (INFORMATION_SCORES, "--batch_size", "0", "argument --batch_size: must be a positive integer, got 0"),
        (INFORMATION_SCORES, "--n_samples", "-1", "argument --n_samples: must be a positive integer, got -1"),
    ],
)
def test_bad_numbers_are_usage_errors(front, flag: str, value: str, message: str, tmp_path: Path, capsys) -> None:
    argv = ["model.pth", str(tmp_path / "out.json")] if front is SAVE_PREDICTIONS else ["model.pth"]
    code, err = _front(front, [*argv, flag, value], capsys)
    assert code == 2
    assert err.splitlines()[-1].endswith(f": error: {message}"), err
    assert "Traceback" not in err


def test_bad_batch_size_from_the_command_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "save_predictions.py", "m.pth", str(tmp_path / "r.json"),
                           "--batch_size", "0"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1] == (
        "save_predictions.py: error: argument --batch_size: must be a positive integer, got 0")
    assert "Traceback" not in proc.stderr and not (tmp_path / "r.json").exists()


# ---- garbage checkpoints -------------------------------------------------------------------------------

def test_random_files_as_the_model_are_one_line(toy_data: Path, tmp_path: Path, capsys) -> None:
    rng = random.Random(11)
    for i in range(40):
        path = tmp_path / f"junk_{i}.pth"
        path.write_bytes((b"\x80\x02" if i % 2 else b"") + bytes(rng.getrandbits(8) for _ in range(256)))
        code, err = _front(SAVE_PREDICTIONS, [str(path), str(tmp_path / "r.json"), "--data", str(toy_data)],
                           capsys)
        assert _one_error_line(code, err).startswith(f"error: {path}: ")
    assert not (tmp_path / "r.json").exists()


def test_a_list_as_the_model_is_one_line(toy_data: Path, tmp_path: Path, capsys) -> None:
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], path)
    code, err = _front(INFORMATION_SCORES, [str(path), "--data", str(toy_data)], capsys)
    assert _one_error_line(code, err) == (
        f"error: {path}: expected a state_dict or a checkpoint dict, found list")


# ---- output paths --------------------------------------------------------------------------------------

@pytest.mark.parametrize("front", [SAVE_PREDICTIONS, INFORMATION_SCORES], ids=["save_predictions", "scores"])
def test_unwritable_outputs_are_refused_before_any_work(front, tmp_path: Path, capsys) -> None:
    what = "results file" if front is SAVE_PREDICTIONS else "scores file"

    def argv(out: Path) -> list[str]:  # the model does not exist: the output is checked first
        missing = str(tmp_path / "no_model.pth")
        return [missing, str(out)] if front is SAVE_PREDICTIONS else [missing, "--output", str(out)]

    folder = tmp_path / "a_folder"
    folder.mkdir()
    code, err = _front(front, argv(folder), capsys)
    assert _one_error_line(code, err) == f"error: {folder}: is a folder; give a file name for the {what}"
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    code, err = _front(front, argv(blocker / "sub" / "out.json"), capsys)
    assert _one_error_line(code, err) == (
        f"error: {blocker}/sub/out.json: cannot create the {what}: {blocker} is a file, not a folder")
    assert blocker.read_text() == "keep me"
    system = _unwritable_folder()
    if system is None:
        pytest.skip("/sys/kernel is writable here")
    code, err = _front(front, argv(system / "out.json"), capsys)
    line = _one_error_line(code, err)
    assert line.startswith(f"error: {system}/out.json: cannot write the {what} in {system}: "), line


def _fail_after_half(monkeypatch) -> None:
    """json.dump writes half its text, then the disk is full (ENOSPC naming the file being written)."""
    real_dump = json.dump

    def dump(obj, f, **kwargs) -> None:
        text = json.dumps(obj, **kwargs)
        f.write(text[: len(text) // 2])
        f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f.name)

    monkeypatch.setattr(json, "dump", dump)
    assert json.dump is not real_dump


def test_full_disk_keeps_the_previous_results(model_file: Path, toy_data: Path, tmp_path: Path, capsys,
                                              monkeypatch) -> None:
    out = tmp_path / "results.json"
    code, err = _front(SAVE_PREDICTIONS, [str(model_file), str(out), "--data", str(toy_data)], capsys)
    assert code == 0, err
    previous = out.read_bytes()
    entries = json.loads(previous)
    assert len(entries) > 0 and set(entries[0]) == {"question_id", "answer"}

    _fail_after_half(monkeypatch)
    code, err = _front(SAVE_PREDICTIONS, [str(model_file), str(out), "--data", str(toy_data)], capsys)
    assert _one_error_line(code, err) == f"error: {out}: No space left on device"
    assert out.read_bytes() == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # no temporary left behind


def test_information_scores_output_and_full_disk(model_file: Path, toy_data: Path, tmp_path: Path, capsys,
                                                 monkeypatch) -> None:
    out = tmp_path / "scores.json"
    argv = [str(model_file), "--data", str(toy_data), "--n_samples", "1", "--output", str(out)]
    code, err = _front(INFORMATION_SCORES, argv, capsys)
    assert code == 0, err
    written = json.loads(out.read_text())
    assert set(written["scores"]) == {"question", "image"} and written["split"] == "test"
    previous = out.read_bytes()

    _fail_after_half(monkeypatch)
    code, err = _front(INFORMATION_SCORES, argv, capsys)
    assert _one_error_line(code, err) == f"error: {out}: No space left on device"
    assert out.read_bytes() == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.json"]
