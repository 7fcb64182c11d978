"""Official VQA accuracy (GT-Vision-Lab/VQA, vqaEval.py, current version): exact and fast.

Per question, as the official evaluator computes it:
  1. every ground-truth answer and the prediction: newlines and tabs -> spaces, strip;
  2. only when those ground-truth answers are not all identical: punctuation then digit/article
     processing of every ground-truth answer and of the prediction (vqa_cp.text.normalize_official);
  3. leave-one-out: for each ground-truth answer i, acc_i = min(1, #{j != i : gt_j == pred} / 3),
     and the question's accuracy is the mean of acc_i over its n answers.
With c matching answers this is (c * min(1, (c-1)/3) + (n-c) * min(1, c/3)) / n; because the official
code sums the n terms in answer order, the last bit depends on where the matches sit, so values are
cached per pattern of match counts and computed with the same summation.
Overall, per answer type and per question type: round(100 * mean over the questions, 2), summed in
annotation-file order; evalQA: round(100 * acc, 2) per question.

Speed: the ground truth is processed once per `GroundTruth` (each distinct string cleaned and
normalised once, answers held as integer ids in a [Q, N] array), predictions are matched with numpy
and the leave-one-out value is computed once per (number of answers, match pattern).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from operator import attrgetter, itemgetter, methodcaller
from pathlib import Path
from typing import Any

import numpy as np

try:
    import msgspec
except ImportError:  # optional: the json module parses the same files, slower
    msgspec = None

if msgspec is not None:
    class _Record(msgspec.Struct):
        answer: str
        answer_id: int

    class _Annotation(msgspec.Struct):
        question_id: int
        question_type: str
        answer_type: str
        answers: list[_Record]

    class _AnnotationFile(msgspec.Struct):
        annotations: list[_Annotation]

    class _Question(msgspec.Struct):
        question_id: int

    class _QuestionFile(msgspec.Struct):
        questions: list[_Question]

    class _Result(msgspec.Struct):
        question_id: int
        answer: str

    # Typed decoders: fields read straight into structs, the rest of each entry skipped. A file they refuse
    # (or one needing whole answer records) goes through the dict path, which explains what is wrong.
    _DECODERS = {"annotations": msgspec.json.Decoder(list[_Annotation] | _AnnotationFile),
                 "questions": msgspec.json.Decoder(list[_Question] | _QuestionFile),
                 "results": msgspec.json.Decoder(list[_Result])}

from vqa_cp.errors import VQAError, describe_os_error
from vqa_cp.files import atomic_paths, load_json
from vqa_cp.processing import ANSWER_TYPES
from vqa_cp.text import clean_whitespace, normalize_official

PRECISION = 2
MATCHES_FOR_FULL_CREDIT = 3
RESULT_FILES = ("accuracy.json", "evalQA.json", "evalQuesType.json", "evalAnsType.json")
_PREVIEW = 5
_NO_ANSWER_ID = object()
_PATTERN_BITS = 56  # widest answer list whose match pattern and length pack into one int64
_get_answer = itemgetter("answer")
_get_answer_id = methodcaller("get", "answer_id", _NO_ANSWER_ID)


def _preview(items: Sequence[Any]) -> str:
    """'N (a, b, c, ...)': a count and the first few items, for error messages."""
    shown = ", ".join(str(x) for x in items[:_PREVIEW])
    return f"{len(items)} ({shown}{', ...' if len(items) > _PREVIEW else ''})"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def leave_one_out_accuracy(match_counts: Sequence[int]) -> float:
    """mean_i min(1, m_i / 3), m_i = matches among the answers left when answer i is held out.

    Summed in answer order as the official code does, so the result is bit-identical to it.
    """
    return float(sum(min(1, m / MATCHES_FOR_FULL_CREDIT) for m in match_counts)) / len(match_counts)


def _record_labels(records: list[dict[str, Any]]) -> tuple[int, ...] | None:
    """Per answer, the index of the first answer whose record (every field but the text) equals its own.

    None when all records differ (distinct answer_id, the normal case).
    """
    try:
        if len(set(map(_get_answer_id, records))) == len(records):
            return None
    except TypeError:  # unhashable answer_id: compare whole records below
        pass
    rest = [{k: v for k, v in r.items() if k != "answer"} for r in records]
    labels = tuple(next(j for j in range(i + 1) if rest[j] == rest[i]) for i in range(len(rest)))
    return None if len(set(labels)) == len(labels) else labels


class GroundTruth:
    """Ground truth of the official metric, one entry per question in evaluation order.

    answers[q] are the raw answer strings of question q. answer_records[q], when not None, labels each
    answer by its annotation record (all fields but the text): the official leave-one-out drops every
    answer whose whole record equals the held-out one, which is only itself when records are distinct.
    Everything that depends on the ground truth alone is done here, once: `processed_ids` [Q, N] holds
    the id in `vocabulary` of each processed answer (-1 pads questions with fewer than N answers), and
    `normalise_prediction` [Q] says whether the prediction gets the punctuation and digit/article steps.
    """

    def __init__(
        self,
        question_ids: Sequence[int],
        answers: Sequence[Sequence[str]],
        answer_types: Sequence[str],
        question_types: Sequence[str],
        answer_records: Sequence[tuple[int, ...] | None] | None = None,
        source: str = "ground truth",
    ) -> None:
        if len(answers) != len(question_ids):
            raise VQAError(f"{source}: {len(question_ids)} question ids but {len(answers)} answer lists")
        if set(map(type, answers)) - {list, tuple}:
            bad = [q for q, a in zip(question_ids, answers) if not isinstance(a, (list, tuple))]
            raise VQAError(f"{source}: answers are not a list in {_preview(bad)} questions")
        lengths = np.fromiter(map(len, answers), dtype=np.int64, count=len(answers))
        self._build(question_ids, list(chain.from_iterable(answers)), lengths, answer_types, question_types,
                    answer_records, source)

    def _build(self, question_ids: Sequence[int], flat: list[str], lengths: np.ndarray,
               answer_types: Sequence[str], question_types: Sequence[str],
               answer_records: Sequence[tuple[int, ...] | None] | None, source: str) -> None:
        """Validate and prepare; answers come concatenated in `flat`, question q owning lengths[q] of them.

        (Concatenated, because building a list per question for 10^5 questions costs more than the rest.)
        """
        _check_columns(question_ids, lengths, answer_types, question_types, answer_records, source)
        n = len(question_ids)
        self.question_ids: list[int] = list(question_ids)
        self.answer_types: list[str] = list(answer_types)
        self.question_types: list[str] = list(question_types)
        self.answer_records: list[tuple[int, ...] | None] = (
            list(answer_records) if answer_records is not None else [None] * n)
        self.irregular = np.array([q for q, r in enumerate(self.answer_records) if r is not None],
                                  dtype=np.int64)
        self.lengths = lengths
        if set(map(type, flat)) - {str}:
            owner = np.repeat(np.arange(n), lengths)
            bad = np.unique(owner[[i for i, t in enumerate(flat) if not isinstance(t, str)]]).tolist()
            bad_ids = [question_ids[q] for q in bad]
            raise VQAError(f"{source}: non-string answer in {_preview(bad_ids)} questions")
        raw_strings = list(dict.fromkeys(flat))
        cleaned = [clean_whitespace(t) for t in raw_strings]
        self.vocabulary: dict[str, int] = {}
        cleaned_ids = np.array([self.vocabulary.setdefault(t, len(self.vocabulary)) for t in cleaned],
                               dtype=np.int64)
        raw_index = dict(zip(raw_strings, range(len(raw_strings))))
        raw = _pad(np.fromiter(map(raw_index.__getitem__, flat), dtype=np.int64, count=len(flat)),
                   self.lengths)
        valid = raw >= 0
        safe_raw = np.where(valid, raw, 0)
        processed = np.where(valid, cleaned_ids[safe_raw], -1)
        self.normalise_prediction = ((processed != processed[:, :1]) & valid).any(axis=1)
        differ_rows = self.normalise_prediction[:, None] & valid
        normalised_ids = np.full(len(raw_strings), -1, dtype=np.int64)
        needed = np.unique(raw[differ_rows]).tolist()
        vocabulary = self.vocabulary
        normalised_ids[needed] = [vocabulary.setdefault(normalize_official(cleaned[i]), len(vocabulary))
                                  for i in needed]
        self.processed_ids = np.where(differ_rows, normalised_ids[safe_raw], processed)
        self.question_type_rows = _rows_by_value(self.question_types)
        self.answer_type_rows = _rows_by_value(self.answer_types)

    def __len__(self) -> int:
        return len(self.question_ids)

    @classmethod
    def from_annotations(cls, annotations: Sequence[Mapping[str, Any]],
                         source: str = "annotations") -> GroundTruth:
        """From VQA annotation entries (question_id, answers [{answer, answer_id, ...}], types), in order."""
        try:
            question_ids = list(map(itemgetter("question_id"), annotations))
            answer_types = list(map(itemgetter("answer_type"), annotations))
            question_types = list(map(itemgetter("question_type"), annotations))
            answer_lists = list(map(itemgetter("answers"), annotations))
            flat = list(map(_get_answer, chain.from_iterable(answer_lists)))
            answer_ids = list(map(_get_answer_id, chain.from_iterable(answer_lists)))
        except (KeyError, TypeError, AttributeError):
            _check_entries(annotations, ("question_id", "answers", "answer_type", "question_type"), source)
            bad = [a["question_id"] for a in annotations
                   if not isinstance(a["answers"], list)
                   or not all(isinstance(r, dict) and "answer" in r for r in a["answers"])]
            if bad:
                raise VQAError(f"{source}: 'answers' is not a list of objects with an 'answer' in "
                               f"{_preview(bad)} questions") from None
            raise
        lengths = np.fromiter(map(len, answer_lists), dtype=np.int64, count=len(answer_lists))
        answer_records: list[tuple[int, ...] | None] = [None] * len(answer_lists)
        for q in _rows_with_repeated_ids(answer_ids, lengths):
            answer_records[q] = _record_labels(answer_lists[q])
        ground_truth = cls.__new__(cls)
        ground_truth._build(question_ids, flat, lengths, answer_types, question_types, answer_records, source)
        return ground_truth


def _rows_with_repeated_ids(answer_ids: list[Any], lengths: np.ndarray) -> list[int]:
    """Questions whose answer_ids (concatenated) are not distinct integers: their records need comparing."""
    if set(map(type, answer_ids)) != {int}:
        return list(range(lengths.size))
    try:
        ids = np.array(answer_ids, dtype=np.int64)
    except OverflowError:
        return list(range(lengths.size))
    if lengths.size and (lengths == lengths[0]).all():  # the usual case: a [Q, N] block, sorted per row
        block = np.sort(ids.reshape(lengths.size, int(lengths[0])), axis=1)
        return np.flatnonzero((block[:, 1:] == block[:, :-1]).any(axis=1)).tolist()
    rows = np.repeat(np.arange(lengths.size), lengths)
    order = np.lexsort((ids, rows))
    rows, ids = rows[order], ids[order]
    repeated = (rows[1:] == rows[:-1]) & (ids[1:] == ids[:-1])
    return np.unique(rows[1:][repeated]).tolist()


def _pad(flat: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Ragged rows (concatenated in `flat`, row q of length lengths[q]) as a -1 padded [Q, max length]."""
    width = int(lengths.max()) if lengths.size else 0
    out = np.full((lengths.size, width), -1, dtype=flat.dtype)
    starts = np.cumsum(lengths) - lengths
    columns = np.arange(flat.size) - np.repeat(starts, lengths)
    out[np.repeat(np.arange(lengths.size), lengths), columns] = flat
    return out


