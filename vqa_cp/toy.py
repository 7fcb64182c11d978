"""Toy VQA-CP v2 benchmark written in the raw formats of the real data (docs/DESIGN.md, "Raw layout").

Scenes: each image holds `categories_per_image` groups of objects, a group being 1..`max_count`
objects of one category in one colour (colours differ between the groups of an image), placed in
random boxes; the other boxes are background. Region features put the answer in the image:

    v_k = a * (P_category + P_colour) + sigma * eps_k    (object box)
    v_k = sigma * eps_k                                  (background box),   eps_k ~ N(0, I)

with P the rows of a random orthonormal matrix, a = `prototype_norm` and sigma = `noise`.

Questions carry real VQA question-type prefixes; ten annotators answer each, mostly with the true
answer, sometimes with a variant that the official normalisation folds ("Two", "red.", "the dog")
and sometimes wrongly. VQA v2 (train2014 / val2014) partitions the questions by image: the natural
distribution. VQA-CP re-partitions the same questions: within each question type, the answers are
split into train-heavy and test-heavy ones; a question goes to train with probability
`train_heavy_share` if its answer is train-heavy, else with 1 - `train_heavy_share`.
"""

from __future__ import annotations

import base64
import csv
import os
import shutil
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from vqa_cp.errors import VQAError
from vqa_cp.feature_forms import check_form, write_form
from vqa_cp.features import TSV_FILE, process_features
from vqa_cp.files import write_json, write_text
from vqa_cp.processing import (
    ANSWERS_PER_QUESTION,
    DICTIONARY_QUESTION_FILES,
    GLOVE_FILE,
    RAW_FILES,
    process_answers,
    process_text,
)
from vqa_cp.text import NUMBER_WORDS, Dictionary, normalize_answer

CATEGORY_NAMES = ("dog", "cat", "car", "ball", "cup", "chair", "bird", "book", "kite", "clock", "bottle",
                  "horse")
COLOUR_NAMES = ("red", "blue", "green", "yellow", "white", "black", "brown", "orange", "purple", "pink")
# question_type -> answer_type, in the order questions are asked.
QUESTION_TYPES = {
    "what color is the": "other",
    "how many": "number",
    "is there a": "yes/no",
    "is the": "yes/no",
    "what is the": "other",
}
# Phrasings asked only about the extra test2015 images: no answers, but their words enter the dictionary.
TEST_ONLY_TEMPLATES = ("What is next to the {category}?", "Where is the {colour} {category}?")
V2_SUBTYPES = ("train2014", "val2014", "test2015", "test-dev2015")
SCENES_FILE = "toy_scenes.json"
GLOVE_DIM = 300
GLOVE_SCALE = 0.4
# Common GloVe tokens that no toy question uses: the real file holds far more words than any dictionary.
GLOVE_EXTRA_WORDS = (",", ".", "of", "and", "in", "for", "on", "with", "'s", "person", "table", "street",
                     "pizza", "umbrella", "zebra", "giraffe", "kitchen", "banana")
IMAGE_WIDTHS = (400, 640)
IMAGE_HEIGHTS = (300, 480)
BOX_SIDE_FRACTIONS = (0.1, 0.5)
MAX_IMAGE_ID = 999_999
# VQA v2 question ids are image_id * 1000 + k.
QUESTION_ID_STRIDE = 1000
YES_RATE = 0.5
CONFIDENCES = ("yes", "maybe", "no")
RIGHT_CONFIDENCE_P = (0.85, 0.12, 0.03)
WRONG_CONFIDENCE_P = (0.2, 0.5, 0.3)
DIGIT_WORDS = {digit: word for word, digit in NUMBER_WORDS.items() if word != "none"}
INFO = {"description": "Toy VQA-CP v2 benchmark (synthetic scenes, vqa_cp.toy)", "version": "2.0",
        "year": 2017, "contributor": "vqa_cp", "date_created": "2017-04-26"}
