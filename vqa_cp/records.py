"""A run's records: one stream, several sinks.

Each epoch gives one record (losses, regulariser figures, accuracies, time) and every `--log_every` steps
one step record. The sinks: log.txt in the reference code's wording (epoch records and notes), the
terminal, metrics.jsonl (one JSON line an epoch), steps.jsonl (one JSON line a step record) and,
with `--tensorboard`, TensorBoard event files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tqdm import tqdm

from vqa_cp.errors import VQAError
from vqa_cp.files import write_text

LOG_FILE, METRICS_FILE, STEPS_FILE = "log.txt", "metrics.jsonl", "steps.jsonl"


def evaluations(record: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The evaluated splits of an epoch record (val, test, or val2014 with --nocp) and their figures."""
    return [(key, value) for key, value in record.items() if isinstance(value, dict) and "soft_score" in value]


def epoch_lines(record: dict[str, Any]) -> list[str]:
    """An epoch record in the reference log's wording (plus the regulariser's figures)."""
    lines = [f"epoch {record['epoch']}, time: {record['seconds']:.2f}",
             f"\ttrain_loss: {record['train_loss']:.2f}, score: {record['train_score']:.2f}"]
    if "reg_term" in record:
        lines.append(f"\tregulariser: {record['reg_term']:.4g}, information score q: {record['score_q']:.4g}, "
                     f"v: {record['score_v']:.4g}, scores floored: {int(record['floored'])}")
        ratio = record.get("grad_norm_ratio")
        lines.append(f"\tregulariser share of the loss: {100 * record['reg_share']:.2f}%"
                     + ("" if ratio is None else f", gradient norm regulariser / task: {ratio:.3g}"))
    for split, ev in evaluations(record):
        lines.append(f"\teval score: {ev['soft_score']:.2f} ({ev['upper_bound']:.2f})")
        if "overall" in ev:
            per = ev["perAnswerType"]
            lines.append(f"\tofficial {split} accuracy: {ev['overall']:.2f} "
                         + " ".join(f"{k}: {per[k]:.2f}" for k in sorted(per)))
    return lines


def _keep_lines(path: Path, keep) -> None:
    """Rewrite a JSON-lines file with the lines `keep(record)` accepts (a torn last line is dropped)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if keep(json.loads(line)):
                kept.append(line)
        except json.JSONDecodeError:
            continue
    write_text(path, "".join(k + "\n" for k in kept))


def _truncate_log(path: Path, epochs_done: int) -> None:
    """Drop log.txt lines written after `epochs_done` epochs (a resumed run repeats none)."""
    if not path.exists():
        return
    kept, count = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("epoch "):
            count += 1
        if count > epochs_done:
            break
        kept.append(line)
    write_text(path, "".join(k + "\n" for k in kept))


class TensorBoardSink:
    """Scalars of the step and epoch records under train/, reg/ and one group per evaluated split."""

    def __init__(self, log_dir: Path, purge_step: int | None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise VQAError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def step(self, record: dict[str, Any]) -> None:
        step = record["global_step"]
        for key, value in record.items():
            if key not in ("epoch", "global_step") and isinstance(value, (int, float)):
                group = "reg" if key.startswith(("score_", "reg_", "grad_norm", "floored")) else "train"
                self.writer.add_scalar(f"{group}/{key}", value, step)

    def epoch(self, record: dict[str, Any]) -> None:
        epoch = record["epoch"]
        for key in ("train_loss", "train_score", "seconds", "samples_per_s"):
            self.writer.add_scalar(f"epoch/{key}", record[key], epoch)
        for key in ("reg_term", "reg_share", "score_q", "score_v", "floored", "grad_norm_ratio"):
            if record.get(key) is not None:
                self.writer.add_scalar(f"epoch/{key}", record[key], epoch)
        for split, ev in evaluations(record):
            if "overall" in ev:
                self.writer.add_scalar(f"{split}/overall", ev["overall"], epoch)
                for answer_type, value in ev["perAnswerType"].items():
                    self.writer.add_scalar(f"{split}/{answer_type}", value, epoch)
                self.writer.add_scalar(f"{split}/soft_score", ev["soft_score"], epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class Records:
    """The sinks of one run folder (only the main process writes; the others' calls do nothing).

    A resumed run first drops what was recorded after its checkpoint: log.txt and metrics.jsonl beyond
    `epochs_done`, steps.jsonl beyond `steps_done`, TensorBoard events from that step on.
    """

    def __init__(self, out_dir: Path, enabled: bool, tensorboard: Path | None = None,
                 resumed_at: tuple[int, int] | None = None) -> None:
        self.out_dir, self.enabled = out_dir, enabled
        self.tensorboard: TensorBoardSink | None = None
        if not enabled:
            return
        if resumed_at is not None:
            epochs_done, steps_done = resumed_at
            _truncate_log(out_dir / LOG_FILE, epochs_done)
            _keep_lines(out_dir / METRICS_FILE, lambda r: r["epoch"] <= epochs_done)
            _keep_lines(out_dir / STEPS_FILE, lambda r: r["global_step"] <= steps_done)
        if tensorboard is not None:
            self.tensorboard = TensorBoardSink(tensorboard, None if resumed_at is None else resumed_at[1] + 1)

    def _append(self, name: str, text: str) -> None:
        with open(self.out_dir / name, "a", encoding="utf-8") as f:
            f.write(text + "\n")

    def line(self, text: str) -> None:
        """A note for log.txt and the terminal."""
        if self.enabled:
            self._append(LOG_FILE, text)
            tqdm.write(text)

    def step_loss(self, global_step: int, loss: float) -> None:
        """Every step's loss, to TensorBoard only (the files take a record every --log_every steps)."""
        if self.tensorboard is not None:
            self.tensorboard.writer.add_scalar("train/step_loss", loss, global_step)

    def step(self, record: dict[str, Any]) -> None:
        if self.enabled:
            self._append(STEPS_FILE, json.dumps(record))
            if self.tensorboard is not None:
                self.tensorboard.step(record)

    def epoch(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        for text in epoch_lines(record):
            self.line(text)
        self._append(METRICS_FILE, json.dumps(record))
        if self.tensorboard is not None:
            self.tensorboard.epoch(record)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
