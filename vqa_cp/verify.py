"""Content checks of the raw json and GloVe files before they are put in place, and the notes they leave.

`verify_raw` checks candidate files (a download or an imported copy) under their raw-layout names:
- Every json candidate on its own first, whatever else is missing: parsed and typed as the questions or
  annotations its name says (vqa_cp.raw), no question_id twice, not empty, a coco_split on every VQA-CP
  entry; a failure refuses it in one line (and, for a VQA-CP file, the other VQA-CP candidates with it).
- VQA v2: each question file's count against the release; each annotation file holds one entry per
  question of its split (same ids, same image_id).
- VQA-CP v2, a re-split of VQA v2 train2014 + val2014. Hard checks (a failure refuses the copy, download or
  import): the splits are disjoint; their union is exactly the VQA v2 train + val question ids; every
  entry's image_id and coco_split agree with the VQA v2 file holding its question_id; each annotation file
  matches its question file; a copy of all 658,111 questions has the release's 438,183 / 219,928 split.
  Reported (the copy is kept): question text, answers, multiple_choice_answer, question_type, answer_type
  that differ from the VQA v2 entry. Without VQA v2 in place the relation is skipped, in one line, and
  `check_pending` (tools/process.sh) runs it once VQA v2 is there. A failed relation refuses only the VQA-CP
  candidates: VQA v2 is refused by its own checks alone. A VQA-CP copy already in place that fails against
  new VQA v2 files leaves one note, pending, so that `check_pending` refuses to process it.
- GloVe (glove/glove.6B.{50,100,200,300}d.txt): every line a word and exactly that many numbers.
The release's absolute counts refuse a download (`release=True`) and are a note for an imported copy.

`remember` stores the notes in DATA/.verification.json keyed by the checked files' sizes and SHA-256
(the digest cache of vqa_cp.provenance); `repeat_notes` prints those whose files are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from tqdm import tqdm

from vqa_cp import raw
from vqa_cp.errors import VQAError
from vqa_cp.files import load_json, looks_like_html, read_head, write_json
from vqa_cp.processing import ANSWER_TYPES, DICTIONARY_QUESTION_FILES, RAW_FILES, processed_dir
from vqa_cp.provenance import DigestCache, digest_cache

V2_SUBSETS = ("train2014", "val2014", "test2015", "test-dev2015")
V2_QUESTIONS = dict(zip(V2_SUBSETS, DICTIONARY_QUESTION_FILES))
V2_ANNOTATIONS = {"train2014": RAW_FILES["v2"]["train"][1], "val2014": RAW_FILES["v2"]["test"][1]}
CP_SPLITS = ("train", "test")
CP_QUESTIONS = {split: RAW_FILES["cp"][split][0] for split in CP_SPLITS}
CP_ANNOTATIONS = {split: RAW_FILES["cp"][split][1] for split in CP_SPLITS}
# The releases' counts (module constants: tests patch them to exercise the full-copy rules at a small size).
V2_RELEASE = {"train2014": 443_757, "val2014": 214_354, "test2015": 447_793, "test-dev2015": 107_394}
CP_RELEASE = {"train": 438_183, "test": 219_928}
GLOVE_WIDTHS = {f"glove/glove.6B.{d}d.txt": d for d in (50, 100, 200, 300)}
GLOVE_RELEASE_LINES = 400_000
CP_FILES = (*CP_QUESTIONS.values(), *CP_ANNOTATIONS.values())
JSON_ANNOTATIONS = set(CP_ANNOTATIONS.values()) | set(V2_ANNOTATIONS.values())
CHECKED_FILES = (set(V2_QUESTIONS.values()) | set(V2_ANNOTATIONS.values()) | set(CP_QUESTIONS.values())
                 | set(CP_ANNOTATIONS.values()) | set(GLOVE_WIDTHS))
NOTES_FILE = ".verification.json"
NOTES_FORMAT = 1
COMPARED_FIELDS = ("question", "answers", "multiple_choice_answer", "question_type", "answer_type")
FIRST_IDS = 5


@dataclass
class Verdict:
    """What `verify_raw` found: `refused` {raw-layout name: one-line reason}, `notes` one-line findings
    (the copy is kept). `about` names the files each note concerns (the key of its memory), `waits_for`
    the files a skipped check needs, `checked` every file a check read."""

    refused: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    about: dict[str, tuple[str, ...]] = field(default_factory=dict)
    waits_for: dict[str, tuple[str, ...]] = field(default_factory=dict)
    checked: set[str] = field(default_factory=set)
    release: bool = True
    pending_release: dict[str, bool] = field(default_factory=dict)  # a pending check's own `release`

    def note(self, text: str, names: Iterable[str], waits_for: Iterable[str] = (),
             release: bool | None = None) -> None:
        self.notes.append(text)
        self.about[text] = tuple(names)
        if waits_for:
            self.waits_for[text] = tuple(waits_for)
        if release is not None:
            self.pending_release[text] = release


def _count(n: int) -> str:
    return f"{n:,}"


def _first(ids: Iterable[int]) -> str:
    ids = [int(i) for i in ids]
    return ", ".join(map(str, ids[:FIRST_IDS])) + (" ..." if len(ids) > FIRST_IDS else "")


def sniff_problem(path: Path, json_expected: bool) -> str | None:
    """Why the file cannot be what its name says before parsing it: missing, or an HTML page (an error page
    saved under the file's name); None otherwise."""
    if not path.is_file():
        return f"{path}: not found (or not a file)"
    head = read_head(path)
    if looks_like_html(head) or (json_expected and head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<")):
        return f"{path}: an HTML page (an error page saved under this name?), not {'JSON' if json_expected else 'text'}"
    return None


class _Inputs:
    """The files of one verification: candidates first, else the file in place in DATA; each parsed once."""

    def __init__(self, candidates: dict[str, Path], data_dir: Path, verdict: Verdict) -> None:
        self.candidates = {name: Path(p) for name, p in candidates.items()}
        self.data_dir = Path(data_dir)
        self.verdict = verdict
        self._entries: dict[str, list | VQAError] = {}
        self._ids: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.val: dict[str, np.ndarray] = {}  # VQA-CP file -> bool [N]: coco_split is val2014

    def path(self, name: str) -> Path | None:
        if name in self.candidates:
            return self.candidates[name]
        path = self.data_dir / name
        return path if path.is_file() else None

    def refuse(self, names: Iterable[str], reason: str) -> None:
        """Refuse the candidates among `names` (files in place are not this verification's to refuse)."""
        for name in names:
            if name in self.candidates:
                self.verdict.refused.setdefault(name, reason)

    def entries(self, name: str) -> list:
        """The file's typed entries (raw.py), or VQAError naming the file and the entry."""
        if name not in self._entries:
            self.verdict.checked.add(name)
            path = self.path(name)
            try:
                problem = sniff_problem(path or self.data_dir / name, json_expected=True)
                if problem:
                    raise VQAError(problem)
                if name in JSON_ANNOTATIONS:
                    self._entries[name] = raw.load_annotations(path, ANSWER_TYPES)
                else:
                    self._entries[name] = raw.load_questions(path)
            except VQAError as exc:
                self._entries[name] = exc
        value = self._entries[name]
        if isinstance(value, VQAError):
            raise value
        return value

    def ids(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(question_id, image_id) int64 arrays in file order; a repeated question_id is a VQAError."""
        if name not in self._ids:
            entries = self.entries(name)
            qid = np.fromiter((e.question_id for e in entries), np.int64, len(entries))
            image = np.fromiter((e.image_id for e in entries), np.int64, len(entries))
            ordered = np.sort(qid)
            repeated = ordered[1:][ordered[1:] == ordered[:-1]]
            if repeated.size:
                first = int(repeated[0])
                raise VQAError(f"{self.path(name)}: question_id {first} occurs {int((qid == first).sum())} times")
            self._ids[name] = qid, image
        return self._ids[name]


def pair_problem(inputs: _Inputs, q_name: str, a_name: str) -> str | None:
    """Why an annotation file does not hold exactly one entry per question of its question file, or None."""
    q_ids, q_images = inputs.ids(q_name)
    a_ids, a_images = inputs.ids(a_name)
    unanswered = np.setdiff1d(q_ids, a_ids, assume_unique=True)
    orphans = np.setdiff1d(a_ids, q_ids, assume_unique=True)
    if unanswered.size or orphans.size:
        return (f"{a_name} does not match {q_name}: {_count(unanswered.size)} questions without an annotation"
                f"{' (question_id ' + _first(unanswered) + ')' if unanswered.size else ''}, "
                f"{_count(orphans.size)} annotations without a question"
                f"{' (question_id ' + _first(orphans) + ')' if orphans.size else ''}")
    q_order, a_order = np.argsort(q_ids), np.argsort(a_ids)
    differ = np.flatnonzero(q_images[q_order] != a_images[a_order])
    if differ.size:
        k = differ[0]
        return (f"{a_name}: question_id {int(q_ids[q_order[k]])}: image_id {int(a_images[a_order[k]])}, but "
                f"{int(q_images[q_order[k]])} in {q_name} ({_count(differ.size)} such questions)")
    return None


def _check_each(inputs: _Inputs) -> None:
    """Every json candidate on its own, whatever else is missing: parsed and typed as its name says
    (questions or annotations, by raw.py's loaders), no question_id twice, at least one entry, and a
    coco_split of train2014 / val2014 on every VQA-CP entry. A failure refuses the candidate in one line.
    The parsed entries stay in `inputs` for the checks that follow (each file is parsed once)."""
    for name in inputs.candidates:
        if name in GLOVE_WIDTHS:
            continue
        try:
            if len(inputs.ids(name)[0]) == 0:
                what = "annotations" if name in JSON_ANNOTATIONS else "questions"
                raise VQAError(f"{inputs.path(name)}: no {what} (an empty list): a split without {what} is not "
                               "a copy of it")
            if name in CP_FILES:
                _coco_splits(inputs, name)
        except VQAError as exc:
            inputs.refuse([name], str(exc))


# ------------------------------------------------------------------------------------------ VQA v2


def _check_v2(inputs: _Inputs, release: bool) -> None:
    """Question counts against the release; annotation files against their question files."""
    verdict = inputs.verdict
    for subset, name in V2_QUESTIONS.items():
        if name not in inputs.candidates:
            continue
        try:
            n = len(inputs.ids(name)[0])
        except VQAError as exc:
            inputs.refuse([name], str(exc))
            continue
        if n != V2_RELEASE[subset]:
            line = f"{name}: {_count(n)} questions: not the full release's {_count(V2_RELEASE[subset])}"
            if release:
                inputs.refuse([name], line)
            else:
                verdict.note(line, [name])
    for subset, a_name in V2_ANNOTATIONS.items():
        q_name = V2_QUESTIONS[subset]
        if a_name not in inputs.candidates and q_name not in inputs.candidates:
            continue
        missing = [n for n in (q_name, a_name) if inputs.path(n) is None]
        if missing:
            if a_name in inputs.candidates:
                verdict.note(f"{a_name}: not checked against its questions: {missing[0]} is not in place",
                             [a_name], waits_for=missing)
            continue
        try:
            problem = pair_problem(inputs, q_name, a_name)
        except VQAError as exc:
            problem = str(exc)
        if problem:
            inputs.refuse([q_name, a_name], problem)


# ------------------------------------------------------------------------------------------ VQA-CP v2


def _coco_splits(inputs: _Inputs, name: str) -> np.ndarray:
    """bool [N]: entry is from val2014 (coco_split), each value checked to be train2014 or val2014."""
    if name in inputs.val:
        return inputs.val[name]
    entries = inputs.entries(name)
    splits = [e.coco_split for e in entries]
    bad = set(splits) - {"train2014", "val2014"}
    if bad:
        k = next(i for i, s in enumerate(splits) if s in bad)
        what = "missing field 'coco_split'" if splits[k] is msgspec.UNSET else f"coco_split {splits[k]!r}"
        raise VQAError(f"{inputs.path(name)}: entry {k} (question_id {entries[k].question_id}): {what} "
                       "(expected train2014 or val2014)")
    inputs.val[name] = np.fromiter((s == "val2014" for s in splits), bool, len(splits))
    return inputs.val[name]


def release_split_problem(counts: dict[str, int]) -> str | None:
    """For a copy of all the release's questions: why its train / test counts are not the release's."""
    total = sum(CP_RELEASE.values())
    if sum(counts.values()) != total or counts == CP_RELEASE:
        return None
    return (f"{CP_QUESTIONS['train']} / {CP_QUESTIONS['test']}: {_count(counts['train'])} / "
            f"{_count(counts['test'])} questions, but the release splits its {_count(total)} questions "
            f"{_count(CP_RELEASE['train'])} / {_count(CP_RELEASE['test'])} (questions moved between the splits?)")


def _check_cp_alone(inputs: _Inputs, release: bool) -> None:
    """What VQA-CP can show without VQA v2: files parse, coco_split, pairs, disjoint splits, counts."""
    for split in CP_SPLITS:
        problem = pair_problem(inputs, CP_QUESTIONS[split], CP_ANNOTATIONS[split])
        if problem:
            raise VQAError(problem)
        for name in (CP_QUESTIONS[split], CP_ANNOTATIONS[split]):
            _coco_splits(inputs, name)
    train, test = (inputs.ids(CP_QUESTIONS[s])[0] for s in CP_SPLITS)
    shared = train[np.isin(train, test, assume_unique=True)]
    if shared.size:
        raise VQAError(f"{CP_QUESTIONS['train']} and {CP_QUESTIONS['test']} share {_count(shared.size)} "
                       f"questions: question_id {int(shared[0])} is in both splits")
    counts = {"train": len(train), "test": len(test)}
    problem = release_split_problem(counts)
    if problem:
        raise VQAError(problem)
    for split in CP_SPLITS:
        if counts[split] != CP_RELEASE[split]:
            line = (f"{CP_QUESTIONS[split]}: {_count(counts[split])} questions: not the full release's "
                    f"{_count(CP_RELEASE[split])}")
            names = [CP_QUESTIONS[split], CP_ANNOTATIONS[split]]
            if release:
                inputs.refuse(names, line)
            else:
                inputs.verdict.note(line, names)


def _aligned(v2_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Index into `v2_ids` of each of `ids` (every one of which is in `v2_ids`)."""
    order = np.argsort(v2_ids)
    return order[np.searchsorted(v2_ids[order], ids)]


def _v2_train_val_problem(inputs: _Inputs) -> str | None:
    """Why VQA v2 train2014 / val2014 (questions and annotations) cannot serve the relation, or None."""
    for subset in ("train2014", "val2014"):
        try:
            problem = pair_problem(inputs, V2_QUESTIONS[subset], V2_ANNOTATIONS[subset])
        except VQAError as exc:
            problem = str(exc)
        if problem:
            return problem
    return None


def _cp_against_v2(inputs: _Inputs) -> None:
    """The hard relation to VQA v2: the union of the splits, every image_id and coco_split (else VQAError).
    VQA v2's own pairs are checked before (`_v2_train_val_problem`)."""
    v2_q = [V2_QUESTIONS[s] for s in ("train2014", "val2014")]
    cp_q = [CP_QUESTIONS[s] for s in CP_SPLITS]
    v2_ids = np.concatenate([inputs.ids(n)[0] for n in v2_q])
    v2_images = np.concatenate([inputs.ids(n)[1] for n in v2_q])
    cp_ids = np.concatenate([inputs.ids(n)[0] for n in cp_q])
    missing = np.setdiff1d(v2_ids, cp_ids, assume_unique=True)
    extra = np.setdiff1d(cp_ids, v2_ids, assume_unique=True)
    if missing.size or extra.size:
        raise VQAError(
            f"VQA-CP v2 ({' + '.join(cp_q)}) is not a re-split of VQA v2 train2014 + val2014: "
            f"{_count(missing.size)} VQA v2 questions missing"
            f"{' (question_id ' + _first(missing) + ')' if missing.size else ''}, {_count(extra.size)} extra"
            f"{' (question_id ' + _first(extra) + ')' if extra.size else ''}")
    n_train2014 = len(inputs.ids(v2_q[0])[0])
    for names in (cp_q, [CP_ANNOTATIONS[s] for s in CP_SPLITS]):
        ids = np.concatenate([inputs.ids(n)[0] for n in names])
        images = np.concatenate([inputs.ids(n)[1] for n in names])
        at = _aligned(v2_ids, ids)
        is_val = np.concatenate([_coco_splits(inputs, n) for n in names])
        for what, bad in (("image_id", images != v2_images[at]), ("coco_split", is_val != (at >= n_train2014))):
            if bad.any():
                k = int(np.argmax(bad))
                name = names[0] if k < len(inputs.ids(names[0])[0]) else names[1]
                subset = ("train2014", "val2014")[int(at[k] >= n_train2014)]
                held = V2_QUESTIONS[subset]
                value = int(images[k]) if what == "image_id" else ("val2014" if is_val[k] else "train2014")
                expected = int(v2_images[at[k]]) if what == "image_id" else subset
                raise VQAError(f"{name}: question_id {int(ids[k])}: {what} {value}, but {expected} in {held} "
                               f"({_count(int(bad.sum()))} such entries)")


def _differing(entries: list, v2_entries: list, at: list[int], fields: tuple[str, ...]) -> list[int]:
    """Positions k where entries[k] differs from v2_entries[at[k]] in one of `fields` (one or four)."""
    if len(fields) == 1:
        f = fields[0]
        return [k for k, (e, i) in enumerate(zip(entries, at)) if getattr(e, f) != getattr(v2_entries[i], f)]
    out = []
    for k, (e, i) in enumerate(zip(entries, at)):
        o = v2_entries[i]
        if not (e.answers == o.answers and e.multiple_choice_answer == o.multiple_choice_answer
                and e.question_type == o.question_type and e.answer_type == o.answer_type):
            out.append(k)
    return out


def _field_differences(inputs: _Inputs) -> str | None:
    """One line: how many VQA-CP entries differ from their VQA v2 entry in a compared field, and the first."""
    counts = dict.fromkeys(COMPARED_FIELDS, 0)
    differing: set[int] = set()
    first: tuple[int, str, str] | None = None
    v2_train_val = {s: V2_QUESTIONS[s] for s in ("train2014", "val2014")}
    for cp_files, v2_files, fields in ((CP_QUESTIONS, v2_train_val, COMPARED_FIELDS[:1]),
                                       (CP_ANNOTATIONS, V2_ANNOTATIONS, COMPARED_FIELDS[1:])):
        v2_entries = [e for n in v2_files.values() for e in inputs.entries(n)]
        v2_ids = np.concatenate([inputs.ids(n)[0] for n in v2_files.values()])
        for name in cp_files.values():
            entries = inputs.entries(name)
            at = _aligned(v2_ids, inputs.ids(name)[0]).tolist()
            for k in _differing(entries, v2_entries, at, fields):
                entry, other = entries[k], v2_entries[at[k]]
                for f in fields:
                    if getattr(entry, f) != getattr(other, f):
                        counts[f] += 1
                        first = first or (entry.question_id, f, name)
                differing.add(entry.question_id)
    if first is None:
        return None
    parts = ", ".join(f"{f} {_count(n)}" for f, n in counts.items() if n)
    return (f"VQA-CP v2: {_count(len(differing))} questions differ from their VQA v2 entry ({parts}); first: "
            f"question_id {first[0]} field '{first[1]}' in {first[2]}")


def _cp_fails(inputs, reason: str, cp_candidates: list[str], cp_names: list[str], v2_candidates: list[str]) -> None:
    """A failed VQA-CP check refuses the VQA-CP candidates; with none, the copy in place is held (`_in_place_fails`)."""
    if cp_candidates:
        inputs.refuse(cp_names, reason)
    else:
        _in_place_fails(inputs, reason, cp_names, v2_candidates)


def _in_place_fails(inputs: _Inputs, reason: str, cp_names: list[str], v2_candidates: list[str]) -> None:
    """The VQA-CP copy in place fails its check against the VQA v2 candidates (which are kept): one note,
    pending on those candidates, so that `check_pending` reruns the check and refuses to process the copy."""
    inputs.verdict.note(
        f"VQA-CP v2 in place fails its check against VQA v2 ({', '.join(v2_candidates)}): {reason}; "
        "tools/process.sh refuses it until it is replaced (tools/download.sh --from PATH)",
        cp_names + v2_candidates, waits_for=v2_candidates, release=False)


def _check_cp(inputs: _Inputs, release: bool) -> None:
    """VQA-CP alone, then against VQA v2: a failure refuses the VQA-CP candidates only (VQA v2 is refused
    by `_check_v2` alone); with no VQA-CP candidate, a failure of the copy in place is a pending note."""
    verdict = inputs.verdict
    cp_names = [*CP_QUESTIONS.values(), *CP_ANNOTATIONS.values()]
    v2_names = [V2_QUESTIONS["train2014"], V2_QUESTIONS["val2014"], *V2_ANNOTATIONS.values()]
    cp_candidates = [n for n in cp_names if n in inputs.candidates]
    v2_candidates = [n for n in v2_names if n in inputs.candidates]
    broken = [n for n in cp_candidates if n in verdict.refused]  # by `_check_each`: the copy is one unit
    if broken:
        inputs.refuse(cp_candidates, verdict.refused[broken[0]])
        return
    cp_missing = [n for n in cp_names if inputs.path(n) is None]
    if not cp_candidates and (cp_missing or not v2_candidates):
        return  # no VQA-CP copy to check, or one in place that this verification's files do not touch
    if cp_missing:
        verdict.note(f"VQA-CP v2 check skipped: {', '.join(cp_missing)} not in place", cp_candidates,
                     waits_for=cp_missing)
        return
    try:
        _check_cp_alone(inputs, release)
    except VQAError as exc:
        _cp_fails(inputs, str(exc), cp_candidates, cp_names, v2_candidates)
        return
    v2_missing = [n for n in v2_names if inputs.path(n) is None]
    if v2_missing:
        verdict.note(f"VQA-CP v2 not checked against VQA v2 (skipped): {', '.join(v2_missing)} not in place; "
                     "tools/process.sh checks it once they are", cp_names, waits_for=v2_missing)
        return
    v2_refused = [n for n in v2_candidates if n in verdict.refused]
    if v2_refused:  # not put in place: the check waits for good ones
        if cp_candidates:
            verdict.note(f"VQA-CP v2 not checked against VQA v2 (skipped): {', '.join(v2_refused)} refused; "
                         "tools/process.sh checks it once good ones are in place", cp_names, waits_for=v2_refused)
        return
    problem = _v2_train_val_problem(inputs)  # candidates with a problem were refused: VQA v2 in place
    if problem:
        if cp_candidates:
            verdict.note(f"VQA-CP v2 not checked against VQA v2: the VQA v2 in place fails its own check: {problem}",
                         cp_names)
        return
    try:
        _cp_against_v2(inputs)
        line = _field_differences(inputs)
    except VQAError as exc:
        _cp_fails(inputs, str(exc), cp_candidates, cp_names, v2_candidates)
        return
    if line:
        verdict.note(line, cp_names + v2_names)


# ------------------------------------------------------------------------------------------ GloVe

GLOVE_CHUNK = 1 << 24
MAX_LINE_BYTES = 1 << 20  # a 300-d GloVe line is about 3 kB
_NUMBER_BYTES = np.zeros(256, dtype=bool)
_NUMBER_BYTES[np.frombuffer(b"0123456789.+-eE \r\n", dtype=np.uint8)] = True
NEWLINE, SPACE = ord("\n"), ord(" ")


def _glove_block(buf: np.ndarray, width: int) -> tuple[int, tuple[int, str] | None]:
    """Lines in `buf` (whole lines, each ending in a newline) and the first bad one (index, why), if any.

    A good line: a non-empty word, then `width` fields of number characters, one space before each.
    """
    ends = np.flatnonzero(buf == NEWLINE)
    starts = np.concatenate(([0], ends[:-1] + 1))
    spaces = np.flatnonzero(buf == SPACE)
    first_space = np.searchsorted(spaces, starts)
    fields = np.searchsorted(spaces, ends) - first_space
    bad_lines = [np.flatnonzero(fields != width)]
    has_space = first_space < len(spaces)
    word_start = spaces[np.minimum(first_space, len(spaces) - 1)] if len(spaces) else starts
    bad_lines.append(np.flatnonzero(has_space & (word_start == starts)))
    word_end = np.where(has_space & (word_start < ends), word_start, ends)
    odd = np.flatnonzero(~_NUMBER_BYTES[buf])  # letters of the words, and anything else that is no number
    bad_bytes = odd[odd > word_end[np.searchsorted(ends, odd)]]
    after_space = buf[spaces + 1] if len(spaces) else np.empty(0, np.uint8)
    empty = spaces[(after_space == SPACE) | (after_space == NEWLINE)]
    empty_lines = np.searchsorted(ends, empty)
    bad_byte_lines = np.searchsorted(ends, bad_bytes)
    bad_lines += [bad_byte_lines, empty_lines]
    firsts = [int(b[0]) for b in bad_lines if b.size]
    if not firsts:
        return len(ends), None
    line = min(firsts)
    if has_space[line] and word_start[line] == starts[line]:
        why = "no word before the numbers"
    elif empty_lines.size and empty_lines[0] == line:
        why = "an empty field (two spaces in a row or a space at the end)"
    elif bad_byte_lines.size and bad_byte_lines[0] == line:
        why = f"byte {bytes(buf[bad_bytes[0]:bad_bytes[0] + 1])!r} in a number"
    else:
        why = f"{int(fields[line])} numbers, expected {width}"
    return len(ends), (line, why)


def glove_lines(path: Path, width: int) -> int:
    """Number of lines of a GloVe text file, each checked to be a word and `width` numbers (VQAError naming
    the line otherwise). Reads numpy blocks of whole lines: about the speed of reading the file."""
    problem = sniff_problem(path, json_expected=False)
    if problem:
        raise VQAError(problem)
    lines, carry = 0, b""
    with open(path, "rb") as f, tqdm(total=path.stat().st_size, desc=f"check {path.name}", unit="B",
                                     unit_scale=True, leave=False) as bar:
        while True:
            chunk = f.read(GLOVE_CHUNK)
            bar.update(len(chunk))
            data = carry + chunk
            if not chunk:
                if not data:
                    break
                data += b"\n"  # a last line without its newline
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                if len(data) > MAX_LINE_BYTES:
                    raise VQAError(f"{path}: line {lines + 1}: no line end within {_count(len(data))} bytes")
                carry = data  # a line longer than this block: read on
                continue
            count, bad = _glove_block(np.frombuffer(data, dtype=np.uint8, count=cut), width)
            if bad:
                raise VQAError(f"{path}: line {lines + bad[0] + 1}: {bad[1]}")
            lines += count
            carry = data[cut:]
            if not chunk:
                break
    if lines == 0:
        raise VQAError(f"{path}: empty file")
    return lines


def _check_glove(inputs: _Inputs, release: bool) -> None:
    for name, width in GLOVE_WIDTHS.items():
        if name not in inputs.candidates:
            continue
        inputs.verdict.checked.add(name)
        try:
            lines = glove_lines(inputs.candidates[name], width)
        except VQAError as exc:
            inputs.refuse([name], str(exc))
            continue
        if lines != GLOVE_RELEASE_LINES:
            line = f"{name}: {_count(lines)} lines: not the full release's {_count(GLOVE_RELEASE_LINES)}"
            if release:
                inputs.refuse([name], line)
            else:
                inputs.verdict.note(line, [name])


def verify_raw(candidates: dict[str, Path], data_dir: Path, release: bool) -> Verdict:
    """Check the candidate files (raw-layout name -> path, not yet in place) by content.

    A file a check needs that is not a candidate is taken from `data_dir` when it is there. `release` is
    True for a download (the release's absolute counts refuse) and False for an imported copy (notes).
    """
    unknown = sorted(set(candidates) - CHECKED_FILES)
    if unknown:
        raise ValueError(f"verify_raw: no content check for {', '.join(unknown)}")
    verdict = Verdict(release=release)
    inputs = _Inputs(candidates, Path(data_dir), verdict)
    _check_each(inputs)
    _check_v2(inputs, release)
    _check_cp(inputs, release)
    _check_glove(inputs, release)
    return verdict


# ------------------------------------------------------------------------------------------ notes


def _read_store(data_dir: Path) -> list[dict[str, Any]]:
    path = data_dir / NOTES_FILE
    if not path.exists():
        return []
    data = load_json(path, what="verification notes")
    entries = data.get("entries") if isinstance(data, dict) and data.get("format") == NOTES_FORMAT else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("note"), str)
                                                and isinstance(e.get("files"), dict) for e in entries):
        raise VQAError(f"{path}: not a verification record of format {NOTES_FORMAT} (damaged?); remove it and "
                       "import or download the files again to redo their checks")
    return entries


def _file_entry(path: Path, cache: DigestCache) -> dict[str, Any]:
    return {"size": path.stat().st_size, "sha256": cache.digest(path)}


def _unchanged(data_dir: Path, files: dict[str, Any], cache: DigestCache) -> bool:
    """True when every file of a note is in place with the size and SHA-256 it had when checked."""
    for name, want in files.items():
        path = data_dir / name
        if not path.is_file() or path.stat().st_size != want.get("size") or cache.digest(path) != want.get("sha256"):
            return False
    return True


def remember(data_dir: Path, verdict: Verdict, files: dict[str, Path]) -> None:
    """Store the verdict's notes in DATA/.verification.json, each keyed by the size and SHA-256 of the files
    it concerns (from `files`, raw-layout name -> path, else the file in DATA). Earlier notes about any of
    `files`, and earlier copies of the verdict's notes, are replaced; notes about a refused file are not
    stored."""
    data_dir = Path(data_dir)
    files = {name: Path(p) for name, p in files.items()}
    entries = [e for e in _read_store(data_dir) if not set(e["files"]) & set(files) and e["note"] not in verdict.notes]
    with digest_cache(processed_dir(data_dir)) as cache:
        for note in verdict.notes:
            names = verdict.about.get(note, tuple(files))
            if set(names) & set(verdict.refused):
                continue
            digests = {}
            for name in names:
                path = files.get(name, data_dir / name)
                if path.is_file():
                    digests[name] = _file_entry(path, cache)
            if not digests:
                continue  # about no file that exists: nothing could tell when it stops applying
            entry: dict[str, Any] = {"note": note, "files": digests}
            if note in verdict.waits_for:
                release = verdict.pending_release.get(note, verdict.release)
                entry["pending"] = {"waits_for": list(verdict.waits_for[note]), "release": release}
            entries.append(entry)
    write_json(data_dir / NOTES_FILE, {"format": NOTES_FORMAT, "entries": entries}, indent=1)


def repeat_notes(data_dir: Path, log: Callable[[str], None] = print, cache: DigestCache | None = None) -> list[str]:
    """Print (through `log`) the stored notes whose files are unchanged; returns them."""
    data_dir = Path(data_dir)
    try:
        entries = _read_store(data_dir)
    except VQAError as exc:
        log(f"note: {exc}")
        return []
    cache = cache or DigestCache(processed_dir(data_dir), writable=False)
    shown = [e["note"] for e in entries if _unchanged(data_dir, e["files"], cache)]
    for note in shown:
        log(f"note (data check): {note}")
    return shown


def check_pending(data_dir: Path, log: Callable[[str], None] = print) -> None:
    """Run the checks skipped when their files were put in place, once the files they wait for are there.

    A hard failure is a VQAError (the copy must not be processed); otherwise the new findings replace the
    skipped note."""
    data_dir = Path(data_dir)
    for entry in _read_store(data_dir):
        pending = entry.get("pending")
        if not isinstance(pending, dict) or entry not in _read_store(data_dir):
            continue  # no check waits, or an earlier one of this loop has replaced this note
        waits = [str(n) for n in pending.get("waits_for", [])]
        if not all((data_dir / n).is_file() for n in waits):
            continue
        with digest_cache(processed_dir(data_dir)) as cache:
            if not _unchanged(data_dir, entry["files"], cache):
                continue
        names = [n for n in entry["files"] if n in CHECKED_FILES and n not in waits]  # waited-for: in place
        log(f"checking {', '.join(names)} now that {', '.join(waits)} are in place")
        verdict = verify_raw({n: data_dir / n for n in names}, data_dir, bool(pending.get("release")))
        if verdict.refused:
            name, reason = next(iter(verdict.refused.items()))
            raise VQAError(f"{data_dir / name} fails its check: {reason}; remove {', '.join(names)} from "
                           f"{data_dir} and import a good copy (tools/download.sh --from PATH) before processing")
        remember(data_dir, verdict, {n: data_dir / n for n in names})
        log(f"checked {', '.join(names)}: {len(verdict.notes)} notes")