LICENSE = {"name": "synthetic data, no license restrictions", "url": ""}


@dataclass(frozen=True)
class ToyConfig:
    """Sizes and knobs of the toy benchmark; checked on construction (VQAError on impossible values)."""

    seed: int = 0
    images: int = 2500               # train2014 + val2014 images (rows of the feature TSV)
    boxes: int = 36
    feature_dim: int = 64
    questions_per_image: int = 5
    categories: int = 8              # first names of CATEGORY_NAMES in use
    colours: int = 8                 # first names of COLOUR_NAMES in use
    categories_per_image: int = 3    # object groups per image
    max_count: int = 4               # objects per group: 1..max_count
    noise: float = 1.0               # sigma: std of the Gaussian noise on every feature value
    prototype_norm: float = 8.0      # a: norm of each category / colour prototype
    val_fraction: float = 1 / 3      # share of images in val2014
    test_images: int = 20            # extra images with test2015 questions only (no features)
    train_heavy_share: float = 0.9   # P(VQA-CP train | train-heavy answer); test-heavy: 1 - it
    train_heavy_fraction: float = 0.5  # share of each question type's answers that are train-heavy
    variant_rate: float = 0.15       # P(an annotator writes a folded variant of the true answer)
    wrong_rate: float = 0.03         # P(an annotator gives another answer of the question type)
    glove_missing: int = 2           # last words of the dictionary left out of GloVe (zero rows)
    glove_plural_similarity: float = 0.8  # cosine between a category name's GloVe vector and its plural's

    def __post_init__(self) -> None:
        checks = [
            (self.seed >= 0, f"seed must be >= 0, got {self.seed}"),
            (self.images >= 2, f"images must be at least 2 (train2014 and val2014), got {self.images}"),
            (self.boxes >= 1, f"boxes must be at least 1, got {self.boxes}"),
            (1 <= self.questions_per_image < QUESTION_ID_STRIDE,
             f"questions per image must be in 1..{QUESTION_ID_STRIDE - 1}, got {self.questions_per_image}"),
            (2 <= self.categories <= len(CATEGORY_NAMES),
             f"categories must be in 2..{len(CATEGORY_NAMES)}, got {self.categories}"),
            (2 <= self.colours <= len(COLOUR_NAMES),
             f"colours must be in 2..{len(COLOUR_NAMES)}, got {self.colours}"),
            (1 <= self.categories_per_image <= min(self.categories, self.colours),
             f"categories per image must be in 1..min(categories, colours) = "
             f"{min(self.categories, self.colours)}, got {self.categories_per_image}"),
            (self.max_count >= 2, f"max count must be at least 2, got {self.max_count}"),
            (self.categories_per_image * self.max_count <= self.boxes,
             f"up to {self.categories_per_image} x {self.max_count} = "
             f"{self.categories_per_image * self.max_count} objects do not fit in {self.boxes} boxes"),
            (self.feature_dim >= self.categories + self.colours,
             f"feature dim {self.feature_dim} cannot hold {self.categories} category + {self.colours} colour "
             f"prototypes (needs at least {self.categories + self.colours})"),
            (self.noise >= 0, f"noise must be >= 0, got {self.noise}"),
            (self.prototype_norm > 0, f"prototype norm must be > 0, got {self.prototype_norm}"),
            (0 < self.val_fraction < 1, f"val fraction must be in (0, 1), got {self.val_fraction}"),
            (self.test_images >= 0, f"test images must be >= 0, got {self.test_images}"),
            (self.images + self.test_images <= MAX_IMAGE_ID,
             f"at most {MAX_IMAGE_ID} images in all, got {self.images + self.test_images}"),
            (0.5 <= self.train_heavy_share <= 1,
             f"train-heavy share must be in [0.5, 1], got {self.train_heavy_share}"),
            (0 < self.train_heavy_fraction < 1,
             f"train-heavy fraction must be in (0, 1), got {self.train_heavy_fraction}"),
            (self.variant_rate >= 0 and self.wrong_rate >= 0 and self.variant_rate + self.wrong_rate < 0.5,
             f"variant and wrong rates must be >= 0 and add up to less than 0.5, got {self.variant_rate} "
             f"and {self.wrong_rate}"),
            (self.glove_missing >= 0, f"glove missing must be >= 0, got {self.glove_missing}"),
            (0 <= self.glove_plural_similarity <= 1,
             f"glove plural similarity must be in [0, 1], got {self.glove_plural_similarity}"),
        ]
        for ok, message in checks:
            if not ok:
                raise VQAError(f"toy config: {message}")
        val = self.val_images
        if not 1 <= val <= self.images - 1:
            raise VQAError(f"toy config: {self.images} images with val fraction {self.val_fraction:.3f} give "
                           f"{val} val2014 images; both train2014 and val2014 need at least one")

    @property
    def val_images(self) -> int:
        return round(self.images * self.val_fraction)


