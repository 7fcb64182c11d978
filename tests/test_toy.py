"""Toy VQA-CP generator: raw formats, determinism, bad input, and the two properties the benchmark needs
(the VQA-CP prior shift is real; the answer is readable from the region features)."""

from __future__ import annotations

import base64
import csv
import json
import re
import runpy
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import vqa_cp.toy as toy
from vqa_cp.errors import VQAError, run_cli
from vqa_cp.text import normalize_answer, tokenize
from vqa_cp.toy import SCENES_FILE, ToyConfig, answer_variants, generate_toy_data

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "make_toy_data.py"
TSV = "trainval_36/trainval_resnet101_faster_rcnn_genome_36.tsv"
GLOVE = "glove/glove.6B.300d.txt"
SUBTYPES = ("train2014", "val2014", "test2015", "test-dev2015")
SMALL = ToyConfig(seed=3, images=40, boxes=12, feature_dim=20, questions_per_image=4, test_images=4)


def load(path: Path):
    return json.loads(path.read_text())


def v2_questions(data: Path, sub: str) -> dict:
    return load(data / f"v2_OpenEnded_mscoco_{sub}_questions.json")


def read_tsv(path: Path) -> list[dict]:
    """Independent reader of the bottom-up TSV: ids, sizes and decoded float32 boxes / features."""
    csv.field_size_limit(sys.maxsize)
    rows = []
    with open(path, newline="") as f:
        for fields in csv.reader(f, delimiter="\t"):
            assert len(fields) == 6
            image_id, w, h, n = (int(x) for x in fields[:4])
            boxes, feats = (base64.b64decode(x) for x in fields[4:])
            assert len(boxes) == n * 4 * 4
            assert len(feats) % (n * 4) == 0
            rows.append({"image_id": image_id, "image_w": w, "image_h": h,
                         "boxes": np.frombuffer(boxes, np.float32).reshape(n, 4),
                         "features": np.frombuffer(feats, np.float32).reshape(n, -1)})
    return rows


def soft_targets(annotation: dict) -> dict[str, float]:
    """min(1, 0.3 * count) of each normalised raw answer among the ten."""
    counts = Counter(normalize_answer(a["answer"]) for a in annotation["answers"])
    return {a: min(1.0, 0.3 * n) for a, n in counts.items()}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("small") / "toy"
    return out, generate_toy_data(out, SMALL, progress=False)


def test_vqacp_files_are_bare_lists_with_the_documented_fields(small):
    data, summary = small
    seen = {}
    for split in ("train", "test"):
        questions = load(data / f"vqacp_v2_{split}_questions.json")
        annotations = load(data / f"vqacp_v2_{split}_annotations.json")
        assert isinstance(questions, list) and isinstance(annotations, list)
        assert len(questions) == len(annotations) == summary["questions"][f"vqacp_{split}"] > 0
        for q, a in zip(questions, annotations):
            assert set(q) == {"question_id", "image_id", "question", "coco_split"}
            assert set(a) == {"question_id", "image_id", "question_type", "answer_type",
                              "multiple_choice_answer", "answers", "coco_split"}
            assert (q["question_id"], q["image_id"], q["coco_split"]) == (a["question_id"], a["image_id"],
                                                                          a["coco_split"])
            assert isinstance(q["question_id"], int) and isinstance(q["question"], str)
            assert q["coco_split"] in ("train2014", "val2014")
            assert a["answer_type"] in ("yes/no", "number", "other")
            assert q["question"].lower().startswith(a["question_type"])
            assert [x["answer_id"] for x in a["answers"]] == list(range(1, 11))
            assert all(x["answer_confidence"] in ("yes", "maybe", "no") for x in a["answers"])
            counts = Counter(x["answer"] for x in a["answers"])
            assert counts[a["multiple_choice_answer"]] == max(counts.values())
            seen[q["question_id"]] = split
    assert set(seen.values()) == {"train", "test"}


