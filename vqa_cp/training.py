"""The training loop behind main.py: one readable loop, single process or torchrun.

    main:  flags -> setup (run folder, data, model, optimizer, records) -> per epoch: train_one_epoch,
           evaluate, end_epoch -> finish (model.pth, results.json, the accuracy table)

Per step (`train_step`): the objective (`vqa_cp.objective`), Adamax, gradient-norm clip 0.25. Flags live in
`vqa_cp.config`, the records' sinks in `vqa_cp.records`, the run folder's rules in `vqa_cp.run_folder`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.nn.utils import parametrize
from torch.utils.data import DataLoader
from tqdm import tqdm

from vqa_cp import checkpoints as ckpts
from vqa_cp import distributed as dist_utils
from vqa_cp import run_folder
from vqa_cp.config import build_parser, check_args, resume_args
from vqa_cp.dataset import TrainingData, batch_loader, load_training_data
from vqa_cp.errors import VQAError
from vqa_cp.evaluation import ground_truth_of, official_accuracy_from_dataset
from vqa_cp.files import write_json
from vqa_cp.losses import build_loss
from vqa_cp.model import build_model
from vqa_cp.objective import TASK_PARTS, TERM_NAMES, NonFiniteLoss, Objective
from vqa_cp.records import Records
from vqa_cp.regularization import RegParameters, Regularization
from vqa_cp.verify import repeat_notes

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise VQAError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return torch.device(name)


def gradient_norms(loss_parts: dict[str, torch.Tensor], params: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """||d task / d theta|| and ||d (lambda R) / d theta|| of this step (before clipping), for the ratio that
    shows whether the regulariser dominates training. Two extra backward passes; the graph is kept."""
    task = sum(loss_parts[name] for name in TASK_PARTS if name in loss_parts)
    norms = {}
    for name, part in (("grad_norm_task", task), ("grad_norm_reg", loss_parts["reg_loss"])):
        grads = torch.autograd.grad(part, params, retain_graph=True, allow_unused=True)
        norms[name] = torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(g.float()) for g in grads if g is not None]))
    return norms


def train_step(train_model: nn.Module, optimizer: torch.optim.Optimizer, batch: Batch, step_id: int,
               grad_clip: float, amp: bool = False, measure_grads: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """One optimisation step of the objective (possibly DDP-wrapped): forward, backward, clip, Adamax.

    Weight-normalised matrices are computed once per step (parametrize.cached): the regulariser calls
    the head a second time. Raises NonFiniteLoss before touching the parameters (one host sync).
    measure_grads (with the regulariser on) adds the two gradient norms of `gradient_norms` to the parts.
    """
    v, q, target, bias = batch
    params = [p for group in optimizer.param_groups for p in group["params"]]
    with parametrize.cached():
        with torch.autocast(v.device.type, dtype=torch.bfloat16, enabled=amp):
            loss, logits, parts = train_model(v, q, target, bias, step_id)
        if not torch.isfinite(torch.cat([t.detach().reshape(-1).float() for t in (loss, *parts.values())])).all():
            bad = [name for name, value in parts.items() if not torch.isfinite(value).all()]
            raise NonFiniteLoss(", ".join(TERM_NAMES.get(b, b) for b in bad) or "total loss")
        if measure_grads and "reg_loss" in parts:
            parts.update(gradient_norms(parts, params))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
    nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    return loss.detach(), logits.detach(), {name: value.detach() for name, value in parts.items()}


@dataclass
class EvalOutput:
    question_ids: np.ndarray
    predictions: list[str]
    soft_score: float  # mean soft score of the argmax answer (the trainer's approximate accuracy)
    upper_bound: float  # mean of the best soft score a question allows
    official: dict[str, Any]  # {"overall", "perAnswerType"} official VQA accuracy

    def record(self) -> dict[str, Any]:
        return {"soft_score": 100 * self.soft_score, "upper_bound": 100 * self.upper_bound, **self.official}


def soft_scores(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft score of the argmax answer per question: target[argmax(logits)]."""
    return target.gather(1, logits.argmax(1, keepdim=True)).squeeze(1)


