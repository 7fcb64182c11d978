"""The functional-entropy regulariser at the published sizes (issue #13).

BUTD num_hid 1024, 36 boxes x 2048, 2,000 answers, learned-mixin +H, dropout off, one step at batch
32-64 on synthetic tensors. At these sizes the information scores are ~1e-18 (the published wiring) or
~1e-12 (the default), shrinking like 1 / (batch x answers)^2: the toy tests never see that regime.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from vqa_cp.losses import build_loss
from vqa_cp.model import BUTD, build_model
from vqa_cp.objective import NonFiniteLoss, Objective
from vqa_cp.regularization import SCORE_FLOOR, RegParameters, information_regularizer
from vqa_cp.training import train_step

HID, V_DIM, BOXES, ANSWERS, NTOKEN, N = 1024, 2048, 36, 2000, 50, 3
LAMBDA = 1e-10
Batch = tuple[Tensor, Tensor, Tensor, Tensor]


def real_model(seed: int = 0) -> tuple[BUTD, nn.Module]:
    torch.manual_seed(seed)
    model = build_model("baseline0_newatt", ntoken=NTOKEN, num_hid=HID, v_dim=V_DIM, num_answers=ANSWERS)
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return model, build_loss("learned_mixin", num_hid=HID)


@pytest.fixture(scope="module")
def models() -> tuple[BUTD, nn.Module]:
    return real_model()


def batch(size: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> Batch:
    """One distribution for every size: features U(0, 1), 14 random tokens, sparse soft targets."""
    g = torch.Generator().manual_seed(seed)
    v = torch.rand(size, BOXES, V_DIM, generator=g, dtype=dtype)
    q = torch.randint(0, NTOKEN, (size, 14), generator=g)
    target = ((torch.rand(size, ANSWERS, generator=g) > 0.998) * 0.9).to(dtype)
    bias = torch.softmax(4 * torch.randn(size, ANSWERS, generator=g, dtype=dtype), dim=1)
    return v, q, target, bias


def parameters(model: nn.Module, loss_fn: nn.Module) -> list[nn.Parameter]:
    return [*model.parameters(), *loss_fn.parameters()]


def published_step(model: BUTD, loss_fn: nn.Module, data: Batch, noise: list[Tensor], lambda_: float
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """The published VQA-CP step written out by hand from its description (not through our module):
    a second trunk pass over the same batch, perturbed = x repeated n times (sample-major) + noise x the
    std of the repeated batch over dim 0 (left in the graph), influence loss BCE-with-logits(clean softmax
    repeated, perturbed logits) (reversed arguments), score 'ent' = mean_rows ||grad||^2 / L_inf,
    term = ||1 / s||_2, loss = LMH +H + lambda * term. Returns (loss, term, scores)."""
    v, q, target, bias = data
    q_emb, v_emb = model.trunk(v, q)
    logits, joint = model.head(q_emb, v_emb)
    loss = loss_fn(joint, logits, bias, target)
    q2, v2 = model.trunk(v, q)
    rq, rv = q2.repeat_interleave(N, dim=0), v2.repeat_interleave(N, dim=0)
    pq = rq + noise[0].to(rq.dtype) * rq.std(dim=0)
    pv = rv + noise[1].to(rv.dtype) * rv.std(dim=0)
    out, _ = model.head(pq, pv)
    soft = torch.softmax(logits, dim=1).repeat_interleave(N, dim=0)
    inf_loss = F.binary_cross_entropy_with_logits(soft, out)
    gq, gv = torch.autograd.grad(inf_loss, [pq, pv], create_graph=True)
    scores = torch.stack([gq.pow(2).sum(1).mean() / inf_loss, gv.pow(2).sum(1).mean() / inf_loss])
    term = (1 / scores).pow(2).sum().sqrt()
    return loss + lambda_ * term, term, scores


def assert_close_rel(got: Tensor, want: Tensor, rtol: float, what: str) -> None:
    """Elementwise within rtol, entries near zero judged against the tensor's largest entry."""
    got, want = got.double(), want.double()
    scale = want.abs().max().item()
    assert torch.allclose(got, want, rtol=rtol, atol=rtol * scale), (
        f"{what}: max |diff| {(got - want).abs().max().item():.3g}, max |want| {scale:.3g}")