def test_vqa_v2_files_are_wrapped_and_split_by_image(small):
    data, summary = small
    image_split = {}
    cp = {a["question_id"]: a for split in ("train", "test")
          for a in load(data / f"vqacp_v2_{split}_annotations.json")}
    v2_ids = set()
    for sub in ("train2014", "val2014"):
        qfile = v2_questions(data, sub)
        afile = load(data / f"v2_mscoco_{sub}_annotations.json")
        assert qfile["data_subtype"] == afile["data_subtype"] == sub
        assert {"info", "license", "questions"} <= set(qfile)
        assert {"info", "license", "annotations"} <= set(afile)
        assert len(qfile["questions"]) == len(afile["annotations"]) == summary["questions"][sub]
        for q, a in zip(qfile["questions"], afile["annotations"]):
            assert set(q) == {"question_id", "image_id", "question"}
            assert image_split.setdefault(q["image_id"], sub) == sub
            # VQA-CP holds the same question with the same id, plus the image's coco_split.
            assert cp[q["question_id"]] == {**a, "coco_split": sub}
            v2_ids.add(q["question_id"])
    assert v2_ids == set(cp)
    assert set(image_split.values()) == {"train2014", "val2014"}

    test = v2_questions(data, "test2015")["questions"]
    dev = v2_questions(data, "test-dev2015")["questions"]
    assert 0 < len(dev) < len(test) and all(q in test for q in dev)
    assert not {q["image_id"] for q in test} & set(image_split)


def test_tsv_and_scenes_describe_the_same_boxes(small):
    data, _ = small
    rows = read_tsv(data / TSV)
    scenes = load(data / SCENES_FILE)
    image_split = {q["image_id"]: sub for sub in ("train2014", "val2014")
                   for q in v2_questions(data, sub)["questions"]}
    assert [r["image_id"] for r in rows] == [s["image_id"] for s in scenes["images"]]
    assert {r["image_id"] for r in rows} == set(image_split)
    raw_line = (data / TSV).read_bytes().split(b"\n")[0]
    assert raw_line.endswith(b"\r") and raw_line.count(b"\t") == 5
    for row, scene in zip(rows, scenes["images"]):
        assert row["features"].shape == (SMALL.boxes, SMALL.feature_dim)
        assert (row["image_w"], row["image_h"]) == (scene["image_w"], scene["image_h"])
        assert scene["coco_split"] == image_split[row["image_id"]]
        np.testing.assert_array_equal(row["boxes"], np.array([b["box"] for b in scene["boxes"]], np.float32))
        b = row["boxes"]
        assert np.all((b[:, 0] >= 0) & (b[:, 1] >= 0) & (b[:, 0] < b[:, 2]) & (b[:, 1] < b[:, 3]))
        assert np.all((b[:, 2] <= row["image_w"]) & (b[:, 3] <= row["image_h"]))
        objects = [x["object"] for x in scene["boxes"] if x["object"] is not None]
        assert 0 < len(objects) <= SMALL.boxes
        assert {o["category"] for o in objects} <= set(scenes["categories"])
        assert {o["colour"] for o in objects} <= set(scenes["colours"])


def answer_from_scene(question: str, objects: list[tuple[str, str]]) -> str:
    """Answer a toy question by rule from (category, colour) pairs of the image's objects."""
    def majority(values: list[str]) -> str:
        return Counter(values).most_common(1)[0][0] if values else ""
    if m := re.fullmatch(r"What color is the (\w+)\?", question):
        return majority([o for c, o in objects if c == m[1]])
    if m := re.fullmatch(r"How many (\w+)s are there\?", question):
        return str(sum(c == m[1] for c, _ in objects))
    if m := re.fullmatch(r"Is there a (\w+) (\w+)\?", question):
        return "yes" if (m[2], m[1]) in objects else "no"
    if m := re.fullmatch(r"Is the (\w+) (\w+)\?", question):
        return "yes" if majority([o for c, o in objects if c == m[1]]) == m[2] else "no"
    if m := re.fullmatch(r"What is the (\w+) object\?", question):
        return majority([c for c, o in objects if o == m[1]])
    raise AssertionError(f"unexpected question {question!r}")


