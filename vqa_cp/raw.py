"""Typed loaders of the raw VQA json files (VQA v2 wrapped dicts, VQA-CP v2 bare lists).

msgspec checks every field the pipeline reads while it parses; a bad type, a missing field or bad JSON
becomes one VQAError line such as
`FILE: entry 12 (question_id 4567): field 'question_id': expected int, got str`.
Entries are read-only records that also answer `entry["field"]` and `entry.get("field")`, so code written
for dicts keeps working.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any

import msgspec

from vqa_cp.errors import VQAError

ANSWERS_PER_QUESTION = 10
# ids become int64 arrays: refuse what would not fit rather than overflow later
Id = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


class Entry(msgspec.Struct, frozen=True):
    """Base of the raw entries: attribute access plus the read side of a dict."""

    def __getitem__(self, key: str) -> Any:
        value = getattr(self, key, msgspec.UNSET)
        if value is msgspec.UNSET:
            raise KeyError(key)
        return value

    def get(self, key: str, default: Any = None) -> Any:
        value = getattr(self, key, msgspec.UNSET)
        return default if value is msgspec.UNSET else value

    def __contains__(self, key: str) -> bool:
        return getattr(self, key, msgspec.UNSET) is not msgspec.UNSET


class Question(Entry, frozen=True):
    question_id: Id
    image_id: Id
    question: str
    coco_split: str | msgspec.UnsetType = msgspec.UNSET  # VQA-CP only


class Answer(Entry, frozen=True):
    answer: str
    answer_confidence: str | msgspec.UnsetType = msgspec.UNSET
    answer_id: int | msgspec.UnsetType = msgspec.UNSET


class Annotation(Entry, frozen=True):
    question_id: Id
    image_id: Id
    question_type: str
    answer_type: str
    multiple_choice_answer: str
    answers: list[Answer]
    coco_split: str | msgspec.UnsetType = msgspec.UNSET  # VQA-CP only


class QuestionFile(msgspec.Struct):
    questions: list[Question]


class AnnotationFile(msgspec.Struct):
    annotations: list[Annotation]


QUESTIONS_TYPE = list[Question] | QuestionFile
ANNOTATIONS_TYPE = list[Annotation] | AnnotationFile

_AT = re.compile(r"^(?P<message>.*?)(?: - at `(?P<path>\$[^`]*)`)?$", re.S)
_ENTRY = re.compile(r"^\$(?:\.(?P<key>questions|annotations))?\[(?P<index>\d+)\](?P<rest>.*)$")
_BACKTICKS = re.compile(r"`([^`]*)`")


def _plain(message: str) -> str:
    """msgspec's "Expected `int`, got `str`" -> "expected int, got str"."""
    message = _BACKTICKS.sub(r"\1", message)
    return message[:1].lower() + message[1:]


def _entry_label(path: Path, key: str | None, index: int) -> str:
    """`entry 12 (question_id 4567)`: the id read back from the untyped file when it is a plain value."""
    label = f"entry {index}"
    try:
        data = msgspec.json.decode(path.read_bytes())
        entries = data[key] if key else data
        qid = entries[index].get("question_id")
    except Exception:  # the id is a courtesy: the message stands without it
        return label
    if isinstance(qid, (int, str)) and not isinstance(qid, bool):
        label += f" (question_id {qid})"
    return label


def _describe(path: Path, what: str, exc: msgspec.ValidationError) -> str:
    """One line for a validation error, naming the file, the entry and the field."""
    match = _AT.match(str(exc))
    message, where = _plain(match["message"]), match["path"]
    entry = _ENTRY.match(where or "")
    if entry is None:
        shape = f"a list of {what} or {{\"{what}\": [...]}}"
        return f"{path}: expected {shape}: {message}" + (f" at {where}" if where and where != "$" else "")
    label = _entry_label(path, entry["key"], int(entry["index"]))
    field = entry["rest"].lstrip(".")
    missing = re.match(r"object missing required field (\S+)", message)
    if missing:
        return f"{path}: {label}: missing field '{field + '.' if field else ''}{missing[1]}'"
    if not field:
        return f"{path}: {label}: {message}"
    return f"{path}: {label}: field '{field}': {message}"


def _decode(path: str | os.PathLike, what: str, kind: Any) -> list:
    path = Path(path)
    if not path.is_file():
        raise VQAError(f"{what} file not found: {path}")
    data = path.read_bytes()  # an OSError names the path
    try:
        decoded = msgspec.json.decode(data, type=kind)
    except msgspec.ValidationError as exc:
        raise VQAError(_describe(path, what, exc)) from None
    except msgspec.DecodeError as exc:
        raise VQAError(f"{path}: not valid JSON (truncated or corrupt?): {exc}") from None
    except UnicodeDecodeError as exc:
        raise VQAError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return decoded if isinstance(decoded, list) else getattr(decoded, what)


def load_questions(path: str | os.PathLike) -> list[Question]:
    """Question entries of a VQA v2 ({"questions": [...]}) or VQA-CP v2 (bare list) file, type-checked."""
    return _decode(path, "questions", QUESTIONS_TYPE)


def load_annotations(path: str | os.PathLike, answer_types: tuple[str, ...] | None = None) -> list[Annotation]:
    """Annotation entries of a VQA v2 or VQA-CP v2 file, type-checked, each with exactly 10 answers.

    With `answer_types`, an answer_type outside it is an error too.
    """
    annotations = _decode(path, "annotations", ANNOTATIONS_TYPE)
    for i, a in enumerate(annotations):
        where = f"{path}: entry {i} (question_id {a.question_id})"
        if len(a.answers) != ANSWERS_PER_QUESTION:
            raise VQAError(f"{where}: field 'answers': expected {ANSWERS_PER_QUESTION} answers, "
                           f"got {len(a.answers)}")
        if answer_types is not None and a.answer_type not in answer_types:
            raise VQAError(f"{where}: field 'answer_type': unknown value {a.answer_type!r} (expected one of "
                           f"{', '.join(answer_types)})")
    return annotations
