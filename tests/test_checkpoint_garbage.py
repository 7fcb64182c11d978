"""Garbage given as a checkpoint: random bytes, cut-off and damaged real checkpoints, and files that unpickle
but are not checkpoints. Every one must end in a one-line VQAError naming the file, never another exception."""

from __future__ import annotations

import io
import pickle
import random
import re
import warnings
from pathlib import Path

import pytest
import torch

from vqa_cp import checkpoints as ckpts
from vqa_cp.errors import VQAError, run_cli
from vqa_cp.model import build_model

# torch.save's legacy (pre-zip) format opens with the pickled magic number; garbage after it reaches deeper
# into the unpickler than garbage alone.
LEGACY_MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)


def _tiny_checkpoint() -> dict:
    """A complete training checkpoint of a small BUTD model, as training.training_state builds it."""
    torch.manual_seed(0)
    model = build_model("baseline0_newatt", ntoken=11, num_hid=8, v_dim=6, num_answers=5, emb_dim=4)
    optimizer = torch.optim.Adamax(model.parameters())
    logits, _ = model(torch.randn(2, 3, 6), torch.randint(0, 11, (2, 14)))
    logits.sum().backward()
    optimizer.step()
    return {"version": ckpts.CHECKPOINT_VERSION, "model": model.state_dict(), "loss_fn": {},
            "optimizer": optimizer.state_dict(), "epoch": 1, "step": 0, "args": {"seed": 3, "mode": "none"},
            "rng": ckpts.rng_state(), "history": [], "words_digest": "0" * 64, "answers_digest": "1" * 64,
            "num_words": 11, "num_answers": 5, "model_name": "baseline0_newatt", "running": None}


def _saved_bytes(obj: object, legacy: bool = False) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