def test_annotations_agree_with_the_scenes(small):
    """Ten answers normalise into the question type's answer set; the majority is the scene's answer."""
    data, _ = small
    scenes = {s["image_id"]: [(b["object"]["category"], b["object"]["colour"])
                              for b in s["boxes"] if b["object"]]
              for s in load(data / SCENES_FILE)["images"]}
    questions = {q["question_id"]: q["question"] for s in ("train", "test")
                 for q in load(data / f"vqacp_v2_{s}_questions.json")}
    answer_sets = defaultdict(set)
    right = 0
    annotations = [a for s in ("train", "test") for a in load(data / f"vqacp_v2_{s}_annotations.json")]
    for a in annotations:
        truth = answer_from_scene(questions[a["question_id"]], scenes[a["image_id"]])
        right += normalize_answer(a["multiple_choice_answer"]) == truth
        answer_sets[a["question_type"]].update(normalize_answer(x["answer"]) for x in a["answers"])
    assert right >= 0.97 * len(annotations)
    assert answer_sets["is there a"] == answer_sets["is the"] == {"yes", "no"}
    assert answer_sets["how many"] <= {str(n) for n in range(1, SMALL.max_count + 1)}
    assert answer_sets["what color is the"] <= set(toy.COLOUR_NAMES[: SMALL.colours])
    assert answer_sets["what is the"] <= set(toy.CATEGORY_NAMES[: SMALL.categories])


@pytest.mark.parametrize("answer, question_type, expected", [
    ("2", "how many", {"2.", "two", "Two"}),
    ("yes", "is the", {"Yes", "yes.", "yes!"}),
    ("red", "what color is the", {"Red", "red."}),
    ("dog", "what is the", {"Dog", "dog.", "the dog", "a dog"}),
])
def test_answer_variants_fold_back_under_the_official_normalisation(answer, question_type, expected):
    variants = answer_variants(answer, question_type)
    assert set(variants) == expected
    assert {normalize_answer(v) for v in variants} == {answer}