def _rows_by_value(values: list[str]) -> dict[str, np.ndarray]:
    """Row indices of each distinct value, values in first-occurrence order, rows in order."""
    codes = dict.fromkeys(values)
    codes = {v: i for i, v in enumerate(codes)}
    labels = np.fromiter(map(codes.__getitem__, values), dtype=np.int64, count=len(values))
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(len(codes) + 1))
    return {v: order[bounds[i]:bounds[i + 1]] for v, i in codes.items()}


def _check_columns(question_ids: Sequence[Any], lengths: np.ndarray, answer_types: Sequence[Any],
                   question_types: Sequence[Any], answer_records: Sequence[Any] | None, source: str) -> None:
    """Equal lengths, unique integer ids, non-empty answer lists, string types (checked at C speed)."""
    n = len(question_ids)
    if n == 0:
        raise VQAError(f"{source}: no questions")
    sizes = {"answers": len(lengths), "answer_types": len(answer_types),
             "question_types": len(question_types)}
    if answer_records is not None:
        sizes["answer_records"] = len(answer_records)
    if any(size != n for size in sizes.values()):
        raise VQAError(f"{source}: {n} question ids but lengths {sizes}")
    if set(map(type, question_ids)) - {int}:
        bad = [q for q in question_ids if not _is_int(q)]
        raise VQAError(f"{source}: {_preview(bad)} question ids are not integers")
    if len(set(question_ids)) != n:
        raise VQAError(f"{source}: duplicate question_id, {_preview(_duplicates(question_ids))} ids")
    if lengths.min() == 0:  # (n > 0 here)
        empty = [question_ids[q] for q in np.flatnonzero(lengths == 0).tolist()]
        raise VQAError(f"{source}: no ground-truth answers for {_preview(empty)} questions")
    if set(map(type, answer_types)) - {str} or set(map(type, question_types)) - {str}:
        bad = [q for q, at, qt in zip(question_ids, answer_types, question_types)
               if not (isinstance(at, str) and isinstance(qt, str))]
        raise VQAError(f"{source}: answer_type/question_type not a string in {_preview(bad)} questions")
    if answer_records is not None:
        bad = [q for q, n_answers, r in zip(question_ids, lengths.tolist(), answer_records)
               if r is not None and len(r) != n_answers]
        if bad:
            raise VQAError(f"{source}: answer_records do not match the answers of "
                           f"{_preview(bad)} questions")


