"""The training loop behind main.py, on the toy data (CPU, small sizes)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_args
from vqa_cp import checkpoints as ckpts
from vqa_cp.config import parse_args
from vqa_cp.errors import VQAError
from vqa_cp.losses import build_loss
from vqa_cp.model import build_model
from vqa_cp.objective import Objective
from vqa_cp.regularization import RegParameters
from vqa_cp.training import main

ROOT = Path(__file__).resolve().parents[1]


def _metrics(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("mode", ["none", "reweight", "bias_product", "learned_mixin"])
def test_each_mode_trains_and_writes_its_files(toy_data, tmp_path, mode):
    out = tmp_path / mode
    results = main(tiny_args(toy_data, out, "--mode", mode, "--epochs", "3", "--lr", "0.005",
                             "--inf_lambda", "0"))
    history = _metrics(out)
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    for name in ("log.txt", "metrics.jsonl", "results.json", "model.pth"):
        assert (out / name).is_file(), name
    assert len(ckpts.list_checkpoints(out)) == 2
    log = (out / "log.txt").read_text()
    assert "epoch 3, time:" in log and "train_loss:" in log and "eval score:" in log
    test = results["test"]
    assert 0 <= test["overall"] <= 100
    assert set(test["perAnswerType"]) == {"yes/no", "number", "other"}
    assert json.loads((out / "results.json").read_text())["test"] == test


def test_regulariser_logs_information_scores(toy_data, tmp_path):
    out = tmp_path / "reg"
    main(tiny_args(toy_data, out, "--inf_lambda", "1e-4", "--n_samples", "2"))
    record = _metrics(out)[0]
    for key in ("reg_term", "score_q", "score_v"):
        assert key in record and record[key] == record[key]  # present and not NaN
    assert record["score_q"] > 0 and record["score_v"] > 0
    assert "information score q:" in (out / "log.txt").read_text()


def test_deterministic_runs_are_identical(toy_data, tmp_path):
    a = main(tiny_args(toy_data, tmp_path / "a", "--deterministic", "--inf_lambda", "1e-4"))
    b = main(tiny_args(toy_data, tmp_path / "b", "--deterministic", "--inf_lambda", "1e-4"))
    strip = [{k: v for k, v in r.items() if k not in ("seconds", "samples_per_s")} for r in a["history"]]
    assert strip == [{k: v for k, v in r.items() if k not in ("seconds", "samples_per_s")} for r in b["history"]]
    sa = ckpts.safe_load(tmp_path / "a" / "model.pth")["model"]
    sb = ckpts.safe_load(tmp_path / "b" / "model.pth")["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("flags, message", [
    (["--n_samples", "0"], "--n_samples"),
    (["--norm", "0"], "--norm"),
    (["--mode", "magic"], "--mode"),
    (["--batch_size", "-3"], "--batch_size"),
])
def test_contradicting_flags_are_refused_by_argparse(flags, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(flags)
    assert message in capsys.readouterr().err


def test_missing_processed_data_says_what_to_run(tmp_path):
    with pytest.raises(VQAError, match=r"tools/process\.sh.*--toy"):
        main(["--data", str(tmp_path / "nothing"), "--output", str(tmp_path / "o")])


def test_cli_prints_one_line_error_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "main.py", "--data", str(tmp_path / "none"), "--output",
                           str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: processed data not found")


def test_validation_split_selects_on_val_and_reports_test_once(toy_data, tmp_path):
    out = tmp_path / "val"
    results = main(tiny_args(toy_data, out, "--epochs", "2", "--val_fraction", "0.2", "--select_on", "val",
                             "--inf_lambda", "0"))
    history = _metrics(out)
    assert all("val" in r and "test" not in r for r in history)
    best = max(history, key=lambda r: r["val"]["overall"])
    assert results["selected_epoch"] == best["epoch"]
    assert "overall" in results["test"]
    assert "evaluated once" in (out / "log.txt").read_text()


def test_features_on_device_gather_gives_the_same_run(toy_data, tmp_path):
    flags = ["--deterministic", "--cache_features", "--cache_dtype", "float32", "--inf_lambda", "0"]
    a = main(tiny_args(toy_data, tmp_path / "copy", *flags))
    b = main(tiny_args(toy_data, tmp_path / "gather", *flags, "--features_on_gpu"))
    assert a["test"] == b["test"]
    assert a["history"][0]["train_loss"] == b["history"][0]["train_loss"]


def test_non_finite_loss_stops_naming_epoch_step_and_term_after_saving(toy_data, tmp_path):
    out = tmp_path / "boom"
    with pytest.raises(VQAError, match=r"non-finite loss at epoch 1, step 0: .*regulariser") as info:
        main(tiny_args(toy_data, out, "--inf_lambda", "1e300"))
    assert str(out) in str(info.value)
    saved = ckpts.list_checkpoints(out)
    assert [p.name for p in saved] == [ckpts.checkpoint_name(0, 0)]
    assert ckpts.safe_load(saved[0])["step"] == 0


def test_bf16_autocast_runs_on_cpu_with_float32_scores(toy_data, tmp_path):
    results = main(tiny_args(toy_data, tmp_path / "bf16", "--amp", "bf16", "--inf_lambda", "1e-4"))
    record = results["history"][0]
    assert record["score_q"] > 0 and record["score_v"] > 0
    assert 0 <= results["test"]["overall"] <= 100


@pytest.mark.parametrize("legacy, trunk_rows", [(False, [4]), (True, [4, 4])])
def test_objective_reuses_the_trunk_or_runs_the_published_second_pass(legacy, trunk_rows):
    """Reuse: one trunk pass. --inf_legacy: a second trunk pass over the same 4 questions (not over n
    copies), as the published code's second forward; the head then sees the 3 x 4 perturbed rows."""
    torch.manual_seed(0)
    model = build_model("baseline0_newatt", ntoken=9, num_hid=6, v_dim=5, num_answers=4, emb_dim=3)
    objective = Objective(model, build_loss("learned_mixin", num_hid=6), RegParameters(lambda_=1e-3, n_samples=3),
                          legacy=legacy)
    trunk_calls, head_calls = [], []
    model.q_emb.register_forward_hook(lambda module, args, out: trunk_calls.append(args[0].shape[0]))
    model.q_net.register_forward_hook(lambda module, args, out: head_calls.append(args[0].shape[0]))
    g = torch.Generator().manual_seed(1)
    v, q = torch.rand(4, 3, 5, generator=g), torch.randint(0, 9, (4, 5), generator=g)
    loss, _, parts = objective(v, q, torch.rand(4, 4, generator=g), torch.rand(4, 4, generator=g), step_id=0)
    assert trunk_calls == trunk_rows and head_calls == [4, 12]
    loss.backward()
    assert torch.isfinite(loss) and parts["score_q"] > 0 and parts["score_v"] > 0
    assert model.q_emb.rnn.weight_hh_l0.grad.abs().sum() > 0
