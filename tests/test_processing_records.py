"""Processed data judged by content: records, interrupted reruns, replaced and truncated files, file-system faults."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from tests.raw_fixtures import make_images, tsv_line, tsv_path, write_raw, write_tsv
from tests.test_processing import snapshot
from vqa_cp.dataset import load_processed, load_training_data
from vqa_cp.errors import VQAError, run_cli
from vqa_cp.features import process_features
from vqa_cp.processing import process_answers, process_text

OLD_TIME = 1_000_000_000  # 2001: older than anything processing writes


def quiet(_: str) -> None:
    pass


def process(data: Path, min_count: int = 1, fp16: bool = False) -> None:
    process_text(data, log=quiet)
    process_answers(data, min_count=min_count, log=quiet)
    process_features(data, fp16=fp16, log=quiet)


def change_raw(data: Path) -> None:
    """Another raw set: a new word in test2015 (dictionary, GloVe and both datasets change), another v2 answer,
    other features."""
    path = data / "v2_OpenEnded_mscoco_test2015_questions.json"
    raw = json.loads(path.read_text())
    raw["questions"][0]["question"] = "What sport is this zebra playing?"
    path.write_text(json.dumps(raw))
    path = data / "v2_mscoco_train2014_annotations.json"
    raw = json.loads(path.read_text())
    raw["annotations"][1]["multiple_choice_answer"] = "black"  # so that min count 2 keeps one v2 answer
    path.write_text(json.dumps(raw))
    write_tsv(tsv_path(data), [tsv_line(im) for im in make_images(seed=5)])


class Interrupt:
    """Raise KeyboardInterrupt at the k-th call of any write, rename or delete that processing makes."""

    TARGETS = [(os, "replace"), (os, "rename"), (os, "unlink"), (os, "mkdir"), (shutil, "rmtree"),
               (json, "dump"), (np.lib.format, "write_array"), (tempfile, "mkstemp")]

    def __init__(self, monkeypatch: pytest.MonkeyPatch, k: int) -> None:
        self.k, self.calls = k, 0
        for module, name in self.TARGETS:
            monkeypatch.setattr(module, name, self.wrap(getattr(module, name)))

    def wrap(self, fn):
        def counted(*args, **kwargs):
            self.calls += 1
            if self.calls == self.k:
                raise KeyboardInterrupt
            return fn(*args, **kwargs)
        return counted


def folder_state(processed: Path, name: str) -> object:
    return {k: v for k, v in snapshot(processed).items() if k.startswith(f"{name}/")}


def test_interrupted_rerun_at_every_point_ends_as_a_clean_run(tmp_path: Path) -> None:
    old = tmp_path / "old"
    write_raw(old)
    process(old, min_count=1)
    clean = tmp_path / "clean"
    write_raw(clean)
    change_raw(clean)
    process(clean, min_count=2, fp16=True)
    expected = snapshot(clean / "processed")
    assert expected != snapshot(old / "processed")
    sets = {name: [folder_state(old / "processed", name), folder_state(clean / "processed", name)]
            for name in ("cp", "v2")}
    k = 0
    while True:
        k += 1
        work = tmp_path / f"run{k}"
        shutil.copytree(old, work)
        change_raw(work)
        with pytest.MonkeyPatch.context() as mp:
            interrupt = Interrupt(mp, k)
            try:
                process(work, min_count=2, fp16=True)
            except KeyboardInterrupt:
                pass
        if interrupt.calls < k:  # the run passed every point without being interrupted
            break
        for name, states in sets.items():  # each dataset folder: the old set or the new one, never a mix
            if (work / "processed" / name).exists():
                assert folder_state(work / "processed", name) in states, (k, name)
            else:
                assert (work / "processed" / f".{name}.old").is_dir(), (k, name)
        try:  # the loader takes what it finds only when it is a consistent set
            load_training_data(work)
        except VQAError as exc:
            assert "\n" not in str(exc)
        process(work, min_count=2, fp16=True)
        assert snapshot(work / "processed") == expected, k
        shutil.rmtree(work)
    assert k > 40  # every write, rename and delete of the rerun was a point of interruption


def test_raw_file_replaced_by_an_older_one_is_reprocessed(tmp_path: Path) -> None:
    write_raw(tmp_path)
    process(tmp_path)
    assert load_processed(tmp_path, "cp").answers == ["yes", "black", "red", "2"]
    path = tmp_path / "vqacp_v2_train_annotations.json"
    entries = json.loads(path.read_text())
    for entry in entries:
        if entry["question_id"] == 101:
            entry["multiple_choice_answer"] = "white"  # label 1: white instead of black
    path.write_text(json.dumps(entries))
    os.utime(path, (OLD_TIME, OLD_TIME))  # as `cp -p` or unzip would leave it
    tsv = tsv_path(tmp_path)
    write_tsv(tsv, [tsv_line(im) for im in make_images(seed=9)])
    os.utime(tsv, (OLD_TIME, OLD_TIME))
    messages: list[str] = []
    process_answers(tmp_path, min_count=1, log=messages.append)
    process_features(tmp_path, log=messages.append)
    assert "skip answers v2" in " ".join(messages) and "skip answers cp" not in " ".join(messages)
    assert load_processed(tmp_path, "cp").answers == ["yes", "white", "red", "2"]
    data = load_training_data(tmp_path)
    first = make_images(seed=9)[0]
    assert np.array_equal(data.features.features(0).numpy(), first.features)


@pytest.mark.parametrize("name", ["cp/train.npz", "glove6b_init_300d.npy", "features.h5", "dictionary.json",
                                  "cp/answers.json", "v2/bias.npy"])
def test_truncated_file_is_refused_then_rebuilt(tmp_path: Path, name: str) -> None:
    write_raw(tmp_path)
    process(tmp_path)
    expected = snapshot(tmp_path / "processed")
    path = tmp_path / "processed" / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(VQAError) as refused:
        load_training_data(tmp_path, nocp=name.startswith("v2"))
    message = str(refused.value)
    assert "\n" not in message and message.startswith(str(path)) and "rerun tools/process.sh" in message
    process(tmp_path)
    assert snapshot(tmp_path / "processed") == expected
    load_training_data(tmp_path, nocp=name.startswith("v2"))


def test_same_size_corruption_is_refused(tmp_path: Path) -> None:
    write_raw(tmp_path)
    process(tmp_path)
    path = tmp_path / "processed" / "cp" / "test.npz"
    data = bytearray(path.read_bytes())
    data[-30] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(VQAError, match=r"test\.npz: content differs from its record"):
        load_processed(tmp_path, "cp")


def test_dataset_made_from_another_dictionary_is_refused(tmp_path: Path) -> None:
    write_raw(tmp_path)
    process(tmp_path)
    change_raw(tmp_path)
    process_text(tmp_path, log=quiet)  # new dictionary, answers step not rerun (as after an interruption)
    with pytest.raises(VQAError, match=r"cp/\.record\.json: made from another dictionary\.json"):
        load_processed(tmp_path, "cp")


def one_line_error(capsys: pytest.CaptureFixture, main) -> str:
    with pytest.raises(SystemExit) as exit_:
        run_cli(main)
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.replace("\r", "\n").splitlines()  # progress bars end with carriage returns
    (line,) = [x for x in lines if x.startswith("error")]
    assert line == lines[-1]
    return line


def test_full_disk_keeps_the_previous_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture) -> None:
    write_raw(tmp_path)
    process(tmp_path)
    before = snapshot(tmp_path / "processed")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np.lib.format, "write_array", full)
    line = one_line_error(capsys, lambda: process_answers(tmp_path, min_count=2, log=quiet))
    assert line == f"error: {tmp_path / 'processed' / '.cp.staging' / 'train.npz'}: No space left on device"
    monkeypatch.undo()
    assert snapshot(tmp_path / "processed") == before
    assert sorted(p.name for p in (tmp_path / "processed").iterdir()) == [
        ".records", "cp", "dictionary.json", "features.h5", "glove6b_init_300d.npy", "v2"]


def test_unwritable_folder_and_file_in_the_way(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture) -> None:
    write_raw(tmp_path)
    (tmp_path / "processed").write_text("not a folder")
    line = one_line_error(capsys, lambda: process_text(tmp_path, log=quiet))
    assert line == (f"error: {tmp_path / 'processed' / 'dictionary.json'}: {tmp_path / 'processed'} is a file, "
                    "not a folder")
    (tmp_path / "processed").unlink()
    process_text(tmp_path, log=quiet)
    (tmp_path / "processed" / "cp").write_text("not a folder")
    line = one_line_error(capsys, lambda: process_answers(tmp_path, min_count=1, log=quiet))
    assert line == f"error: {tmp_path / 'processed' / 'cp'}: a file where the processed folder belongs"

    def read_only(*args, dir=None, prefix="", suffix="", **kwargs):  # what a read-only folder makes mkstemp raise
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.path.join(dir, prefix + "x1" + suffix))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    shutil.rmtree(tmp_path / "processed" / ".records")
    line = one_line_error(capsys, lambda: process_text(tmp_path, log=quiet))
    assert line == f"error: {tmp_path / 'processed' / 'dictionary.json'}: Permission denied"