def _duplicates(ids: Iterable[Any]) -> list[Any]:
    seen: set[Any] = set()
    duplicates = []
    for q in ids:
        if q in seen:
            duplicates.append(q)
        seen.add(q)
    return duplicates


def _check_entries(entries: Sequence[Any], keys: Sequence[str], source: str) -> None:
    """Every entry an object holding `keys`, with an integer question_id."""
    if set(map(type, entries)) == {dict} and all(all(map(methodcaller("__contains__", k), entries)) for k in keys):
        if set(map(type, map(itemgetter("question_id"), entries))) == {int}:
            return  # (checked at C speed; the loops below find the offenders for the message)
    missing = [i for i, e in enumerate(entries) if not isinstance(e, dict) or any(k not in e for k in keys)]
    if missing:
        raise VQAError(f"{source}: {_preview(missing)} entries (by position) are not objects with "
                       f"{', '.join(keys)}")
    bad = [i for i, e in enumerate(entries) if not _is_int(e["question_id"])]
    if bad:
        raise VQAError(f"{source}: non-integer question_id in {_preview(bad)} entries (by position)")


@dataclass(frozen=True)
class EvalResult:
    """Official accuracies in percent, rounded to 2 places; per_question is the official evalQA."""

    overall: float
    per_answer_type: dict[str, float]
    per_question_type: dict[str, float]
    per_question: dict[int, float]
    per_question_by_question_type: dict[str, dict[int, float]]
    per_question_by_answer_type: dict[str, dict[int, float]]

    def accuracy(self) -> dict[str, Any]:
        """The official accuracy.json object."""
        return {"overall": self.overall, "perQuestionType": self.per_question_type,
                "perAnswerType": self.per_answer_type}

    def write(self, directory: str | os.PathLike) -> list[Path]:
        """Write accuracy.json, evalQA.json, evalQuesType.json, evalAnsType.json as one set: all four are
        renamed into place only once every one is written, so a failure leaves the previous set whole.

        Layout of the official demo: evalQA {question_id: acc}, evalQuesType {question_type:
        {question_id: acc}}, evalAnsType {answer_type: {question_id: acc}}. A file-system fault (full disk,
        read-only folder, a file where the folder belongs) is a VQAError naming the folder.
        """
        directory = Path(directory)
        objects = (self.accuracy(), self.per_question, self.per_question_by_question_type,
                   self.per_question_by_answer_type)
        paths = [directory / name for name in RESULT_FILES]
        try:
            with atomic_paths(paths) as temps:
                for tmp, obj in zip(temps, objects):
                    with open(tmp, "w", encoding="utf-8") as f:
                        f.write(json.dumps(obj))  # the C encoder (json.dump streams through the Python one)
        except OSError as exc:
            raise VQAError(f"cannot write the evaluation files into {directory}: {describe_os_error(exc)}") from None
        return paths