@dataclass(frozen=True)
class _Group:
    category: int
    colour: int
    count: int


@dataclass(frozen=True)
class _Scene:
    image_id: int
    width: int
    height: int
    boxes: np.ndarray                         # float32 [K, 4]: x1, y1, x2, y2 in pixels
    box_objects: list[tuple[int, int] | None]  # per box (category, colour) or None (background)
    groups: list[_Group]


def _make_scene(rng: np.random.Generator, image_id: int, config: ToyConfig) -> _Scene:
    width = int(rng.integers(IMAGE_WIDTHS[0], IMAGE_WIDTHS[1] + 1))
    height = int(rng.integers(IMAGE_HEIGHTS[0], IMAGE_HEIGHTS[1] + 1))
    k = config.boxes
    lo, hi = BOX_SIDE_FRACTIONS
    bw = rng.integers(round(lo * width), round(hi * width) + 1, size=k)
    bh = rng.integers(round(lo * height), round(hi * height) + 1, size=k)
    x1 = rng.integers(0, width - bw + 1)
    y1 = rng.integers(0, height - bh + 1)
    boxes = np.stack([x1, y1, x1 + bw, y1 + bh], axis=1).astype(np.float32)

    n = config.categories_per_image
    categories = rng.choice(config.categories, size=n, replace=False)
    colours = rng.choice(config.colours, size=n, replace=False)
    counts = rng.integers(1, config.max_count + 1, size=n)
    groups = [_Group(int(c), int(o), int(m)) for c, o, m in zip(categories, colours, counts)]
    slots = iter(rng.permutation(k).tolist())
    box_objects: list[tuple[int, int] | None] = [None] * k
    for g in groups:
        for _ in range(g.count):
            box_objects[next(slots)] = (g.category, g.colour)
    return _Scene(image_id, width, height, boxes, box_objects, groups)


