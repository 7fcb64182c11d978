"""Debiasing objectives of Clark et al. 2019 ("Don't Take the Easy Way Out"), on VQA soft targets.

Notation: z logits [B, A], y soft targets [B, A], b question-type bias prior [B, A], h the model's
joint representation [B, H], sigma the logistic function. Every loss is an nn.Module called as
`loss_fn(joint, logits, bias, target) -> scalar`; its own parameters (learned-mixin's gate `bias_lin`,
the smoothing `smooth_param`) are trained with the model. At test time only z is used.

The two-channel objectives work in log space: channel 1 ("answer a is right") has log-score
log sigma(z) + c1, channel 0 has log sigma(-z) + c0; both are renormalised with a logsumexp, and the loss is
the binary cross-entropy -(y log p1 + (1 - y) log p0) summed over answers, averaged over the batch.
Losses are computed in at least float32 (bf16 inputs under autocast are promoted).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqa_cp.errors import VQAError

LOSS_MODES = ("none", "reweight", "bias_product", "learned_mixin")
DEFAULT_ENTROPY_PENALTY = 0.36
SMOOTH_INIT = -1.0


def widen(x: Tensor) -> Tensor:
    """x in float32, or wider if it already is (float64 stays float64 for gradcheck)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _renormalised_bce(log_p1: Tensor, log_p0: Tensor, target: Tensor) -> Tensor:
    """-(1/B) sum_{b,a} [y log p1 + (1 - y) log p0] after p1 + p0 = 1 renormalisation (logsumexp)."""
    log_z = torch.logaddexp(log_p1, log_p0)
    return -(target * (log_p1 - log_z) + (1 - target) * (log_p0 - log_z)).sum(1).mean(0)


class PlainBCE(nn.Module):
    """none: L = (1/B) sum_b sum_a BCE(z_ba, y_ba) -- binary cross-entropy summed over answers."""

    def forward(self, joint: Tensor, logits: Tensor, bias: Tensor, target: Tensor) -> Tensor:
        z = widen(logits)
        return F.binary_cross_entropy_with_logits(z, target.to(z.dtype), reduction="sum") / z.shape[0]


class Reweight(nn.Module):
    """reweight: L = sum (1 - b) * BCE(z, y) / sum (1 - b) (elementwise weights, all entries)."""

    def forward(self, joint: Tensor, logits: Tensor, bias: Tensor, target: Tensor) -> Tensor:
        z = widen(logits)
        weights = 1 - bias.to(z.dtype)
        bce = F.binary_cross_entropy_with_logits(z, target.to(z.dtype), reduction="none")
        return (weights * bce).sum() / weights.sum()


class BiasProduct(nn.Module):
    """bias product: p1 ∝ sigma(z) (b + s), p0 ∝ (1 - sigma(z)) (1 - b + s); s = sigmoid(smooth_param)."""

    def __init__(self, smooth_init: float = SMOOTH_INIT) -> None:
        super().__init__()
        self.smooth_param = nn.Parameter(torch.full((1,), smooth_init))

    def forward(self, joint: Tensor, logits: Tensor, bias: Tensor, target: Tensor) -> Tensor:
        z = widen(logits)
        b = bias.to(z.dtype)
        s = torch.sigmoid(widen(self.smooth_param))
        return _renormalised_bce(F.logsigmoid(z) + torch.log(b + s), F.logsigmoid(-z) + torch.log(1 - b + s),
                                 target.to(z.dtype))


class LearnedMixin(nn.Module):
    """Learned-mixin (+H).

    g = softplus(bias_lin(h)) [B, 1] (h not detached), s = sigmoid(smooth_param);
    p1 ∝ sigma(z) (b + s)^g, p0 ∝ (1 - sigma(z)) (1 - b + s)^g; L = BCE(p, y) + w * H, where
    H = mean_{b,a} binary entropy of the scaled bias distribution q1 ∝ (b + s)^g, q0 ∝ (1 - b + s)^g.
    w = 0 is plain learned-mixin.
    """

    def __init__(self, num_hid: int, entropy_penalty: float = DEFAULT_ENTROPY_PENALTY,
                 smooth_init: float = SMOOTH_INIT) -> None:
        super().__init__()
        if entropy_penalty < 0:
            raise VQAError(f"entropy penalty must be >= 0, got {entropy_penalty}")
        self.entropy_penalty = entropy_penalty
        self.bias_lin = nn.Linear(num_hid, 1)
        self.smooth_param = nn.Parameter(torch.full((1,), smooth_init))

    def terms(self, joint: Tensor, logits: Tensor, bias: Tensor, target: Tensor) -> dict[str, Tensor]:
        """The two parts of the loss: {"task_loss": BCE(p, y), "entropy_penalty": w * H} (w = 0: no entry)."""
        z = widen(logits)
        b = bias.to(z.dtype)
        g = F.softplus(widen(self.bias_lin(joint)))
        s = torch.sigmoid(widen(self.smooth_param))
        bias_1, bias_0 = g * torch.log(b + s), g * torch.log(1 - b + s)
        parts = {"task_loss": _renormalised_bce(F.logsigmoid(z) + bias_1, F.logsigmoid(-z) + bias_0,
                                                target.to(z.dtype))}
        if self.entropy_penalty > 0:
            log_norm = torch.logaddexp(bias_1, bias_0)
            log_q1, log_q0 = bias_1 - log_norm, bias_0 - log_norm
            entropy = -(log_q1.exp() * log_q1 + log_q0.exp() * log_q0).mean()
            parts["entropy_penalty"] = self.entropy_penalty * entropy
        return parts

    def forward(self, joint: Tensor, logits: Tensor, bias: Tensor, target: Tensor) -> Tensor:
        return sum(self.terms(joint, logits, bias, target).values())


def build_loss(mode: str, num_hid: int, entropy_penalty: float = DEFAULT_ENTROPY_PENALTY) -> nn.Module:
    """The debiasing loss `mode` (none | reweight | bias_product | learned_mixin).

    `num_hid` sizes learned-mixin's gate; `entropy_penalty` (w, the +H weight) is learned-mixin's only.
    """
    if mode == "none":
        return PlainBCE()
    if mode == "reweight":
        return Reweight()
    if mode == "bias_product":
        return BiasProduct()
    if mode == "learned_mixin":
        return LearnedMixin(num_hid, entropy_penalty)
    raise VQAError(f"unknown debiasing loss {mode!r}; choose one of {', '.join(LOSS_MODES)}")
