"""Real-shape stand-in for VQA-CP v2 (the "rehearsal" data), written in the exact raw formats.

The toy (vqa_cp.toy) has the raw formats but toy shapes. This module writes the real shapes at a fraction
`scale` of the real counts: 36 boxes x 2048-d float32 features for round(123,287 s) images, round(438,183 s)
VQA-CP train and round(219,928 s) test questions (the same questions re-split as VQA v2 train2014 / val2014
by image), the VQA v2 test2015 / test-dev2015 question files, the 65 VQA question types, a dictionary of
about 19,900 words at any scale and about 2,000 answers that clear the minimum-count filter (9) at scales
from about 0.05 up.

Signal: question q names a subject word s_q and sits on box k_q of its image; that box's feature is
    v = relu(signal * (P_subject[s_q] + P_answer[a_q]) + noise * eps),   eps ~ N(0, I),
the other boxes carry random (subject, answer) pairs. A model must attend to the box of the subject
named in the question and read the answer off it. VQA-CP shift: within each question type half of the
answers go `train_heavy_share` of their questions to train, the other half the same share to test.

Answer counts are allocated, not sampled: every one of the `answers - 23` designed "other" answers gets
exactly MIN_COUNT train questions plus its share of the rest (so the vocabulary size does not depend on
the scale, as long as the train split can hold the floors), yes/no and numbers 0..20 take the rest by
question-type weight, and `noise_share` of the questions get a unique answer that never clears the filter.
At small scales the floors crowd the train split (at 0.05 about 80% of train questions are in the
designed tail); the test split keeps the natural mix.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from vqa_cp.errors import VQAError
from vqa_cp.feature_forms import check_form, write_form
from vqa_cp.features import TSV_FILE
from vqa_cp.files import atomic_path
from vqa_cp.processing import ANSWERS_PER_QUESTION, DEFAULT_MIN_COUNT, DICTIONARY_QUESTION_FILES, GLOVE_FILE, RAW_FILES
from vqa_cp.toy import INFO, LICENSE, V2_SUBTYPES, write_generated

REHEARSAL_FILE = "rehearsal.json"
REAL = {"images": 123_287, "train2014_images": 82_783, "test2015_images": 81_434, "cp_train": 438_183,
        "cp_test": 219_928, "test2015": 447_793, "test-dev2015": 107_394, "glove": 400_000}
QUESTION_ID_STRIDE = 1000
MAX_IMAGE_ID = 581_929
GLOVE_DIM = 300
GLOVE_LEVELS = 4096  # GloVe values are quantised to this many strings (fast text formatting)
FEATURE_CHUNK = 128  # images generated and written per block
NUMBERS = [str(n) for n in range(21)]
_YES_NO = ("is the,is this,is this a,are the,is there a,is it,is there,does the,are these,are there,is,"
           "is the man,are,does this,do,are they,are there any,is he,is the woman,is this an,do you,has,"
           "is this person,can you,is the person,could,was,is that a").split(",")
_NUMBER = ["how many", "how many people are", "how many people are in", "what number is"]
_OTHER = ("what color is the,what is the,what,what kind of,what type of,what are the,where is the,"
          "what color are the,which,how,what is the man,what is on the,what does the,what is in the,what is this,"
          "what are,what time,what sport is,what color is,why,where are the,what color,who is,what animal is,"
          "what room is,what is the woman,why is the,what is the color of the,what is the person,"
          "what is the name,what brand,none of the above,what is").split(",")
# The 65 VQA question types and their answer types; share of questions per answer type as in VQA v2.
QUESTION_TYPES = {**{t: "yes/no" for t in _YES_NO}, **{t: "number" for t in _NUMBER},
                  **{t: "other" for t in _OTHER}}
ANSWER_TYPE_SHARES = {"yes/no": 0.38, "number": 0.12, "other": 0.50}
_CONSONANTS = "bdfgklmnprtvz"
_VOWELS = "aeiou"


@dataclass(frozen=True)
class RehearsalConfig:
    """Scale and knobs of the rehearsal data; checked on construction (VQAError on impossible values)."""

    scale: float = 0.1
    seed: int = 0
    boxes: int = 36
    feature_dim: int = 2048
    answers: int = 2000               # answers meant to clear the min-count filter
    dictionary_words: int = 19_901
    subjects: int = 1500              # subject words (one box each in the feature space)
    train_heavy_share: float = 0.9
    noise_share: float = 0.015        # questions whose answer is unique (never in the vocabulary)
    signal: float = 0.6
    noise: float = 0.8
    glove_missing_share: float = 0.02

    def __post_init__(self) -> None:
        if not 0.0005 <= self.scale <= 1.0:
            raise VQAError(f"rehearsal scale must be in [0.0005, 1], got {self.scale}")
        if self.boxes < 8 or self.feature_dim < 1:
            raise VQAError(f"rehearsal needs at least 8 boxes and 1 feature dimension, got {self.boxes} x "
                           f"{self.feature_dim}")
        if self.answers <= len(NUMBERS) + 2 or self.subjects < 2:
            raise VQAError(f"rehearsal answers must exceed {len(NUMBERS) + 2} and subjects 1, got "
                           f"{self.answers} / {self.subjects}")
        if not 0.5 <= self.train_heavy_share < 1.0 or not 0.0 <= self.noise_share < 0.5:
            raise VQAError("rehearsal train-heavy share must be in [0.5, 1) and noise share in [0, 0.5)")

    def count(self, name: str) -> int:
        """The real count `name` (REAL) times the scale, at least 2."""
        return max(2, round(REAL[name] * self.scale))


def pseudo_words(rng: np.random.Generator, n: int, syllables: int = 3) -> list[str]:
    """n distinct consonant-vowel words ('bakoti'): never articles, number words or contractions."""
    letters = np.array([c + v for c in _CONSONANTS for v in _VOWELS])
    space = len(letters) ** syllables
    if n > space:
        raise VQAError(f"cannot make {n} distinct {syllables}-syllable words")
    codes = rng.choice(space, size=n, replace=False)
    digits = [(codes // len(letters) ** i) % len(letters) for i in range(syllables)]
    parts = [letters[d] for d in digits]
    return [''.join(t) for t in zip(*parts)]


@dataclass
class _Vocab:
    answers: list[str]        # yes, no, 0..20, designed other answers
    subjects: list[str]
    fillers: list[str]
    noise_words: list[str]


def _vocab(rng: np.random.Generator, config: RehearsalConfig, n_other: int) -> _Vocab:
    prefix_words = {w for t in QUESTION_TYPES for w in t.split()}
    n_fill = config.dictionary_words - len(prefix_words) - config.subjects
    if n_fill < 1:
        raise VQAError(f"dictionary of {config.dictionary_words} words leaves no room for filler words")
    words = pseudo_words(rng, config.subjects + n_fill + 2 * n_other + 64)
    subjects, fillers = words[:config.subjects], words[config.subjects:config.subjects + n_fill]
    answer_words = words[config.subjects + n_fill:]
    two_word = rng.random(n_other) < 0.3
    other = [f"{answer_words[i]} {answer_words[n_other + i]}" if two else answer_words[i]
             for i, two in enumerate(two_word.tolist())]
    return _Vocab(["yes", "no", *NUMBERS, *other], subjects, fillers, answer_words[-64:])


@dataclass
class _Combos:
    """(question type, answer) pairs that questions are drawn from, with weights per split."""

    qtype: np.ndarray    # [C] index into QUESTION_TYPES
    answer: np.ndarray   # [C] index into _Vocab.answers
    w_train: np.ndarray  # [C]
    w_test: np.ndarray   # [C]
    floor: np.ndarray    # [C] train questions each combo must get


def _type_weights() -> np.ndarray:
    """Question-type weights: Zipf within each answer type, scaled to ANSWER_TYPE_SHARES."""
    types = list(QUESTION_TYPES.items())
    weights = np.zeros(len(types))
    for answer_type, share in ANSWER_TYPE_SHARES.items():
        members = [i for i, (_, a) in enumerate(types) if a == answer_type]
        w = 1.0 / (np.arange(len(members)) + 2.0)
        weights[members] = share * w / w.sum()
    return weights


def _combos(rng: np.random.Generator, config: RehearsalConfig, n_other: int) -> _Combos:
    types = list(QUESTION_TYPES.values())
    type_w = _type_weights()
    other_types = [i for i, a in enumerate(types) if a == "other"]
    qtype, answer, weight, floor = [], [], [], []
    for t, answer_type in enumerate(types):
        if answer_type == "yes/no":
            ids = [0, 1]
        elif answer_type == "number":
            ids = list(range(2, 2 + len(NUMBERS)))
        else:  # designed other answers dealt round-robin over the "other" types
            ids = list(range(2 + len(NUMBERS) + other_types.index(t), 2 + len(NUMBERS) + n_other,
                             len(other_types)))
        p = 1.0 / (np.arange(len(ids)) + 1.0) ** (0.3 if answer_type == "yes/no" else 1.0)
        qtype += [t] * len(ids)
        answer += ids
        weight += (type_w[t] * p / p.sum()).tolist()
        floor += [DEFAULT_MIN_COUNT if answer_type == "other" else 0] * len(ids)
    weight_arr = np.array(weight)
    heavy = rng.random(len(weight_arr)) < 0.5
    share = config.train_heavy_share
    return _Combos(np.array(qtype), np.array(answer), weight_arr * np.where(heavy, share, 1 - share),
                   weight_arr * np.where(heavy, 1 - share, share), np.array(floor))


def allocate(budget: int, weights: np.ndarray, floors: np.ndarray) -> np.ndarray:
    """Integer counts summing to `budget`: floors plus the rest shared by weight (largest remainders)."""
    rest = budget - int(floors.sum())
    if rest < 0:
        raise VQAError(f"cannot place {int(floors.sum())} floor questions in a split of {budget}")
    share = rest * weights / weights.sum()
    counts = np.floor(share).astype(np.int64)
    left = rest - int(counts.sum())
    counts[np.argsort(-(share - counts), kind="stable")[:left]] += 1
    return floors.astype(np.int64) + counts


def _designed_others(config: RehearsalConfig) -> int:
    """How many designed 'other' answers the train split can hold at MIN_COUNT each (83% of it at most)."""
    fit = int(0.83 * config.count("cp_train") / DEFAULT_MIN_COUNT) - len(NUMBERS) - 2
    return max(1, min(config.answers - len(NUMBERS) - 2, fit))


@dataclass
class _Questions:
    """Every VQA-CP (= VQA v2 train2014 + val2014) question, as arrays."""

    qtype: np.ndarray    # [Q] index into QUESTION_TYPES
    answer: np.ndarray   # [Q] index into _Vocab.answers; -1: a unique answer of its own
    cp_test: np.ndarray  # [Q] bool
    image: np.ndarray    # [Q] index into the trainval images
    slot: np.ndarray     # [Q] position among its image's questions (question_id = image_id * 1000 + slot)
    subject: np.ndarray  # [Q] index into _Vocab.subjects
    box: np.ndarray      # [Q] the box of its image that answers it


def _split_questions(rng: np.random.Generator, config: RehearsalConfig, combos: _Combos, test: bool
                     ) -> tuple[np.ndarray, np.ndarray]:
    budget = config.count("cp_test" if test else "cp_train")
    n_noise = round(config.noise_share * budget)
    floors = np.zeros_like(combos.floor) if test else combos.floor
    counts = allocate(budget - n_noise, combos.w_test if test else combos.w_train, floors)
    type_w = _type_weights()
    other = np.array([i for i, a in enumerate(QUESTION_TYPES.values()) if a == "other"])
    noise_types = rng.choice(other, size=n_noise, p=type_w[other] / type_w[other].sum())
    qtype = np.concatenate([np.repeat(combos.qtype, counts), noise_types])
    answer = np.concatenate([np.repeat(combos.answer, counts), np.full(n_noise, -1)])
    return qtype, answer


def _questions(rng: np.random.Generator, config: RehearsalConfig, combos: _Combos, n_images: int) -> _Questions:
    train, test = (_split_questions(rng, config, combos, t) for t in (False, True))
    qtype, answer = (np.concatenate([a, b]) for a, b in zip(train, test))
    cp_test = np.arange(len(qtype)) >= len(train[0])
    order = rng.permutation(len(qtype))
    qtype, answer, cp_test = qtype[order], answer[order], cp_test[order]
    q = len(qtype)
    per_image = np.full(n_images, q // n_images) + (np.arange(n_images) < q % n_images)
    if per_image.max() > config.boxes:
        raise VQAError(f"{q} questions over {n_images} images leave more questions than boxes on an image")
    image = np.repeat(np.arange(n_images), per_image)  # (the questions are shuffled already)
    starts = np.cumsum(per_image) - per_image
    slot = np.arange(q) - starts[image]
    box_order = np.argsort(rng.random((n_images, config.boxes)), axis=1)
    subject = rng.integers(0, config.subjects, q)
    return _Questions(qtype, answer, cp_test, image, slot, subject, box_order[image, slot])


def _box_contents(rng: np.random.Generator, config: RehearsalConfig, questions: _Questions, n_images: int,
                  n_answers: int) -> tuple[np.ndarray, np.ndarray]:
    """[N, K] subject and answer prototype of every box: the question's on its box, random elsewhere.

    A question with a unique answer shows one of 64 extra 'rare answer' prototypes (rows n_answers..)."""
    subjects = rng.integers(0, config.subjects, (n_images, config.boxes))
    answers = rng.integers(0, n_answers, (n_images, config.boxes))
    noise_proto = n_answers + rng.integers(0, 64, len(questions.answer))
    subjects[questions.image, questions.box] = questions.subject
    answers[questions.image, questions.box] = np.where(questions.answer >= 0, questions.answer, noise_proto)
    return subjects, answers


def _write_features(path: Path, rng: np.random.Generator, config: RehearsalConfig, image_ids: np.ndarray,
                    contents: tuple[np.ndarray, np.ndarray], n_answers: int, progress: bool) -> None:
    """The bottom-up TSV: one "\\r\\n"-terminated row per image, FEATURE_CHUNK images generated at a time."""
    d = config.feature_dim
    p_subject = rng.standard_normal((config.subjects, d), dtype=np.float32) * np.float32(config.signal)
    p_answer = rng.standard_normal((n_answers + 64, d), dtype=np.float32) * np.float32(config.signal)
    subjects, answers = contents
    n = len(image_ids)
    widths = rng.integers(320, 641, n)
    heights = rng.integers(240, 641, n)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for start in tqdm(range(0, n, FEATURE_CHUNK), desc="rehearsal features", unit="block",
                          disable=not progress):
            stop = min(start + FEATURE_CHUNK, n)
            v = rng.standard_normal((stop - start, config.boxes, d), dtype=np.float32)
            v *= np.float32(config.noise)
            v += p_subject[subjects[start:stop]]
            v += p_answer[answers[start:stop]]
            np.maximum(v, 0, out=v)
            corners = rng.random((stop - start, config.boxes, 2), dtype=np.float32) * 0.55
            sides = rng.random((stop - start, config.boxes, 2), dtype=np.float32) * 0.4 + 0.05
            size = np.stack([widths[start:stop], heights[start:stop]], axis=1)[:, None, :].astype(np.float32)
            boxes = np.concatenate([corners, corners + sides], axis=2) * np.tile(size, (1, 1, 2))
            rows = [b"%d\t%d\t%d\t%d\t%s\t%s\r\n" % (image_ids[i], widths[i], heights[i], config.boxes,
                                                      base64.b64encode(boxes[i - start].tobytes()),
                                                      base64.b64encode(v[i - start].tobytes()))
                    for i in range(start, stop)]
            f.write(b"".join(rows))


def _texts(rng: np.random.Generator, vocab: _Vocab, qtype: np.ndarray, subject: np.ndarray) -> list[str]:
    """Question strings: type prefix, subject word, filler words; every filler word used at least once."""
    n, n_fill = len(qtype), len(vocab.fillers)
    per_question = rng.integers(1, 9, n)
    per_question = np.maximum(per_question, -(-n_fill // n))
    total = int(per_question.sum())
    p = 1.0 / (np.arange(n_fill) + 10.0)
    flat = rng.choice(n_fill, size=total, p=p / p.sum())
    flat[rng.choice(total, size=n_fill, replace=False)] = np.arange(n_fill)
    fillers = np.array(vocab.fillers, dtype=object)[flat].tolist()
    prefixes = [t.capitalize() for t in QUESTION_TYPES]
    subjects = vocab.subjects
    ends = np.cumsum(per_question).tolist()
    starts = [0, *ends[:-1]]
    return [f"{prefixes[t]} {subjects[s]} {' '.join(fillers[a:b])}?"
            for t, s, a, b in zip(qtype.tolist(), subject.tolist(), starts, ends)]


def _raw_answers(rng: np.random.Generator, vocab: _Vocab, questions: _Questions, qids: np.ndarray
                 ) -> tuple[list[str], list[list[str]]]:
    """Multiple-choice answer and the 10 raw answers of every question (6..10 of them exactly the answer,
    the others a folded variant ('Red', 'red.') or another answer of the same answer type)."""
    answers = np.array(vocab.answers, dtype=object)
    n, n_other = len(questions.answer), len(vocab.answers) - 2 - len(NUMBERS)
    unique = np.array([f"{vocab.noise_words[i % 64]} {q}" for i, q in enumerate(qids.tolist())], dtype=object)
    canon = np.where(questions.answer >= 0, answers[np.maximum(questions.answer, 0)], unique)
    kinds = np.array(list(QUESTION_TYPES.values()))[questions.qtype]
    wrong_id = np.where(kinds == "yes/no", 1 - np.clip(questions.answer, 0, 1),
                        np.where(kinds == "number", 2 + rng.integers(0, len(NUMBERS), n),
                                 2 + len(NUMBERS) + rng.integers(0, n_other, n)))
    wrong = answers[wrong_id]
    capital = np.array([a.capitalize() for a in canon.tolist()], dtype=object)
    dotted = canon + "."
    exact = rng.integers(6, ANSWERS_PER_QUESTION + 1, n)
    column = np.arange(ANSWERS_PER_QUESTION)
    pick = rng.random((n, ANSWERS_PER_QUESTION))
    raw = np.where(column < exact[:, None], canon[:, None],
                   np.where(pick < 0.3, capital[:, None], np.where(pick < 0.6, dotted[:, None], wrong[:, None])))
    raw = np.take_along_axis(raw, np.argsort(rng.random((n, ANSWERS_PER_QUESTION)), axis=1), axis=1)
    return canon.tolist(), raw.tolist()


def _annotation(question: dict[str, Any], qtype: str, mc: str, raw: list[str]) -> dict[str, Any]:
    return {"question_type": qtype, "multiple_choice_answer": mc,
            "answers": [{"answer": a, "answer_confidence": "yes" if a == mc else "maybe", "answer_id": i + 1}
                        for i, a in enumerate(raw)],
            "image_id": question["image_id"], "answer_type": QUESTION_TYPES[qtype],
            "question_id": question["question_id"]}


def _dump(path: Path, obj: Any) -> int:
    """json.dumps (the C encoder; json.dump streams through the Python one) written atomically; bytes."""
    text = json.dumps(obj)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return len(text)


def _write_json_files(out: Path, questions: list[dict], annotations: list[dict], cp_test: np.ndarray,
                      val: np.ndarray, test2015: list[dict], n_dev: int) -> None:
    """The four VQA v2 question files, the two VQA v2 annotation files and the four VQA-CP files."""
    subsets = {"train2014": [q for q, v in zip(questions, val.tolist()) if not v],
               "val2014": [q for q, v in zip(questions, val.tolist()) if v],
               "test2015": test2015, "test-dev2015": test2015[:n_dev]}
    for sub, name in zip(V2_SUBTYPES, DICTIONARY_QUESTION_FILES):
        entries = [{k: q[k] for k in ("image_id", "question", "question_id")} for q in subsets[sub]]
        _dump(out / name, {"info": INFO, "task_type": "Open-Ended", "data_type": "mscoco", "license": LICENSE,
                           "data_subtype": sub, "questions": entries})
    for sub, split in (("train2014", "train"), ("val2014", "test")):
        entries = [a for a, v in zip(annotations, val.tolist()) if v == (sub == "val2014")]
        _dump(out / RAW_FILES["v2"][split][1], {"info": INFO, "license": LICENSE, "data_type": "mscoco",
                                                "data_subtype": sub, "annotations": entries})
    for split, is_test in (("train", False), ("test", True)):
        rows = np.flatnonzero(cp_test == is_test)
        questions_file, annotations_file = RAW_FILES["cp"][split]
        _dump(out / questions_file, [questions[i] for i in rows.tolist()])
        _dump(out / annotations_file, [{**annotations[i], "coco_split": questions[i]["coco_split"]}
                                       for i in rows.tolist()])


def _write_glove(path: Path, rng: np.random.Generator, config: RehearsalConfig, words: list[str]) -> int:
    """GloVe text: the dictionary words but a few, plus made-up words up to scale x 400,000 lines."""
    missing = round(config.glove_missing_share * len(words))
    kept = [words[i] for i in sorted(rng.permutation(len(words))[missing:].tolist())]
    extra = max(0, config.count("glove") - len(kept))
    lines = kept + pseudo_words(rng, extra, syllables=4)
    lines = [lines[i] for i in rng.permutation(len(lines)).tolist()]
    levels = [f"{x:.5f}" for x in np.linspace(-1.0, 1.0, GLOVE_LEVELS)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for start in range(0, len(lines), 4096):
            block = rng.integers(0, GLOVE_LEVELS, (min(4096, len(lines) - start), GLOVE_DIM)).tolist()
            f.write("".join(f"{w} {' '.join(map(levels.__getitem__, row))}\n"
                            for w, row in zip(lines[start:start + 4096], block)))
    return missing


def _entries(questions: _Questions, texts: list[str], image_ids: np.ndarray, val: np.ndarray
             ) -> tuple[list[dict], np.ndarray]:
    """Question entries (with coco_split) in question order, and their question ids."""
    ids = image_ids[questions.image]
    qids = ids * QUESTION_ID_STRIDE + questions.slot
    splits = np.where(val[questions.image], "val2014", "train2014").tolist()
    entries = [{"image_id": i, "question": t, "question_id": q, "coco_split": s}
               for i, t, q, s in zip(ids.tolist(), texts, qids.tolist(), splits)]
    return entries, qids


def _test2015(rng: np.random.Generator, config: RehearsalConfig, vocab: _Vocab, image_ids: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """test2015 questions (no answers, dictionary only): question type, subject, question id."""
    n = config.count("test2015")
    images = np.sort(rng.integers(0, len(image_ids), n))
    starts = np.searchsorted(images, images)
    qids = image_ids[images] * QUESTION_ID_STRIDE + (np.arange(n) - starts)
    weights = _type_weights()
    return rng.choice(len(weights), size=n, p=weights), rng.integers(0, config.subjects, n), qids


def _generate(out: Path, config: RehearsalConfig, progress: bool, features_form: str = "tsv") -> dict[str, Any]:
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence([config.seed, 2048]).spawn(6)]
    n_other = _designed_others(config)
    vocab = _vocab(rngs[0], config, n_other)
    combos = _combos(rngs[1], config, n_other)
    n_images = config.count("images")
    ids = rngs[2].choice(MAX_IMAGE_ID, size=n_images + config.count("test2015_images"), replace=False) + 1
    image_ids, test_image_ids = ids[:n_images], ids[n_images:]
    val = np.ones(n_images, dtype=bool)
    val[rngs[2].permutation(n_images)[:config.count("train2014_images")]] = False
    questions = _questions(rngs[3], config, combos, n_images)
    t_type, t_subject, t_qids = _test2015(rngs[3], config, vocab, test_image_ids)
    texts = _texts(rngs[3], vocab, np.concatenate([questions.qtype, t_type]),
                   np.concatenate([questions.subject, t_subject]))
    entries, qids = _entries(questions, texts[:len(questions.qtype)], image_ids, val)
    test2015 = [{"image_id": int(q // QUESTION_ID_STRIDE), "question": t, "question_id": q}
                for q, t in zip(t_qids.tolist(), texts[len(questions.qtype):])]
    mc, raw = _raw_answers(rngs[4], vocab, questions, qids)
    types = list(QUESTION_TYPES)
    annotations = [_annotation(e, types[t], m, r) for e, t, m, r in zip(entries, questions.qtype.tolist(), mc, raw)]
    _write_json_files(out, entries, annotations, questions.cp_test, val[questions.image], test2015,
                      config.count("test-dev2015"))
    del annotations, raw
    words = [*dict.fromkeys(w for t in QUESTION_TYPES for w in t.split()), *vocab.subjects, *vocab.fillers]
    missing = _write_glove(out / GLOVE_FILE, rngs[5], config, words)
    contents = _box_contents(rngs[4], config, questions, n_images, len(vocab.answers))
    _write_features(out / TSV_FILE, rngs[5], config, image_ids, contents, len(vocab.answers), progress)
    write_form(out / TSV_FILE, features_form, out,
               dict(zip(image_ids.tolist(), np.where(val, "val2014", "train2014").tolist())), seed=config.seed,
               progress=progress)
    summary = {"config": asdict(config), "images": n_images, "val2014_images": int(val.sum()),
               "questions": {"vqacp_train": int((~questions.cp_test).sum()), "vqacp_test": int(questions.cp_test.sum()),
                             "test2015": len(test2015), "test-dev2015": config.count("test-dev2015")},
               "designed_answers": len(vocab.answers), "dictionary_words": len(words), "glove_missing": missing}
    _dump(out / REHEARSAL_FILE, summary)
    return summary


def generate_rehearsal_data(out_dir: str | os.PathLike, config: RehearsalConfig, force: bool = False,
                            progress: bool = True, features_form: str = "tsv") -> dict[str, Any]:
    """Write the rehearsal dataset (raw layout of docs/DESIGN.md plus rehearsal.json) into `out_dir`.

    Written in a temporary sibling folder renamed onto `out_dir` when complete; a non-empty `out_dir`
    is refused unless `force` (and then only a previous rehearsal dataset is replaced). Returns the summary
    that rehearsal.json holds. `features_form` as in `vqa_cp.toy.generate_toy_data`.
    """
    check_form(features_form)
    return write_generated(out_dir, lambda tmp: _generate(tmp, config, progress, features_form), force,
                           REHEARSAL_FILE, "rehearsal dataset")
