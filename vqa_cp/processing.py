"""Raw VQA json + GloVe -> dictionary, GloVe init, answer vocabulary, soft targets and bias priors.

Layouts are those of docs/DESIGN.md; the rules are those of PIPELINE_FACTS.md ("Processing").
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vqa_cp import raw
from vqa_cp.errors import VQAError
from vqa_cp.files import atomic_path, load_json, remove_stale_temps, write_json
from vqa_cp.provenance import (
    RECORD_FILE,
    DigestCache,
    Summary,
    digest_cache,
    file_entry,
    is_current,
    make_record,
    new_staging,
    output_problem,
    read_record,
    record_path,
    recover_folder,
    swap_in,
)
from vqa_cp.text import MAX_QUESTION_LENGTH, Dictionary, normalize_answer

DATASETS = ("cp", "v2")
SPLITS = ("train", "test")
ANSWER_TYPES = ("yes/no", "number", "other")
ANSWERS_PER_QUESTION = raw.ANSWERS_PER_QUESTION
DEFAULT_MIN_COUNT = 9
# score(n) for n = 0, 1, 2, 3, >=4 matching raw answers: the official leave-one-out accuracy.
SOFT_SCORES = np.array([0.0, 0.3, 0.6, 0.9, 1.0], dtype=np.float32)

DICTIONARY_QUESTION_FILES = tuple(f"v2_OpenEnded_mscoco_{split}_questions.json"
                                  for split in ("train2014", "val2014", "test2015", "test-dev2015"))
GLOVE_FILE = "glove/glove.6B.300d.txt"
RAW_FILES: dict[str, dict[str, tuple[str, str]]] = {
    "cp": {
        "train": ("vqacp_v2_train_questions.json", "vqacp_v2_train_annotations.json"),
        "test": ("vqacp_v2_test_questions.json", "vqacp_v2_test_annotations.json"),
    },
    "v2": {
        "train": ("v2_OpenEnded_mscoco_train2014_questions.json", "v2_mscoco_train2014_annotations.json"),
        "test": ("v2_OpenEnded_mscoco_val2014_questions.json", "v2_mscoco_val2014_annotations.json"),
    },
}
PROCESSED_DIR = "processed"
DICTIONARY_FILE = "dictionary.json"
GLOVE_INIT_FILE = "glove6b_init_300d.npy"
ANSWERS_FILE = "answers.json"
QUESTION_TYPES_FILE = "question_types.json"
BIAS_FILE = "bias.npy"


def processed_dir(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir) / PROCESSED_DIR


def dataset_outputs(data_dir: str | os.PathLike, dataset: str) -> list[Path]:
    """Every file `process_answers` writes for one dataset."""
    out = processed_dir(data_dir) / dataset
    files = [ANSWERS_FILE, QUESTION_TYPES_FILE, BIAS_FILE]
    files += [f"{split}.npz" for split in SPLITS] + [f"{split}_annotations.json" for split in SPLITS]
    return [out / name for name in files]


# ----------------------------------------------------------------------------------------- raw json


def load_questions(path: str | os.PathLike) -> list[raw.Question]:
    """Question entries (question_id, image_id, question) of a VQA v2 or VQA-CP v2 file, type-checked."""
    return raw.load_questions(path)


def load_annotations(path: str | os.PathLike) -> list[raw.Annotation]:
    """Annotation entries of a VQA v2 or VQA-CP v2 file, type-checked, each with exactly 10 raw answers."""
    return raw.load_annotations(path, ANSWER_TYPES)


def _first_ids(ids: Sequence[int], n: int = 5) -> str:
    return ", ".join(str(i) for i in list(ids)[:n]) + (" ..." if len(ids) > n else "")


def join_on_question_id(questions: list[dict], annotations: list[dict], questions_path: Path,
                        annotations_path: Path) -> list[tuple[dict, dict]]:
    """Pair each question (in question-file order) with its annotation by question_id.

    Duplicate ids, questions without an annotation and annotations without a question are errors.
    """
    by_id: dict[int, dict] = {}
    for a in annotations:
        qid = a["question_id"]
        if qid in by_id:
            raise VQAError(f"{annotations_path}: duplicate question_id {qid}")
        by_id[qid] = a
    seen: set[int] = set()
    for q in questions:
        if q["question_id"] in seen:
            raise VQAError(f"{questions_path}: duplicate question_id {q['question_id']}")
        seen.add(q["question_id"])
    unanswered = [q["question_id"] for q in questions if q["question_id"] not in by_id]
    if unanswered:
        raise VQAError(f"{questions_path}: {len(unanswered)} questions have no annotation in "
                       f"{annotations_path}: question_id {_first_ids(unanswered)}")
    orphans = [a["question_id"] for a in annotations if a["question_id"] not in seen]
    if orphans:
        raise VQAError(f"{annotations_path}: {len(orphans)} annotations have no question in "
                       f"{questions_path}: question_id {_first_ids(orphans)}")
    pairs = [(q, by_id[q["question_id"]]) for q in questions]
    for q, a in pairs:
        if q["image_id"] != a["image_id"]:
            raise VQAError(f"{annotations_path}: question_id {q['question_id']}: image_id {a['image_id']} "
                           f"differs from {q['image_id']} in {questions_path}")
    return pairs


# ------------------------------------------------------------------------------- dictionary, glove


def build_dictionary(question_files: Sequence[str | os.PathLike]) -> Dictionary:
    """Dictionary of every question word, ids in first-occurrence order over the files in order."""
    dictionary = Dictionary()
    for path in question_files:
        for q in tqdm(load_questions(path), desc=f"dictionary {Path(path).name}", unit="q", leave=False):
            dictionary.add_sentence(q["question"])
    return dictionary


def glove_init(glove_path: str | os.PathLike, dictionary: Dictionary) -> np.ndarray:
    """float32 [len(dictionary), width]: GloVe vectors of the dictionary's words, zero rows for the rest.

    The width is that of the file's first line; a line of another width is an error.
    """
    glove_path = Path(glove_path)
    if not glove_path.is_file():
        raise VQAError(f"GloVe file not found: {glove_path}")
    width = None
    weights = None
    with open(glove_path, "rb") as f, tqdm(total=glove_path.stat().st_size, desc="glove", unit="B",
                                           unit_scale=True, leave=False) as bar:
        for lineno, line in enumerate(f, start=1):
            bar.update(len(line))
            fields = line.rstrip(b"\r\n").split(b" ")
            if width is None:
                width = len(fields) - 1
                if width < 1:
                    raise VQAError(f"{glove_path}: line 1 has no vector")
                weights = np.zeros((len(dictionary), width), dtype=np.float32)
            if len(fields) - 1 != width:
                raise VQAError(f"{glove_path}: line {lineno} has {len(fields) - 1} numbers, expected {width}")
            idx = dictionary.word2idx.get(fields[0].decode("utf-8", errors="replace"))
            if idx is not None:
                try:
                    weights[idx] = np.array(fields[1:], dtype=np.float32)
                except ValueError:
                    raise VQAError(f"{glove_path}: line {lineno} has a value that is not a number") from None
    if weights is None:
        raise VQAError(f"{glove_path}: empty file")
    return weights


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """np.save atomically (through an open file, so no '.npy' is appended to the temporary name)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)


