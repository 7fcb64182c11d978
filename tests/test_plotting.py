"""tools/plot.py and tools/visualize.py (vqa_cp.plotting): curves from a hand-written metrics.jsonl, and
attention pictures of a toy model checked against an independent forward pass."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from vqa_cp import training
from vqa_cp.checkpoints import load_model
from vqa_cp.errors import VQAError
from vqa_cp.plotting import CANVAS, DIM, DISPLAY_WIDTH, curve_series, plot_run, visualize
from vqa_cp.prediction import open_split
from vqa_cp.toy import ToyConfig, ensure_toy_data

ROOT = Path(__file__).resolve().parent.parent
TINY = ToyConfig(seed=3, images=48, boxes=12, feature_dim=16, questions_per_image=5, test_images=2,
                 categories=3, colours=3, max_count=2)


def acc(overall: float, yn: float, num: float, other: float) -> dict:
    return {"soft_score": overall, "upper_bound": 90.0, "overall": overall,
            "perAnswerType": {"yes/no": yn, "number": num, "other": other}}


RECORDS = [
    {"epoch": 1, "train_loss": 900.5, "task_loss": 0.5, "reg_term": 9e6, "score_q": 1e-6, "score_v": 2e-7,
     "floored": 0.0, "val": acc(30.0, 60.0, 10.0, 20.0)},
    {"epoch": 2, "train_loss": 20.4, "task_loss": 0.4, "reg_term": 2e5, "score_q": 1e-4, "score_v": 5e-5,
     "floored": 0.0, "val": acc(35.0, 62.0, 12.0, 25.0), "test": acc(25.0, 50.0, 5.0, 15.0)},
    {"epoch": 3, "train_loss": 1.3, "task_loss": 0.3, "reg_term": 1e4, "score_q": 1e-3, "score_v": 4e-4,
     "floored": 0.0, "val": acc(40.0, 65.0, 14.0, 30.0), "test": acc(28.0, 52.0, 6.0, 18.0)},
]


def write_run(folder: Path, records: list[dict], inf_lambda: float | None) -> Path:
    folder.mkdir(parents=True)
    # written out of order: the curves follow the epoch numbers
    lines = [json.dumps(r) for r in (records[1], records[0], *records[2:])]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if inf_lambda is not None:
        (folder / "log.txt").write_text(f"args: {json.dumps({'inf_lambda': inf_lambda, 'seed': 1})}\nepoch 1\n")
    return folder


def test_curve_series_by_hand():
    panels = curve_series(RECORDS, inf_lambda=1e-4)
    loss = panels["loss"]
    assert loss["train_loss (total)"] == ([1, 2, 3], [900.5, 20.4, 1.3])
    assert loss["task_loss"] == ([1, 2, 3], [0.5, 0.4, 0.3])
    xs, ys = loss["λ·reg_term (λ = 0.0001)"]
    assert xs == [1, 2, 3] and ys == pytest.approx([900.0, 20.0, 1.0])  # = train_loss - task_loss
    assert panels["accuracy"]["val overall"] == ([1, 2, 3], [30.0, 35.0, 40.0])
    assert panels["accuracy"]["test number"] == ([2, 3], [5.0, 6.0])  # test evaluated from epoch 2 only
    assert len(panels["accuracy"]) == 8
    assert panels["information"]["question (score_q)"] == ([1, 2, 3], [1e-6, 1e-4, 1e-3])
    plain = [{k: v for k, v in r.items() if k not in ("reg_term", "score_q", "score_v", "floored")}
             for r in RECORDS]
    assert set(curve_series(plain, inf_lambda=None)) == {"loss", "accuracy"}


def test_plot_tool_writes_png_of_the_expected_size(tmp_path):
    run = write_run(tmp_path / "run", RECORDS, inf_lambda=1e-4)
    done = subprocess.run([sys.executable, str(ROOT / "tools/plot.py"), str(run)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    with Image.open(run / "curves.png") as png:
        assert png.format == "PNG" and png.size == (1650, 450)  # three 5.5 x 4.5 inch panels at 100 dpi
    plain = [{k: v for k, v in r.items() if k not in ("reg_term", "score_q", "score_v", "floored")}
             for r in RECORDS]
    with Image.open(plot_run(write_run(tmp_path / "plain", plain, inf_lambda=None))) as png:
        assert png.size == (1100, 450)


def test_plot_errors(tmp_path):
    run = write_run(tmp_path / "nolog", RECORDS, inf_lambda=None)
    with pytest.raises(VQAError, match="pass --inf_lambda"):
        plot_run(run)
    assert Image.open(plot_run(run, inf_lambda=1e-4)).size == (1650, 450)
    (run / "metrics.jsonl").write_text(json.dumps(RECORDS[0]) + "\n{\"epoch\": 2, \"train_lo\n")
    with pytest.raises(VQAError, match=r"metrics.jsonl: line 2 is not JSON"):
        plot_run(run, inf_lambda=1e-4)
    done = subprocess.run([sys.executable, str(ROOT / "tools/plot.py"), str(tmp_path / "absent")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("error: metrics not found")


@pytest.fixture(scope="module")
def toy_model(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("vis")
    data = root / "toy"
    ensure_toy_data(data, TINY, log=lambda _: None)
    training.main(["--data", str(data), "--output", str(root / "run"), "--num_hid", "32", "--epochs", "1",
                   "--batch_size", "64", "--num_workers", "0", "--seed", "5"])
    return data, root / "run" / "model.pth"


def independent(checkpoint: Path, data: Path, question_id: int) -> dict:
    """Prediction, soft score and top-5 attention of one question, straight from the model."""
    dataset = open_split(data, "test")
    i = int(np.flatnonzero(dataset.question_ids == question_id)[0])
    v, q, target, _, _ = dataset[i]
    model = load_model(checkpoint).model.eval()
    with torch.no_grad():
        q_emb, v_emb, att = model.trunk(v[None], q[None], return_attention=True)
        logits, _ = model.head(q_emb, v_emb)
    label = int(logits.argmax())
    att = att[0, :, 0].numpy()
    top = np.argsort(-att, kind="stable")[:5]
    ann = dataset.annotations()
    return {"predicted": dataset.answers[label], "soft_score": float(target[label]), "boxes": top.tolist(),
            "weights": att[top].tolist(), "majority": ann["multiple_choice_answer"][i],
            "question": ann["question"][i], "image_id": int(dataset.image_ids[i])}


def test_visualize_tool_on_toy_scenes(toy_model, tmp_path):
    data, checkpoint = toy_model
    out = tmp_path / "vis"
    done = subprocess.run([sys.executable, str(ROOT / "tools/visualize.py"), str(checkpoint), "--data", str(data),
                           "--split", "test", "--n", "3", "--out", str(out), "--seed", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    index = json.loads((out / "index.json").read_text())
    assert len(index) == 3 and len({s["question_id"] for s in index}) == 3
    assert sorted(p.name for p in out.glob("q*.png")) == sorted(s["picture"] for s in index)
    for shown in index:
        expected = independent(checkpoint, data, shown["question_id"])
        assert shown["boxes"] == expected["boxes"]
        assert shown["weights"] == pytest.approx(expected["weights"], rel=1e-5)
        for key in ("predicted", "majority", "question", "image_id"):
            assert shown[key] == expected[key]
        assert shown["soft_score"] == pytest.approx(expected["soft_score"])
        with Image.open(out / shown["picture"]) as png:
            assert png.width == DISPLAY_WIDTH
    with Image.open(out / "index.png") as grid:
        assert grid.format == "PNG" and grid.width > DISPLAY_WIDTH


def boxes_of(data: Path, image_id: int) -> tuple[np.ndarray, int]:
    with h5py.File(data / "processed" / "features.h5", "r") as h5:
        row = int(np.flatnonzero(h5["image_id"][:] == image_id)[0])
        return h5["boxes"][row], int(h5["image_w"][row])


def test_coco_images_and_blank_canvas(toy_model, tmp_path):
    data, checkpoint = toy_model
    images = tmp_path / "coco"
    with pytest.raises(VQAError, match=r"COCO image not found: .*(train|val)2014/COCO_(train|val)2014_\d{12}\.jpg"):
        visualize(checkpoint, data, tmp_path / "x", n=2, images_dir=images, seed=2)
    scenes = {s["image_id"]: s for s in json.loads((data / "toy_scenes.json").read_text())["images"]}
    photo = (40, 160, 220)
    for image_id, scene in scenes.items():
        folder = images / scene["coco_split"]
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (scene["image_w"], scene["image_h"]), photo).save(
            folder / f"COCO_{scene['coco_split']}_{image_id:012d}.jpg", quality=95)
    # a data folder without toy_scenes.json and no --images: a blank canvas of the image's size
    blank = tmp_path / "blank"
    shutil.copytree(data / "processed", blank / "processed")
    for source, data_dir, colour in (("coco", data, photo), ("blank", blank, CANVAS)):
        kwargs = {"images_dir": images} if source == "coco" else {}
        out = tmp_path / f"pictures_{source}"
        shown = visualize(checkpoint, data_dir, out, n=2, seed=2, **kwargs)
        for s in shown:
            boxes, width = boxes_of(data, s.image_id)
            top = boxes[s.boxes]
            with Image.open(out / s.picture) as png:
                arr = np.asarray(png.convert("RGB"), dtype=np.float32)
            scale = DISPLAY_WIDTH / width
            x1, y1, x2, y2 = np.round(top[0] * scale).astype(int)
            # the most attended box keeps the picture's colour (fully lit) apart from outlines and labels
            inside = arr[y1 + 5: y2 - 5, x1 + 5: x2 - 5].reshape(-1, 3)
            assert (np.abs(inside - colour).max(axis=1) <= 8).mean() > 0.4
            # outside every drawn box the picture is dimmed to DIM of its colour
            picture_h = int(round(scenes[s.image_id]["image_h"] * scale))
            free = np.ones((picture_h, DISPLAY_WIDTH), dtype=bool)
            for bx1, by1, bx2, by2 in np.round(top * scale).astype(int):
                free[max(0, by1 - 6): by2 + 6, max(0, bx1 - 6): bx2 + 6] = False
            assert free.any()
            outside = np.median(arr[:picture_h][free], axis=0)
            assert outside == pytest.approx(np.array(colour) * DIM, abs=6)
