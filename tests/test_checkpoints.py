"""Loading trained models: the reference (published) format, our format, and bad files."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_args
from vqa_cp import checkpoints as ckpts
from vqa_cp.errors import VQAError
from vqa_cp.model import to_reference_state_dict
from vqa_cp.prediction import load_model_for_data, open_split
from vqa_cp.training import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(toy_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "run"
    results = main(tiny_args(toy_data, out, "--epochs", "2", "--inf_lambda", "0"))
    return out, results


def _reference_file(model_path: Path, dest: Path) -> Path:
    """What the published code saved: DataParallel `module.` prefix, legacy weight-norm keys, dead keys."""
    ours = ckpts.safe_load(model_path)["model"]
    ref = {f"module.{k}": v for k, v in to_reference_state_dict(ours).items()}
    ref["module.bias_lin.weight"] = torch.randn(1, 32)
    ref["module.bias_lin.bias"] = torch.zeros(1)
    ref["module.debias_loss_fn.bias_lin.weight"] = torch.randn(1, 32)
    ref["module.debias_loss_fn.smooth_param"] = torch.tensor([-1.0])
    torch.save(ref, dest)
    return dest


def _logits(model, dataset, n=16):
    items = [dataset[i] for i in range(n)]
    v = torch.stack([it[0] for it in items]).float()
    q = torch.stack([it[1] for it in items])
    model.eval()
    with torch.no_grad():
        return model(v, q)[0]


def test_reference_state_dict_gives_exactly_the_same_logits(trained, toy_data, tmp_path):
    out, _ = trained
    ref_path = _reference_file(out / "model.pth", tmp_path / "published.pth")
    assert any(k.endswith("weight_g") for k in torch.load(ref_path))
    ours = load_model_for_data(out / "model.pth", toy_data)
    theirs = load_model_for_data(ref_path, toy_data)
    assert ours.source == "vqa_cp" and theirs.source == "reference"
    dataset = open_split(toy_data, "test")
    assert torch.equal(_logits(ours.model, dataset), _logits(theirs.model, dataset))


def test_sizes_come_from_the_tensors(trained, toy_data):
    out, _ = trained
    model = load_model_for_data(out, toy_data).model  # a folder resolves to its model.pth
    assert model.q_emb.rnn.hidden_size == 32
    assert model.num_answers == len(open_split(toy_data, "test").answers)


def test_answer_count_mismatch_names_the_way_out(trained, toy_data, tmp_path):
    out, _ = trained
    ref = torch.load(_reference_file(out / "model.pth", tmp_path / "p.pth"))
    for key in ("module.classifier.main.3.weight_v", "module.classifier.main.3.bias"):
        ref[key] = torch.cat([ref[key], ref[key][:1]])
    torch.save(ref, tmp_path / "more_answers.pth")
    with pytest.raises(VQAError, match=r"answers.*--answers"):
        load_model_for_data(tmp_path / "more_answers.pth", toy_data)


def test_vocabulary_mismatch_is_refused_for_our_checkpoints(trained, toy_data, tmp_path):
    out, _ = trained
    ckpt = ckpts.safe_load(out / "model.pth")
    ckpt["words_digest"] = "0" * 64
    ckpts.save_checkpoint(tmp_path / "other_vocab.pth", ckpt)
    with pytest.raises(VQAError, match=r"vocabulary.*differs.*--dictionary FILE --answers FILE"):
        load_model_for_data(tmp_path / "other_vocab.pth", toy_data)


def test_shapes_that_disagree_and_other_architectures(trained, toy_data, tmp_path):
    out, _ = trained
    ref = torch.load(_reference_file(out / "model.pth", tmp_path / "p.pth"))
    ref["module.q_net.main.0.weight_v"] = torch.randn(32, 7)
    torch.save(ref, tmp_path / "bad_shapes.pth")
    with pytest.raises(VQAError, match=r"bad_shapes.pth: .*shape"):
        load_model_for_data(tmp_path / "bad_shapes.pth", toy_data)
    torch.save({"conv1.weight": torch.zeros(3, 3)}, tmp_path / "resnet.pth")
    with pytest.raises(VQAError, match=r"resnet.pth: .*missing key|resnet.pth: .*no attention"):
        load_model_for_data(tmp_path / "resnet.pth", toy_data)
    full = tmp_path / "cut.pth"
    data = (out / "model.pth").read_bytes()
    full.write_bytes(data[: len(data) // 3])
    with pytest.raises(VQAError, match="cut.pth: unreadable or truncated"):
        load_model_for_data(full, toy_data)


def test_save_predictions_evaluates_to_the_training_log(trained, toy_data, tmp_path):
    out, results = trained
    predictions = tmp_path / "preds.json"
    proc = subprocess.run([sys.executable, "save_predictions.py", str(out), str(predictions), "--data",
                           str(toy_data), "--evaluate"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    entries = json.loads(predictions.read_text())
    assert len(entries) == len(open_split(toy_data, "test"))
    proc = subprocess.run([sys.executable, "eval/evaluate.py", "--questions",
                           str(toy_data / "vqacp_v2_test_questions.json"), "--annotations",
                           str(toy_data / "vqacp_v2_test_annotations.json"), "--results", str(predictions),
                           "--output", str(tmp_path / "eval")], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    official = json.loads((tmp_path / "eval" / "accuracy.json").read_text())
    assert official["overall"] == results["test"]["overall"]
    assert official["perAnswerType"] == results["test"]["perAnswerType"]
    assert f"{results['test']['overall']:.2f}" in proc.stdout


def test_information_scores_tool_prints_both_modalities(trained, toy_data):
    out, _ = trained
    proc = subprocess.run([sys.executable, "tools/information_scores.py", str(out), "--data", str(toy_data),
                           "--n_samples", "2"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line.startswith("  ")}
    assert set(lines) == {"question", "image"}
    shares = [float(line.split("(")[1].rstrip("%)")) for line in lines.values()]
    assert abs(sum(shares) - 100) < 0.2


def test_load_fine_tunes_a_reference_checkpoint_with_its_own_lists(trained, toy_data, tmp_path):
    """--load with --dictionary/--answers: rows are matched by string, the logits of shared answers kept."""
    import pickle

    out, _ = trained
    data_words = json.loads((toy_data / "processed" / "dictionary.json").read_text())["words"]
    data_answers = json.loads((toy_data / "processed" / "cp" / "answers.json").read_text())["answers"]
    ours = ckpts.safe_load(out / "model.pth")["model"]
    # the reference pipeline's lists: words and answers in another order
    perm_w, perm_a = list(reversed(range(len(data_words)))), list(reversed(range(len(data_answers))))
    ref = to_reference_state_dict(ours)
    pad = ref["w_emb.emb.weight"][-1:]
    ref["w_emb.emb.weight"] = torch.cat([ref["w_emb.emb.weight"][:-1][perm_w], pad])
    for key in ("classifier.main.3.weight_v", "classifier.main.3.bias"):
        ref[key] = ref[key][perm_a]
    torch.save(ref, tmp_path / "ref.pth")
    with open(tmp_path / "dictionary.pkl", "wb") as f:
        pickle.dump([{}, [data_words[i] for i in perm_w]], f)
    with open(tmp_path / "label2ans.pkl", "wb") as f:
        pickle.dump([data_answers[i] for i in perm_a], f)
    results = main(tiny_args(toy_data, tmp_path / "tuned", "--load", str(tmp_path / "ref.pth"), "--dictionary",
                             str(tmp_path / "dictionary.pkl"), "--answers", str(tmp_path / "label2ans.pkl"),
                             "--inf_lambda", "0", "--lr", "1e-12"))
    dataset = open_split(toy_data, "test")
    original = load_model_for_data(out / "model.pth", toy_data).model
    tuned = load_model_for_data(tmp_path / "tuned" / "model.pth", toy_data).model
    torch.testing.assert_close(_logits(tuned, dataset), _logits(original, dataset), rtol=1e-4, atol=1e-4)
    # save_predictions' path: the checkpoint in its own order, token ids translated at the input
    theirs = load_model_for_data(tmp_path / "ref.pth", toy_data, dictionary=str(tmp_path / "dictionary.pkl"),
                                 answers=str(tmp_path / "label2ans.pkl"))
    items = [dataset[i] for i in range(16)]
    v, q = torch.stack([it[0] for it in items]), torch.stack([it[1] for it in items])
    theirs.model.eval()
    with torch.no_grad():
        via_map = theirs.model(v, theirs.token_map[q])[0][:, perm_a]
    torch.testing.assert_close(via_map, _logits(original, dataset))
    assert 0 <= results["test"]["overall"] <= 100
