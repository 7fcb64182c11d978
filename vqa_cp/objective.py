"""The objective one training step minimises: the paper's idea in code.

    loss = L_debias(joint, logits, b, y) + lambda * R(q_emb, v_emb)

with the bottom-up top-down trunk computed once, its head giving the logits and the joint representation,
a debiasing loss (`vqa_cp.losses`: none, reweight, bias product, learned-mixin +H) and the
functional-entropy regulariser R (`vqa_cp.regularization`) over the two head inputs, each perturbed with
Gaussian noise drawn per question from a generator seeded by (seed, step).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from vqa_cp import distributed as dist_utils
from vqa_cp.losses import LearnedMixin
from vqa_cp.regularization import RegParameters, information_regularizer


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

    def describe(self) -> str:
        """Which regulariser runs, in one line (main.py's log states it first)."""
        if self.reg.lambda_ == 0:
            return "off (--inf_lambda 0)"
        wiring = ("the published VQA-CP code's (--inf_legacy: a second trunk pass, the noise std differentiated, "
                  "BCE(clean softmax, perturbed logits))" if self.legacy else
                  "the seed snippet's (the trunk reused, the noise std detached, BCE(perturbed logits, clean softmax))")
        r = self.reg
        return (f"lambda {r.lambda_:g}, {r.optim_method} over {r.estimation} information scores "
                f"({'log-Sobolev gradient bound' if r.grad else 'gradient-free'}, n_samples {r.n_samples}, "
                f"p {r.norm:g}), wiring {wiring}")

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


TASK_PARTS = ("task_loss", "entropy_penalty")  # the loss's parts besides the regulariser's reg_loss
TERM_NAMES = {"task_loss": "task loss", "entropy_penalty": "entropy penalty", "reg_term": "regulariser term",
              "reg_loss": "regulariser (lambda x term)", "score_q": "question information score",
              "score_v": "image information score"}