NPZ_TIME = (1980, 1, 1, 0, 0, 0)  # a fixed member time: the same arrays give the same bytes


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """An uncompressed .npz (what np.savez writes, np.load reads) atomically, byte-identical for equal arrays."""
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        for name, array in arrays.items():
            with zf.open(zipfile.ZipInfo(f"{name}.npy", NPZ_TIME), "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


def input_entries(data_dir: Path, paths: Sequence[Path], cache: DigestCache) -> dict[str, dict]:
    """{path relative to DATA: {"size", "sha256"}} of a step's input files."""
    return {p.relative_to(data_dir).as_posix(): file_entry(p, cache) for p in paths}


def file_step(processed: Path, step: str, params: dict, inputs: dict[str, dict], output: Path,
              build: Callable[[Path], object], cache: DigestCache, summary: Summary | None = None) -> bool:
    """A step with one output file: skipped (False) when its record matches inputs, params and the file;
    else `build(temporary)` writes the file, it is renamed into place, and the record is written last."""
    record_file = record_path(processed, step)
    record = read_record(record_file)
    summaries = {output.name: summary} if summary else None
    if is_current(record, step, params, inputs) and output_problem(processed, record, cache, summaries) is None:
        return False
    remove_stale_temps(output)
    with atomic_path(output) as tmp:
        build(tmp)
    outputs = {output.name: file_entry(output, cache, summary)}
    write_json(record_file, make_record(step, params, inputs, outputs))
    return True


def _write_dictionary(question_files: Sequence[Path], tmp: Path) -> int:
    dictionary = build_dictionary(question_files)
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"words": dictionary.idx2word}, f)
    return len(dictionary)