def check_predictions(predictions: Mapping[Any, Any], question_ids: Sequence[int], source: str) -> None:
    """Predictions must be strings and cover exactly the ground truth's question ids."""
    bad = [q for q, a in predictions.items() if not isinstance(a, str)]
    if bad:
        raise VQAError(f"{source}: non-string answer for {_preview(bad)} question ids")
    expected = set(question_ids)
    missing = [q for q in question_ids if q not in predictions]
    if missing:
        raise VQAError(f"{source}: no answer for {_preview(missing)} question ids of the annotations")
    extra = [q for q in predictions if q not in expected]
    if extra:
        raise VQAError(f"{source}: {_preview(extra)} question ids are not in the annotations")


def official_accuracy(ground_truth: GroundTruth, predictions: Mapping[int, str],
                      source: str = "predictions") -> EvalResult:
    """Official VQA accuracy of `predictions` (question_id -> answer string), in memory."""
    return _summarise(ground_truth, question_accuracies(ground_truth, predictions, source))


def question_accuracies(ground_truth: GroundTruth, predictions: Mapping[int, str],
                        source: str = "predictions") -> np.ndarray:
    """Unrounded official accuracy in [0, 1] of each question, in the ground truth's order."""
    check_predictions(predictions, ground_truth.question_ids, source)
    gt = ground_truth
    raw = list(map(predictions.__getitem__, gt.question_ids))
    distinct = list(dict.fromkeys(raw))
    cleaned = [clean_whitespace(t) for t in distinct]
    # ids in the ground truth's vocabulary; -2 (matches nothing) for strings no answer has
    cleaned_ids = np.array([gt.vocabulary.get(t, -2) for t in cleaned], dtype=np.int64)
    index = dict(zip(distinct, range(len(distinct))))
    which = np.fromiter(map(index.__getitem__, raw), dtype=np.int64, count=len(raw))
    normalised_ids = np.full(len(distinct), -2, dtype=np.int64)
    needed = np.unique(which[gt.normalise_prediction]).tolist()
    normalised_ids[needed] = [gt.vocabulary.get(normalize_official(cleaned[i]), -2) for i in needed]
    prediction = np.where(gt.normalise_prediction, normalised_ids[which], cleaned_ids[which])

    matches = gt.processed_ids == prediction[:, None]
    accuracy = np.zeros(len(gt), dtype=np.float64)
    regular = matches.any(axis=1)
    regular[gt.irregular] = False
    rows = np.flatnonzero(regular)
    if rows.size:
        hits = matches[rows]
        if hits.shape[1] <= _PATTERN_BITS:
            codes = (hits.astype(np.int64) << np.arange(hits.shape[1])).sum(axis=1)
            codes |= gt.lengths[rows] << _PATTERN_BITS
        else:
            codes = np.unique(np.column_stack([gt.lengths[rows], hits]), axis=0, return_inverse=True)[1]
        _, first, inverse = np.unique(codes.reshape(-1), return_index=True, return_inverse=True)
        values = [leave_one_out_accuracy(_match_counts(hits[i, :gt.lengths[rows[i]]].tolist()))
                  for i in first.tolist()]
        accuracy[rows] = np.array(values, dtype=np.float64)[inverse.reshape(-1)]
    for q in gt.irregular.tolist():
        accuracy[q] = _irregular_accuracy(matches[q, :gt.lengths[q]].tolist(), gt.answer_records[q],
                                          gt.processed_ids[q, :gt.lengths[q]].tolist())
    return accuracy