def _prototypes(rng: np.random.Generator, config: ToyConfig) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal category and colour prototypes: rows of Q from the QR of a Gaussian matrix."""
    q, _ = np.linalg.qr(rng.standard_normal((config.feature_dim, config.categories + config.colours)))
    return q.T[: config.categories], q.T[config.categories:]


def _features(rng: np.random.Generator, scene: _Scene, category_proto: np.ndarray, colour_proto: np.ndarray,
              config: ToyConfig) -> np.ndarray:
    """float32 [K, D]: a * (P_category + P_colour) + sigma * eps on object boxes, sigma * eps elsewhere."""
    v = config.noise * rng.standard_normal((config.boxes, config.feature_dim))
    for k, obj in enumerate(scene.box_objects):
        if obj is not None:
            v[k] += config.prototype_norm * (category_proto[obj[0]] + colour_proto[obj[1]])
    return v.astype(np.float32)


def _type_answers(config: ToyConfig) -> dict[str, list[str]]:
    """The canonical answers each question type can have."""
    colours = list(COLOUR_NAMES[: config.colours])
    categories = list(CATEGORY_NAMES[: config.categories])
    return {
        "what color is the": colours,
        "how many": [str(m) for m in range(1, config.max_count + 1)],
        "is there a": ["yes", "no"],
        "is the": ["yes", "no"],
        "what is the": categories,
    }


def _ask(rng: np.random.Generator, question_type: str, scene: _Scene, config: ToyConfig) -> tuple[str, str]:
    """(question, canonical answer) of `question_type` about `scene`."""
    g = scene.groups[int(rng.integers(len(scene.groups)))]
    category, colour = CATEGORY_NAMES[g.category], COLOUR_NAMES[g.colour]
    if question_type == "what color is the":
        return f"What color is the {category}?", colour
    if question_type == "how many":
        return f"How many {category}s are there?", str(g.count)
    if question_type == "is there a":
        if rng.random() < YES_RATE:
            return f"Is there a {colour} {category}?", "yes"
        present = {(h.category, h.colour) for h in scene.groups}
        absent = [(c, o) for c in range(config.categories) for o in range(config.colours)
                  if (c, o) not in present]
        c, o = absent[int(rng.integers(len(absent)))]
        return f"Is there a {COLOUR_NAMES[o]} {CATEGORY_NAMES[c]}?", "no"
    if question_type == "is the":
        if rng.random() < YES_RATE:
            return f"Is the {category} {colour}?", "yes"
        others = [o for o in range(config.colours) if o != g.colour]
        return f"Is the {category} {COLOUR_NAMES[others[int(rng.integers(len(others)))]]}?", "no"
    if question_type == "what is the":
        return f"What is the {colour} object?", category
    raise ValueError(f"unknown question type {question_type!r}")


def answer_variants(answer: str, question_type: str) -> list[str]:
    """Spellings of `answer` that the official normalisation folds back onto it."""
    variants = [answer.capitalize(), answer + "."] if not answer.isdigit() else [answer + "."]
    if answer in DIGIT_WORDS:
        variants += [DIGIT_WORDS[answer], DIGIT_WORDS[answer].capitalize()]
    if QUESTION_TYPES[question_type] == "yes/no":
        variants.append(answer + "!")
    if question_type == "what is the":
        variants += [f"the {answer}", f"a {answer}"]
    return variants


def _annotate(rng: np.random.Generator, answer: str, question_type: str, type_answers: list[str],
              config: ToyConfig) -> tuple[list[dict[str, Any]], str]:
    """Ten annotator answers and the multiple-choice answer (the most common, first seen on ties)."""
    variants = answer_variants(answer, question_type)
    wrong = [a for a in type_answers if a != answer]
    answers = []
    for answer_id in range(1, ANSWERS_PER_QUESTION + 1):
        u = rng.random()
        if u < config.wrong_rate:
            raw = wrong[int(rng.integers(len(wrong)))]
            confidence = CONFIDENCES[int(rng.choice(len(CONFIDENCES), p=WRONG_CONFIDENCE_P))]
        else:
            variant = u < config.wrong_rate + config.variant_rate
            raw = variants[int(rng.integers(len(variants)))] if variant else answer
            confidence = CONFIDENCES[int(rng.choice(len(CONFIDENCES), p=RIGHT_CONFIDENCE_P))]
        answers.append({"answer": raw, "answer_confidence": confidence, "answer_id": answer_id})
    multiple_choice = Counter(a["answer"] for a in answers).most_common(1)[0][0]
    return answers, multiple_choice


def _train_heavy(rng: np.random.Generator, config: ToyConfig) -> dict[str, list[str]]:
    """Per question type, the answers sent mostly to VQA-CP train (a random share of them)."""
    heavy = {}
    for question_type, answers in _type_answers(config).items():
        n = min(len(answers) - 1, max(1, round(len(answers) * config.train_heavy_fraction)))
        heavy[question_type] = [answers[i] for i in sorted(rng.permutation(len(answers))[:n].tolist())]
    return heavy


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype=np.float32).tobytes()).decode("ascii")


def _question_types(rng: np.random.Generator, n: int) -> list[str]:
    """n question types for one image: shuffled rounds through all types, so each image gets a mix."""
    types = list(QUESTION_TYPES)
    rounds = -(-n // len(types))
    return [types[i] for _ in range(rounds) for i in rng.permutation(len(types)).tolist()][:n]


def _glove_lines(rng: np.random.Generator, words: list[str], plural_similarity: float) -> Iterator[str]:
    """Random word vectors g_w ~ N(0, GLOVE_SCALE^2 I), except that a plural category name leans on its
    singular, as in the real GloVe: g_dogs = s * g_dog + sqrt(1 - s^2) * e, so E[cos(g_dog, g_dogs)] ~ s."""
    vectors = dict(zip(words, rng.standard_normal((len(words), GLOVE_DIM)) * GLOVE_SCALE))
    s = plural_similarity
    for word in words:
        vector = vectors[word]
        singular = word[:-1]
        if word.endswith("s") and singular in CATEGORY_NAMES and singular in vectors:
            vector = s * vectors[singular] + np.sqrt(1 - s * s) * vector
        yield word + " " + " ".join(f"{x:.5f}" for x in vector) + "\n"


def _check_out_dir(out: Path, force: bool, marker: str, kind: str) -> None:
    if out.exists() and not out.is_dir():
        raise VQAError(f"output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise VQAError(f"output folder {out} is not empty (pass --force to replace it)")
        if not (out / marker).is_file():
            raise VQAError(f"refusing to replace {out}: it holds no {marker}, so it is no {kind}")


def write_generated(out_dir: str | os.PathLike, generate: Callable[[Path], dict[str, Any]], force: bool,
                    marker: str, kind: str) -> dict[str, Any]:
    """Run `generate(folder)` in a temporary sibling of `out_dir`, renamed onto it once complete.

    A non-empty `out_dir` is refused unless `force`, and even then only one holding `marker` (a previous
    dataset of this `kind`) is replaced. Returns generate's summary, with "out_dir".
    """
    out = Path(out_dir)
    _check_out_dir(out, force, marker, kind)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(out, "tmp")
    tmp.mkdir()
    try:
        summary = generate(tmp)
        _replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    summary["out_dir"] = str(out)
    return summary


def _sibling(out: Path, tag: str) -> Path:
    """A fresh hidden name beside `out` (mkdir, unlike mkdtemp, keeps the umask's permissions)."""
    return out.parent / f".{out.name}.{tag}-{uuid.uuid4().hex[:12]}"


def _replace_dir(new: Path, out: Path) -> None:
    """Move the complete folder `new` onto `out`; a previous `out` is deleted only after the swap."""
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if not out.exists():
        os.replace(new, out)
        return
    old = _sibling(out, "old")
    os.replace(out, old)
    try:
        os.replace(new, out)
    except OSError:
        os.replace(old, out)
        raise
    shutil.rmtree(old)


def generate_toy_data(out_dir: str | os.PathLike, config: ToyConfig, force: bool = False,
                      progress: bool = True, features_form: str = "tsv") -> dict[str, Any]:
    """Write the toy benchmark into `out_dir` (raw layout of docs/DESIGN.md plus toy_scenes.json).

    Generated in a temporary sibling folder that is renamed onto `out_dir` once complete. A non-empty
    `out_dir` is refused unless `force` (and even then only a previous toy dataset is replaced).
    `features_form` (vqa_cp.feature_forms.FORMS) writes the same features in that form instead of the original
    TSV. Returns a summary: counts per file, dictionary size, words left out of GloVe, train-heavy answers.
    """
    check_form(features_form)
    return write_generated(out_dir, lambda tmp: _generate(tmp, config, progress, features_form), force,
                           SCENES_FILE, "toy dataset")


def _generate(out: Path, config: ToyConfig, progress: bool, features_form: str = "tsv") -> dict[str, Any]:
    rng_proto, rng_ids, rng_scene, rng_feat, rng_quest, rng_split, rng_glove = (
        np.random.default_rng(s) for s in np.random.SeedSequence(config.seed).spawn(7))
    category_proto, colour_proto = _prototypes(rng_proto, config)
    ids = rng_ids.choice(MAX_IMAGE_ID, size=config.images + config.test_images, replace=False) + 1
    trainval_ids = sorted(ids[: config.images].tolist())
    test_ids = sorted(ids[config.images:].tolist())
    val_set = set(rng_ids.choice(trainval_ids, size=config.val_images, replace=False).tolist())
    type_answers = _type_answers(config)
    heavy = _train_heavy(rng_split, config)

    questions: dict[str, list[dict]] = {sub: [] for sub in V2_SUBTYPES}
    annotations: dict[str, list[dict]] = {"train2014": [], "val2014": []}
    cp: dict[str, list[dict]] = {"train_q": [], "train_a": [], "test_q": [], "test_a": []}
    scenes = []
    tsv_path = out / TSV_FILE
    tsv_path.parent.mkdir(parents=True)
    with open(tsv_path, "w", encoding="ascii", newline="") as f:
        writer = csv.writer(f, delimiter="\t")  # csv's default "\r\n" rows, as in the bottom-up release
        for image_id in tqdm(trainval_ids, desc="toy images", unit="img", disable=not progress):
            split = "val2014" if image_id in val_set else "train2014"
            scene = _make_scene(rng_scene, image_id, config)
            v = _features(rng_feat, scene, category_proto, colour_proto, config)
            writer.writerow([image_id, scene.width, scene.height, config.boxes, _b64(scene.boxes), _b64(v)])
            scenes.append(_scene_json(scene, split))
            for j, question_type in enumerate(_question_types(rng_quest, config.questions_per_image)):
                text, answer = _ask(rng_quest, question_type, scene, config)
                answers, multiple_choice = _annotate(rng_quest, answer, question_type,
                                                     type_answers[question_type], config)
                question_id = image_id * QUESTION_ID_STRIDE + j
                question = {"image_id": image_id, "question": text, "question_id": question_id}
                annotation = {"question_type": question_type, "multiple_choice_answer": multiple_choice,
                              "answers": answers, "image_id": image_id,
                              "answer_type": QUESTION_TYPES[question_type], "question_id": question_id}
                questions[split].append(question)
                annotations[split].append(annotation)
                share = config.train_heavy_share
                p_train = share if normalize_answer(multiple_choice) in heavy[question_type] else 1 - share
                cp_split = "train" if rng_split.random() < p_train else "test"
                cp[f"{cp_split}_q"].append({**question, "coco_split": split})
                cp[f"{cp_split}_a"].append({**annotation, "coco_split": split})

    test_dev_ids = set(test_ids[: -(-len(test_ids) // 2)])
    for image_id in test_ids:
        scene = _make_scene(rng_scene, image_id, config)
        types = _question_types(rng_quest, config.questions_per_image)
        texts = [_ask(rng_quest, t, scene, config)[0] for t in types]
        g = scene.groups[int(rng_quest.integers(len(scene.groups)))]
        template = TEST_ONLY_TEMPLATES[int(rng_quest.integers(len(TEST_ONLY_TEMPLATES)))]
        texts.append(template.format(category=CATEGORY_NAMES[g.category], colour=COLOUR_NAMES[g.colour]))
        for j, text in enumerate(texts):
            question_id = image_id * QUESTION_ID_STRIDE + j
            question = {"image_id": image_id, "question": text, "question_id": question_id}
            questions["test2015"].append(question)
            if image_id in test_dev_ids:
                questions["test-dev2015"].append(question)

    question_files = dict(zip(V2_SUBTYPES, DICTIONARY_QUESTION_FILES))
    for sub, entries in questions.items():
        write_json(out / question_files[sub], {"info": INFO, "task_type": "Open-Ended", "data_type": "mscoco",
                                               "license": LICENSE, "data_subtype": sub, "questions": entries})
    for sub, split in (("train2014", "train"), ("val2014", "test")):
        write_json(out / RAW_FILES["v2"][split][1], {"info": INFO, "license": LICENSE, "data_type": "mscoco",
                                                     "data_subtype": sub, "annotations": annotations[sub]})
    for split in ("train", "test"):
        questions_file, annotations_file = RAW_FILES["cp"][split]
        write_json(out / questions_file, cp[f"{split}_q"])
        write_json(out / annotations_file, cp[f"{split}_a"])

    dictionary = Dictionary()
    for sub in V2_SUBTYPES:
        for q in questions[sub]:
            dictionary.add_sentence(q["question"])
    if config.glove_missing >= len(dictionary):
        raise VQAError(f"toy config: glove missing {config.glove_missing} must be below the dictionary size "
                       f"{len(dictionary)}")
    missing = dictionary.idx2word[len(dictionary) - config.glove_missing:]
    glove_words = [w for w in dictionary.idx2word if w not in missing]
    glove_words += [w for w in GLOVE_EXTRA_WORDS if w not in dictionary.word2idx]
    glove_words = [glove_words[i] for i in rng_glove.permutation(len(glove_words)).tolist()]
    glove_lines = _glove_lines(rng_glove, glove_words, config.glove_plural_similarity)
    write_text(out / GLOVE_FILE, "".join(glove_lines))

    write_form(tsv_path, features_form, out, {s["image_id"]: s["coco_split"] for s in scenes}, seed=config.seed,
               progress=progress)
    write_json(out / SCENES_FILE, {"config": asdict(config),
                                   "categories": list(CATEGORY_NAMES[: config.categories]),
                                   "colours": list(COLOUR_NAMES[: config.colours]),
                                   "train_heavy": heavy, "images": scenes})
    return {
        "images": {"train2014": config.images - config.val_images, "val2014": config.val_images,
                   "test2015": config.test_images},
        "questions": {**{sub: len(entries) for sub, entries in questions.items()},
                      "vqacp_train": len(cp["train_q"]), "vqacp_test": len(cp["test_q"])},
        "dictionary_words": len(dictionary),
        "glove_missing": missing,
        "train_heavy": heavy,
    }


def _scene_json(scene: _Scene, split: str) -> dict[str, Any]:
    boxes = [{"box": [float(x) for x in box],
              "object": None if obj is None else {"category": CATEGORY_NAMES[obj[0]],
                                                  "colour": COLOUR_NAMES[obj[1]]}}
             for box, obj in zip(scene.boxes, scene.box_objects)]
    return {"image_id": scene.image_id, "coco_split": split, "image_w": scene.width, "image_h": scene.height,
            "boxes": boxes}


def ensure_toy_data(data_dir: str | os.PathLike, config: ToyConfig | None = None,
                    log: Callable[[str], None] = print) -> None:
    """Generate the toy benchmark into `data_dir` unless it holds one already, then process it.

    Processing steps skip themselves when their outputs are up to date.
    """
    data_dir = Path(data_dir)
    if (data_dir / SCENES_FILE).is_file():
        log(f"toy data: using {data_dir}")
    else:
        summary = generate_toy_data(data_dir, config or ToyConfig())
        log(f"toy data: wrote {data_dir} ({summary['questions']['vqacp_train']} VQA-CP train / "
            f"{summary['questions']['vqacp_test']} test questions)")
    process_text(data_dir, log=log)
    process_answers(data_dir, log=log)
    process_features(data_dir, log=log)