def test_glove_covers_the_dictionary_except_the_missing_words(small):
    data, summary = small
    words = list(dict.fromkeys(w for sub in SUBTYPES for q in v2_questions(data, sub)["questions"]
                               for w in tokenize(q["question"])))
    assert summary["dictionary_words"] == len(words)
    glove = {}
    for line in (data / GLOVE).read_text().splitlines():
        fields = line.split(" ")
        assert len(fields) == 301 and fields[0] not in glove
        glove[fields[0]] = np.array(fields[1:], dtype=np.float64)
    assert len(summary["glove_missing"]) == SMALL.glove_missing
    assert set(words) - set(glove) == set(summary["glove_missing"]) == set(words[-SMALL.glove_missing:])
    assert set(glove) - set(words)  # GloVe also holds words no question uses
    assert all(np.any(v != 0) for v in glove.values())


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path, small):
    data, _ = small
    again = tmp_path / "again"
    generate_toy_data(again, SMALL, progress=False)
    files = sorted(p.relative_to(data) for p in data.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert len(files) == 13
    for name in files:
        assert (data / name).read_bytes() == (again / name).read_bytes(), name
    other = tmp_path / "other"
    generate_toy_data(other, replace(SMALL, seed=SMALL.seed + 1), progress=False)
    assert (other / TSV).read_bytes() != (data / TSV).read_bytes()
    assert (other / "vqacp_v2_train_annotations.json").read_bytes() != (
        data / "vqacp_v2_train_annotations.json").read_bytes()


def run_tool(argv: list[str], capsys) -> tuple[int, str]:
    """Run the command-line front in-process; (exit code, stderr)."""
    main = runpy.run_path(str(TOOL))["main"]
    try:
        run_cli(lambda: main(argv))
    except SystemExit as exc:
        return exc.code, capsys.readouterr().err
    return 0, capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--images", "0"], "images must be at least 2"),
    (["--boxes", "5"], "objects do not fit in 5 boxes"),
    (["--feature-dim", "10"], "feature dim 10 cannot hold"),
    (["--questions-per-image", "0"], "questions per image must be in"),
    (["--images", "1"], "images must be at least 2"),
])
def test_impossible_sizes_fail_with_one_line_before_writing(tmp_path, capsys, flags, message):
    code, err = run_tool(["--out", str(tmp_path / "toy"), *flags], capsys)
    assert code == 2
    assert err.startswith("error: toy config: ") and message in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_unknown_flag_is_refused_by_argparse(tmp_path, capsys):
    code, err = run_tool(["--out", str(tmp_path / "toy"), "--colors", "3"], capsys)
    assert code == 2 and "unrecognized arguments: --colors" in err
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_force_and_is_replaced_only_when_complete(tmp_path, capsys, monkeypatch):
    out = tmp_path / "toy"
    tiny = ToyConfig(seed=1, images=6, boxes=12, feature_dim=16, questions_per_image=2, test_images=1)
    generate_toy_data(out, tiny, progress=False)
    (out / "marker").write_text("previous run")
    before = (out / TSV).read_bytes()
    flags = ["--seed", "2", "--images", "6", "--boxes", "12", "--feature-dim", "16",
             "--questions-per-image", "2"]

    code, err = run_tool(["--out", str(out), *flags], capsys)
    assert code == 2 and "not empty" in err and "--force" in err
    assert (out / "marker").exists()

    def fail(*args, **kwargs):
        raise RuntimeError("interrupted while writing GloVe")
    with monkeypatch.context() as m:
        m.setattr(toy, "_glove_lines", fail)
        with pytest.raises(RuntimeError):
            generate_toy_data(out, tiny, force=True, progress=False)
    assert (out / "marker").exists() and (out / TSV).read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["toy"]

    assert run_tool(["--out", str(out), *flags, "--force"], capsys)[0] == 0
    assert not (out / "marker").exists() and (out / TSV).read_bytes() != before
    assert [p.name for p in tmp_path.iterdir()] == ["toy"]


