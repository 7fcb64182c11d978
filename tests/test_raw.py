"""Raw VQA json type checks: each bad type gives one line naming the file, the entry and the field."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.raw_fixtures import CP_TRAIN, V2_TRAIN, annotation_entry, question_entry, write_raw
from tests.test_processing import run_process
from vqa_cp.errors import VQAError
from vqa_cp.raw import load_annotations, load_questions


def write(path: Path, entries: list[dict], wrap: str | None) -> Path:
    path.write_text(json.dumps({wrap: entries} if wrap else entries))
    return path


def questions(tmp_path: Path, change: Callable[[list[dict]], object], wrap: str | None = None) -> Path:
    entries = [question_entry(q, wrap is None) for q in CP_TRAIN]
    change(entries)
    return write(tmp_path / "q.json", entries, wrap)


def annotations(tmp_path: Path, change: Callable[[list[dict]], object], wrap: str | None = None) -> Path:
    entries = [annotation_entry(q, wrap is None) for q in CP_TRAIN]
    change(entries)
    return write(tmp_path / "a.json", entries, wrap)


QUESTION_CASES = [
    (lambda e: e[0].update(question=None), None,
     r"entry 0 \(question_id 101\): field 'question': expected str, got null"),
    (lambda e: e[0].update(question_id="101"), None,
     r"entry 0 \(question_id 101\): field 'question_id': expected int, got str"),
    (lambda e: e[1].update(image_id=1.5), "questions",
     r"entry 1 \(question_id 102\): field 'image_id': expected int, got float"),
    (lambda e: e[1].update(question_id=True), "questions", r"entry 1: field 'question_id': expected int, got bool"),
    (lambda e: e[2].update(question_id=-3), None,
     r"entry 2 \(question_id -3\): field 'question_id': expected int >= 0"),
    (lambda e: e[2].update(coco_split=7), None,
     r"entry 2 \(question_id 103\): field 'coco_split': expected str, got int"),
    (lambda e: e[3].pop("image_id"), "questions", r"entry 3 \(question_id 104\): missing field 'image_id'"),
    (lambda e: e.__setitem__(4, "x"), None, r"entry 4: expected object, got str"),
]


@pytest.mark.parametrize("change, wrap, message", QUESTION_CASES)
def test_question_types(tmp_path: Path, change, wrap, message: str) -> None:
    path = questions(tmp_path, change, wrap)
    with pytest.raises(VQAError, match="^" + str(path) + ": " + message + "$"):
        load_questions(path)


ANNOTATION_CASES = [
    (lambda e: e[2].update(question_type=["is the"]), None,
     r"entry 2 \(question_id 103\): field 'question_type': expected str, got array"),
    (lambda e: e[2].update(multiple_choice_answer=2), None,
     r"entry 2 \(question_id 103\): field 'multiple_choice_answer': expected str, got int"),
    (lambda e: e[0].update(answer_type=None), "annotations",
     r"entry 0 \(question_id 101\): field 'answer_type': expected str, got null"),
    (lambda e: e[0].update(answer_type="colour"), "annotations",
     r"entry 0 \(question_id 101\): "
     r"field 'answer_type': unknown value 'colour' \(expected one of yes/no, number, other\)"),
    (lambda e: e[1].update(answers={}), None,
     r"entry 1 \(question_id 102\): field 'answers': expected array, got object"),
    (lambda e: e[1].update(answers=e[1]["answers"][:9]), None,
     r"entry 1 \(question_id 102\): field 'answers': expected 10 answers, got 9"),
    (lambda e: e[1]["answers"][3].update(answer=None), None,
     r"entry 1 \(question_id 102\): field 'answers\[3\]\.answer': expected str, got null"),
    (lambda e: e[1]["answers"][3].update(answer_id="4"), "annotations",
     r"entry 1 \(question_id 102\): field 'answers\[3\]\.answer_id': expected int, got str"),
    (lambda e: e[1]["answers"][0].update(answer_confidence=1), None,
     r"entry 1 \(question_id 102\): field 'answers\[0\]\.answer_confidence': expected str, got int"),
    (lambda e: e[1]["answers"][9].pop("answer"), None,
     r"entry 1 \(question_id 102\): missing field 'answers\[9\]\.answer'"),
    (lambda e: e[4].update(image_id="3"), "annotations",
     r"entry 4 \(question_id 105\): field 'image_id': expected int, got str"),
]


@pytest.mark.parametrize("change, wrap, message", ANNOTATION_CASES)
def test_annotation_types(tmp_path: Path, change, wrap, message: str) -> None:
    path = annotations(tmp_path, change, wrap)
    with pytest.raises(VQAError, match="^" + str(path) + ": " + message + "$"):
        load_annotations(path, ("yes/no", "number", "other"))


@pytest.mark.parametrize("text, message", [
    ('"x"', r'expected a list of questions or \{"questions": \[\.\.\.\]\}: expected object \| array, got str'),
    ('{"question": []}', r'expected a list of questions or \{"questions": \[\.\.\.\]\}: object missing required field '
                         r'questions'),
    ('[{"question_id"', r"not valid JSON \(truncated or corrupt\?\): Input data was truncated"),
    ('[{"question_id": 1, "image_id": 2, "question": "ok"}] x', r"not valid JSON .*trailing characters"),
])
def test_file_shape(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "q.json"
    path.write_text(text)
    with pytest.raises(VQAError, match="^" + str(path) + ": " + message):
        load_questions(path)


def test_good_files_read_as_entries(tmp_path: Path) -> None:
    qs = load_questions(write(tmp_path / "q.json", [question_entry(q, False) for q in V2_TRAIN], "questions"))
    assert [q["question_id"] for q in qs] == [101, 102, 103] and qs[0].question == "What color is the cat?"
    assert qs[0].get("coco_split") is None and "coco_split" not in qs[0]
    ann = load_annotations(annotations(tmp_path, lambda e: None))
    assert ann[1]["answers"][9]["answer"] == "black" and ann[1].coco_split == "train2014"


@pytest.mark.parametrize("name, change, message", [
    ("vqacp_v2_train_questions.json", lambda e: e[0].update(question=None),
     r"vqacp_v2_train_questions\.json: entry 0 \(question_id 101\): field 'question': expected str, got null"),
    ("vqacp_v2_train_annotations.json", lambda e: e[0].update(multiple_choice_answer=3),
     r"vqacp_v2_train_annotations\.json: entry 0 \(question_id 103\): field 'multiple_choice_answer': "
     r"expected str, got int"),
])
def test_process_sh_one_line(tmp_path: Path, name: str, change, message: str) -> None:
    write_raw(tmp_path)
    path = tmp_path / name
    entries = json.loads(path.read_text())
    change(entries)
    path.write_text(json.dumps(entries))
    result = run_process(tmp_path, "--min-count", "1")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.replace("\r", "\n").splitlines()  # progress bars end with carriage returns
    (line,) = [x for x in lines if x.startswith("error")]
    assert re.search(message + "$", line) and line == lines[-1], line