def _assert_clean_refusal(path: Path) -> str:
    """load_model (the --load and save_predictions path) refuses `path` with one VQAError line naming it."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning may leak onto the front's stderr either
        try:
            ckpts.load_model(path)
        except VQAError as exc:
            message = str(exc)
        else:
            pytest.fail(f"{path.name} loaded as a model")
    assert message.startswith(f"{path}: "), message
    assert "\n" not in message
    return message


def _random_files(tmp_path: Path, count: int, seed: int) -> list[Path]:
    """`count` seeded random-byte files: plain noise, noise after a pickle PROTO, after the legacy magic,
    and after a zip local-file header, of sizes from 1 byte to 4 KB."""
    rng = random.Random(seed)
    prefixes = [b"", b"\x80\x02", LEGACY_MAGIC + b"\x80\x02", b"PK\x03\x04"]
    paths = []
    for i in range(count):
        size = rng.choice([1, 7, 64, 512, 4096])
        body = bytes(rng.getrandbits(8) for _ in range(size))
        path = tmp_path / f"random_{i:03d}.pth"
        path.write_bytes(prefixes[i % len(prefixes)] + body)
        paths.append(path)
    return paths


def test_random_byte_files_are_one_line_errors(tmp_path: Path) -> None:
    # Before the fix 20 of 400 plain random 4 KB files (seed 0) escaped torch.load as IndexError or KeyError.
    kinds: dict[str, int] = {}
    for path in _random_files(tmp_path, 400, seed=2024):
        message = _assert_clean_refusal(path)
        kind = "refused" if "refused to load" in message else "unreadable"
        kinds[kind] = kinds.get(kind, 0) + 1
    assert kinds.get("unreadable", 0) >= 390  # garbage is reported as garbage, not as a refused class


def test_empty_file_says_so(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    assert _assert_clean_refusal(empty) == f"{empty}: unreadable or truncated checkpoint (the file is empty)"


def test_an_html_page_is_not_a_checkpoint(tmp_path: Path) -> None:
    page = tmp_path / "model.pth"
    page.write_bytes(b"<!DOCTYPE html><html><body><h1>503 Service Unavailable</h1></body></html>\n")
    assert "unreadable or truncated checkpoint" in _assert_clean_refusal(page)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_truncated_real_checkpoint_at_every_cut_point(tmp_path: Path, legacy: bool) -> None:
    data = _saved_bytes(_tiny_checkpoint(), legacy=legacy)
    whole = tmp_path / "whole.pth"
    whole.write_bytes(data)
    assert ckpts.load_model(whole).source == "vqa_cp"  # the uncut file loads
    step = max(1, len(data) // 150)
    cuts = sorted({*range(0, len(data), step), *range(max(0, len(data) - 64), len(data))})
    for cut in cuts:
        path = tmp_path / f"cut_{cut}.pth"
        path.write_bytes(data[:cut])
        message = _assert_clean_refusal(path)
        assert "unreadable or truncated checkpoint" in message, message
        path.unlink()


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_damaged_real_checkpoint_loads_or_fails_cleanly(tmp_path: Path, legacy: bool) -> None:
    """Bytes flipped anywhere: the file may still load (a changed weight), but never crashes the loader."""
    data = _saved_bytes(_tiny_checkpoint(), legacy=legacy)
    rng = random.Random(7)
    refused = 0
    for i in range(150):
        damaged = bytearray(data)
        for _ in range(rng.choice([1, 3])):
            damaged[rng.randrange(len(damaged))] = rng.getrandbits(8)
        path = tmp_path / f"flip_{i}.pth"
        path.write_bytes(bytes(damaged))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                ckpts.load_model(path)
        except VQAError as exc:
            assert str(exc).startswith(f"{path}: ") and "\n" not in str(exc)
            refused += 1
        path.unlink()
    assert refused > 0


def test_truncated_newest_is_skipped_on_resume(tmp_path: Path) -> None:
    data = _saved_bytes(_tiny_checkpoint())
    (tmp_path / ckpts.checkpoint_name(0, 0)).write_bytes(data)
    newest = tmp_path / ckpts.checkpoint_name(1, 0)
    for cut in (0, 1, 100, len(data) // 2, len(data) - 1):
        newest.write_bytes(data[:cut])
        with pytest.warns(UserWarning, match="skipping checkpoint_e001"):
            path, ckpt = ckpts.load_newest_checkpoint(tmp_path)
        assert path.name == ckpts.checkpoint_name(0, 0) and ckpt["epoch"] == 1


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ([1, 2, 3], "expected a state_dict or a checkpoint dict, found list"),
        (torch.zeros(3), "expected a state_dict or a checkpoint dict, found Tensor"),
        ({}, "not a state_dict: the dict is empty"),
        ({"w": "text"}, "not a state_dict: key 'w' holds a str"),
        ({3: torch.zeros(1)}, "not a state_dict: key 3 holds a Tensor"),
        ({"version": ckpts.CHECKPOINT_VERSION, "model": "weights"},
         "the checkpoint's 'model' is a str, not a state_dict"),
        ({"version": ckpts.CHECKPOINT_VERSION, "model": {"w_emb.emb.weight": [1.0]}},
         "the checkpoint's 'model' key 'w_emb.emb.weight' holds a list, not a tensor"),
        ({"conv1.weight": torch.zeros(3, 3)}, "no attention weights"),
    ],
)
def test_unpickled_but_not_a_checkpoint(tmp_path: Path, content: object, expected: str) -> None:
    path = tmp_path / "odd.pth"
    torch.save(content, path)
    assert expected in _assert_clean_refusal(path)


def test_state_dict_with_wrongly_shaped_tensors(tmp_path: Path) -> None:
    state = _tiny_checkpoint()["model"]
    for key, value in [("w_emb.emb.weight", torch.zeros(12)), ("q_emb.rnn.weight_hh_l0", torch.zeros(24)),
                       ("classifier.main.3.parametrizations.weight.original1", torch.zeros(0, 16)),
                       ("v_net.main.0.parametrizations.weight.original1", torch.zeros(8, 6, 1))]:
        path = tmp_path / "shapes.pth"
        torch.save({"version": ckpts.CHECKPOINT_VERSION, "model": {**state, key: value}}, path)
        message = _assert_clean_refusal(path)
        assert key in message and "shape" in message, message
    del state["q_emb.rnn.weight_hh_l0"]
    torch.save({"version": ckpts.CHECKPOINT_VERSION, "model": state}, path)
    assert "missing key 'q_emb.rnn.weight_hh_l0'" in _assert_clean_refusal(path)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"optimizer": None}, "the checkpoint's 'optimizer' holds a NoneType, expected dict"),
        ({"epoch": "1"}, "the checkpoint's 'epoch' holds a str, expected int"),
        ({"step": True}, "the checkpoint's 'step' holds a bool, expected int"),
        ({"epoch": -2}, "the checkpoint's 'epoch' is negative (-2)"),
        ({"model": {"w": 1}}, "the checkpoint's 'model' key 'w' holds a int, not a tensor"),
        ({"rng": None, "args": None}, "the checkpoint's 'args' holds a NoneType, expected dict"),
    ],
)
def test_resume_skips_a_checkpoint_with_bad_entries(tmp_path: Path, change: dict, expected: str) -> None:
    good = _tiny_checkpoint()
    ckpts.save_checkpoint(tmp_path / ckpts.checkpoint_name(0, 0), good)
    ckpts.save_checkpoint(tmp_path / ckpts.checkpoint_name(1, 0), {**good, **change})
    with pytest.warns(UserWarning, match=re.escape(f"skipping checkpoint_e001_s0000000.pth: {expected}; ")):
        path, _ = ckpts.load_newest_checkpoint(tmp_path)
    assert path.name == ckpts.checkpoint_name(0, 0)


def test_resume_from_a_checkpoint_lacking_entries_is_one_line(tmp_path: Path, capsys) -> None:
    from vqa_cp.training import main as train_main

    incomplete = _tiny_checkpoint()
    del incomplete["args"]
    path = tmp_path / ckpts.checkpoint_name(0, 0)
    ckpts.save_checkpoint(path, incomplete)
    _, ckpt = ckpts.load_newest_checkpoint(tmp_path)
    assert ckpt["epoch"] == 1 and ckpt.get("args") is None
    with pytest.raises(VQAError, match=re.escape(f"{path}: the checkpoint lacks 'args'")):
        ckpt["args"]
    with pytest.raises(SystemExit) as stop:
        run_cli(lambda: train_main(["--resume", str(tmp_path)]))
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err == f"error: {path}: the checkpoint lacks 'args' (not a complete vqa_cp training checkpoint)\n"


def test_a_loaded_checkpoint_saves_back_as_a_plain_dict(tmp_path: Path) -> None:
    ckpts.save_checkpoint(tmp_path / ckpts.checkpoint_name(0, 0), _tiny_checkpoint())
    _, ckpt = ckpts.load_newest_checkpoint(tmp_path)
    ckpts.save_checkpoint(tmp_path / "again.pth", ckpt)
    again = ckpts.safe_load(tmp_path / "again.pth")
    assert type(again) is dict and again["epoch"] == 1


class _CallsEval:
    def __reduce__(self):
        return (eval, ("1 + 1",))


def test_a_refused_builtin_is_named_and_a_half_spelled_global_is_corruption(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"model": _CallsEval()}, protocol=2))
    assert "refused to load: the file holds an object of type eval" in _assert_clean_refusal(evil)
    cut = tmp_path / "cut.pth"
    data = evil.read_bytes()
    cut.write_bytes(data[: data.index(b"\neval") + 3])  # `cbuiltins\nev`: the file ends inside the name
    assert "unreadable or truncated checkpoint" in _assert_clean_refusal(cut)
