"""Debiasing losses against direct probability-space formulas (float64), gradcheck and extremes."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from vqa_cp.errors import VQAError
from vqa_cp.losses import LOSS_MODES, BiasProduct, LearnedMixin, build_loss

B, A, H = 3, 5, 4


def data() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    joint = torch.randn(B, H, generator=g, dtype=torch.float64)
    logits = 2 * torch.randn(B, A, generator=g, dtype=torch.float64)
    bias = torch.rand(B, A, generator=g, dtype=torch.float64)
    bias[0, 0], bias[1, 1] = 0.0, 1.0
    target = torch.tensor([0.0, 0.3, 0.6, 0.9, 1.0], dtype=torch.float64).roll(1).repeat(B, 1)
    return joint, logits, bias, target


def bce(p1: Tensor, y: Tensor) -> Tensor:
    """-(y log p1 + (1 - y) log(1 - p1)) summed over answers, mean over the batch."""
    return -(y * p1.log() + (1 - y) * (1 - p1).log()).sum(1).mean()


def expected(mode: str, loss_fn: torch.nn.Module, joint: Tensor, z: Tensor, b: Tensor, y: Tensor) -> Tensor:
    p = torch.sigmoid(z)
    if mode == "none":
        return bce(p, y)
    if mode == "reweight":
        w = 1 - b
        return (w * -(y * p.log() + (1 - y) * (1 - p).log())).sum() / w.sum()
    s = torch.sigmoid(loss_fn.smooth_param)
    if mode == "bias_product":
        return bce(p * (b + s) / (p * (b + s) + (1 - p) * (1 - b + s)), y)
    g = torch.log1p(torch.exp(joint @ loss_fn.bias_lin.weight.T + loss_fn.bias_lin.bias))  # softplus
    on, off = (b + s) ** g, (1 - b + s) ** g
    q1 = on / (on + off)
    entropy = -(q1 * q1.log() + (1 - q1) * (1 - q1).log()).mean()
    return bce(p * on / (p * on + (1 - p) * off), y) + loss_fn.entropy_penalty * entropy


def built(mode: str, w: float = 0.36) -> torch.nn.Module:
    torch.manual_seed(0)
    loss_fn = build_loss(mode, num_hid=H, entropy_penalty=w).double()
    for p in loss_fn.parameters():  # move off the init so the test sees the parameters act
        p.data.add_(0.1 * torch.randn_like(p))
    return loss_fn


@pytest.mark.parametrize("mode", LOSS_MODES)
def test_matches_direct_formula(mode: str) -> None:
    joint, z, b, y = data()
    loss_fn = built(mode)
    assert torch.allclose(loss_fn(joint, z, b, y), expected(mode, loss_fn, joint, z, b, y), rtol=1e-10)


def test_hand_worked_values() -> None:
    z = torch.zeros(1, 2, dtype=torch.float64)
    y = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([[0.5, 0.0]], dtype=torch.float64)
    assert math.isclose(build_loss("none", H)(None, z, b, y).item(), 2 * math.log(2))
    # reweight: weights (0.5, 1), each BCE is log 2 -> (0.5 + 1) log 2 / 1.5
    assert math.isclose(build_loss("reweight", H)(None, z, b, y).item(), math.log(2))
    # bias product with s -> sigmoid(-1): answer 0 has p1 = (0.5 + s) / (1 + 2 s) = 1/2
    bp = BiasProduct().double()
    s = torch.sigmoid(torch.tensor(-1.0, dtype=torch.float64)).item()
    p1_answer1 = s / (s + 1 + s)
    want = math.log(2) - math.log(1 - p1_answer1)
    assert math.isclose(bp(None, z, b, y).item(), want, rel_tol=1e-12)


def test_learned_mixin_parameters_and_plain_variant() -> None:
    lm = build_loss("learned_mixin", num_hid=H, entropy_penalty=0.0)
    assert isinstance(lm, LearnedMixin)
    names = dict(lm.named_parameters())
    assert set(names) == {"bias_lin.weight", "bias_lin.bias", "smooth_param"}
    assert names["bias_lin.weight"].shape == (1, H)
    assert math.isclose(torch.sigmoid(lm.smooth_param).item(), 1 / (1 + math.e), rel_tol=1e-6)
    joint, z, b, y = data()
    plain = built("learned_mixin", w=0.0)
    with_h = built("learned_mixin", w=0.5)
    diff = with_h(joint, z, b, y) - plain(joint, z, b, y)
    on = (b + torch.sigmoid(plain.smooth_param)) ** torch.nn.functional.softplus(plain.bias_lin(joint))
    off = (1 - b + torch.sigmoid(plain.smooth_param)) ** torch.nn.functional.softplus(plain.bias_lin(joint))
    q1 = on / (on + off)
    entropy = -(q1 * q1.log() + (1 - q1) * (1 - q1).log()).mean()
    assert torch.allclose(diff, 0.5 * entropy)
    assert entropy > 0


@pytest.mark.parametrize("mode", LOSS_MODES)
def test_gradcheck(mode: str) -> None:
    """Gradients w.r.t. joint, logits and the loss's own parameters (gate, smoothing)."""
    joint, z, b, y = data()
    loss_fn = built(mode)
    names = [n for n, _ in loss_fn.named_parameters()]

    def f(joint: Tensor, z: Tensor, *params: Tensor) -> Tensor:
        return torch.func.functional_call(loss_fn, dict(zip(names, params)), (joint, z, b, y))

    params = [p.detach().clone().requires_grad_() for p in loss_fn.parameters()]
    assert torch.autograd.gradcheck(f, (joint.requires_grad_(), z.requires_grad_(), *params))


@pytest.mark.parametrize("mode", LOSS_MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_for_extreme_logits_and_biases(mode: str, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    loss_fn = build_loss(mode, num_hid=H).to(dtype)
    z = torch.tensor([[100.0, -100.0, 100.0, -100.0]] * 2, dtype=dtype, requires_grad=True)
    b = torch.tensor([[0.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 1.0]], dtype=dtype)
    y = torch.tensor([[0.0, 1.0, 0.3, 1.0], [1.0, 0.0, 0.0, 1.0]], dtype=dtype)
    joint = (100 * torch.randn(2, H, dtype=dtype)).requires_grad_()
    loss = loss_fn(joint, z, b, y)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(z.grad).all()
    assert (joint.grad is not None) == (mode == "learned_mixin")  # only the gate reads joint
    if joint.grad is not None:
        assert torch.isfinite(joint.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in loss_fn.parameters())


def test_bf16_inputs_are_promoted() -> None:
    joint, z, b, y = data()
    loss_fn = build_loss("bias_product", H)
    low = loss_fn(joint.float(), z.bfloat16(), b.float(), y.float())
    assert low.dtype == torch.float32


def test_unknown_mode_and_bad_penalty() -> None:
    with pytest.raises(VQAError, match="learned_mixin"):
        build_loss("lmh", H)
    with pytest.raises(VQAError, match="entropy penalty"):
        build_loss("learned_mixin", H, entropy_penalty=-1.0)
