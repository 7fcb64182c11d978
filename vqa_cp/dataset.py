"""`VQADataset`: processed split + `FeatureStore` -> training items (docs/DESIGN.md "Training batch")."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset

from vqa_cp.errors import VQAError
from vqa_cp.features import FEATURES_FILE, FeatureStore, features_problem
from vqa_cp.files import load_json
from vqa_cp.processing import (
    ANSWER_TYPES,
    ANSWERS_FILE,
    BIAS_FILE,
    DATASETS,
    DICTIONARY_FILE,
    GLOVE_INIT_FILE,
    QUESTION_TYPES_FILE,
    SPLITS,
    load_dictionary,
    processed_dir,
)
from vqa_cp.provenance import RECORD_FILE, DigestCache, check_record_file, output_problem, record_path
from vqa_cp.text import Dictionary

ANNOTATION_COLUMNS = ("question_id", "question", "question_type", "answer_type", "answers",
                      "multiple_choice_answer")
SPLIT_ARRAYS = ("question_id", "image_id", "tokens", "question_type", "answer_type", "target_ptr",
                "target_label", "target_score")


def _require(path: Path, data_dir: str | os.PathLike) -> Path:
    if not path.is_file():
        raise VQAError(f"processed data not found: {path}; run `bash tools/process.sh --data {data_dir}` "
                       "(or `python main.py --toy`)")
    return path


def _check(dataset: str, split: str | None = None) -> None:
    if dataset not in DATASETS:
        raise VQAError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    if split is not None and split not in SPLITS:
        raise VQAError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")


RERUN = "rerun tools/process.sh"


def verify_processed(data_dir: str | os.PathLike, dataset: str) -> None:
    """Refuse (one line naming the file) processed files that do not match their step records: truncated,
    corrupt, replaced, or a set left half new by an interrupted run; and a dataset or GloVe init made from
    another dictionary.json than the one present. Digests come from the read-only digest cache when a file's
    (device, inode, size, mtime_ns, ctime_ns) is known, else are computed."""
    out = processed_dir(data_dir)
    _require(out / DICTIONARY_FILE, data_dir)
    cache = DigestCache(out, writable=False)
    steps = {"dictionary": (out, record_path(out, "dictionary")), "glove": (out, record_path(out, "glove")),
             dataset: (out / dataset, _require(out / dataset / ANSWERS_FILE, data_dir).parent / RECORD_FILE)}
    records = {}
    for step, (base, path) in steps.items():
        records[step] = check_record_file(path, f"the {step} step")
        problem = output_problem(base, records[step], cache)
        if problem:
            raise VQAError(f"{problem}; {RERUN}")
    made = records["dictionary"]["outputs"].get(DICTIONARY_FILE)
    for step in ("glove", dataset):
        if records[step].get("inputs", {}).get(f"processed/{DICTIONARY_FILE}") != made:
            raise VQAError(f"{steps[step][1]}: made from another {DICTIONARY_FILE} than {out / DICTIONARY_FILE} "
                           f"(interrupted processing?); {RERUN}")


@dataclass
class Processed:
    """The processed files a model and trainer need besides the questions themselves."""

    dictionary: Dictionary
    glove: np.ndarray  # float32 [len(dictionary), 300]
    answers: list[str]
    question_types: list[str]
    bias: np.ndarray  # float32 [len(question_types), len(answers)]


def load_processed(data_dir: str | os.PathLike, dataset: str = "cp") -> Processed:
    """Dictionary, GloVe init, answer list, question types and bias priors of `dataset`."""
    _check(dataset)
    out = processed_dir(data_dir)
    verify_processed(data_dir, dataset)
    dictionary = load_dictionary(_require(out / DICTIONARY_FILE, data_dir))
    glove_path = _require(out / GLOVE_INIT_FILE, data_dir)
    glove = np.load(glove_path, allow_pickle=False)
    if glove.ndim != 2 or glove.shape[0] != len(dictionary):
        raise VQAError(f"{glove_path}: shape {glove.shape} does not match the {len(dictionary)} "
                       "dictionary words (stale file? rerun tools/process.sh)")
    answers_path = _require(out / dataset / ANSWERS_FILE, data_dir)
    answers = load_json(answers_path, what="answers")
    if not isinstance(answers, dict) or not isinstance(answers.get("answers"), list):
        raise VQAError(f"{answers_path}: expected {{\"answers\": [...]}}")
    question_types = load_json(_require(out / dataset / QUESTION_TYPES_FILE, data_dir), what="question types")
    bias_path = _require(out / dataset / BIAS_FILE, data_dir)
    bias = np.load(bias_path, allow_pickle=False)
    if bias.shape != (len(question_types), len(answers["answers"])):
        raise VQAError(f"{bias_path}: shape {bias.shape}, expected ({len(question_types)}, "
                       f"{len(answers['answers'])}) (stale file? rerun tools/process.sh)")
    return Processed(dictionary, glove, answers["answers"], question_types, bias)


class VQADataset(Dataset):
    """Items (features [K, D] float32, tokens [14] int64, target [A] float32, bias [A] float32, question_id).

    target is the dense soft-target vector, bias the prior of the question's type. `indices`
    selects a subset of the split's questions (positions in the processed split). `processed`:
    the dataset's `load_processed` result, when the caller already has it.
    """

    def __init__(self, data_dir: str | os.PathLike, dataset: str = "cp", split: str = "train", *,
                 features: FeatureStore, indices: np.ndarray | list[int] | None = None,
                 processed: Processed | None = None) -> None:
        _check(dataset, split)
        self.data_dir = Path(data_dir)
        self.dataset = dataset
        self.split = split
        self.features = features
        processed = processed or load_processed(data_dir, dataset)
        self.answers = processed.answers
        self.question_type_names = processed.question_types
        self.dictionary_size = len(processed.dictionary)
        self._bias = torch.from_numpy(processed.bias)

        self.split_path = _require(processed_dir(data_dir) / dataset / f"{split}.npz", data_dir)
        self.annotations_path = processed_dir(data_dir) / dataset / f"{split}_annotations.json"
        with np.load(self.split_path, allow_pickle=False) as npz:
            missing = [name for name in SPLIT_ARRAYS if name not in npz.files]
            if missing:
                raise VQAError(f"{self.split_path}: lacks {', '.join(missing)} (rerun tools/process.sh)")
            arrays = {name: npz[name] for name in SPLIT_ARRAYS}
        total = len(arrays["question_id"])
        if indices is None:
            self.indices = np.arange(total, dtype=np.int64)
        else:
            self.indices = np.asarray(indices, dtype=np.int64).reshape(-1)
            if len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= total):
                raise VQAError(f"indices out of range for {self.split_path} ({total} questions)")
        self._ptr = arrays["target_ptr"]
        self._label = torch.from_numpy(arrays["target_label"])
        self._score = torch.from_numpy(arrays["target_score"])
        self._tokens = torch.from_numpy(arrays["tokens"])
        self.question_ids = arrays["question_id"][self.indices]
        self.image_ids = arrays["image_id"][self.indices]
        self.question_types = arrays["question_type"][self.indices]
        self.answer_types = arrays["answer_type"][self.indices]
        self.check_features()

    @property
    def num_answers(self) -> int:
        return len(self.answers)

    @property
    def answer_type_names(self) -> tuple[str, ...]:
        return ANSWER_TYPES

    def check_features(self) -> None:
        """Raise VQAError when any question's image has no features, with the count and first ids."""
        rows = self.features.rows(self.image_ids)
        missing = np.flatnonzero(rows < 0)
        if len(missing):
            first = missing[:5]
            raise VQAError(
                f"{len(missing)} of {len(rows)} questions in {self.split_path} have no image features in "
                f"{self.features.path}: question_id {', '.join(str(q) for q in self.question_ids[first])} "
                f"(image_id {', '.join(str(i) for i in self.image_ids[first])})"
                + (" ..." if len(missing) > len(first) else ""))
        self._rows = rows

    def annotations(self) -> dict[str, list]:
        """Columns of {split}_annotations.json (question_id, question, question_type, answer_type,
        answers, multiple_choice_answer) for this dataset's questions, in item order."""
        ann = load_json(_require(self.annotations_path, self.data_dir), what="annotations")
        columns = ANNOTATION_COLUMNS
        if not isinstance(ann, dict) or any(not isinstance(ann.get(c), list) for c in columns):
            raise VQAError(f"{self.annotations_path}: expected the lists {', '.join(columns)}")
        qids = np.asarray(ann["question_id"], dtype=np.int64)
        if len(qids) != self._tokens.shape[0] or not np.array_equal(qids[self.indices], self.question_ids):
            raise VQAError(f"{self.annotations_path}: question ids differ from {self.split_path} "
                           "(stale file? rerun tools/process.sh)")
        return {c: [ann[c][i] for i in self.indices] for c in columns}

    def gt_answers(self) -> list[list[str]]:
        """The 10 raw ground-truth answers of each question (for the official metric), in item order."""
        return self.annotations()["answers"]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
        q = int(self.indices[i])
        target = torch.zeros(self.num_answers, dtype=torch.float32)
        start, stop = int(self._ptr[q]), int(self._ptr[q + 1])
        target[self._label[start:stop]] = self._score[start:stop]
        # clones: a view would carry (and, across worker processes, share) the whole table
        return (self.features.features(int(self._rows[i])), self._tokens[q].clone(), target,
                self._bias[int(self.question_types[i])].clone(), int(self.question_ids[i]))

    def batch(self, items: np.ndarray | Sequence[int]) -> tuple[torch.Tensor, ...]:
        """default_collate([self[i] for i in items]), gathered by index with no per-item Python:
        (features [B, K, D] (float32; in the RAM cache's dtype when cached, see `FeatureStore.batch`; row
        indices [B] once the store keeps them on the device), tokens [B, 14], target [B, A], bias [B, A],
        question_id [B] int64)."""
        items = np.asarray(items, dtype=np.int64).reshape(-1)
        if len(items) and (items.min() < 0 or items.max() >= len(self)):
            raise IndexError(f"item index out of range for {len(self)} items")
        q = self.indices[items]
        start, stop = self._ptr[q], self._ptr[q + 1]
        lengths = stop - start
        entries = np.repeat(start - (np.cumsum(lengths) - lengths), lengths) + np.arange(int(lengths.sum()))
        target = torch.zeros((len(items), self.num_answers), dtype=torch.float32)
        entries_t = torch.from_numpy(entries)
        target[torch.from_numpy(np.repeat(np.arange(len(items)), lengths)), self._label[entries_t]] = \
            self._score[entries_t]
        q_t = torch.from_numpy(q)
        return (self.features.batch(self._rows[items]), self._tokens.index_select(0, q_t), target,
                self._bias.index_select(0, torch.from_numpy(self.question_types[items])),
                torch.from_numpy(self.question_ids[items]))


