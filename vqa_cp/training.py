"""The training loop behind main.py: one readable loop, single process or torchrun.

Per step: trunk once -> head -> debiasing loss (+ lambda * functional-entropy term), Adamax,
gradient-norm clip 0.25. Per epoch: evaluation with the official VQA accuracy, log.txt in the
reference wording, metrics.jsonl, and an atomic checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.nn.utils import parametrize
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from vqa_cp import checkpoints as ckpts
from vqa_cp import distributed as dist_utils
from vqa_cp.dataset import load_training_data
from vqa_cp.errors import VQAError
from vqa_cp.evaluation import official_accuracy_from_dataset
from vqa_cp.files import write_json, write_text
from vqa_cp.losses import LearnedMixin, build_loss
from vqa_cp.model import build_model
from vqa_cp.regularization import RegParameters, information_regularizer

MODES = ("none", "reweight", "bias_product", "learned_mixin")
TOY_DEFAULTS = {"epochs": 8, "num_hid": 256, "batch_size": 64, "inf_lambda": 1e-8, "num_workers": 0}
REAL_DEFAULTS = {"epochs": 15, "num_hid": 1024, "batch_size": 512, "inf_lambda": 0.0, "num_workers": 2}


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _nonnegative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a non-negative number, got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "y"):
        return True
    if text.lower() in ("0", "false", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text}")


def build_parser() -> argparse.ArgumentParser:
    """Flags of the reference main.py (same names and defaults) plus ours."""
    p = argparse.ArgumentParser(
        prog="main.py", description="Train BUTD on VQA-CP v2 with a debiasing ensemble and the "
        "functional-entropy regulariser; evaluate with the official VQA accuracy.")
    p.add_argument("--output", default="saved_models", help="output folder (log.txt, metrics.jsonl, checkpoints)")
    p.add_argument("--seed", type=int, default=1111)
    p.add_argument("--data", default=None, help="data folder holding processed/ (default data, or data/toy)")
    p.add_argument("--toy", action="store_true", help="generate, process and train on the toy benchmark")
    p.add_argument("--nocp", action="store_true", help="VQA v2 (train2014 / val2014) instead of VQA-CP v2")
    p.add_argument("--cache_features", action="store_true", help="load all features into RAM once")
    p.add_argument("--cache_dtype", choices=("float16", "float32"), default="float16")
    p.add_argument("--eval_each_epoch", action="store_true")
    p.add_argument("--mode", choices=MODES, default="learned_mixin", help="debiasing objective")
    p.add_argument("-p", "--entropy_penalty", type=_nonnegative_float, default=0.36,
                   help="learned-mixin +H entropy weight (0 = plain learned-mixin)")
    p.add_argument("--epochs", type=_positive_int, default=None, help="default 15 (toy: 8)")
    p.add_argument("--num_hid", type=_positive_int, default=None, help="default 1024 (toy: 256)")
    p.add_argument("--model", choices=("baseline0_newatt", "baseline0"), default="baseline0_newatt")
    p.add_argument("--batch_size", type=_positive_int, default=None, help="global batch, default 512 (toy: 64)")
    p.add_argument("--num_workers", type=int, default=None, help="DataLoader workers, default 2 (toy: 0)")
    p.add_argument("--lr", type=_positive_float, default=0.002)
    p.add_argument("--grad_clip", type=_positive_float, default=0.25)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--amp", choices=("none", "bf16"), default="none", help="bf16 autocast")
    p.add_argument("--deterministic", action="store_true", help="bit-identical CPU runs")
    p.add_argument("--no_dropout", action="store_true", help="disable dropout (for equivalence tests)")
    # regulariser
    g = p.add_argument_group("functional-entropy regulariser")
    g.add_argument("--inf_lambda", type=_nonnegative_float, default=None,
                   help="strength of the regulariser; 0 = off (default 0; toy: 1e-8)")
    g.add_argument("--norm", "--inf_norm", dest="norm", type=_positive_float, default=2.0)
    g.add_argument("--estimation", "--inf_reg", dest="estimation", choices=("ent", "var", "dif_ent"), default="ent")
    g.add_argument("--optim_method", choices=("max_ent", "min_ent", "max_ent_minus"), default="max_ent")
    g.add_argument("--n_samples", type=_positive_int, default=3)
    g.add_argument("--grad", action=argparse.BooleanOptionalAction, default=True,
                   help="gradient (log-Sobolev) bound; --no-grad: gradient-free estimate")
    g.add_argument("--inf_grad", dest="grad", type=_bool, help="alias of --grad/--no-grad: true or false")
    g.add_argument("--inf_legacy", action="store_true",
                   help="the published code's wiring: a second trunk pass, the noise std differentiated, "
                        "reversed BCE arguments")
    g.add_argument("--inf_score_scale", choices=("paper", "per_question"), default="paper",
                   help="information scores as published (~1/(batch x answers)^2) or per question (batch-size "
                        "free; lambda then means something else, see docs/notes/regulariser.md)")
    # validation / selection
    p.add_argument("--val_fraction", type=_fraction, default=0.0,
                   help="hold out this fraction of training questions (split by image) for validation")
    p.add_argument("--select_on", choices=("last", "val"), default="last",
                   help="report the last epoch, or the epoch best on the validation split")
    # checkpoints
    p.add_argument("--resume", metavar="OUTPUT_DIR", default=None, help="continue a run from its newest checkpoint")
    p.add_argument("--load", metavar="CKPT", default=None, help="initialise the model from a checkpoint")
    p.add_argument("--dictionary", default=None, help="word list the --load checkpoint was trained with")
    p.add_argument("--answers", default=None, help="answer list the --load checkpoint was trained with")
    p.add_argument("--checkpoint_every", type=int, default=0, help="also checkpoint every N steps (0 = per epoch)")
    p.add_argument("--max_steps", type=int, default=0, help=argparse.SUPPRESS)  # tests: stop early
    p.add_argument("--features_on_gpu", action="store_true",
                   help="with --cache_features: keep the feature tensor on the training device (GPU memory) "
                   "and gather batches there, no host-to-device copy per step")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    defaults = TOY_DEFAULTS if args.toy else REAL_DEFAULTS
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.data is None:
        args.data = "data/toy" if args.toy else "data"
    if args.toy:
        args.eval_each_epoch = True  # a toy epoch's evaluation takes about a second
    if args.select_on == "val" and args.val_fraction <= 0:
        raise VQAError("--select_on val needs a validation split: add --val_fraction F (e.g. 0.1)")
    if args.features_on_gpu and not args.cache_features:
        raise VQAError("--features_on_gpu needs --cache_features")
    if args.num_workers < 0:
        raise VQAError(f"--num_workers must be >= 0, got {args.num_workers}")
    return args


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


class Objective(nn.Module):
    """Model + debiasing loss + regulariser; forward returns the training loss and its parts.

    loss = L_debias(joint, logits, b, y) + lambda * R(q_emb, v_emb), the trunk computed once.
    Wrapping this module (not the model) in DDP keeps the double backward local and all-reduces
    the parameter gradients once.
    """

    def __init__(self, model: nn.Module, loss_fn: nn.Module, reg: RegParameters, legacy: bool = False,
                 seed: int = 0) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn
        self.reg = reg
        self.legacy = legacy
        self.seed = seed

    def perturbation_noise(self, inputs: tuple[torch.Tensor, ...], batch: int, step_id: int) -> list[torch.Tensor]:
        """Standard-normal draws of this step for this rank's rows, [batch * n, ...] sample-major.

        Drawn for the whole global batch from a generator seeded by (seed, step) and sliced as the
        ranks split the batch (rank r holds global positions r, r + W, ...), so the noise of a
        question does not depend on the number of processes, nor on the global RNG (exact resume).
        """
        n, rank, world = self.reg.n_samples, dist_utils.rank(), dist_utils.world_size()
        device = inputs[0].device
        generator = torch.Generator(device=device)
        generator.manual_seed(self.seed * 1_000_003 + step_id)
        noise = []
        for x in inputs:
            full = torch.randn((batch * world, n, *x.shape[1:]), generator=generator, device=device)
            noise.append(full[rank::world].reshape(batch * n, *x.shape[1:]))
        return noise

    def forward(self, v: torch.Tensor, q: torch.Tensor, target: torch.Tensor, bias: torch.Tensor, step_id: int = 0
                ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        q_emb, v_emb = self.model.trunk(v, q)
        logits, joint = self.model.head(q_emb, v_emb)
        if isinstance(self.loss_fn, LearnedMixin):  # the losses compute in float32 whatever the autocast
            parts = self.loss_fn.terms(joint, logits, bias, target)
        else:
            parts = {"task_loss": self.loss_fn(joint, logits, bias, target)}
        loss = sum(parts.values())
        if self.reg.lambda_ > 0:
            # legacy: the published code's second trunk pass over the same batch (fresh dropout masks)
            inputs = self.model.trunk(v, q) if self.legacy else (q_emb, v_emb)
            noise = self.perturbation_noise((q_emb, v_emb), v.shape[0], step_id)
            out = information_regularizer(self.model.head, inputs, logits, self.reg, legacy=self.legacy,
                                          noise=noise, all_reduce=dist_utils.differentiable_all_reduce(),
                                          world_size=dist_utils.world_size())
            parts["reg_loss"] = self.reg.lambda_ * out.term
            loss = loss + parts["reg_loss"]
            parts["reg_term"] = out.term
            parts["score_q"] = out.scores[0]
            parts["score_v"] = out.scores[1]
            parts["floored"] = out.floored.float()
        return loss, logits, parts


class NonFiniteLoss(Exception):
    """A training step produced a non-finite loss; the message names the terms."""


TERM_NAMES = {"task_loss": "task loss", "entropy_penalty": "entropy penalty", "reg_term": "regulariser term",
              "reg_loss": "regulariser (lambda x term)", "score_q": "question information score",
              "score_v": "image information score"}


def train_step(train_model: nn.Module, optimizer: torch.optim.Optimizer,
               batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], step_id: int, grad_clip: float,
               amp: bool = False) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """One optimisation step of the objective (possibly DDP-wrapped): forward, backward, clip, Adamax.

    Weight-normalised matrices are computed once per step (parametrize.cached): the regulariser calls
    the head a second time. Raises NonFiniteLoss before touching the parameters (one host sync).
    """
    v, q, target, bias = batch
    with parametrize.cached():
        with torch.autocast(v.device.type, dtype=torch.bfloat16, enabled=amp):
            loss, logits, parts = train_model(v, q, target, bias, step_id)
        if not torch.isfinite(torch.cat([t.detach().reshape(-1).float() for t in (loss, *parts.values())])).all():
            bad = [name for name, value in parts.items() if not torch.isfinite(value).all()]
            raise NonFiniteLoss(", ".join(TERM_NAMES.get(b, b) for b in bad) or "total loss")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    return loss.detach(), logits.detach(), parts


@dataclass
class EvalOutput:
    question_ids: np.ndarray
    predictions: list[str]
    soft_score: float  # mean soft score of the argmax answer (the trainer's approximate accuracy)
    upper_bound: float  # mean of the best soft score a question allows
    official: dict[str, Any]  # {"overall", "perAnswerType"} official VQA accuracy


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
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, pin_memory=device.type == "cuda",
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


class Logger:
    """log.txt in the reference's wording, appended (resume continues the same file)."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path = path
        self.enabled = enabled

    def write(self, line: str) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
        tqdm.write(line)


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line; lines of epochs at or after this one (from a killed run) are dropped."""
    lines = []
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip() and json.loads(line)["epoch"] < record["epoch"]:
                lines.append(line)
    lines.append(json.dumps(record))
    write_text(path, "\n".join(lines) + "\n")


def truncate_log(path: Path, epochs_done: int) -> None:
    """On resume, drop log.txt lines written after the checkpoint's epoch (no duplicated lines)."""
    if not path.exists():
        return
    kept, count = [], 0
    for line in path.read_text().splitlines():
        if line.startswith("epoch "):
            count += 1
        if count > epochs_done:
            break
        kept.append(line)
    write_text(path, "".join(k + "\n" for k in kept))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train, evaluate and save; returns the final results dict (also written to results.json)."""
    args = parse_args(argv)
    resume_path, resume_ckpt = None, None
    if args.resume:
        resume_path, resume_ckpt = ckpts.load_newest_checkpoint(args.resume)
        saved = resume_ckpt["args"]
        for key in ("resume", "max_steps"):
            saved[key] = getattr(args, key)
        args = argparse.Namespace(**saved)
        args.output = str(Path(args.resume))
    dist_utils.setup()
    try:
        results = _train(args, resume_path, resume_ckpt)
        dist_utils.barrier()  # no rank tears the group down while rank 0 still writes its files
        return results
    finally:
        dist_utils.teardown()


def training_state(objective: Objective, optimizer: torch.optim.Optimizer, args: argparse.Namespace, data,
                   history: list[dict[str, Any]], epoch: int, step: int, running: dict[str, Any] | None = None
                   ) -> dict[str, Any]:
    """Our checkpoint dict: after `step` steps of epoch `epoch` (0-based; step 0 = the epoch's start).

    `running` holds the epoch's loss sums so far, for a checkpoint taken in the middle of an epoch.
    """
    return {
        "version": ckpts.CHECKPOINT_VERSION, "model": objective.model.state_dict(),
        "loss_fn": objective.loss_fn.state_dict(), "optimizer": optimizer.state_dict(),
        "epoch": epoch, "step": step, "args": vars(args), "rng": ckpts.rng_state(), "history": history,
        "words_digest": ckpts.digest(data.words), "answers_digest": ckpts.digest(data.answers),
        "num_words": len(data.words), "num_answers": len(data.answers), "model_name": args.model,
        "running": running,
    }


def _train(args: argparse.Namespace, resume_path: Path | None, resume_ckpt: dict[str, Any] | None
           ) -> dict[str, Any]:
    device = pick_device(args.device)
    if dist_utils.world_size() > 1 and args.device == "auto" and torch.cuda.is_available():
        device = torch.device("cuda", dist_utils.local_rank())
    world = dist_utils.world_size()
    if args.batch_size % world:
        raise VQAError(f"--batch_size {args.batch_size} is not divisible by the world size {world}")
    if args.deterministic:
        torch.use_deterministic_algorithms(True)
    if args.toy:
        from vqa_cp.toy import ensure_toy_data
        if dist_utils.is_main():
            ensure_toy_data(args.data)
        dist_utils.barrier()
    amp = args.amp == "bf16"
    if amp and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise VQAError("--amp bf16: this GPU does not support bfloat16")

    seed_everything(args.seed)
    data = load_training_data(args.data, nocp=args.nocp, cache_features=args.cache_features,
                              cache_dtype=args.cache_dtype, val_fraction=args.val_fraction, seed=args.seed)
    if args.features_on_gpu:
        data.features.keep_on_device(device)
    if args.load:  # sizes and variant come from the checkpoint's tensors
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
                        score_scale=getattr(args, "inf_score_scale", "paper"))  # (older checkpoints' args lack it)
    objective = Objective(model, loss_fn, reg, legacy=args.inf_legacy, seed=args.seed).to(device)
    optimizer = torch.optim.Adamax([p for p in objective.parameters() if p.requires_grad], lr=args.lr)

    out_dir = Path(args.output)
    start_epoch, start_step = 0, 0
    history: list[dict[str, Any]] = []
    if resume_ckpt is not None:
        ckpts.check_lists(resume_path, resume_ckpt, data.words, data.answers)
        objective.model.load_state_dict(resume_ckpt["model"])
        objective.loss_fn.load_state_dict(resume_ckpt["loss_fn"])
        optimizer.load_state_dict(resume_ckpt["optimizer"])
        start_epoch, start_step = resume_ckpt["epoch"], resume_ckpt["step"]
        history = list(resume_ckpt.get("history", []))
    if dist_utils.is_main():
        out_dir.mkdir(parents=True, exist_ok=True)
        if resume_ckpt is None:
            for name in ("log.txt", "metrics.jsonl"):
                (out_dir / name).unlink(missing_ok=True)
        else:
            truncate_log(out_dir / "log.txt", start_epoch)
    logger = Logger(out_dir / "log.txt", dist_utils.is_main())
    if resume_ckpt is None:
        logger.write(f"args: {json.dumps(vars(args), sort_keys=True)}")
        logger.write(f"data: {len(data.train)} train / {len(data.eval)} {data.eval_name} questions, "
                     f"{data.num_answers} answers, {data.ntoken} words, features {data.num_boxes}x{data.v_dim}")
    else:
        logger.write(f"resumed from {resume_path.name} (epoch {start_epoch}, step {start_step})")

    train_model = dist_utils.wrap_ddp(objective, device)
    local_batch = args.batch_size // world
    sampler = dist_utils.EpochSampler(len(data.train), seed=args.seed, rank=dist_utils.rank(), world=world)
    steps_per_epoch = math.ceil(sampler.per_rank / local_batch)

    def checkpoint(epoch: int, step: int) -> None:
        if not dist_utils.is_main():
            return
        state = training_state(objective, optimizer, args, data, history, epoch, step,
                               running if step > 0 else None)
        ckpts.save_checkpoint(out_dir / ckpts.checkpoint_name(epoch, step), state)
        ckpts.prune_checkpoints(out_dir)

    if resume_ckpt is not None:
        ckpts.set_rng_state(resume_ckpt["rng"])
    global_step = 0
    running: dict[str, Any] = {}
    selected = max((r for r in history if "val" in r), key=lambda r: r["val"]["overall"], default=None)
    for epoch in range(start_epoch, args.epochs):
        t0 = time.time()
        first = start_step if epoch == start_epoch else 0
        sampler.set_epoch(epoch, skip=first * local_batch)
        loader = DataLoader(data.train, batch_size=local_batch, sampler=sampler, num_workers=args.num_workers,
                            generator=torch.Generator().manual_seed(args.seed + epoch),
                            pin_memory=device.type == "cuda", drop_last=False)
        if first and resume_ckpt is not None and resume_ckpt.get("running"):
            running = resume_ckpt["running"]  # the sums of the steps before the mid-epoch checkpoint
        else:
            running = {"sums": {"loss": 0.0, "score": 0.0, "n": 0}, "parts": {}}
        sums, part_sums = running["sums"], running["parts"]
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}", dynamic_ncols=True,
                   disable=not dist_utils.is_main(), initial=first, total=first + len(loader))
        step = first
        for v, q, target, bias, _qid in bar:
            v = batch_features(data.train, v, device)
            q, target, bias = (t.to(device, non_blocking=True) for t in (q, target, bias))
            try:
                loss, logits, parts = train_step(train_model, optimizer, (v, q, target, bias),
                                                 epoch * steps_per_epoch + step, args.grad_clip, amp)
            except NonFiniteLoss as exc:
                checkpoint(epoch, step)
                raise VQAError(f"non-finite loss at epoch {epoch + 1}, step {step}: {exc}; the last good "
                               f"state is saved in {out_dir}") from None
            step += 1
            global_step += 1
            b = target.shape[0]
            # one host sync for the step's figures
            batch_loss, batch_score, *part_values = torch.stack(
                [loss.float(), soft_scores(logits.float(), target).sum(),
                 *(value.detach().float() for value in parts.values())]).tolist()
            sums["loss"] += batch_loss * b
            sums["score"] += batch_score
            sums["n"] += b
            for name, value in zip(parts, part_values):
                weight = 1 if name == "floored" else b  # floored is a count, the rest batch means
                part_sums[name] = part_sums.get(name, 0.0) + value * weight
            bar.set_postfix(loss=f"{sums['loss'] / sums['n']:.3f}", score=f"{100 * sums['score'] / sums['n']:.1f}")
            if args.checkpoint_every and step % args.checkpoint_every == 0:
                checkpoint(epoch, step)
            if args.max_steps and global_step >= args.max_steps:
                checkpoint(epoch, step)
                return {"stopped_at": {"epoch": epoch, "step": step}}
        totals = dist_utils.all_reduce_sum([sums["loss"], sums["score"], sums["n"]]
                                           + [part_sums[k] for k in sorted(part_sums)])
        n = totals[2]
        train_loss, train_score = totals[0] / n, 100 * totals[1] / n
        part_means = {k: totals[3 + i] / (1 if k == "floored" else n) for i, k in enumerate(sorted(part_sums))}
        seconds = time.time() - t0
        record: dict[str, Any] = {"epoch": epoch + 1, "inf_lambda": args.inf_lambda, "train_loss": train_loss,
                                  "train_score": train_score,
                                  "seconds": seconds, "samples_per_s": n / max(seconds, 1e-9)}
        record.update(part_means)
        logger.write(f"epoch {epoch + 1}, time: {seconds:.2f}")
        logger.write(f"\ttrain_loss: {train_loss:.2f}, score: {train_score:.2f}")
        if "reg_term" in part_means:
            logger.write(f"\tregulariser: {part_means['reg_term']:.4g}, information score q: "
                         f"{part_means['score_q']:.4g}, v: {part_means['score_v']:.4g}, "
                         f"scores floored: {int(part_means['floored'])}")
        last = epoch + 1 == args.epochs
        if args.eval_each_epoch or last or data.val is not None:
            eval_set, eval_name = (data.val, "val") if data.val is not None else (data.eval, data.eval_name)
            ev = evaluate(objective.model, eval_set, local_batch, args.num_workers, device, amp, eval_name)
            record[eval_name] = {"soft_score": 100 * ev.soft_score, "upper_bound": 100 * ev.upper_bound,
                                 **ev.official}
            logger.write(f"\teval score: {100 * ev.soft_score:.2f} ({100 * ev.upper_bound:.2f})")
            if ev.official:
                per = ev.official["perAnswerType"]
                logger.write(f"\tofficial {eval_name} accuracy: {ev.official['overall']:.2f} "
                             + " ".join(f"{k}: {per[k]:.2f}" for k in sorted(per)))
            if data.val is not None and args.select_on == "val" and dist_utils.is_main() and (
                    selected is None or ev.official["overall"] > selected["val"]["overall"]):
                selected = record
                ckpts.save_checkpoint(out_dir / "best_val.pth", {"epoch": epoch + 1,
                                                                 "model": objective.model.state_dict()})
        history.append(record)
        if dist_utils.is_main():
            append_metrics(out_dir / "metrics.jsonl", record)
        checkpoint(epoch + 1, 0)

    return _finish(args, data, objective, optimizer, history, selected, device, amp, local_batch, out_dir, logger)


def _finish(args, data, objective, optimizer, history, selected, device, amp, local_batch,
            out_dir: Path, logger: Logger) -> dict[str, Any]:
    """Final model, test evaluation (once, when a validation split chose the epoch) and results.json."""
    results: dict[str, Any] = {"epochs": args.epochs, "history": history}
    if data.val is not None:
        if selected is not None and args.select_on == "val":
            objective.model.load_state_dict(ckpts.safe_load(out_dir / "best_val.pth")["model"])
        chosen = selected["epoch"] if selected is not None and args.select_on == "val" else args.epochs
        ev = evaluate(objective.model, data.eval, local_batch, args.num_workers, device, amp, data.eval_name)
        results["selected_epoch"] = chosen
        results[data.eval_name] = {"soft_score": 100 * ev.soft_score, "upper_bound": 100 * ev.upper_bound,
                                   **ev.official}
        logger.write(f"selected epoch {chosen} on val; {data.eval_name} evaluated once:")
        logger.write(f"\teval score: {100 * ev.soft_score:.2f} ({100 * ev.upper_bound:.2f})")
    else:
        results["selected_epoch"] = args.epochs
        results[data.eval_name] = history[-1].get(data.eval_name) if history else None
    final = results[data.eval_name] or {}
    if dist_utils.is_main():
        state = training_state(objective, optimizer, args, data, history, args.epochs, 0)
        ckpts.save_checkpoint(out_dir / "model.pth", state)
        write_json(out_dir / "results.json", results, indent=2)
        print_table(final, history, data.eval_name)
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

