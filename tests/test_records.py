"""A run's records: the regulariser-strength figures in every sink, TensorBoard read back, and the one-time
warning when the floor lifts an information score."""

import json
import sys
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import tiny_args
from vqa_cp.errors import VQAError
from vqa_cp.objective import Objective
from vqa_cp.records import Records
from vqa_cp.regularization import RegParameters
from vqa_cp.training import gradient_norms, main, note_step


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_gradient_norms_against_hand_worked_values():
    w = torch.tensor([3.0, 4.0], requires_grad=True)
    parts = {"task_loss": 2 * w.sum(), "entropy_penalty": w[0] * 0.5, "reg_loss": 1e-3 * (w**2).sum()}
    norms = gradient_norms(parts, [w])
    # d task / dw = (2.5, 2); d reg / dw = 2e-3 w = (6e-3, 8e-3)
    assert norms["grad_norm_task"].item() == pytest.approx((2.5**2 + 2**2) ** 0.5)
    assert norms["grad_norm_reg"].item() == pytest.approx(1e-2)
    assert w.grad is None  # measuring leaves the step's own backward untouched


def test_a_toy_run_records_the_regulariser_strength_everywhere(toy_data, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    main(tiny_args(toy_data, out, "--inf_lambda", "1e-4", "--n_samples", "2", "--log_every", "5", "--tensorboard"))
    (record,) = _lines(out / "metrics.jsonl")
    assert 0 < record["reg_share"] <= 1
    assert record["reg_share"] == pytest.approx(record["reg_loss"] / record["train_loss"])
    steps = _lines(out / "steps.jsonl")
    assert [s["global_step"] for s in steps] == [1, 6, 11]  # the epoch's first step, then every 5th
    for s in steps:
        assert s["grad_norm_ratio"] == pytest.approx(s["grad_norm_reg"] / s["grad_norm_task"])
        assert s["grad_norm_task"] > 0 and s["grad_norm_reg"] > 0
    assert record["grad_norm_ratio"] == pytest.approx(sum(s["grad_norm_ratio"] for s in steps) / 3)
    log = (out / "log.txt").read_text()
    assert "regulariser: lambda 0.0001, max_ent over ent information scores" in log
    assert "the seed snippet's" in log
    assert f"regulariser share of the loss: {100 * record['reg_share']:.2f}%" in log
    assert f"gradient norm regulariser / task: {record['grad_norm_ratio']:.3g}" in log

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert len(events.Scalars("train/step_loss")) == 14  # every step of the epoch
    for tag, value in (("epoch/train_loss", record["train_loss"]), ("epoch/reg_share", record["reg_share"]),
                       ("epoch/score_q", record["score_q"]), ("test/overall", record["test"]["overall"]),
                       ("test/yes/no", record["test"]["perAnswerType"]["yes/no"])):
        assert tag in scalars, tag
        assert events.Scalars(tag)[0].value == pytest.approx(value, rel=1e-6), tag
    assert [e.step for e in events.Scalars("reg/grad_norm_ratio")] == [1, 6, 11]


def test_without_tensorboard_the_flag_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    with pytest.raises(VQAError, match="--tensorboard needs the tensorboard package: pip install tensorboard"):
        Records(tmp_path, True, tensorboard=tmp_path / "tb")


def test_the_log_names_the_published_wiring():
    reg = RegParameters(lambda_=1e-10)
    assert "published VQA-CP code's (--inf_legacy" in Objective(None, None, reg, legacy=True).describe()
    assert Objective(None, None, RegParameters(lambda_=0.0)).describe() == "off (--inf_lambda 0)"


def test_a_floored_score_is_reported_once_per_modality(tmp_path):
    lines = []
    records = SimpleNamespace(line=lines.append, step=lambda r: None, step_loss=lambda s, v: None)
    run = SimpleNamespace(records=records, objective=SimpleNamespace(reg=RegParameters()), warned=set())
    figures = {"loss": 1.0, "floored": 1.0, "score_q": 0.0, "score_v": 3e-14}
    for step in (1, 2, 3):
        note_step(run, 0, step, figures, measured=False)
    assert len(lines) == 1
    assert lines[0].startswith("warning: the question information score is 0 at step 1")