def batch_features(dataset, v: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The batch's float32 features on `device`: gathered on the device when the store keeps them
    there (--features_on_gpu: the loader then yields row indices), else copied over non-blocking."""
    store = dataset.features
    if store.on_device:
        return store.gather(v)
    return v.to(device, non_blocking=True).float()


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, device: torch.device, amp: bool, desc: str
            ) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Argmax label per question, with the soft score and its upper bound (sums, not means)."""
    model.eval()
    qids, labels, score, bound = [], [], 0.0, 0.0
    for v, q, target, _bias, qid in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True,
                                         disable=not dist_utils.is_main()):
        v = batch_features(loader.dataset.dataset, v, device)
        q, target = q.to(device, non_blocking=True), target.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits, _ = model(v, q)
        score += soft_scores(logits.float(), target).sum().item()
        bound += target.max(1).values.sum().item()
        labels.append(logits.argmax(1).cpu().numpy())
        qids.append(qid.numpy())
    model.train()
    return np.concatenate(qids), np.concatenate(labels), score, bound


def evaluate(model: nn.Module, dataset, batch_size: int, num_workers: int, device: torch.device, amp: bool,
             desc: str) -> EvalOutput:
    """Predict a split (sharded across ranks under torchrun) and score it with the official metric."""
    indices = list(range(dist_utils.rank(), len(dataset), dist_utils.world_size()))
    # A private generator: creating the loader must not draw from the global RNG (exact resume).
    loader = batch_loader(dataset, indices, batch_size, num_workers=num_workers, pin_memory=device.type == "cuda",
                          generator=torch.Generator().manual_seed(0))
    qids, labels, score, bound = predict(model, loader, device, amp, desc)
    qids, labels = dist_utils.gather_arrays(qids), dist_utils.gather_arrays(labels)
    score, bound = dist_utils.all_reduce_sum([score, bound])
    answers = dataset.answers
    predictions = [answers[i] for i in labels.tolist()]
    official: dict[str, Any] = {}
    if dist_utils.is_main():
        result = official_accuracy_from_dataset(dataset, qids, predictions)
        official = {"overall": result.overall, "perAnswerType": result.per_answer_type}
    n = len(dataset)
    return EvalOutput(qids, predictions, score / n, bound / n, official)