def _match_counts(matches: list[int]) -> tuple[int, ...]:
    """m_i = c - [answer i matches]: matches among the others when answer i is held out."""
    c = sum(matches)
    return tuple(c - m for m in matches)


def _irregular_accuracy(matches: list[bool], records: tuple[int, ...], answers: list[int]) -> float:
    """Leave-one-out when answer records repeat: holding out i drops every answer equal to it in record
    and processed text."""
    if not any(matches):
        return 0.0
    c = sum(matches)
    counts = tuple(c - sum(1 for r, b in zip(records, answers) if r == records[i] and b == a) if hit else c
                   for i, (a, hit) in enumerate(zip(answers, matches)))
    return leave_one_out_accuracy(counts)


def _summarise(gt: GroundTruth, accuracy: np.ndarray) -> EvalResult:
    """Round and group the per-question accuracies as the official evaluator does (sums in order)."""
    values, inverse = np.unique(accuracy, return_inverse=True)
    rounded = np.array([round(100 * v, PRECISION) for v in values.tolist()], dtype=np.float64)[inverse]
    question_ids = np.array(gt.question_ids, dtype=np.int64)

    def per_question(rows: np.ndarray) -> dict[int, float]:
        return dict(zip(question_ids[rows].tolist(), rounded[rows].tolist()))

    return EvalResult(
        overall=_percent(accuracy.tolist()),
        per_answer_type={t: _percent(accuracy[rows].tolist()) for t, rows in gt.answer_type_rows.items()},
        per_question_type={t: _percent(accuracy[rows].tolist()) for t, rows in gt.question_type_rows.items()},
        per_question=dict(zip(gt.question_ids, rounded.tolist())),
        per_question_by_question_type={t: per_question(rows) for t, rows in gt.question_type_rows.items()},
        per_question_by_answer_type={t: per_question(rows) for t, rows in gt.answer_type_rows.items()},
    )


