"""Checkpoint files: safe loading, plain-pickle lists, atomic writes, truncated-file fallback."""

import os
import pickle
import random

import numpy as np
import pytest
import torch

from vqa_cp import checkpoints as ckpts
from vqa_cp.errors import VQAError


class _CreatesFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_crafted_pickle_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"model": _CreatesFile(marker)}, f, protocol=2)
    with pytest.raises(VQAError, match=r"evil\.pth: refused to load.*system"):
        ckpts.safe_load(evil)
    assert not marker.exists()
    with pytest.raises(VQAError, match="refused"):
        ckpts.load_plain_pickle(evil, "answers file")
    assert not marker.exists()


def test_plain_pickle_lists_are_read(tmp_path):
    words = tmp_path / "dictionary.pkl"
    with open(words, "wb") as f:
        pickle.dump([{"what": 0, "color": 1}, ["what", "color"]], f)
    assert ckpts.read_reference_words(words) == ["what", "color"]
    answers = tmp_path / "trainval_ans2label.pkl"
    with open(answers, "wb") as f:
        pickle.dump({"yes": 1, "no": 0, "2": 2}, f)
    assert ckpts.read_reference_answers(answers) == ["no", "yes", "2"]


def test_our_json_lists_are_read_and_malformed_ones_named(tmp_path):
    words, answers = tmp_path / "dictionary.json", tmp_path / "answers.json"
    words.write_text('{"words": ["what", "color"]}')
    answers.write_text('{"answers": ["no", "yes"]}')
    assert ckpts.read_reference_words(words) == ["what", "color"]
    assert ckpts.read_reference_answers(answers) == ["no", "yes"]
    words.write_text('["what", "color"]')
    with pytest.raises(VQAError, match=r'dictionary\.json: expected \{"words": \[\.\.\.\]\}'):
        ckpts.read_reference_words(words)
    answers.write_text('{"answers": ["no", 3]}')
    with pytest.raises(VQAError, match=r"answers\.json: the answer list holds non-strings"):
        ckpts.read_reference_answers(answers)


def test_truncated_checkpoint_falls_back_to_previous(tmp_path):
    state = {"version": ckpts.CHECKPOINT_VERSION, "model": {"w": torch.arange(1000.0)}, "epoch": 1, "step": 0}
    ckpts.save_checkpoint(tmp_path / ckpts.checkpoint_name(1, 0), state)
    ckpts.save_checkpoint(tmp_path / ckpts.checkpoint_name(2, 0), dict(state, epoch=2))
    newest = tmp_path / ckpts.checkpoint_name(2, 0)
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match="skipping checkpoint_e002"):
        path, ckpt = ckpts.load_newest_checkpoint(tmp_path)
    assert path.name == ckpts.checkpoint_name(1, 0)
    assert ckpt["epoch"] == 1


def test_unreadable_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(VQAError, match="garbage.pth: unreadable or truncated"):
        ckpts.safe_load(bad)
    with pytest.raises(VQAError, match="not found"):
        ckpts.safe_load(tmp_path / "missing.pth")


def test_prune_keeps_newest_two(tmp_path):
    for e in range(4):
        ckpts.save_checkpoint(tmp_path / ckpts.checkpoint_name(e, 0), {"version": 1})
    ckpts.prune_checkpoints(tmp_path)
    assert [p.name for p in ckpts.list_checkpoints(tmp_path)] == [ckpts.checkpoint_name(3, 0),
                                                                   ckpts.checkpoint_name(2, 0)]


def test_rng_state_round_trip_through_weights_only_load(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    ckpts.save_checkpoint(tmp_path / "c.pth", {"rng": ckpts.rng_state()})
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    ckpts.set_rng_state(ckpts.safe_load(tmp_path / "c.pth")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