def _write_glove(glove_path: Path, dictionary_path: Path, tmp: Path) -> np.ndarray:
    weights = glove_init(glove_path, load_dictionary(dictionary_path))
    with open(tmp, "wb") as f:
        np.save(f, weights, allow_pickle=False)
    return weights


def process_text(data_dir: str | os.PathLike, log=print) -> None:
    """Step 1: dictionary.json from the 4 VQA v2 question files, then the GloVe init matrix.

    Each is redone unless its record in processed/.records/ matches its inputs' contents and its output.
    """
    data_dir = Path(data_dir)
    out = processed_dir(data_dir)
    question_files = [data_dir / name for name in DICTIONARY_QUESTION_FILES]
    missing = [str(p) for p in question_files if not p.is_file()]
    if missing:
        raise VQAError(f"question files not found: {', '.join(missing)} (run tools/download.sh or "
                       "`python main.py --toy`)")
    glove_path = data_dir / GLOVE_FILE
    if not glove_path.is_file():
        raise VQAError(f"GloVe file not found: {glove_path}")
    with digest_cache(out) as cache:
        dictionary_path = out / DICTIONARY_FILE
        inputs = input_entries(data_dir, question_files, cache)
        if file_step(out, "dictionary", {}, inputs, dictionary_path,
                     lambda tmp: _write_dictionary(question_files, tmp), cache):
            log(f"wrote {dictionary_path}: {len(load_dictionary(dictionary_path))} words")
        else:
            log(f"skip dictionary: {dictionary_path} is up to date")

        init_path = out / GLOVE_INIT_FILE
        inputs = input_entries(data_dir, [dictionary_path, glove_path], cache)
        found: list[str] = []

        def build(tmp: Path) -> None:
            weights = _write_glove(glove_path, dictionary_path, tmp)
            found.append(f"{weights.shape}, {int(np.count_nonzero(np.any(weights != 0, axis=1)))} of "
                         f"{len(weights)} words found in GloVe")

        if file_step(out, "glove", {}, inputs, init_path, build, cache):
            log(f"wrote {init_path}: {found[0]}")
        else:
            log(f"skip glove: {init_path} is up to date")


def load_dictionary(path: str | os.PathLike) -> Dictionary:
    """Dictionary from dictionary.json ({"words": [...]})."""
    data = load_json(path, what="dictionary")
    if not isinstance(data, dict) or not isinstance(data.get("words"), list):
        raise VQAError(f"{path}: expected {{\"words\": [...]}}")
    return Dictionary(data["words"])


# ------------------------------------------------------------------------ answers, targets, bias


def answer_vocabulary(annotations: Sequence[dict], min_count: int = DEFAULT_MIN_COUNT) -> list[str]:
    """Normalised multiple_choice_answers given for at least `min_count` distinct questions.

    Label order = first occurrence in `annotations`.
    """
    questions_per_answer: dict[str, set[int]] = {}
    for a in annotations:
        answer = normalize_answer(a["multiple_choice_answer"])
        questions_per_answer.setdefault(answer, set()).add(a["question_id"])
    return [ans for ans, qids in questions_per_answer.items() if len(qids) >= min_count]