def _percent(accuracies: list[float]) -> float:
    """round(100 * sum / count, 2), in that order of operations."""
    return round(100 * sum(accuracies) / len(accuracies), PRECISION)


def _load_json(path: str | os.PathLike, what: str) -> Any:
    """load_json, parsed by msgspec when it is installed (about twice as fast as the json module, the same
    objects); anything msgspec refuses goes through load_json, for its one-line error or json's leniency."""
    if msgspec is None:
        return load_json(path, what)
    try:
        with open(path, "rb") as f:
            return msgspec.json.decode(f.read())
    except (OSError, msgspec.DecodeError):
        return load_json(path, what)


def _typed(path: str | os.PathLike, kind: str) -> list[Any] | None:
    """The entries of a questions / annotations / results file as structs, or None where the typed decoder
    refuses the file (or msgspec is missing): the dict path then runs and names any problem."""
    if msgspec is None:
        return None
    try:
        with open(path, "rb") as f:
            data = _DECODERS[kind].decode(f.read())
    except (OSError, msgspec.DecodeError):
        return None
    return data if isinstance(data, list) else getattr(data, kind)


def _ground_truth_of_structs(annotations: list[Any], source: str) -> GroundTruth | None:
    """GroundTruth.from_annotations for typed entries; None when answer ids repeat within a question (then
    whole records must be compared: the dict path)."""
    answer_lists = list(map(attrgetter("answers"), annotations))
    lengths = np.fromiter(map(len, answer_lists), dtype=np.int64, count=len(answer_lists))
    answer_ids = list(map(attrgetter("answer_id"), chain.from_iterable(answer_lists)))
    if _rows_with_repeated_ids(answer_ids, lengths):
        return None
    ground_truth = GroundTruth.__new__(GroundTruth)
    ground_truth._build(list(map(attrgetter("question_id"), annotations)),
                        list(map(attrgetter("answer"), chain.from_iterable(answer_lists))), lengths,
                        list(map(attrgetter("answer_type"), annotations)),
                        list(map(attrgetter("question_type"), annotations)), None, source)
    return ground_truth


def _load_entries(path: str | os.PathLike, key: str, what: str) -> list[Any]:
    """A VQA-CP bare list or a VQA v2 object {key: [...]}."""
    data = _load_json(path, what)
    if isinstance(data, dict) and isinstance(data.get(key), list):
        return data[key]
    if isinstance(data, list):
        return data
    raise VQAError(f"{path}: expected a JSON list of {what} entries or an object with a '{key}' list")


