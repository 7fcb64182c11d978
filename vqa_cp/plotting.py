"""Pictures of a run: training curves from metrics.jsonl (tools/plot.py) and attention maps of a trained
model on chosen questions (tools/visualize.py).

Curves: loss terms by epoch (train_loss = task_loss + lambda * reg_term), official accuracy per answer
type and overall for each evaluated split, and the information score per modality (log scale) when
the regulariser was on. Attention: the image (toy scene, COCO photo or a blank canvas of its size),
the top-k boxes by attention weight a_k = softmax_k(...) outlined and lit in proportion to a_k / max a,
the question, the prediction with its soft score y[argmax z], and the ground truth.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from vqa_cp.errors import VQAError
from vqa_cp.files import atomic_path, load_json, write_json
from vqa_cp.prediction import load_model_for_data, open_split
from vqa_cp.processing import ANSWER_TYPES, RAW_FILES, load_questions
from vqa_cp.toy import SCENES_FILE

METRICS_FILE = "metrics.jsonl"
LOG_FILE = "log.txt"
CURVES_FILE = "curves.png"
PANEL_INCHES = (5.5, 4.5)
DPI = 100
LOG_SCALE_RANGE = 100.0  # a loss panel whose values span more than this factor gets a log axis
ACCURACY_COLUMNS = ("overall", *ANSWER_TYPES)
SPLIT_STYLES = ("-", "--", ":", "-.")

TOP_BOXES = 5
DISPLAY_WIDTH = 560
THUMB_WIDTH = 280
GRID_COLUMNS = 4
FONT_SIZE = 15
DIM = 0.35  # brightness outside the attended boxes
CANVAS = (236, 236, 236)
HIGHLIGHT = (0, 235, 255)  # attended-box outline: cyan, no toy colour
FAINT = (190, 190, 190)
OBJECT_ALPHA = 190
V2_COCO_SPLITS = {"train": "train2014", "test": "val2014"}


# ---------------------------------------------------------------- curves
def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The epoch records of a metrics.jsonl, sorted by epoch; VQAError names the file and line."""
    path = Path(path)
    if not path.is_file():
        raise VQAError(f"metrics not found: {path} (is this a training output folder?)")
    records = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise VQAError(f"{path}: line {lineno} is not JSON ({exc.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
            raise VQAError(f"{path}: line {lineno} is not an epoch record (an object with an integer 'epoch')")
        records.append(record)
    if not records:
        raise VQAError(f"{path}: no epoch records")
    return sorted(records, key=lambda r: r["epoch"])


def logged_inf_lambda(output_dir: str | os.PathLike) -> float | None:
    """The run's --inf_lambda from the `args: {...}` line the trainer writes first in log.txt, or None."""
    path = Path(output_dir) / LOG_FILE
    if not path.is_file():
        return None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("args: "):
            try:
                return float(json.loads(line[len("args: "):])["inf_lambda"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                raise VQAError(f"{path}: unreadable args line (expected JSON with inf_lambda)") from None
    return None


def evaluated_splits(records: list[dict[str, Any]]) -> list[str]:
    """Names of the splits evaluated in any epoch (values holding an official 'overall')."""
    names: list[str] = []
    for r in records:
        names += [k for k, v in r.items() if isinstance(v, dict) and "overall" in v and k not in names]
    return names


Series = dict[str, tuple[list[int], list[float]]]  # label -> (epochs, values)


def _series(records: list[dict[str, Any]], get) -> tuple[list[int], list[float]]:
    pairs = [(r["epoch"], get(r)) for r in records]
    pairs = [(e, float(v)) for e, v in pairs if v is not None]
    return [e for e, _ in pairs], [v for _, v in pairs]


def _accuracy(record: dict[str, Any], split: str, column: str) -> float | None:
    d = record.get(split)
    if not isinstance(d, dict):
        return None
    return d.get("overall") if column == "overall" else d.get("perAnswerType", {}).get(column)


def curve_series(records: list[dict[str, Any]], inf_lambda: float | None) -> dict[str, Series]:
    """The plotted data, panel -> label -> (epochs, values): "loss" (train_loss, task_loss and
    lambda * reg_term), "accuracy" ("SPLIT COLUMN" for each evaluated split) and, with the
    regulariser, "information" (score_q, score_v). Epochs lacking a value are left out."""
    has_reg = any("reg_term" in r for r in records)
    if has_reg and inf_lambda is None:
        raise VQAError("the records hold reg_term but the run's lambda is unknown (no args line in log.txt): "
                       "pass --inf_lambda L")
    loss = {"train_loss (total)": _series(records, lambda r: r.get("train_loss")),
            "task_loss": _series(records, lambda r: r.get("task_loss"))}
    if has_reg:
        loss[f"λ·reg_term (λ = {inf_lambda:g})"] = _series(
            records, lambda r: None if "reg_term" not in r else inf_lambda * r["reg_term"])
    accuracy = {f"{split} {column}": _series(records, lambda r, s=split, c=column: _accuracy(r, s, c))
                for split in evaluated_splits(records) for column in ACCURACY_COLUMNS}
    panels = {"loss": loss, "accuracy": accuracy}
    if any("score_q" in r for r in records):
        panels["information"] = {f"{label} ({key})": _series(records, lambda r, k=key: r.get(k))
                                 for key, label in (("score_q", "question"), ("score_v", "image"))}
    return panels


def plot_curves(records: list[dict[str, Any]], path: str | os.PathLike, inf_lambda: float | None,
                title: str = "") -> tuple[int, int]:
    """Draw curve_series into `path` (PNG), one PANEL_INCHES panel each; returns the size in pixels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = curve_series(records, inf_lambda)
    fig, axes = plt.subplots(1, len(panels), figsize=(PANEL_INCHES[0] * len(panels), PANEL_INCHES[1]), dpi=DPI,
                             layout="constrained")
    ax = axes[0]
    values = []
    for label, (xs, ys) in panels["loss"].items():
        ax.plot(xs, ys, marker="o", markersize=3, label=label)
        values += ys
    if values and min(values) > 0 and max(values) / min(values) > LOG_SCALE_RANGE:
        ax.set_yscale("log")
    ax.set(title="loss terms (epoch means)", xlabel="epoch", ylabel="loss")
    ax.legend(fontsize=8)

    ax = axes[1]
    splits = evaluated_splits(records)
    colours = dict(zip(ACCURACY_COLUMNS, ("black", "tab:blue", "tab:orange", "tab:green")))
    for i, split in enumerate(splits):
        for column in ACCURACY_COLUMNS:
            xs, ys = panels["accuracy"][f"{split} {column}"]
            ax.plot(xs, ys, SPLIT_STYLES[i % len(SPLIT_STYLES)], marker="o", markersize=4,
                    color=colours[column], label=f"{split} {column}")
    ax.set(title="official VQA accuracy", xlabel="epoch", ylabel="accuracy (%)", ylim=(0, 100))
    if splits:
        ax.legend(fontsize=8, ncols=len(splits))
    else:
        ax.text(0.5, 0.5, "no split evaluated", ha="center", va="center", transform=ax.transAxes)

    if "information" in panels:
        ax = axes[2]
        for label, (xs, ys) in panels["information"].items():
            ax.plot(xs, ys, marker="o", markersize=3, label=label)
        ax.set_yscale("log")
        ax.set(title="information score per modality", xlabel="epoch", ylabel="mean score")
        ax.legend(fontsize=8)
    for ax in axes:
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    size = fig.canvas.get_width_height()
    plt.close(fig)
    return size


def plot_run(output_dir: str | os.PathLike, inf_lambda: float | None = None) -> Path:
    """OUTPUT_DIR/curves.png from OUTPUT_DIR/metrics.jsonl (lambda from log.txt unless given)."""
    output_dir = Path(output_dir)
    records = read_metrics(output_dir / METRICS_FILE)
    if inf_lambda is None:
        inf_lambda = logged_inf_lambda(output_dir)
    path = output_dir / CURVES_FILE
    plot_curves(records, path, inf_lambda, title=str(output_dir))
    return path


# ---------------------------------------------------------------- attention pictures
@dataclass
class Shown:
    """One visualised question (also written to index.json)."""

    question_id: int
    image_id: int
    question: str
    predicted: str
    soft_score: float  # y[argmax z]: the processed soft target of the predicted answer
    majority: str  # multiple_choice_answer
    answers: list[str]  # the 10 raw answers
    boxes: list[int]  # top boxes by attention, most attended first
    weights: list[float]  # their attention weights
    picture: str  # file name in the output folder


def _font(size: int = FONT_SIZE) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def render_toy_scene(scene: dict[str, Any]) -> Image.Image:
    """A toy scene: object boxes filled with their colour and labelled with their category, background
    boxes as faint outlines."""
    size = (int(scene["image_w"]), int(scene["image_h"]))
    image = Image.new("RGBA", size, CANVAS + (255,))
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    boxes = scene["boxes"]
    for b in boxes:
        if b["object"] is None:
            draw.rectangle(b["box"], outline=FAINT + (255,), width=1)
    image = Image.alpha_composite(image, layer)
    font = _font(13)
    for b in boxes:
        obj = b["object"]
        if obj is None:
            continue
        layer = Image.new("RGBA", size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(layer)
        rgb = Image.new("RGB", (1, 1), obj["colour"]).getpixel((0, 0))
        draw.rectangle(b["box"], fill=rgb + (OBJECT_ALPHA,), outline=(90, 90, 90, 255), width=1)
        image = Image.alpha_composite(image, layer)
        x1, y1 = b["box"][:2]
        ImageDraw.Draw(image).text((x1 + 3, y1 + 2), obj["category"], fill="black", font=font,
                                   stroke_width=2, stroke_fill="white")
    return image.convert("RGB")


def draw_attention(image: Image.Image, boxes: np.ndarray, weights: np.ndarray) -> Image.Image:
    """Dim the image to DIM outside the given boxes; inside box k brightness DIM + (1 - DIM) * a_k / max a.
    Each box is outlined (width growing with its weight) and tagged with its rank and weight."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32)
    h, w = arr.shape[:2]
    light = np.zeros((h, w), dtype=np.float32)
    relative = weights / weights.max()
    clipped = [(max(0, int(x1)), max(0, int(y1)), min(w, math.ceil(x2)), min(h, math.ceil(y2)))
               for x1, y1, x2, y2 in boxes.tolist()]
    for (x1, y1, x2, y2), r in zip(clipped, relative):
        light[y1:y2, x1:x2] = np.maximum(light[y1:y2, x1:x2], r)
    arr *= DIM + (1 - DIM) * light[..., None]
    out = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    unit = max(1, round(min(w, h) / 300))
    font = _font(max(12, 6 * unit))
    for rank in reversed(range(len(clipped))):
        box, r = clipped[rank], float(relative[rank])
        width = unit * (1 + round(2 * r))
        draw.rectangle(box, outline="black", width=width + unit)
        draw.rectangle(box, outline=HIGHLIGHT, width=width)
        draw.text((box[0] + width + 2, box[1] + width + 1), f"#{rank + 1} {weights[rank]:.2f}", fill="white",
                  font=font, stroke_width=2, stroke_fill="black")
    return out


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if line and draw.textlength(trial, font=font) > width:
            lines.append(line)
            line = word
        else:
            line = trial
    return lines + [line]


def compose_panel(picture: Image.Image, shown: Shown, source: str) -> Image.Image:
    """The picture scaled to DISPLAY_WIDTH above the question, prediction and ground truth."""
    scale = DISPLAY_WIDTH / picture.width
    picture = picture.resize((DISPLAY_WIDTH, max(1, round(picture.height * scale))), Image.Resampling.LANCZOS)
    font, bold = _font(), _font(FONT_SIZE + 2)
    probe = ImageDraw.Draw(picture)
    counts = ", ".join(f"{a} ({c})" for a, c in Counter(shown.answers).most_common())
    margin = 10
    width = DISPLAY_WIDTH - 2 * margin
    verdict = (20, 130, 20) if shown.soft_score >= 0.9 else (200, 110, 0) if shown.soft_score > 0 else (190, 20, 20)
    rows: list[tuple[str, ImageFont.ImageFont, tuple[int, int, int]]] = []
    rows += [(s, bold, (0, 0, 0)) for s in _wrap(probe, f"Q: {shown.question}", bold, width)]
    rows += [(s, font, verdict) for s in _wrap(probe, f"predicted: {shown.predicted}   (soft score "
                                                   f"{shown.soft_score:.2f})", font, width)]
    rows += [(s, font, (0, 0, 0)) for s in _wrap(probe, f"ground truth (majority): {shown.majority}", font,
                                                  width)]
    rows += [(s, font, (80, 80, 80)) for s in _wrap(probe, f"10 answers: {counts}", font, width)]
    rows += [(s, font, (80, 80, 80)) for s in _wrap(probe, f"question {shown.question_id}, image "
                                                           f"{shown.image_id} ({source}); boxes: top "
                                                           f"{len(shown.boxes)} by attention", font, width)]
    line_h = FONT_SIZE + 7
    panel = Image.new("RGB", (DISPLAY_WIDTH, picture.height + 2 * margin + line_h * len(rows)), "white")
    panel.paste(picture, (0, 0))
    draw = ImageDraw.Draw(panel)
    y = picture.height + margin
    for text, f, colour in rows:
        draw.text((margin, y), text, fill=colour, font=f)
        y += line_h
    return panel


def index_grid(panels: list[Image.Image]) -> Image.Image:
    """Thumbnails THUMB_WIDTH wide, GRID_COLUMNS a row, each row as tall as its tallest panel."""
    thumbs = [p.resize((THUMB_WIDTH, max(1, round(p.height * THUMB_WIDTH / p.width))), Image.Resampling.LANCZOS)
              for p in panels]
    cols = min(GRID_COLUMNS, len(thumbs))
    rows = [thumbs[i:i + cols] for i in range(0, len(thumbs), cols)]
    heights = [max(t.height for t in row) for row in rows]
    gap = 6
    grid = Image.new("RGB", (cols * THUMB_WIDTH + (cols - 1) * gap, sum(heights) + (len(rows) - 1) * gap),
                     "white")
    y = 0
    for row, height in zip(rows, heights):
        for j, thumb in enumerate(row):
            grid.paste(thumb, (j * (THUMB_WIDTH + gap), y))
        y += height + gap
    return grid


def coco_splits(data_dir: Path, split: str, nocp: bool, question_ids: list[int]) -> dict[int, str]:
    """COCO folder (train2014 / val2014) of each question's image: the `coco_split` field of the raw
    VQA-CP question file; for VQA v2 the raw file's own split."""
    if nocp:
        return {q: V2_COCO_SPLITS[split] for q in question_ids}
    path = data_dir / RAW_FILES["cp"][split][0]
    if not path.is_file():
        raise VQAError(f"{path} not found: it names the COCO folder (coco_split) of each question's image")
    by_id = {q["question_id"]: q for q in load_questions(path)}
    out = {}
    for q in question_ids:
        entry = by_id.get(q)
        if entry is None or not isinstance(entry.get("coco_split"), str):
            raise VQAError(f"{path}: question_id {q} is missing or has no coco_split")
        out[q] = entry["coco_split"]
    return out


def coco_image(images_dir: Path, coco_split: str, image_id: int) -> Image.Image:
    path = images_dir / coco_split / f"COCO_{coco_split}_{image_id:012d}.jpg"
    if not path.is_file():
        raise VQAError(f"COCO image not found: {path} (--images must hold {coco_split}/COCO_{coco_split}_"
                       "<12-digit image id>.jpg)")
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except OSError as exc:
        raise VQAError(f"{path}: not a readable image ({exc})") from None


def read_boxes(features_path: Path, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """boxes [n, K, 4], image_w [n], image_h [n] of the given HDF5 rows."""
    unique, inverse = np.unique(rows, return_inverse=True)  # h5py reads increasing, distinct rows only
    names = ("boxes", "image_w", "image_h")
    with h5py.File(features_path, "r") as h5:
        if not h5.attrs.get("has_boxes", True):
            raise VQAError(f"{features_path}: this copy of the features (form {h5.attrs.get('form', '?')}) has no "
                           "boxes; drawing attention needs a copy with boxes (any form but hdf5_trainval36)")
        missing = [name for name in names if name not in h5]
        if missing:
            raise VQAError(f"{features_path}: lacks {', '.join(missing)} (rerun tools/process.sh)")
        boxes, widths, heights = (h5[name][unique.tolist()][inverse] for name in names)
    return boxes, widths, heights


@torch.no_grad()
def visualize(checkpoint: str | os.PathLike, data_dir: str | os.PathLike, out_dir: str | os.PathLike,
              split: str = "test", n: int = 8, images_dir: str | os.PathLike | None = None, seed: int = 0,
              nocp: bool = False, top: int = TOP_BOXES) -> list[Shown]:
    """Draw n randomly chosen questions of a split (q{question_id}.png each, index.png, index.json).

    Background: the COCO photo with images_dir, else the toy scene when DATA/toy_scenes.json exists,
    else a blank canvas of the image's size.
    """
    if top < 1:
        raise VQAError(f"--top must be at least 1, got {top}")
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    loaded = load_model_for_data(checkpoint, data_dir, nocp=nocp)
    dataset = open_split(data_dir, split, nocp)
    if not 1 <= n <= len(dataset):
        raise VQAError(f"--n must be in 1..{len(dataset)} (questions in the {split} split), got {n}")
    picks = np.random.default_rng(seed).choice(len(dataset), size=n, replace=False)
    items = [dataset[int(i)] for i in picks]
    v = torch.stack([it[0] for it in items])
    q = torch.stack([it[1] for it in items])
    target = torch.stack([it[2] for it in items])
    if loaded.token_map is not None:
        q = loaded.token_map[q]
    model = loaded.model.eval()
    q_emb, v_emb, att = model.trunk(v, q, return_attention=True)
    logits, _ = model.head(q_emb, v_emb)
    labels = logits.argmax(1).tolist()
    att = att.squeeze(-1)
    k = min(top, att.shape[1])
    weights, order = att.topk(k, dim=1)

    ann = dataset.annotations()
    qids = [int(dataset.question_ids[i]) for i in picks]
    image_ids = [int(dataset.image_ids[i]) for i in picks]
    boxes, widths, heights = read_boxes(dataset.features.path, dataset.features.rows(np.array(image_ids)))
    data_index = {a: i for i, a in enumerate(dataset.answers)}
    scenes = None
    if images_dir is not None:
        splits = coco_splits(data_dir, split, nocp, qids)
    elif (data_dir / SCENES_FILE).is_file():
        scenes = {s["image_id"]: s for s in load_json(data_dir / SCENES_FILE, what="toy scenes")["images"]}

    out_dir.mkdir(parents=True, exist_ok=True)
    shown, panels = [], []
    for j, i in enumerate(tqdm(picks.tolist(), desc="draw", unit="question")):
        predicted = loaded.answers[labels[j]]
        label = data_index.get(predicted)
        soft = float(target[j, label]) if label is not None else 0.0
        if images_dir is not None:
            source = f"COCO {splits[qids[j]]}"
            picture = coco_image(Path(images_dir), splits[qids[j]], image_ids[j])
        elif scenes is not None:
            if image_ids[j] not in scenes:
                raise VQAError(f"{data_dir / SCENES_FILE}: no scene for image_id {image_ids[j]}")
            source = "toy scene"
            picture = render_toy_scene(scenes[image_ids[j]])
        else:
            source = "no image: blank canvas"
            picture = Image.new("RGB", (int(widths[j]), int(heights[j])), CANVAS)
        top_boxes = order[j].tolist()
        picture = draw_attention(picture, boxes[j][top_boxes], weights[j].numpy())
        item = Shown(question_id=qids[j], image_id=image_ids[j], question=ann["question"][i], predicted=predicted,
                     soft_score=soft, majority=ann["multiple_choice_answer"][i], answers=list(ann["answers"][i]),
                     boxes=top_boxes, weights=[float(x) for x in weights[j]], picture=f"q{qids[j]}.png")
        panel = compose_panel(picture, item, source)
        with atomic_path(out_dir / item.picture) as tmp:
            panel.save(tmp, format="PNG")
        shown.append(item)
        panels.append(panel)
    with atomic_path(out_dir / "index.png") as tmp:
        index_grid(panels).save(tmp, format="PNG")
    write_json(out_dir / "index.json", [asdict(s) for s in shown], indent=2)
    return shown