class _WholeBatches(Dataset):
    """Item `indices` of this view is the whole batch `dataset.batch(indices)` (what a BatchSampler yields)."""

    def __init__(self, dataset: VQADataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, indices: Sequence[int]) -> tuple[torch.Tensor, ...]:
        return self.dataset.batch(indices)


def batch_loader(dataset: VQADataset, sampler: Iterable[int], batch_size: int, *, num_workers: int = 0,
                 pin_memory: bool = False, generator: torch.Generator | None = None, drop_last: bool = False
                 ) -> DataLoader:
    """Batches of `dataset` in the order of `sampler` (an EpochSampler after set_epoch, a list, a range),
    `batch_size` items each, the last one smaller unless `drop_last`: the same tuples as
    DataLoader(dataset, batch_size, sampler=sampler) with the default collate (the features of a RAM cache
    in its dtype), but each gathered whole by `VQADataset.batch` (no per-item Python), in worker processes
    when num_workers > 0."""
    if batch_size < 1:
        raise VQAError(f"batch size must be at least 1, got {batch_size}")
    return DataLoader(_WholeBatches(dataset), sampler=BatchSampler(sampler, batch_size, drop_last), batch_size=None,
                      num_workers=num_workers, pin_memory=pin_memory, generator=generator)


@dataclass
class TrainingData:
    """Everything the trainer reads: datasets sharing one FeatureStore, and the vocabularies."""

    train: VQADataset
    val: VQADataset | None  # carved out of train with --val_fraction, else None
    eval: VQADataset
    eval_name: str
    features: FeatureStore
    words: list[str]
    answers: list[str]
    glove: np.ndarray

    @property
    def ntoken(self) -> int:
        return len(self.words)

    @property
    def num_answers(self) -> int:
        return len(self.answers)

    @property
    def num_boxes(self) -> int:
        return self.features.num_boxes

    @property
    def v_dim(self) -> int:
        return self.features.dim