def load_questions(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Question entries of a VQA-CP (bare list) or VQA v2 ({"questions": [...]}) file."""
    questions = _load_entries(path, "questions", "questions")
    _check_entries(questions, ("question_id",), str(path))
    duplicates = _duplicates(q["question_id"] for q in questions)
    if duplicates:
        raise VQAError(f"{path}: duplicate question_id, {_preview(duplicates)} ids")
    return questions


def load_annotations(path: str | os.PathLike) -> GroundTruth:
    """Ground truth of a VQA-CP (bare list) or VQA v2 ({"annotations": [...]}) file, in file order."""
    typed = _typed(path, "annotations")
    if typed:
        ground_truth = _ground_truth_of_structs(typed, str(path))
        if ground_truth is not None:
            return ground_truth
    return GroundTruth.from_annotations(_load_entries(path, "annotations", "annotations"), source=str(path))


def load_ground_truth(questions_path: str | os.PathLike, annotations_path: str | os.PathLike) -> GroundTruth:
    """Annotations joined with their questions on question_id; each must have the other."""
    typed = _typed(questions_path, "questions")
    question_ids = list(map(attrgetter("question_id"), typed)) if typed else []
    if not typed or len(set(question_ids)) != len(question_ids):
        question_ids = [q["question_id"] for q in load_questions(questions_path)]
    ground_truth = load_annotations(annotations_path)
    annotated = set(ground_truth.question_ids)
    unanswered = [q for q in question_ids if q not in annotated]
    if unanswered:
        raise VQAError(f"{questions_path}: {_preview(unanswered)} questions have no annotation in "
                       f"{annotations_path}")
    asked = set(question_ids)
    orphans = [q for q in ground_truth.question_ids if q not in asked]
    if orphans:
        raise VQAError(f"{annotations_path}: {_preview(orphans)} annotations have no question in "
                       f"{questions_path}")
    return ground_truth


def load_results(path: str | os.PathLike) -> dict[int, str]:
    """A results file [{"question_id": int, "answer": str}, ...] as {question_id: answer}; that it covers
    exactly the ground truth's questions is checked when it is scored (check_predictions)."""
    typed = _typed(path, "results")
    if typed:
        results = dict(zip(map(attrgetter("question_id"), typed), map(attrgetter("answer"), typed)))
        if len(results) == len(typed):
            return results
    entries = _load_json(path, "results file")
    if not isinstance(entries, list):
        raise VQAError(f"{path}: expected a JSON list of {{question_id, answer}} objects, "
                       f"got {type(entries).__name__}")
    _check_entries(entries, ("question_id", "answer"), str(path))
    duplicates = _duplicates(e["question_id"] for e in entries)
    if duplicates:
        raise VQAError(f"{path}: duplicate question_id, {_preview(duplicates)} ids")
    return {e["question_id"]: e["answer"] for e in entries}


def evaluate_files(questions_path: str | os.PathLike, annotations_path: str | os.PathLike,
                   results_path: str | os.PathLike) -> EvalResult:
    """Official accuracy of a results file against a question file and its annotation file."""
    ground_truth = load_ground_truth(questions_path, annotations_path)
    return official_accuracy(ground_truth, load_results(results_path), str(results_path))


def format_table(result: EvalResult) -> str:
    """Accuracy per answer type (yes/no, number, other, then any others) and overall, in percent."""
    types = list(ANSWER_TYPES) + [t for t in result.per_answer_type if t not in ANSWER_TYPES]
    width = max(len("answer type"), *(len(t) for t in types))
    rows = [f"{'answer type':<{width}}  accuracy"]
    for t in types:
        acc = result.per_answer_type.get(t)
        rows.append(f"{t:<{width}}  {'-' if acc is None else f'{acc:.2f}':>8}")
    rows.append(f"{'overall':<{width}}  {result.overall:>8.2f}")
    return "\n".join(rows)


def ground_truth_of(dataset: Any) -> GroundTruth:
    """GroundTruth of a processed split (a VQADataset), built once and kept on the dataset."""
    cached = getattr(dataset, "_official_ground_truth", None)
    if cached is None:
        columns = dataset.annotations()
        cached = GroundTruth(columns["question_id"], columns["answers"], columns["answer_type"],
                             columns["question_type"], source=str(dataset.annotations_path))
        dataset._official_ground_truth = cached
    return cached


def official_accuracy_from_dataset(dataset: Any, question_ids: Sequence[int] | np.ndarray,
                                   answers: Sequence[str]) -> EvalResult:
    """Official accuracy of in-memory predictions on a processed split (the trainer's per-epoch call)."""
    ids = question_ids.tolist() if isinstance(question_ids, np.ndarray) else list(question_ids)
    return official_accuracy(ground_truth_of(dataset), dict(zip(ids, answers)), "model predictions")
