"""The real-shape rehearsal data (vqa_cp.rehearsal) at a tiny scale, read back through the raw files and the
project's own processing; counts checked against the real counts times the scale."""

from __future__ import annotations

import base64
import json
import runpy
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from vqa_cp import rehearsal
from vqa_cp.errors import VQAError, run_cli
from vqa_cp.processing import DEFAULT_MIN_COUNT, process_answers, process_text
from vqa_cp.rehearsal import REAL, RehearsalConfig, generate_rehearsal_data

ROOT = Path(__file__).resolve().parent.parent
SCALE = 0.002
TSV = "trainval_36/trainval_resnet101_faster_rcnn_genome_36.tsv"


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rehearsal") / "data"
    generate_rehearsal_data(out, RehearsalConfig(scale=SCALE, seed=1), progress=False)
    return out


def load(path: Path):
    return json.loads(path.read_text())


def test_counts_are_the_real_ones_times_the_scale(raw: Path) -> None:
    train = load(raw / "vqacp_v2_train_questions.json")
    test = load(raw / "vqacp_v2_test_questions.json")
    assert len(train) == round(REAL["cp_train"] * SCALE) and len(test) == round(REAL["cp_test"] * SCALE)
    v2 = {sub: load(raw / f"v2_OpenEnded_mscoco_{sub}_questions.json")["questions"]
          for sub in ("train2014", "val2014", "test2015", "test-dev2015")}
    assert len(v2["test2015"]) == round(REAL["test2015"] * SCALE)
    assert len(v2["test-dev2015"]) == round(REAL["test-dev2015"] * SCALE)
    # VQA-CP re-splits exactly the VQA v2 train2014 + val2014 questions, each keeping its coco_split
    cp = {q["question_id"]: q for q in train + test}
    assert sorted(cp) == sorted(q["question_id"] for q in v2["train2014"] + v2["val2014"])
    assert all(cp[q["question_id"]]["coco_split"] == sub for sub in ("train2014", "val2014") for q in v2[sub])
    files = [raw / f"vqacp_v2_{split}_annotations.json" for split in ("train", "test")]
    types = {a["question_type"] for path in files for a in load(path)}
    assert types <= set(rehearsal.QUESTION_TYPES) and len(types) >= 60 and len(rehearsal.QUESTION_TYPES) == 65


def test_features_have_the_real_shape(raw: Path) -> None:
    lines = (raw / TSV).read_bytes().split(b"\r\n")
    assert lines[-1] == b"" and len(lines) - 1 == round(REAL["images"] * SCALE)
    images = set()
    for line in lines[:5]:
        image_id, w, h, k, boxes, features = line.split(b"\t")
        v = np.frombuffer(base64.b64decode(features), dtype=np.float32)
        assert int(k) == 36 and v.size == 36 * 2048 and (v >= 0).all() and v.std() > 0
        b = np.frombuffer(base64.b64decode(boxes), dtype=np.float32).reshape(36, 4)
        assert (b[:, 2:] > b[:, :2]).all() and (b[:, 2] <= int(w)).all() and (b[:, 3] <= int(h)).all()
        images.add(int(image_id))
    questions = load(raw / "vqacp_v2_train_questions.json") + load(raw / "vqacp_v2_test_questions.json")
    assert images <= {q["image_id"] for q in questions}


def test_processing_gives_the_designed_vocabulary_and_a_dictionary_of_the_real_size(raw: Path) -> None:
    quiet = lambda _: None  # noqa: E731
    process_text(raw, log=quiet)
    process_answers(raw, log=quiet)
    words = load(raw / "processed" / "dictionary.json")["words"]
    assert len(words) >= RehearsalConfig().dictionary_words - RehearsalConfig().subjects
    # the vocabulary, counted independently from the raw train annotations (>= 9 distinct questions)
    per_answer = defaultdict(set)
    for a in load(raw / "vqacp_v2_train_annotations.json"):
        per_answer[a["multiple_choice_answer"]].add(a["question_id"])
    expected = [a for a, q in per_answer.items() if len(q) >= DEFAULT_MIN_COUNT]
    assert sorted(load(raw / "processed" / "cp" / "answers.json")["answers"]) == sorted(expected)
    assert len(expected) >= load(raw / "rehearsal.json")["designed_answers"] - 23  # numbers may fall short here
    tokens = np.load(raw / "processed" / "cp" / "train.npz")["tokens"]
    assert tokens.shape == (round(REAL["cp_train"] * SCALE), 14)


def test_the_answer_shift_between_train_and_test(raw: Path) -> None:
    """Per yes/no question type the share of 'yes' differs between VQA-CP train and test (the CP shift)."""
    shares = {}
    for split in ("train", "test"):
        counts: dict[str, Counter] = defaultdict(Counter)
        for a in load(raw / f"vqacp_v2_{split}_annotations.json"):
            if a["answer_type"] == "yes/no":
                counts[a["question_type"]][a["multiple_choice_answer"]] += 1
        shares[split] = {t: c["yes"] / sum(c.values()) for t, c in counts.items() if sum(c.values()) >= 20}
    common = shares["train"].keys() & shares["test"].keys()
    gaps = [abs(shares["train"][t] - shares["test"][t]) for t in common]
    assert common and np.median(gaps) > 0.3


def test_about_2000_answers_clear_the_filter_from_scale_005() -> None:
    """The allocation alone (no files): at 0.05 and 0.1 the designed answers all get >= 9 train questions."""
    for scale in (0.05, 0.1):
        config = RehearsalConfig(scale=scale)
        n_other = rehearsal._designed_others(config)
        combos = rehearsal._combos(np.random.default_rng(0), config, n_other)
        _, answer = rehearsal._split_questions(np.random.default_rng(1), config, combos, test=False)
        counts = np.bincount(answer[answer >= 0])
        assert len(answer) == round(REAL["cp_train"] * scale)
        assert 1990 <= int((counts >= DEFAULT_MIN_COUNT).sum()) <= 2000


def test_allocate_is_exact() -> None:
    counts = rehearsal.allocate(100, np.array([1.0, 2.0, 1.0]), np.array([0, 9, 0]))
    assert counts.sum() == 100 and counts[1] >= 9 and counts.tolist() == [23, 54, 23]
    with pytest.raises(VQAError, match="cannot place 9 floor"):
        rehearsal.allocate(5, np.ones(2), np.array([9, 0]))


def test_the_front_refuses_toy_flags_and_bad_scales(tmp_path: Path, capsys) -> None:
    main = runpy.run_path(str(ROOT / "tools" / "make_toy_data.py"))["main"]
    for flags, message in ((["--shape", "real", "--boxes", "12"], "--boxes: toy-shape flags"),
                           (["--shape", "real", "--scale", "2"], "scale must be in")):
        with pytest.raises(SystemExit):
            run_cli(lambda flags=flags: main(["--out", str(tmp_path / "x"), *flags]))
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()