def test_failed_run_leaves_nothing_and_force_never_replaces_a_foreign_folder(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("disk full")
    with monkeypatch.context() as m:
        m.setattr(toy, "_glove_lines", fail)
        with pytest.raises(RuntimeError):
            generate_toy_data(tmp_path / "toy", SMALL, progress=False)
    assert list(tmp_path.iterdir()) == []

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(VQAError, match="no toy_scenes.json"):
        generate_toy_data(foreign, SMALL, force=True, progress=False)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    (tmp_path / "afile").write_text("")
    with pytest.raises(VQAError, match="not a folder"):
        generate_toy_data(tmp_path / "afile", SMALL, progress=False)


def test_script_runs_standalone(tmp_path):
    out = tmp_path / "toy"
    proc = subprocess.run([sys.executable, str(TOOL), "--out", str(out), "--images", "4", "--boxes", "12",
                           "--feature-dim", "16", "--questions-per-image", "1"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"wrote {out}: 3 train2014 + 1 val2014 images")
    assert (out / SCENES_FILE).is_file()


def prior_accuracy(train: list[dict], evaluated: list[dict]) -> float:
    """Accuracy of predicting, per question_type, the argmax of the mean train soft-target vector."""
    sums: dict[str, Counter] = defaultdict(Counter)
    for a in train:
        sums[a["question_type"]].update(soft_targets(a))
    prediction = {t: max(s, key=s.get) for t, s in sums.items()}
    return float(np.mean([soft_targets(a).get(prediction[a["question_type"]], 0.0) for a in evaluated]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_bias_is_real(tmp_path, seed):
    """The question-type prior of VQA-CP train answers train well and test badly; VQA v2 is unshifted."""
    data = tmp_path / "toy"
    generate_toy_data(data, ToyConfig(seed=seed, images=400, feature_dim=16, boxes=12, test_images=0),
                      progress=False)
    cp_train, cp_test = (load(data / f"vqacp_v2_{s}_annotations.json") for s in ("train", "test"))
    v2_train, v2_val = (load(data / f"v2_mscoco_{s}_annotations.json")["annotations"]
                        for s in ("train2014", "val2014"))
    cp = prior_accuracy(cp_train, cp_train), prior_accuracy(cp_train, cp_test)
    v2 = prior_accuracy(v2_train, v2_train), prior_accuracy(v2_train, v2_val)
    print(f"seed {seed}: question-type prior VQA-CP train {100 * cp[0]:.1f} test {100 * cp[1]:.1f}; "
          f"VQA v2 train {100 * v2[0]:.1f} val {100 * v2[1]:.1f}")
    assert cp[0] > 0.45 and cp[1] < 0.16 and cp[0] - cp[1] > 0.35
    assert 0.18 < v2[1] < 0.45 and abs(v2[0] - v2[1]) < 0.08


@pytest.mark.parametrize("seed", [0, 5])
def test_the_answer_is_in_the_image(tmp_path, seed):
    """A nearest class-mean probe over (category, colour) and background, fitted on train2014 boxes, reads
    the objects back from the features; answering by rule from the decoded boxes gets nearly every
    majority answer on both VQA-CP splits."""
    data = tmp_path / "toy"
    generate_toy_data(data, ToyConfig(seed=seed, images=240, test_images=0), progress=False)
    features = {r["image_id"]: r["features"].astype(np.float64) for r in read_tsv(data / TSV)}
    boxes_of_class: dict[tuple[str, str] | None, list[np.ndarray]] = defaultdict(list)
    for s in load(data / SCENES_FILE)["images"]:
        if s["coco_split"] == "train2014":
            for v, b in zip(features[s["image_id"]], s["boxes"]):
                label = (b["object"]["category"], b["object"]["colour"]) if b["object"] else None
                boxes_of_class[label].append(v)
    classes = list(boxes_of_class)
    means = np.stack([np.mean(boxes_of_class[c], axis=0) for c in classes])

    def decode(v: np.ndarray) -> list[tuple[str, str]]:
        nearest = ((v[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
        return [classes[i] for i in nearest if classes[i] is not None]

    decoded = {image_id: decode(v) for image_id, v in features.items()}
    for split in ("train", "test"):
        questions = load(data / f"vqacp_v2_{split}_questions.json")
        annotations = load(data / f"vqacp_v2_{split}_annotations.json")
        right = [answer_from_scene(q["question"], decoded[q["image_id"]])
                 == normalize_answer(a["multiple_choice_answer"]) for q, a in zip(questions, annotations)]
        print(f"seed {seed}: probe answers {100 * np.mean(right):.2f}% of VQA-CP {split} "
              f"({len(right)} questions)")
        assert np.mean(right) >= 0.97


def test_ensure_toy_data_generates_once_then_processes(tmp_path):
    data = tmp_path / "toy"
    config = ToyConfig(seed=4, images=150, boxes=12, feature_dim=16, test_images=2)
    logs: list[str] = []
    toy.ensure_toy_data(data, config, log=logs.append)
    scenes_mtime = (data / SCENES_FILE).stat().st_mtime_ns
    processed = ("dictionary.json", "glove6b_init_300d.npy", "features.h5", "cp/answers.json", "v2/train.npz")
    for name in processed:
        assert (data / "processed" / name).is_file(), name
    logs.clear()
    toy.ensure_toy_data(data, log=logs.append)
    assert logs[0] == f"toy data: using {data}"
    assert (data / SCENES_FILE).stat().st_mtime_ns == scenes_mtime