# ----------------------------------------------------------------------------- (a) the published step


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-6), (torch.float32, 1e-4)])
def test_legacy_wiring_is_the_published_step(models, dtype: torch.dtype, rtol: float) -> None:
    model, loss_fn = (copy.deepcopy(m).to(dtype) for m in models)
    data = batch(32, seed=1, dtype=dtype)
    objective = Objective(model, loss_fn, RegParameters(lambda_=LAMBDA, n_samples=N), legacy=True, seed=5)
    params = parameters(model, loss_fn)
    with parametrize.cached():
        loss, _, parts = objective(*data, step_id=7)
        grads = torch.autograd.grad(loss, params)
    with torch.no_grad():
        q_emb, v_emb = model.trunk(data[0], data[1])
    noise = objective.perturbation_noise((q_emb, v_emb), 32, 7)
    with parametrize.cached():
        want_loss, want_term, want_scores = published_step(model, loss_fn, data, noise, LAMBDA)
        want_grads = torch.autograd.grad(want_loss, params)
    assert parts["floored"].item() == 0
    assert 1e-19 < want_scores.min().item() < want_scores.max().item() < 1e-15  # the published regime
    assert_close_rel(loss, want_loss, rtol, "loss")
    assert_close_rel(parts["reg_term"], want_term, rtol, "term")
    assert_close_rel(torch.stack([parts["score_q"], parts["score_v"]]), want_scores, rtol, "scores")
    names = [n for n, _ in model.named_parameters()] + [f"loss_fn.{n}" for n, _ in loss_fn.named_parameters()]
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(w.double()) for w in want_grads]))
    for name, got, want in zip(names, grads, want_grads):
        assert torch.isfinite(got).all(), name
        if name == "v_att.linear.bias":  # the box softmax is shift invariant: 0 up to rounding in both
            assert got.abs().max() < 1e-8 * total and want.abs().max() < 1e-8 * total
        else:
            assert_close_rel(got, want, rtol, name)


# ----------------------------------------------------------------------------- (b) lambda 1e-10 acts


def norm(tensors: list[Tensor]) -> Tensor:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.double()) for t in tensors]))


@pytest.mark.parametrize("amp", [False, True], ids=["float32", "bf16"])
def test_lambda_1e10_changes_the_gradient_in_both_wirings(models, amp: bool) -> None:
    """The old 1e-15 floor made the published wiring's step bit-identical to lambda 0 here. The lambda 0
    step's gradient is the task part's (at lambda 0 the objective is exactly the task parts)."""
    model, loss_fn = models
    data = batch(32, seed=2)
    params = parameters(model, loss_fn)
    for legacy in (False, True):
        objective = Objective(model, loss_fn, RegParameters(lambda_=LAMBDA), legacy=legacy, seed=3)
        with parametrize.cached():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                loss, _, parts = objective(*data, step_id=0)
            grads = torch.autograd.grad(loss, params, retain_graph=True)
            task = torch.autograd.grad(loss - parts["reg_loss"], params)
        assert parts["floored"].item() == 0 and torch.isfinite(loss)
        assert all(torch.isfinite(g).all() for g in grads)
        diff = norm([g - t for g, t in zip(grads, task)])
        # at initialisation the term dominates in both wirings (PIPELINE_FACTS): far from a rounding change
        assert diff > 0.1 * norm(task), (legacy, diff.item(), norm(task).item())
        named = dict(zip([n for n, _ in model.named_parameters()], grads))
        assert named["classifier.main.3.parametrizations.weight.original1"].abs().sum() > 0


# ----------------------------------------------------------------------------- (c) a 4,096 global batch


def emulated_ranks(world: int) -> Callable[[Tensor], Tensor]:
    """The differentiable all-reduce of `world` ranks holding identical shards: a sum = world x the tensor
    (its backward, a sum of identical gradients, is world x the gradient too)."""
    return lambda t: t * world


@pytest.mark.parametrize("legacy, amp", [(False, False), (True, False), (True, True)],
                         ids=["default-float32", "legacy-float32", "legacy-bf16"])