def soft_targets(annotations: Sequence[dict], answer_index: dict[str, int]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR soft targets (ptr [Q+1], label [T], score [T]).

    For each raw answer string in the vocabulary, n = how many of the 10 raw (not normalised)
    answers equal it; score = SOFT_SCORES[min(n, 4)]. Labels follow first occurrence among the 10.
    """
    ptr = np.zeros(len(annotations) + 1, dtype=np.int64)
    labels: list[int] = []
    counts: list[int] = []
    for i, a in enumerate(annotations):
        count: dict[int, int] = {}
        for x in a["answers"]:
            label = answer_index.get(x["answer"])
            if label is not None:
                count[label] = count.get(label, 0) + 1
        labels.extend(count)
        counts.extend(count.values())
        ptr[i + 1] = len(labels)
    score = SOFT_SCORES[np.minimum(np.asarray(counts, dtype=np.int64), len(SOFT_SCORES) - 1)]
    return ptr, np.asarray(labels, dtype=np.int64), score.astype(np.float32)


def bias_priors(question_type: np.ndarray, ptr: np.ndarray, label: np.ndarray, score: np.ndarray,
                num_types: int, num_answers: int) -> np.ndarray:
    """float32 [num_types, num_answers]: b_t = mean over train questions of type t of their target.

    `question_type`, ptr/label/score describe the TRAIN questions. A type with no train question
    (test-only) gets the mean target over all train questions.
    """
    entry_type = np.repeat(question_type, np.diff(ptr))
    sums = np.bincount(entry_type * num_answers + label, weights=score, minlength=num_types * num_answers)
    sums = sums.reshape(num_types, num_answers)
    counts = np.bincount(question_type, minlength=num_types).astype(np.float64)
    bias = np.empty_like(sums)
    seen = counts > 0
    bias[seen] = sums[seen] / counts[seen, None]
    bias[~seen] = sums.sum(axis=0) / len(question_type)
    return bias.astype(np.float32)


@dataclass
class Split:
    """One joined split: questions and annotations paired on question_id, in question-file order.

    `file_annotations` keeps the annotation file's order, which fixes label and question-type order.
    """

    questions: list[dict]
    annotations: list[dict]
    file_annotations: list[dict]
    questions_path: Path
    annotations_path: Path


def load_split(questions_path: Path, annotations_path: Path) -> Split:
    annotations = load_annotations(annotations_path)
    pairs = join_on_question_id(load_questions(questions_path), annotations, questions_path, annotations_path)
    return Split([q for q, _ in pairs], [a for _, a in pairs], annotations, questions_path, annotations_path)


def _split_arrays(split: Split, dictionary: Dictionary, type_index: dict[str, int],
                  answer_index: dict[str, int], desc: str) -> dict[str, np.ndarray]:
    tokens = np.array([dictionary.encode(q["question"], MAX_QUESTION_LENGTH)
                       for q in tqdm(split.questions, desc=f"{desc} tokens", unit="q", leave=False)],
                      dtype=np.int64).reshape(len(split.questions), MAX_QUESTION_LENGTH)
    ptr, label, score = soft_targets(split.annotations, answer_index)
    return {
        "question_id": np.array([q["question_id"] for q in split.questions], dtype=np.int64),
        "image_id": np.array([q["image_id"] for q in split.questions], dtype=np.int64),
        "tokens": tokens,
        "question_type": np.array([type_index[a["question_type"]] for a in split.annotations],
                                  dtype=np.int64),
        "answer_type": np.array([ANSWER_TYPES.index(a["answer_type"]) for a in split.annotations],
                                dtype=np.int64),
        "target_ptr": ptr,
        "target_label": label,
        "target_score": score,
    }


def _annotations_json(split: Split) -> dict[str, list]:
    return {
        "question_id": [q["question_id"] for q in split.questions],
        "question": [q["question"] for q in split.questions],
        "question_type": [a["question_type"] for a in split.annotations],
        "answer_type": [a["answer_type"] for a in split.annotations],
        "answers": [[x["answer"] for x in a["answers"]] for a in split.annotations],
        "multiple_choice_answer": [a["multiple_choice_answer"] for a in split.annotations],
    }


def _build_dataset(data_dir: Path, dataset: str, min_count: int, log) -> dict[str, object]:
    """Every output of step 2 for `dataset`, by file name (arrays, or JSON-able objects)."""
    dictionary = load_dictionary(processed_dir(data_dir) / DICTIONARY_FILE)
    splits = {split: load_split(data_dir / q, data_dir / a) for split, (q, a) in RAW_FILES[dataset].items()}
    train, test = splits["train"], splits["test"]
    answers = answer_vocabulary(train.file_annotations, min_count)
    if not answers:
        raise VQAError(f"{train.annotations_path}: no answer occurs for {min_count} or more questions "
                       "(lower --min-count for small data)")
    answer_index = {a: i for i, a in enumerate(answers)}
    question_types = list(dict.fromkeys(a["question_type"] for a in train.file_annotations))
    num_train_types = len(question_types)
    train_types = set(question_types)
    question_types += [t for t in dict.fromkeys(a["question_type"] for a in test.file_annotations)
                       if t not in train_types]
    type_index = {t: i for i, t in enumerate(question_types)}

    arrays = {}
    for split, data in splits.items():
        dictionary.unknown_count = 0
        arrays[split] = _split_arrays(data, dictionary, type_index, answer_index, f"{dataset} {split}")
        if dictionary.unknown_count:
            log(f"{data.questions_path}: {dictionary.unknown_count} words not in the dictionary "
                f"(mapped to the padding index {dictionary.padding_idx})")
    tr = arrays["train"]
    bias = bias_priors(tr["question_type"], tr["target_ptr"], tr["target_label"], tr["target_score"],
                       len(question_types), len(answers))
    if len(question_types) > num_train_types:
        n_questions = int(np.count_nonzero(arrays["test"]["question_type"] >= num_train_types))
        log(f"warning: {dataset}: {len(question_types) - num_train_types} test question types ({n_questions} "
            "questions) do not occur in train; they get the mean train target as bias")
    log(f"{dataset}: {len(answers)} answers, {len(question_types)} question types, "
        f"{len(train.questions)} train / {len(test.questions)} test questions")
    outputs: dict[str, object] = {}
    for split in SPLITS:
        outputs[f"{split}.npz"] = arrays[split]
        outputs[f"{split}_annotations.json"] = _annotations_json(splits[split])
    outputs[BIAS_FILE] = bias
    outputs[QUESTION_TYPES_FILE] = question_types
    outputs[ANSWERS_FILE] = {"answers": answers, "min_count": min_count}
    return outputs


def _write_outputs(folder: Path, outputs: dict[str, object]) -> None:
    for name, value in outputs.items():
        if name.endswith(".npz"):
            save_npz(folder / name, **value)
        elif name.endswith(".npy"):
            save_npy(folder / name, value)
        else:
            write_json(folder / name, value)


def process_dataset(data_dir: str | os.PathLike, dataset: str, min_count: int = DEFAULT_MIN_COUNT,
                    log=print) -> None:
    """Step 2 for one dataset ("cp" or "v2"): answers, question types, bias, {train,test}.npz/annotations.

    Skipped when the folder's record matches the raw files' and dictionary.json's contents, `min_count`
    and every output. Otherwise the folder is built in a staging folder (record last) and swapped in,
    so an interruption leaves the old set or the new one.
    """
    if dataset not in RAW_FILES:
        raise VQAError(f"unknown dataset {dataset!r}; expected one of {', '.join(RAW_FILES)}")
    if min_count < 1:
        raise VQAError(f"min count must be at least 1, got {min_count}")
    data_dir = Path(data_dir)
    out = processed_dir(data_dir) / dataset
    dictionary_path = processed_dir(data_dir) / DICTIONARY_FILE
    if not dictionary_path.is_file():
        raise VQAError(f"{dictionary_path} not found: run tools/process_text.py first")
    recover_folder(out)
    paths = [data_dir / name for pair in RAW_FILES[dataset].values() for name in pair] + [dictionary_path]
    params = {"min_count": min_count}
    step = f"answers {dataset}"
    with digest_cache(processed_dir(data_dir)) as cache:
        inputs = input_entries(data_dir, paths, cache)
        record = read_record(out / RECORD_FILE)
        if is_current(record, step, params, inputs) and output_problem(out, record, cache) is None:
            log(f"skip answers {dataset}: {out} is up to date")
            return
        outputs = _build_dataset(data_dir, dataset, min_count, log)
        staging = new_staging(out)
        try:
            _write_outputs(staging, outputs)
            entries = {name: file_entry(staging / name, cache) for name in outputs}
            write_json(staging / RECORD_FILE, make_record(step, params, inputs, entries))  # last: set complete
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        swap_in(out)
    log(f"wrote {out}")


def process_answers(data_dir: str | os.PathLike, min_count: int = DEFAULT_MIN_COUNT, log=print) -> list[str]:
    """Step 2 for every dataset whose raw files exist; returns the datasets processed or skipped.

    First the raw files' checks: one skipped when its copy was put in place (VQA-CP without VQA v2) runs
    now if it can (a refused copy is a VQAError), then the notes of the checks are repeated.
    """
    from vqa_cp import verify  # verify builds on this module

    data_dir = Path(data_dir)
    verify.check_pending(data_dir, log)
    verify.repeat_notes(data_dir, log)
    done = []
    for dataset, files in RAW_FILES.items():
        paths = [data_dir / name for pair in files.values() for name in pair]
        present = [p.is_file() for p in paths]
        if not any(present):
            log(f"skip answers {dataset}: no raw files in {data_dir}")
            continue
        if not all(present):
            missing = ", ".join(str(p) for p, ok in zip(paths, present) if not ok)
            raise VQAError(f"{dataset}: raw files missing: {missing}")
        process_dataset(data_dir, dataset, min_count, log)
        done.append(dataset)
    if not done:
        raise VQAError(f"no VQA-CP v2 or VQA v2 annotation files in {data_dir}")
    return done