@dataclass
class Run:
    """What the epochs of one run share."""

    args: argparse.Namespace
    device: torch.device
    data: TrainingData
    objective: Objective
    optimizer: torch.optim.Optimizer
    train_model: nn.Module
    sampler: dist_utils.EpochSampler
    out_dir: Path
    records: Records
    run_id: str | None
    history: list[dict[str, Any]]
    start: tuple[int, int] = (0, 0)  # (epoch, step) the run continues from
    resumed_running: dict[str, Any] | None = None  # loss sums of a mid-epoch checkpoint
    selected: dict[str, Any] | None = None  # the epoch record chosen on the validation split
    global_step: int = 0  # steps this process has taken (for --max_steps)
    stopped_at: dict[str, int] | None = None
    warned: set[str] = field(default_factory=set)

    @property
    def amp(self) -> bool:
        return self.args.amp == "bf16"

    @property
    def local_batch(self) -> int:
        return self.args.batch_size // dist_utils.world_size()

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.sampler.per_rank / self.local_batch)

    def state(self, epoch: int, step: int, running: dict[str, Any] | None = None) -> dict[str, Any]:
        """Our checkpoint dict after `step` steps of epoch `epoch` (0-based; step 0 = the epoch's start);
        `running` holds the epoch's loss sums so far, for a checkpoint taken in the middle of an epoch."""
        data = self.data
        return {
            "version": ckpts.CHECKPOINT_VERSION, "model": self.objective.model.state_dict(),
            "loss_fn": self.objective.loss_fn.state_dict(), "optimizer": self.optimizer.state_dict(),
            "epoch": epoch, "step": step, "args": vars(self.args), "rng": ckpts.rng_state(),
            "history": self.history, "words_digest": ckpts.digest(data.words),
            "answers_digest": ckpts.digest(data.answers), "num_words": len(data.words),
            "num_answers": len(data.answers), "model_name": self.args.model, "running": running,
            "run_id": self.run_id,
        }

    def checkpoint(self, epoch: int, step: int, running: dict[str, Any] | None = None) -> None:
        if dist_utils.is_main():
            ckpts.save_checkpoint(self.out_dir / ckpts.checkpoint_name(epoch, step),
                                  self.state(epoch, step, running if step > 0 else None))
            ckpts.prune_checkpoints(self.out_dir)

    def save_model(self, epoch: int) -> None:
        if dist_utils.is_main():
            ckpts.save_checkpoint(self.out_dir / "model.pth", self.state(epoch, 0))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train, evaluate and save; returns the final results dict (also written to results.json)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    resume_path, resume_ckpt = None, None
    if not args.resume:
        args = check_args(args)
        args.output = str(run_folder.choose_output(args.output))
    else:  # the run's own flags, checked when it started, with those given that may change
        if args.overwrite:
            raise VQAError("--resume continues a run and --overwrite deletes it: give one of them")
        out_dir = Path(args.resume)
        resume_path, resume_ckpt = ckpts.load_newest_checkpoint(out_dir, run_folder.resumed_run_id(out_dir))
        args = resume_args(argv, resume_ckpt["args"])
        args.output = str(out_dir)
    dist_utils.setup()
    try:
        results = train(args, resume_path, resume_ckpt)
        dist_utils.barrier()  # no rank tears the group down while rank 0 still writes its files
        return results
    finally:
        dist_utils.teardown()


def train(args: argparse.Namespace, resume_path: Path | None = None, resume_ckpt: dict[str, Any] | None = None
          ) -> dict[str, Any]:
    run = setup(args, resume_path, resume_ckpt)
    try:
        for epoch in range(run.start[0], args.epochs):
            record = train_one_epoch(run, epoch)
            if record is None:  # --max_steps
                return {"stopped_at": run.stopped_at}
            if args.eval_each_epoch or epoch + 1 == args.epochs or run.data.val is not None:
                with model_saved_on_failure(run, epoch + 1):
                    record.update(evaluate_epoch(run, epoch))
            end_epoch(run, record)
        return finish(run)
    finally:
        run.records.close()