def test_global_batch_4096_scores_and_finite_gradient(models, legacy: bool, amp: bool) -> None:
    """64 ranks x 64 rows: scores (64 x 64 / 64)^2 = 4096 times below one rank's, gradient finite, non-zero."""
    model, loss_fn = models
    v, q, _, _ = batch(64, seed=3)
    params = parameters(model, loss_fn)
    noise = [torch.randn(64 * N, HID, generator=torch.Generator().manual_seed(4)),
             torch.randn(64 * N, V_DIM, generator=torch.Generator().manual_seed(5))]
    reg = RegParameters(lambda_=LAMBDA)
    with parametrize.cached(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        q_emb, v_emb = model.trunk(v, q)
        logits, _ = model.head(q_emb, v_emb)
        inputs = model.trunk(v, q) if legacy else (q_emb, v_emb)
        one = information_regularizer(model.head, inputs, logits, reg, legacy=legacy, noise=noise)
        wide = information_regularizer(model.head, inputs, logits, reg, legacy=legacy, noise=noise,
                                       all_reduce=emulated_ranks(64), world_size=64)
        grads = torch.autograd.grad(LAMBDA * wide.term, params, allow_unused=True, materialize_grads=True)
    ratio = (one.scores / wide.scores).detach()
    # 4096 up to the std's n B / (n B - 1) correction of one rank vs the global batch (< 1 % here)
    assert torch.allclose(ratio, torch.full_like(ratio, 4096.0), rtol=0.02), ratio
    low, high = (5e-23, 1e-20) if legacy else (1e-16, 1e-14)
    assert low < wide.scores.min().item() and wide.scores.max().item() < high, wide.scores
    assert wide.floored.item() == 0 and torch.isfinite(wide.term)
    named = dict(zip([n for n, _ in model.named_parameters()], grads))
    assert all(torch.isfinite(g).all() for g in grads)
    for name in ("q_emb.rnn.weight_hh_l0", "v_net.main.0.parametrizations.weight.original1",
                 "classifier.main.3.parametrizations.weight.original1"):
        assert named[name].abs().sum() > 0, name


# ----------------------------------------------------------------------------- (d) an ignored modality


def test_head_that_ignores_the_image_scores_zero_and_stays_finite(models) -> None:
    model, loss_fn = models
    v, q, target, bias = batch(32, seed=4)

    def blind_head(q_emb: Tensor, v_emb: Tensor) -> tuple[Tensor, Tensor]:
        return model.head(q_emb, torch.ones_like(v_emb))  # v_emb is not in the graph: its gradient is 0

    with parametrize.cached():
        q_emb, v_emb = model.trunk(v, q)
        logits, joint = blind_head(q_emb, v_emb)
        out = information_regularizer(blind_head, [q_emb, v_emb], logits, RegParameters(lambda_=LAMBDA))
        loss = loss_fn(joint, logits, bias, target) + LAMBDA * out.term
        grads = torch.autograd.grad(loss, parameters(model, loss_fn), allow_unused=True, materialize_grads=True)
    assert out.scores[1].item() == 0 and out.scores[0].item() > 0
    assert out.floored.item() == 1 and out.floored_mask.tolist() == [False, True]
    assert math.isclose(out.term.item(), 1 / SCORE_FLOOR, rel_tol=1e-6) and torch.isfinite(loss)
    assert all(torch.isfinite(g).all() for g in grads)
    (line,) = out.floor_messages()
    assert "image information score is 0" in line and "floor" in line


def test_lambda_that_overflows_stops_naming_the_regulariser(models) -> None:
    model, loss_fn = models
    objective = Objective(model, loss_fn, RegParameters(lambda_=1e30), legacy=True)
    optimizer = torch.optim.Adamax(objective.parameters(), lr=2e-3)
    before = [p.detach().clone() for p in objective.parameters()]
    with pytest.raises(NonFiniteLoss, match=r"regulariser \(lambda x term\)"):
        train_step(objective, optimizer, batch(8, seed=5), 0, grad_clip=0.25)
    assert all(torch.equal(b, p) for b, p in zip(before, objective.parameters()))


# ----------------------------------------------------------------------------- (e) per-question scores


def test_per_question_scores_do_not_depend_on_the_batch_size(models) -> None:
    """Same model, data from one distribution: 'paper' scores fall ~(512 / 64)^2 = 64x from batch 64 to
    512, 'per_question' ones (= N^2 / A x 'paper', N = B n A) stay within a small factor."""
    model, _ = models
    v, q, _, _ = batch(512, seed=6)
    with torch.no_grad(), parametrize.cached():
        q_emb, v_emb = model.trunk(v, q)
    scores = {}
    for size in (64, 512):  # the first 64 questions, then all 512
        with parametrize.cached():
            with torch.no_grad():
                logits, _ = model.head(q_emb[:size], v_emb[:size])
            for scale in ("paper", "per_question"):
                torch.manual_seed(7)
                out = information_regularizer(model.head, [q_emb[:size], v_emb[:size]], logits,
                                              RegParameters(score_scale=scale))
                scores[size, scale] = out.scores.detach().double()
        elements = size * N * ANSWERS
        assert torch.allclose(scores[size, "per_question"], scores[size, "paper"] * elements**2 / ANSWERS,
                              rtol=1e-5)
    paper = scores[64, "paper"] / scores[512, "paper"]
    per_question = scores[64, "per_question"] / scores[512, "per_question"]
    assert ((paper > 40) & (paper < 100)).all(), paper
    assert ((per_question > 1 / 1.5) & (per_question < 1.5)).all(), per_question
