"""Tiny raw data in the exact raw formats of docs/DESIGN.md, with hand-chosen questions and answers.

Five VQA-CP train and three test questions on three images; the expected dictionary, answer
vocabulary, soft targets and bias priors are worked out by hand in the tests.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# (question_id, image_id, question, question_type, answer_type, multiple_choice_answer, {raw answer: count})
CP_TRAIN = [
    (101, 1, "What color is the cat?", "what color is the", "other", "black",
     {"black": 5, "white": 3, "grey": 2}),
    (102, 2, "What color is the dog's ball?", "what color is the", "other", "red",
     {"red": 7, "white": 2, "black": 1}),
    (103, 2, "Is the dog asleep?", "is the", "yes/no", "yes", {"yes": 9, "no": 1}),
    (104, 3, "How many cats?", "how many", "number", "two", {"2": 3, "two": 4, "3": 3}),
    (105, 1, "Is the cat black?", "is the", "yes/no", "yes", {"yes": 4, "no": 6}),
]
CP_TEST = [
    (201, 3, "What color is the sofa?", "what color is the", "other", "blue", {"black": 2, "blue": 8}),
    (202, 1, "What is the cat doing?", "what is the", "other", "sleeping", {"sleeping": 10}),
    (203, 3, "Is the zebra striped?", "is the", "yes/no", "yes", {"yes": 10}),
]
# annotation files list entries in another order than the question files: joins go by question_id
CP_TRAIN_ANNOTATION_ORDER = (103, 101, 102, 105, 104)
V2_TRAIN = CP_TRAIN[:3]
V2_VAL = CP_TRAIN[3:] + CP_TEST
TEST2015 = [(301, 9, "What sport is this?")]
TEST_DEV2015 = [(302, 9, "What sport is being played?")]
COCO_SPLIT = {1: "train2014", 2: "train2014", 3: "val2014", 9: "test2015"}

GLOVE = {
    "what": [0.5, -1.25, 2.0, 0.125],
    "zzz": [9.0, 9.0, 9.0, 9.0],
    "cat": [1.0, 2.0, 3.0, 4.0],
    "'s": [-0.5, 0.0, 0.25, 1.5],
    "striped": [0.0, 0.75, -3.5, 1.0],
}


@dataclass
class Image:
    image_id: int
    image_w: int
    image_h: int
    boxes: np.ndarray  # float32 [K, 4]
    features: np.ndarray  # float32 [K, D]


def question_entry(q: tuple, cp: bool) -> dict:
    entry = {"question_id": q[0], "image_id": q[1], "question": q[2]}
    if cp:
        entry["coco_split"] = COCO_SPLIT[q[1]]
    return entry


def annotation_entry(q: tuple, cp: bool) -> dict:
    qid, image_id, _, question_type, answer_type, mca, counts = q
    raw = [a for a, n in counts.items() for _ in range(n)]
    assert len(raw) == 10
    entry = {"question_id": qid, "image_id": image_id, "question_type": question_type,
             "answer_type": answer_type, "multiple_choice_answer": mca,
             "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                         for i, a in enumerate(raw)]}
    if cp:
        entry["coco_split"] = COCO_SPLIT[image_id]
    return entry


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def tsv_line(image: Image, num_boxes: int | None = None) -> str:
    """One TSV row; `num_boxes` overrides the count written (to make bad rows)."""
    fields = [image.image_id, image.image_w, image.image_h,
              len(image.boxes) if num_boxes is None else num_boxes,
              base64.b64encode(image.boxes.astype(np.float32).tobytes()).decode(),
              base64.b64encode(image.features.astype(np.float32).tobytes()).decode()]
    return "\t".join(str(f) for f in fields) + "\n"


def make_images(image_ids=(1, 2, 3), num_boxes: int = 2, dim: int = 3, seed: int = 0) -> list[Image]:
    rng = np.random.default_rng(seed)
    return [Image(i, 640 + i, 480 - i, rng.uniform(0, 400, (num_boxes, 4)).astype(np.float32),
                  rng.normal(0, 3, (num_boxes, dim)).astype(np.float32)) for i in image_ids]


def tsv_path(data_dir: Path) -> Path:
    return data_dir / "trainval_36" / "trainval_resnet101_faster_rcnn_genome_36.tsv"


def write_tsv(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines))


def write_raw(data_dir: Path, num_boxes: int = 2, dim: int = 3) -> list[Image]:
    """Write every raw file of the layout under `data_dir`; returns the images written to the TSV."""
    by_id = {q[0]: q for q in CP_TRAIN}
    write_json(data_dir / "vqacp_v2_train_questions.json", [question_entry(q, True) for q in CP_TRAIN])
    write_json(data_dir / "vqacp_v2_train_annotations.json",
               [annotation_entry(by_id[i], True) for i in CP_TRAIN_ANNOTATION_ORDER])
    write_json(data_dir / "vqacp_v2_test_questions.json", [question_entry(q, True) for q in CP_TEST])
    write_json(data_dir / "vqacp_v2_test_annotations.json", [annotation_entry(q, True) for q in CP_TEST])
    for split, qs in (("train2014", V2_TRAIN), ("val2014", V2_VAL)):
        write_json(data_dir / f"v2_OpenEnded_mscoco_{split}_questions.json",
                   {"questions": [question_entry(q, False) for q in qs]})
        write_json(data_dir / f"v2_mscoco_{split}_annotations.json",
                   {"annotations": [annotation_entry(q, False) for q in qs]})
    for split, qs in (("test2015", TEST2015), ("test-dev2015", TEST_DEV2015)):
        write_json(data_dir / f"v2_OpenEnded_mscoco_{split}_questions.json",
                   {"questions": [{"question_id": q[0], "image_id": q[1], "question": q[2]} for q in qs]})
    glove = data_dir / "glove" / "glove.6B.300d.txt"
    glove.parent.mkdir(parents=True, exist_ok=True)
    glove.write_text("".join(f"{w} {' '.join(repr(x) for x in v)}\n" for w, v in GLOVE.items()))
    images = make_images(num_boxes=num_boxes, dim=dim)
    write_tsv(tsv_path(data_dir), [tsv_line(im) for im in images])
    return images
