"""The functional-entropy regulariser over a few hundred real-size training steps (issue #13).

BUTD (num_hid 1024, 36 boxes x 2048), 2,000 answers, learned-mixin +H, lambda 1e-10, Adamax 0.002, clip
0.25, the project's `Objective` / `train_step`, on synthetic data with a learnable signal: the last
word gives one of 10 question types, the boxes carry the prototype of one of 200 image concepts, the
answer is type x 200 + concept, concepts are skewed per type (the question-type prior b is that skew).

Part 1, at initialisation (one step each, float32, batch 128 and 512): both wirings' information
scores, the term, the regulariser's share of the loss (lambda x term / task loss) and the ratio of
gradient norms ||d (lambda term) / d theta|| / ||d task / d theta||.
Part 2, training (batch 32, 150 steps per wiring, both wirings): per step the scores, the term, the
share and the floored count; every --every steps the gradient-norm ratio. Prints a summary; --write
puts it in bench/REG_TRAINING.md. Time: a step at batch 32 took ~0.6 s (legacy) in a quiet stretch on
2 CPU threads, so the whole run is ~5 minutes on 2 idle cores; the recorded run took 31 minutes with
the 2 cores shared by other jobs (load ~9).

    python -m bench.bench_reg_training [--steps 150] [--batch 32] [--every 25] [--quick] [--write]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from vqa_cp.errors import run_cli
from vqa_cp.losses import build_loss
from vqa_cp.model import build_model
from vqa_cp.objective import Objective
from vqa_cp.regularization import RegParameters
from vqa_cp.training import soft_scores, train_step

TYPES, CONCEPTS = 10, 200
ANSWERS = TYPES * CONCEPTS
NTOKEN, TOKENS, BOXES, V_DIM, HID = 60, 14, 36, 2048, 1024
TASK_PARTS = ("task_loss", "entropy_penalty")
RESULTS = Path(__file__).with_name("REG_TRAINING.md")
Batch = tuple[Tensor, Tensor, Tensor, Tensor]


class SyntheticVQA:
    """Batches with a signal in both modalities (see the module docstring); one fixed distribution."""

    def __init__(self, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.prototypes = torch.rand(CONCEPTS, V_DIM, generator=g)
        skew = 1.0 / (1.0 + torch.arange(CONCEPTS, dtype=torch.float32))  # Zipf-like, a per-type order
        self.concept_probs = torch.stack([skew[torch.randperm(CONCEPTS, generator=g)] for _ in range(TYPES)])
        self.concept_probs /= self.concept_probs.sum(1, keepdim=True)
        self.prior = torch.zeros(TYPES, ANSWERS)  # the question-type bias: p(answer | type)
        for t in range(TYPES):
            self.prior[t, t * CONCEPTS:(t + 1) * CONCEPTS] = self.concept_probs[t]

    def batch(self, size: int, seed: int) -> Batch:
        g = torch.Generator().manual_seed(seed)
        types = torch.randint(0, TYPES, (size,), generator=g)
        concepts = torch.multinomial(self.concept_probs[types], 1, generator=g).squeeze(1)
        v = 0.5 * torch.rand(size, BOXES, V_DIM, generator=g) + 0.5 * self.prototypes[concepts].unsqueeze(1)
        q = torch.randint(TYPES, NTOKEN, (size, TOKENS), generator=g)
        q[:, -1] = types  # the last real word (questions are left-padded)
        target = torch.zeros(size, ANSWERS)
        target[torch.arange(size), types * CONCEPTS + concepts] = 1.0
        return v, q, target, self.prior[types]


def new_objective(legacy: bool, lambda_: float, dropout: bool, seed: int = 0) -> Objective:
    torch.manual_seed(seed)
    model = build_model("baseline0_newatt", ntoken=NTOKEN, num_hid=HID, v_dim=V_DIM, num_answers=ANSWERS)
    if not dropout:
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.p = 0.0
    return Objective(model, build_loss("learned_mixin", num_hid=HID), RegParameters(lambda_=lambda_),
                     legacy=legacy, seed=seed)


def grad_norm(tensors: tuple[Tensor, ...]) -> float:
    return math.sqrt(sum(float(t.double().square().sum()) for t in tensors))


@dataclass
class Probe:
    """One forward of the objective and the gradient norms of its two parts (no parameter update)."""

    score_q: float
    score_v: float
    term: float
    share: float  # lambda x term / task loss (task loss = LMH + entropy penalty)
    floored: int
    ratio: float  # ||grad of lambda x term|| / ||grad of the task loss||


def probe(objective: Objective, data: Batch, step_id: int) -> Probe:
    params = [p for p in objective.parameters() if p.requires_grad]
    with parametrize.cached():
        _, _, parts = objective(*data, step_id=step_id)
        task = sum(parts[k] for k in TASK_PARTS if k in parts)
        figures = {k: float(v.detach()) for k, v in parts.items()}
        g_reg = torch.autograd.grad(parts["reg_loss"], params, retain_graph=True, allow_unused=True,
                                    materialize_grads=True)
        g_task = torch.autograd.grad(task, params, allow_unused=True, materialize_grads=True)
    share = figures["reg_loss"] / float(task.detach())
    return Probe(figures["score_q"], figures["score_v"], figures["reg_term"], share, int(figures["floored"]),
                 grad_norm(g_reg) / grad_norm(g_task))


@dataclass
class Run:
    legacy: bool
    steps: list[dict[str, float]] = field(default_factory=list)
    ratios: dict[int, float] = field(default_factory=dict)
    seconds: float = 0.0


def train(legacy: bool, data: SyntheticVQA, args: argparse.Namespace) -> Run:
    objective = new_objective(legacy, args.inf_lambda, not args.no_dropout)
    optimizer = torch.optim.Adamax([p for p in objective.parameters() if p.requires_grad], lr=2e-3)
    run = Run(legacy)
    start = time.perf_counter()
    for step in range(args.steps):
        batch = data.batch(args.batch, seed=10_000 + step)
        if step % args.every == 0 or step == args.steps - 1:
            run.ratios[step] = probe(objective, batch, step).ratio
        _, logits, parts = train_step(objective, optimizer, batch, step, grad_clip=0.25)
        task = sum(float(parts[k]) for k in TASK_PARTS if k in parts)
        run.steps.append({"score_q": float(parts["score_q"]), "score_v": float(parts["score_v"]),
                          "term": float(parts["reg_term"]), "share": float(parts["reg_loss"]) / task,
                          "task": task, "floored": float(parts["floored"]),
                          "accuracy": 100 * float(soft_scores(logits.float(), batch[2]).mean())})
        if step % args.every == 0:
            s = run.steps[-1]
            print(f"  {'legacy' if legacy else 'default'} step {step:>4}: q {s['score_q']:.3g} v {s['score_v']:.3g} "
                  f"term {s['term']:.3g} share {s['share']:.3g} floored {int(s['floored'])} task {task:.2f} "
                  f"acc {s['accuracy']:.1f} ratio {run.ratios[step]:.3g} ({time.perf_counter() - start:.0f} s)",
                  flush=True)
    run.seconds = time.perf_counter() - start
    return run


def wiring(legacy: bool) -> str:
    return "`--inf_legacy`" if legacy else "default"


def init_table(rows: list[tuple[bool, int, Probe]]) -> list[str]:
    out = ["| wiring | batch | score q | score v | term | lambda x term / task loss | grad-norm ratio reg / task "
           "| floored |", "|---|---|---|---|---|---|---|---|"]
    for legacy, size, p in rows:
        out.append(f"| {wiring(legacy)} | {size} | {p.score_q:.3g} | {p.score_v:.3g} | {p.term:.3g} | {p.share:.3g} "
                   f"| {p.ratio:.3g} | {p.floored} |")
    by = {(legacy, size): p for legacy, size, p in rows}
    for size in sorted({size for _, size, _ in rows}):
        if (False, size) in by and (True, size) in by:
            d, lg = by[False, size], by[True, size]
            out.append(f"\nBatch {size}: default / legacy score ratio q {d.score_q / lg.score_q:.3g}, "
                       f"v {d.score_v / lg.score_v:.3g}; term ratio legacy / default {lg.term / d.term:.3g}.")
    return out


def training_table(run: Run, every: int) -> list[str]:
    out = [f"\n### {wiring(run.legacy)} wiring: {len(run.steps)} steps, {run.seconds:.0f} s",
           "| step | score q | score v | term | lambda x term / task loss | floored | task loss | batch accuracy "
           "| grad-norm ratio |", "|---|---|---|---|---|---|---|---|---|"]
    for step in sorted(run.ratios):
        s = run.steps[step]
        out.append(f"| {step} | {s['score_q']:.3g} | {s['score_v']:.3g} | {s['term']:.3g} | {s['share']:.3g} | "
                   f"{int(s['floored'])} | {s['task']:.2f} | {s['accuracy']:.1f} | {run.ratios[step]:.3g} |")
    qs = [s["score_q"] for s in run.steps]
    vs = [s["score_v"] for s in run.steps]
    shares = [s["share"] for s in run.steps]
    last = run.steps[-every:]
    out.append(f"\nOver all steps: score q {min(qs):.3g} .. {max(qs):.3g}, score v {min(vs):.3g} .. {max(vs):.3g}, "
               f"share {min(shares):.3g} .. {max(shares):.3g} (median {statistics.median(shares):.3g}), "
               f"scores floored {int(sum(s['floored'] for s in run.steps))} in total; batch accuracy over the "
               f"last {len(last)} steps {statistics.mean(s['accuracy'] for s in last):.1f} %.")
    return out


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=150, help="training steps per wiring")
    p.add_argument("--batch", type=int, default=32, help="training batch")
    p.add_argument("--every", type=int, default=25, help="gradient-norm ratio every N steps")
    p.add_argument("--init_batches", type=int, nargs="*", default=[128, 512], help="part 1 batches")
    p.add_argument("--inf_lambda", type=float, default=1e-10)
    p.add_argument("--no_dropout", action="store_true", help="dropout off (default: on, as in training)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--part", default="all", choices=("1", "2", "all"))
    p.add_argument("--quick", action="store_true", help="10 steps, batch 32, part 1 at batch 32 only")
    p.add_argument("--write", action="store_true", help=f"write {RESULTS.name}")
    args = p.parse_args()
    if args.quick:
        args.steps, args.batch, args.every, args.init_batches = 10, 32, 5, [32]
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    data = SyntheticVQA()
    lines = ["# The regulariser over real-size training (bench/bench_reg_training.py)", "",
             f"BUTD num_hid {HID}, {BOXES} x {V_DIM} features, {ANSWERS:,} answers, learned-mixin +H (w 0.36), "
             f"lambda {args.inf_lambda:g}, n_samples 3, Adamax 0.002, clip 0.25, float32, CPU "
             f"({args.threads} threads), dropout {'off' if args.no_dropout else 'on'}; synthetic data "
             f"({TYPES} question types x {CONCEPTS} image concepts). Task loss = LMH + entropy penalty; "
             "grad-norm ratio = ||d (lambda term) / d theta|| / ||d task loss / d theta|| before clipping."]
    if args.part in ("1", "all"):
        rows = []
        for size in args.init_batches:
            batch = data.batch(size, seed=size)
            for legacy in (False, True):
                t = time.perf_counter()
                rows.append((legacy, size, probe(new_objective(legacy, args.inf_lambda, not args.no_dropout),
                                                 batch, 0)))
                print(f"init batch {size} {'legacy' if legacy else 'default'}: {rows[-1][2]} "
                      f"({time.perf_counter() - t:.0f} s)", flush=True)
        lines += ["", "## At initialisation (one step, float32)", "", *init_table(rows)]
    if args.part in ("2", "all"):
        lines += ["", f"## Training: {args.steps} steps at batch {args.batch}, gradient-norm ratio every "
                  f"{args.every} steps"]
        for legacy in (False, True):
            lines += training_table(train(legacy, data, args), args.every)
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if args.write:
        RESULTS.write_text(text)
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    run_cli(main)