def setup(args: argparse.Namespace, resume_path: Path | None, resume_ckpt: dict[str, Any] | None) -> Run:
    """Everything before the first step: the checks, the data, the model, the optimizer and the records."""
    device = pick_device(args.device)
    if dist_utils.world_size() > 1 and args.device == "auto" and torch.cuda.is_available():
        device = torch.device("cuda", dist_utils.local_rank())
    world = dist_utils.world_size()
    if args.batch_size % world:
        raise VQAError(f"--batch_size {args.batch_size} is not divisible by the world size {world}")
    if args.amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise VQAError("--amp bf16: this GPU does not support bfloat16")
    if resume_ckpt is not None and (resume_ckpt["epoch"], resume_ckpt["step"]) > (args.epochs, 0):
        done = resume_ckpt["epoch"] + (resume_ckpt["step"] > 0)  # a mid-epoch checkpoint is in the next epoch
        raise VQAError(f"--epochs {args.epochs}: the run in {args.output} has already trained "
                       f"{resume_ckpt['epoch']} epochs{' and part of the next' if resume_ckpt['step'] else ''}; "
                       f"give --epochs {done} or more")
    out_dir = Path(args.output)
    if resume_ckpt is None:
        run_folder.check_new_output(out_dir, args.overwrite)
    if dist_utils.is_main():
        run_folder.check_writable(out_dir)
        run_folder.remove_checkpoint_temps(out_dir)
    if args.deterministic:
        torch.use_deterministic_algorithms(True)
    if args.toy:
        from vqa_cp.toy import ensure_toy_data
        if dist_utils.is_main():
            ensure_toy_data(args.data)
        dist_utils.barrier()

    seed_everything(args.seed)
    data = load_training_data(args.data, nocp=args.nocp, cache_features=args.cache_features,
                              cache_dtype=args.cache_dtype, val_fraction=args.val_fraction, seed=args.seed)
    check_inputs(data)
    if args.features_on_gpu:
        data.features.keep_on_device(device)
    objective = build_objective(args, data).to(device)
    optimizer = torch.optim.Adamax([p for p in objective.parameters() if p.requires_grad], lr=args.lr)
    history: list[dict[str, Any]] = []
    start = (0, 0)
    if resume_ckpt is not None:
        ckpts.check_lists(resume_path, resume_ckpt, data.words, data.answers)
        objective.model.load_state_dict(resume_ckpt["model"])
        objective.loss_fn.load_state_dict(resume_ckpt["loss_fn"])
        optimizer.load_state_dict(resume_ckpt["optimizer"])
        start = (resume_ckpt["epoch"], resume_ckpt["step"])
        history = list(resume_ckpt.get("history", []))
        run_id = resume_ckpt.get("run_id")
    elif dist_utils.is_main():
        run_folder.check_free_space(out_dir, 4 * checkpoint_bytes(objective))
        run_id = run_folder.start_run(out_dir, vars(args), args.overwrite)
    else:
        run_id = None  # only rank 0 writes checkpoints
    sampler = dist_utils.EpochSampler(len(data.train), seed=args.seed, rank=dist_utils.rank(), world=world)
    records = open_records(args, out_dir, resume_ckpt, start, math.ceil(sampler.per_rank / (args.batch_size // world)))
    records.line(f"resumed from {resume_path.name} (epoch {start[0]}, step {start[1]})" if resume_ckpt else
                 describe_run(args, data, objective))
    if dist_utils.is_main():
        repeat_notes(Path(args.data), log=records.line)  # what the raw files' checks reported
    run = Run(args, device, data, objective, optimizer, dist_utils.wrap_ddp(objective, device), sampler, out_dir,
              records, run_id, history, start, resume_ckpt.get("running") if resume_ckpt else None)
    run.selected = max((r for r in history if "val" in r), key=lambda r: r["val"]["overall"], default=None)
    if resume_ckpt is not None:
        ckpts.set_rng_state(resume_ckpt["rng"])
    return run


def check_inputs(data: TrainingData) -> None:
    """Refuse empty splits and read every evaluation file now, not after the last epoch."""
    splits = [("train", data.train), (data.eval_name, data.eval)] + ([("val", data.val)] if data.val else [])
    for name, split in splits:
        if len(split) == 0:
            raise VQAError(f"the {name} split has no questions ({getattr(split, 'split_path', name)})")
    for _name, split in splits[1:]:
        ground_truth_of(split)  # parses and checks {split}_annotations.json (cached for the epochs)


def build_objective(args: argparse.Namespace, data: TrainingData) -> Objective:
    """Model (new, or from --load with its own sizes), debiasing loss and regulariser."""
    if args.load:
        words = ckpts.read_reference_words(args.dictionary) if args.dictionary else data.words
        answers = ckpts.read_reference_answers(args.answers) if args.answers else data.answers
        model = ckpts.load_model(args.load, words=words, answers=answers).model
        if (words, answers) != (data.words, data.answers):
            model = ckpts.remap_to_data(model, words, answers, data.words, data.answers, data.glove)
        args.num_hid, args.model = model.config.num_hid, model.config.name
    else:
        model = build_model(args.model, ntoken=data.ntoken, num_hid=args.num_hid, v_dim=data.v_dim,
                            num_answers=data.num_answers, emb_dim=data.glove.shape[1])
        model.init_embedding(data.glove)
    if args.no_dropout:
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.p = 0.0
    loss_fn = build_loss(args.mode, num_hid=args.num_hid, entropy_penalty=args.entropy_penalty)
    reg = RegParameters(n_samples=args.n_samples, norm=args.norm, estimation=args.estimation,
                        optim_method=args.optim_method, grad=args.grad, lambda_=args.inf_lambda,
                        score_scale=args.inf_score_scale)
    return Objective(model, loss_fn, reg, legacy=args.inf_legacy, seed=args.seed)


def checkpoint_bytes(objective: Objective) -> int:
    """A checkpoint's size: the parameters and buffers, plus Adamax's two state tensors per parameter."""
    params = sum(p.numel() * p.element_size() for p in objective.parameters())
    buffers = sum(b.numel() * b.element_size() for b in objective.buffers())
    return 3 * params + buffers + 2**20


def open_records(args: argparse.Namespace, out_dir: Path, resume_ckpt: dict[str, Any] | None,
                 start: tuple[int, int], steps_per_epoch: int) -> Records:
    """The run's sinks; a resumed run drops what was recorded after its checkpoint."""
    tensorboard = None
    if args.tensorboard is not None:
        tensorboard = Path(args.tensorboard) if args.tensorboard else out_dir / "tensorboard"
    resumed_at = None if resume_ckpt is None else (start[0], start[0] * steps_per_epoch + start[1])
    return Records(out_dir, dist_utils.is_main(), tensorboard, resumed_at)


def describe_run(args: argparse.Namespace, data: TrainingData, objective: Objective) -> str:
    """The first log lines: the flags, the data's sizes and which wiring of the regulariser runs."""
    return "\n".join([f"args: {json.dumps(vars(args), sort_keys=True)}",
                      f"data: {len(data.train)} train / {len(data.eval)} {data.eval_name} questions, "
                      f"{data.num_answers} answers, {data.ntoken} words, features {data.num_boxes}x{data.v_dim}",
                      f"regulariser: {objective.describe()}"])


def train_one_epoch(run: Run, epoch: int) -> dict[str, Any] | None:
    """Train one epoch (from a mid-epoch checkpoint's step when resuming); its record, or None when
    --max_steps stopped the run."""
    args, t0 = run.args, time.time()
    first = run.start[1] if epoch == run.start[0] else 0
    run.sampler.set_epoch(epoch, skip=first * run.local_batch)
    loader = batch_loader(run.data.train, run.sampler, run.local_batch, num_workers=args.num_workers,
                          pin_memory=run.device.type == "cuda",
                          generator=torch.Generator().manual_seed(args.seed + epoch))
    running = run.resumed_running if first and run.resumed_running else {
        "sums": {"loss": 0.0, "score": 0.0, "n": 0}, "parts": {}}
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}", dynamic_ncols=True,
               disable=not dist_utils.is_main(), initial=first, total=first + len(loader))
    step = first
    for v, q, target, bias, _qid in bar:
        batch = (batch_features(run.data.train, v, run.device),
                 *(t.to(run.device, non_blocking=True) for t in (q, target, bias)))
        step_id = epoch * run.steps_per_epoch + step
        measure = step == 0 or step_id % args.log_every == 0  # not the resumed step: resume stays exact
        try:
            loss, logits, parts = train_step(run.train_model, run.optimizer, batch, step_id, args.grad_clip,
                                             run.amp, measure)
        except NonFiniteLoss as exc:
            run.checkpoint(epoch, step, running)
            raise VQAError(f"non-finite loss at epoch {epoch + 1}, step {step}: {exc}; the last good "
                           f"state is saved in {run.out_dir}") from None
        step += 1
        run.global_step += 1
        figures = accumulate(running, loss, logits, batch[2], parts)
        note_step(run, epoch, step_id + 1, figures, measure)
        bar.set_postfix(loss=f"{running['sums']['loss'] / running['sums']['n']:.3f}",
                        score=f"{100 * running['sums']['score'] / running['sums']['n']:.1f}")
        if args.checkpoint_every and step % args.checkpoint_every == 0:
            run.checkpoint(epoch, step, running)
        if args.max_steps and run.global_step >= args.max_steps:
            run.checkpoint(epoch, step, running)
            run.stopped_at = {"epoch": epoch, "step": step}
            return None
    return epoch_record(run, epoch, running, time.time() - t0)


SUMMED = ("floored", "grad_norm_task", "grad_norm_reg", "grad_norm_ratio", "measured")  # not batch means


def accumulate(running: dict[str, Any], loss: torch.Tensor, logits: torch.Tensor, target: torch.Tensor,
               parts: dict[str, torch.Tensor]) -> dict[str, float]:
    """Add a step to the epoch's sums (one host sync); returns the step's figures."""
    names = list(parts)
    loss_value, score, *values = torch.stack(
        [loss.float(), soft_scores(logits.float(), target).sum(), *(parts[k].float() for k in names)]).tolist()
    figures = dict(zip(names, values))
    if "grad_norm_reg" in figures:
        figures["grad_norm_ratio"] = figures["grad_norm_reg"] / max(figures["grad_norm_task"], 1e-30)
        figures["measured"] = 1.0
    b = target.shape[0]
    sums, part_sums = running["sums"], running["parts"]
    sums["loss"] += loss_value * b
    sums["score"] += score
    sums["n"] += b
    for name, value in figures.items():
        part_sums[name] = part_sums.get(name, 0.0) + value * (1 if name in SUMMED else b)
    return {"loss": loss_value, **figures}


def note_step(run: Run, epoch: int, global_step: int, figures: dict[str, float], measured: bool) -> None:
    """The step's loss to TensorBoard, a step record when measured, and a one-time warning per modality
    whose information score the floor lifted."""
    run.records.step_loss(global_step, figures["loss"])
    if measured:
        run.records.step({"epoch": epoch + 1, "global_step": global_step, **figures})
    if figures.get("floored", 0) > 0:
        floor = run.objective.reg.score_floor or Regularization.default_floor(torch.float32)
        for key, name in (("score_q", "question"), ("score_v", "image")):
            if figures[key] < floor and key not in run.warned:
                run.warned.add(key)
                run.records.line(f"warning: the {name} information score is {figures[key]:.3g} at step "
                                 f"{global_step} (the head ignores that modality); it is floored at {floor:.3g} "
                                 "to keep the regulariser finite, and counted per epoch as 'scores floored'")


def epoch_record(run: Run, epoch: int, running: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Global (all-rank) means of the epoch's sums."""
    sums, part_sums = running["sums"], running["parts"]
    names = sorted(part_sums)
    totals = dist_utils.all_reduce_sum([sums["loss"], sums["score"], sums["n"]] + [part_sums[k] for k in names])
    n = totals[2]
    record: dict[str, Any] = {"epoch": epoch + 1, "inf_lambda": run.args.inf_lambda, "train_loss": totals[0] / n,
                              "train_score": 100 * totals[1] / n, "seconds": seconds,
                              "samples_per_s": n / max(seconds, 1e-9)}
    means = {k: totals[3 + i] / (1 if k in SUMMED else n) for i, k in enumerate(names)}
    measured = means.pop("measured", 0)
    for key in ("grad_norm_task", "grad_norm_reg", "grad_norm_ratio"):
        if key in means:  # mean over the measured steps
            means[key] /= max(measured, 1)
    record.update(means)
    if "reg_loss" in means:
        record["reg_share"] = means["reg_loss"] / record["train_loss"] if record["train_loss"] else float("nan")
    return record


def evaluate_epoch(run: Run, epoch: int) -> dict[str, Any]:
    """The epoch's evaluation (the validation split when there is one) and the epoch selection on it."""
    data = run.data
    split, name = (data.val, "val") if data.val is not None else (data.eval, data.eval_name)
    ev = evaluate(run.objective.model, split, run.local_batch, run.args.num_workers, run.device, run.amp, name)
    if data.val is not None and run.args.select_on == "val":
        (overall,) = dist_utils.all_reduce_sum([ev.official.get("overall", 0.0)])  # rank 0's, on every rank
        if run.selected is None or overall > run.selected["val"]["overall"]:
            run.selected = {"epoch": epoch + 1, "val": {**ev.record(), "overall": overall}}
            if dist_utils.is_main():
                ckpts.save_checkpoint(run.out_dir / "best_val.pth", {"epoch": epoch + 1,
                                                                     "model": run.objective.model.state_dict()})
    return {name: ev.record()}


@contextlib.contextmanager
def model_saved_on_failure(run: Run, epoch: int) -> Iterator[None]:
    """An evaluation that fails keeps the trained model: model.pth is written before the error goes on."""
    try:
        yield
    except Exception:
        run.save_model(epoch)
        run.records.line(f"evaluation failed; the trained model is saved in {run.out_dir / 'model.pth'}")
        raise


def end_epoch(run: Run, record: dict[str, Any]) -> None:
    run.history.append(record)
    run.records.epoch(record)
    run.checkpoint(record["epoch"], 0)


def finish(run: Run) -> dict[str, Any]:
    """Final model, test evaluation (once, when a validation split chose the epoch) and results.json."""
    args, data = run.args, run.data
    results: dict[str, Any] = {"epochs": args.epochs, "history": run.history}
    if data.val is not None:
        chosen = run.selected["epoch"] if run.selected is not None and args.select_on == "val" else args.epochs
        if chosen != args.epochs:
            dist_utils.barrier()  # rank 0 wrote best_val.pth
            run.objective.model.load_state_dict(ckpts.safe_load(run.out_dir / "best_val.pth")["model"])
        run.save_model(args.epochs)
        with model_saved_on_failure(run, args.epochs):
            ev = evaluate(run.objective.model, data.eval, run.local_batch, args.num_workers, run.device, run.amp,
                          data.eval_name)
        results["selected_epoch"] = chosen
        results[data.eval_name] = ev.record()
        run.records.line(f"selected epoch {chosen} on val; {data.eval_name} evaluated once:")
        run.records.line(f"\teval score: {100 * ev.soft_score:.2f} ({100 * ev.upper_bound:.2f})")
    else:
        run.save_model(args.epochs)
        results["selected_epoch"] = args.epochs
        results[data.eval_name] = run.history[-1].get(data.eval_name) if run.history else None
    if dist_utils.is_main():
        write_json(run.out_dir / "results.json", results, indent=2)
        print_table(results[data.eval_name] or {}, run.history, data.eval_name)
    return results


def print_table(final: dict[str, Any], history: list[dict[str, Any]], split: str) -> None:
    """The closing accuracy table and the per-modality information scores."""
    if not final or "overall" not in final:
        return
    per = final.get("perAnswerType", {})
    cols = ["overall"] + sorted(per)
    print(f"\nofficial VQA accuracy on {split}:", file=sys.stderr)
    print("| " + " | ".join(cols) + " |", file=sys.stderr)
    print("|" + "---|" * len(cols), file=sys.stderr)
    print("| " + " | ".join(f"{final['overall']:.2f}" if c == "overall" else f"{per[c]:.2f}" for c in cols)
          + " |", file=sys.stderr)
    last = history[-1] if history else {}
    if "score_q" in last:
        total = last["score_q"] + last["score_v"]
        share = (lambda x: 100 * x / total) if total > 0 else (lambda x: float("nan"))
        print(f"information score (last epoch mean): question {last['score_q']:.4g} ({share(last['score_q']):.1f}%), "
              f"image {last['score_v']:.4g} ({share(last['score_v']):.1f}%)", file=sys.stderr)
