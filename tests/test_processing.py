"""Raw json + GloVe -> processed files, against values worked out by hand from tests/raw_fixtures.py."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.raw_fixtures import CP_TEST, CP_TRAIN, GLOVE, annotation_entry, question_entry, write_raw
from vqa_cp.errors import VQAError
from vqa_cp.processing import (
    answer_vocabulary,
    bias_priors,
    dataset_outputs,
    load_annotations,
    process_answers,
    process_dataset,
    process_text,
    soft_targets,
)

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["what", "color", "is", "the", "cat", "dog", "'s", "ball", "asleep", "how", "many", "cats", "black",
         "sofa", "doing", "zebra", "striped", "sport", "this", "being", "played"]
PAD = len(WORDS)
# cp train annotations come in the order 103, 101, 102, 105, 104: labels yes, black, red, "2" ("two"
# normalised); min count 2 keeps only "yes" (questions 103 and 105)
CP_ANSWERS = ["yes", "black", "red", "2"]
# rows: questions 101..105 (question-file order); raw "two" x4 of 104 is not in the vocabulary
CP_TRAIN_TARGET = np.array([[0, 1.0, 0, 0], [0, 0.3, 1.0, 0], [1.0, 0, 0, 0], [0, 0, 0, 0.9], [1.0, 0, 0, 0]],
                           dtype=np.float32)
CP_TEST_TARGET = np.array([[0, 0.6, 0, 0], [0, 0, 0, 0], [1.0, 0, 0, 0]], dtype=np.float32)
CP_TYPES = ["is the", "what color is the", "how many", "what is the"]
CP_BIAS = np.array([[1.0, 0, 0, 0],                  # is the: 103, 105
                    [0, 0.65, 0.5, 0],               # what color is the: mean of 101, 102
                    [0, 0, 0, 0.9],                  # how many: 104
                    [0.4, 0.26, 0.2, 0.18]],         # test only: mean of all 5 train targets
                   dtype=np.float32)


def dense(ptr: np.ndarray, label: np.ndarray, score: np.ndarray, num_answers: int) -> np.ndarray:
    out = np.zeros((len(ptr) - 1, num_answers), dtype=np.float32)
    for i in range(len(ptr) - 1):
        out[i, label[ptr[i]:ptr[i + 1]]] = score[ptr[i]:ptr[i + 1]]
    return out


def snapshot(processed: Path) -> dict[str, object]:
    """Bytes of every processed file but the digest cache (which holds inode numbers); h5 as arrays."""
    out: dict[str, object] = {}
    for path in sorted(processed.rglob("*")):
        if not path.is_file() or path.name == "digests.json":
            continue
        key = str(path.relative_to(processed))
        if path.suffix == ".h5":
            with h5py.File(path, "r") as h5:
                out[key] = {k: (str(h5[k].dtype), h5[k][:].tolist()) for k in h5}
        else:
            out[key] = path.read_bytes()
    return out


def run_process(data: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "tools" / "process.sh"), "--data", str(data), *extra],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture()
def raw(tmp_path: Path) -> Path:
    write_raw(tmp_path)
    return tmp_path


def test_dictionary_and_glove_init(raw: Path) -> None:
    process_text(raw, log=lambda _: None)
    words = json.loads((raw / "processed" / "dictionary.json").read_text())["words"]
    assert words == WORDS
    init = np.load(raw / "processed" / "glove6b_init_300d.npy", allow_pickle=False)
    assert init.dtype == np.float32 and init.shape == (len(WORDS), 4)
    expected = np.zeros_like(init)
    for word in ("what", "cat", "'s", "striped"):
        expected[WORDS.index(word)] = GLOVE[word]
    np.testing.assert_array_equal(init, expected)


def test_glove_line_of_wrong_width(raw: Path) -> None:
    glove = raw / "glove" / "glove.6B.300d.txt"
    lines = glove.read_text().splitlines(keepends=True)
    lines[2] = "cat 1.0 2.0 3.0\n"
    glove.write_text("".join(lines))
    with pytest.raises(VQAError, match=r"glove\.6B\.300d\.txt: line 3 has 3 numbers, expected 4"):
        process_text(raw, log=lambda _: None)
    assert not (raw / "processed" / "glove6b_init_300d.npy").exists()
    assert not list((raw / "processed").glob(".*tmp"))


def test_answer_vocabulary_min_count() -> None:
    annotations = [annotation_entry(q, True) for q in CP_TRAIN]
    assert answer_vocabulary(annotations, min_count=1) == ["black", "red", "yes", "2"]
    assert answer_vocabulary(annotations, min_count=2) == ["yes"]
    assert answer_vocabulary(annotations, min_count=3) == []


def test_soft_targets_count_raw_answers() -> None:
    annotations = [annotation_entry(q, True) for q in CP_TRAIN]
    index = {a: i for i, a in enumerate(CP_ANSWERS)}
    ptr, label, score = soft_targets(annotations, index)
    assert ptr.tolist() == [0, 1, 3, 4, 5, 6]
    np.testing.assert_allclose(dense(ptr, label, score, 4), CP_TRAIN_TARGET, rtol=0, atol=1e-7)
    assert score.dtype == np.float32
    # counts 0..5 of one answer among the 10 -> 0, .3, .6, .9, 1, 1
    for n, expected in enumerate([0.0, 0.3, 0.6, 0.9, 1.0, 1.0]):
        counts = {"x": n, "other": 10 - n}
        entry = annotation_entry((1, 1, "", "t", "other", "x", counts), False)
        _, _, s = soft_targets([entry], {"x": 0})
        assert s.tolist() == pytest.approx([expected] if n else [])


def test_bias_priors_by_hand() -> None:
    ptr = np.array([0, 1, 3, 3])
    label = np.array([0, 0, 1])
    score = np.array([1.0, 0.3, 0.6], dtype=np.float32)
    qtype = np.array([0, 0, 1])
    bias = bias_priors(qtype, ptr, label, score, num_types=3, num_answers=2)
    np.testing.assert_allclose(bias, [[0.65, 0.3], [0, 0], [1.3 / 3, 0.6 / 3]], rtol=1e-6)
    assert bias.dtype == np.float32


def test_process_cp(raw: Path) -> None:
    process_text(raw, log=lambda _: None)
    messages: list[str] = []
    process_dataset(raw, "cp", min_count=1, log=messages.append)
    out = raw / "processed" / "cp"
    assert json.loads((out / "answers.json").read_text())["answers"] == CP_ANSWERS
    assert json.loads((out / "question_types.json").read_text()) == CP_TYPES
    np.testing.assert_allclose(np.load(out / "bias.npy"), CP_BIAS, rtol=1e-6)
    assert any("warning: cp: 1 test question types (1 questions)" in m for m in messages)

    train = np.load(out / "train.npz", allow_pickle=False)
    assert train["question_id"].tolist() == [101, 102, 103, 104, 105]
    assert train["image_id"].tolist() == [1, 2, 2, 3, 1]
    assert train["question_type"].tolist() == [1, 1, 0, 2, 0]
    assert train["answer_type"].tolist() == [2, 2, 0, 1, 0]
    assert train["tokens"].shape == (5, 14) and train["tokens"].dtype == np.int64
    assert train["tokens"][0].tolist() == [PAD] * 9 + [0, 1, 2, 3, 4]            # what color is the cat
    assert train["tokens"][1].tolist() == [PAD] * 7 + [0, 1, 2, 3, 5, 6, 7]      # ... dog 's ball
    np.testing.assert_allclose(dense(train["target_ptr"], train["target_label"], train["target_score"], 4),
                               CP_TRAIN_TARGET, atol=1e-7)
    test = np.load(out / "test.npz", allow_pickle=False)
    assert test["question_type"].tolist() == [1, 3, 0]
    np.testing.assert_allclose(dense(test["target_ptr"], test["target_label"], test["target_score"], 4),
                               CP_TEST_TARGET, atol=1e-7)

    ann = json.loads((out / "test_annotations.json").read_text())
    assert ann["question_id"] == [201, 202, 203]
    assert ann["answers"][0] == ["black"] * 2 + ["blue"] * 8
    assert ann["multiple_choice_answer"] == ["blue", "sleeping", "yes"]
    assert ann["answer_type"] == ["other", "other", "yes/no"]
    assert ann["question"][2] == "Is the zebra striped?"


def test_process_v2_and_min_count_flag(raw: Path) -> None:
    process_text(raw, log=lambda _: None)
    assert process_answers(raw, min_count=1, log=lambda _: None) == ["cp", "v2"]
    assert json.loads((raw / "processed" / "v2" / "answers.json").read_text())["answers"] == [
        "black", "red", "yes"]
    process_dataset(raw, "cp", min_count=2, log=lambda _: None)
    assert json.loads((raw / "processed" / "cp" / "answers.json").read_text())["answers"] == ["yes"]


def test_unknown_words_map_to_padding(raw: Path) -> None:
    questions = [question_entry(q, True) for q in CP_TEST]
    questions[0]["question"] = "What colour is the okapi?"
    (raw / "vqacp_v2_test_questions.json").write_text(json.dumps(questions))
    process_text(raw, log=lambda _: None)
    messages: list[str] = []
    process_dataset(raw, "cp", min_count=1, log=messages.append)
    tokens = np.load(raw / "processed" / "cp" / "test.npz")["tokens"]
    assert tokens[0].tolist() == [PAD] * 9 + [0, PAD, 2, 3, PAD]
    assert any("vqacp_v2_test_questions.json: 2 words not in the dictionary" in m for m in messages)


@pytest.mark.parametrize("content", ['[{"question_id": 201, "image_id"', "not json at all"])
def test_truncated_or_not_json(raw: Path, content: str) -> None:
    process_text(raw, log=lambda _: None)
    (raw / "vqacp_v2_test_annotations.json").write_text(content)
    with pytest.raises(VQAError, match=r"vqacp_v2_test_annotations\.json: not valid JSON"):
        process_dataset(raw, "cp", min_count=1, log=lambda _: None)
    assert not (raw / "processed" / "cp").exists()


def test_questions_without_annotations_and_reverse(raw: Path) -> None:
    process_text(raw, log=lambda _: None)
    path = raw / "vqacp_v2_test_annotations.json"
    path.write_text(json.dumps([annotation_entry(q, True) for q in CP_TEST[:2]]))
    with pytest.raises(VQAError, match=r"vqacp_v2_test_questions\.json: 1 questions have no annotation.*"
                                       r"question_id 203"):
        process_dataset(raw, "cp", min_count=1, log=lambda _: None)
    extra = CP_TEST + [(204, 1, "Is it?", "is it", "yes/no", "no", {"no": 10})]
    path.write_text(json.dumps([annotation_entry(q, True) for q in extra]))
    with pytest.raises(VQAError, match=r"vqacp_v2_test_annotations\.json: 1 annotations have no question.*"
                                       r"question_id 204"):
        process_dataset(raw, "cp", min_count=1, log=lambda _: None)
    assert not (raw / "processed" / "cp").exists()


def test_annotation_with_wrong_answer_count(raw: Path) -> None:
    entries = [annotation_entry(q, True) for q in CP_TEST]
    entries[1]["answers"] = entries[1]["answers"][:9]
    (raw / "vqacp_v2_test_annotations.json").write_text(json.dumps(entries))
    with pytest.raises(VQAError, match=r"vqacp_v2_test_annotations\.json: entry 1 \(question_id 202\): "
                                       r"field 'answers': expected 10 answers, got 9$"):
        load_annotations(raw / "vqacp_v2_test_annotations.json")


def test_process_sh_end_to_end_rerun_and_interrupt(tmp_path: Path) -> None:
    clean, broken = tmp_path / "clean", tmp_path / "broken"
    write_raw(clean)
    write_raw(broken)
    first = run_process(clean, "--min-count", "1")
    assert first.returncode == 0, first.stderr
    expected = snapshot(clean / "processed")
    # 3 files and 3 records at the top, and each dataset folder with its record
    assert len(expected) == 6 + 2 * (len(dataset_outputs(clean, "cp")) + 1)

    again = run_process(clean, "--min-count", "1")
    assert again.returncode == 0, again.stderr
    assert [line.split(":")[0] for line in again.stdout.splitlines() if line.startswith("skip")] == [
        "skip dictionary", "skip glove", "skip answers cp", "skip answers v2", "skip features"]
    assert snapshot(clean / "processed") == expected

    fp16 = run_process(clean, "--min-count", "1", "--fp16")  # another dtype: only step 3 reruns
    assert fp16.returncode == 0, fp16.stderr
    assert "skip answers v2" in fp16.stdout and "features.h5: 3 images, float16" in fp16.stdout
    with h5py.File(clean / "processed" / "features.h5", "r") as h5:
        assert h5["features"].dtype == np.float16

    # interrupted run: step 1 finished, step 2 killed mid-write (stale temporaries), step 3 never ran
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(["python", str(ROOT / "tools" / "process_text.py"), "--data", str(broken)], check=True,
                   env=env, capture_output=True, timeout=60)
    stale = [broken / "processed" / "cp" / ".train.npz.abc123.tmp",
             broken / "processed" / ".features.h5.x.tmp"]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half written")
    rerun = run_process(broken, "--min-count", "1")
    assert rerun.returncode == 0, rerun.stderr
    assert "skip dictionary" in rerun.stdout and "skip answers" not in rerun.stdout
    assert not any(p.exists() for p in stale)
    assert snapshot(broken / "processed") == expected
    assert snapshot(broken / "processed") != snapshot(clean / "processed")  # float16 features differ


def test_process_sh_reports_errors_in_one_line(raw: Path) -> None:
    (raw / "vqacp_v2_train_questions.json").write_text("[{")
    result = run_process(raw, "--min-count", "1")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "error: " in result.stderr and "vqacp_v2_train_questions.json: not valid JSON" in result.stderr