EVAL_NAMES = {"cp": "test", "v2": "val2014"}


def split_by_image(image_ids: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Question indices of a validation / training split with no image in both.

    Images are shuffled with `seed` and taken into validation until it holds about `fraction`
    of the questions; both index lists are sorted.
    """
    images, inverse, counts = np.unique(image_ids, return_inverse=True, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(images))
    cumulative = np.cumsum(counts[order])
    n_images = int(np.searchsorted(cumulative, fraction * len(image_ids))) + 1
    is_val_image = np.zeros(len(images), dtype=bool)
    is_val_image[order[:n_images]] = True
    is_val = is_val_image[inverse]
    return np.flatnonzero(is_val), np.flatnonzero(~is_val)


def load_training_data(data_dir: str | os.PathLike, nocp: bool = False, cache_features: bool = False,
                       cache_dtype: str = "float16", val_fraction: float = 0.0, seed: int = 0
                       ) -> TrainingData:
    """Train / optional validation / evaluation datasets of VQA-CP v2 (or VQA v2 with nocp).

    With val_fraction f > 0, round(f * Q) train questions drawn with `seed` form the validation set
    and the rest the training set. With cache_features the features are loaded once into RAM.
    """
    dataset = "v2" if nocp else "cp"
    if not 0.0 <= val_fraction < 1.0:
        raise VQAError(f"validation fraction must be in [0, 1), got {val_fraction}")
    dtypes = {"float16": torch.float16, "float32": torch.float32}
    if cache_dtype not in dtypes:
        raise VQAError(f"cache dtype must be float16 or float32, got {cache_dtype!r}")
    processed = load_processed(data_dir, dataset)
    features_path = _require(processed_dir(data_dir) / FEATURES_FILE, data_dir)
    problem = features_problem(processed_dir(data_dir))
    if problem:
        raise VQAError(f"{problem}; {RERUN}")
    features = FeatureStore(features_path)
    train = VQADataset(data_dir, dataset, "train", features=features, processed=processed)
    val = None
    if val_fraction > 0:
        val_idx, train_idx = split_by_image(train.image_ids, val_fraction, seed)
        if len(val_idx) == 0 or len(train_idx) == 0:
            raise VQAError(f"validation fraction {val_fraction} of {len(train)} train questions leaves an "
                           "empty split")
        val = VQADataset(data_dir, dataset, "train", features=features, indices=val_idx, processed=processed)
        train = VQADataset(data_dir, dataset, "train", features=features, indices=train_idx, processed=processed)
    evaluation = VQADataset(data_dir, dataset, "test", features=features, processed=processed)
    if cache_features:
        features.cache(dtypes[cache_dtype])
    return TrainingData(train, val, evaluation, EVAL_NAMES[dataset], features, processed.dictionary.idx2word,
                        processed.answers, processed.glove)
