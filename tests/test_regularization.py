"""Functional-entropy regulariser: the seed snippet, direct formulas, the log-Sobolev bound, gradcheck."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqa_cp.errors import VQAError
from vqa_cp.losses import build_loss
from vqa_cp.model import build_model
from vqa_cp.regularization import (
    SCORE_FLOOR,
    Perturbation,
    RegParameters,
    Regularization,
    information_regularizer,
)


class TwoInput(nn.Module):
    """logits = out(tanh(a(image)) * tanh(b(question))); `ignore` drops the question."""

    def __init__(self, d_image: int = 4, d_question: int = 3, hid: int = 5, classes: int = 6,
                 ignore_question: bool = False) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(d_image, hid), nn.Linear(d_question, hid)
        self.out = nn.Linear(hid, classes)
        self.ignore_question = ignore_question

    def forward(self, image: Tensor, question: Tensor) -> Tensor:
        q = torch.ones_like(self.b.bias) if self.ignore_question else torch.tanh(self.b(question))
        return self.out(torch.tanh(self.a(image)) * q)


def test_seed_snippet_runs_unchanged() -> None:
    torch.manual_seed(0)
    model = TwoInput()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = [(torch.randn(8, 4), torch.randn(8, 3), torch.randint(0, 6, (8,))) for _ in range(2)]
    before = [p.detach().clone() for p in model.parameters()]

    def compute_some_loss(logits: Tensor, label: Tensor) -> Tensor:
        return F.cross_entropy(logits, label)

    # --- the seed README's "Adding our regularization" snippet, verbatim apart from the import ---
    from vqa_cp.regularization import Perturbation, Regularization, RegParameters  # noqa: F811, I001

    reg_params = RegParameters()

    for image, question, label in loader:
        logits = model(image, question)
        loss = compute_some_loss(logits, label)

        ####################### Our regularization method #######################

        expanded_logits = Perturbation.get_expanded_logits(logits, reg_params.n_samples)

        inf_image = Perturbation.perturb_tensor(image, reg_params.n_samples)
        inf_question = Perturbation.perturb_tensor(question, reg_params.n_samples)

        inf_output = model(inf_image, inf_question)
        inf_loss = torch.nn.functional.binary_cross_entropy_with_logits(inf_output, expanded_logits)

        gradients = torch.autograd.grad(inf_loss, [inf_image, inf_question], create_graph=True)
        grads = [Regularization.get_batch_norm(gradients[k], loss=inf_loss,
                                               estimation=reg_params.estimation) for k in range(2)]

        inf_scores = torch.stack(grads)
        reg_term = Regularization.get_regularization_term(inf_scores, norm=reg_params.norm,
                                                          optim_method=reg_params.optim_method)

        loss += reg_params.delta * reg_term

        #########################################################################

        optimizer.zero_grad()
        loss.backward(retain_graph=True)
        optimizer.step()
    # --- end of the snippet ---
    assert inf_image.shape == (8 * 3, 4) and inf_question.shape == (8 * 3, 3)
    assert torch.isfinite(loss) and torch.isfinite(reg_term) and (inf_scores > 0).all()
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


# ----------------------------------------------------------------------------- perturbation


def test_perturb_tensor_layout_std_and_graph() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(12, 3, generator=g, dtype=torch.float64)
    rep = x[torch.arange(4).repeat_interleave(3)]  # sample-major copies
    out = Perturbation.perturb_tensor(x, 3, noise=eps)
    assert out.requires_grad and out.is_leaf
    assert torch.allclose(out, rep + eps * rep.std(dim=0))  # std over the repeated batch, per feature
    out1 = Perturbation.perturb_tensor(x, 3, dim=1, noise=eps)
    assert torch.allclose(out1, rep + eps * rep.std(dim=1, keepdim=True))  # per sample
    assert torch.equal(Perturbation.perturb_tensor(x, 3, perturbation=False), rep)
    # inside a graph: the graph is kept and the std is not differentiated -> d sum(out) / d w = n * sum(x)
    w = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    attached = Perturbation.perturb_tensor(w * x, 3, noise=eps)
    assert not attached.is_leaf
    (grad_w,) = torch.autograd.grad(attached.sum(), w)
    assert torch.allclose(grad_w, 3 * x.sum())
    # the std is a constant of the perturbation unless std_grad (the published VQA-CP wiring) keeps it
    (grad_w,) = torch.autograd.grad(Perturbation.perturb_tensor(w * x, 3, noise=eps, std_grad=True).sum(), w)
    assert torch.allclose(grad_w, 3 * x.sum() + (eps * rep.std(dim=0)).sum())  # std(w x) = w std(x)


def test_perturb_tensor_images_and_errors() -> None:
    image = torch.randn(2, 3, 4, 4)
    out = Perturbation.perturb_tensor(image, 5)
    assert out.shape == (10, 3, 4, 4)
    noise = (out - Perturbation.repeat(image, 5)).detach()
    assert noise.abs().sum() > 0
    with pytest.raises(VQAError, match="embedding"):
        Perturbation.perturb_tensor(torch.ones(2, 3, dtype=torch.int64), 3)
    with pytest.raises(VQAError, match="shape"):
        Perturbation.perturb_tensor(image, 5, noise=torch.randn(2, 3, 4, 4))


def test_expanded_logits() -> None:
    logits = torch.tensor([[0.0, math.log(3.0)], [1.0, 1.0]])
    exp = Perturbation.get_expanded_logits(logits, 2)
    assert torch.allclose(exp, torch.tensor([[0.25, 0.75], [0.25, 0.75], [0.5, 0.5], [0.5, 0.5]]))


# ----------------------------------------------------------------------------- scores and terms


def test_batch_norm_against_direct_formula() -> None:
    grad = torch.arange(12.0).reshape(3, 2, 2)
    sq = torch.tensor([0 + 1 + 4 + 9, 16 + 25 + 36 + 49, 64 + 81 + 100 + 121], dtype=torch.float32)
    assert torch.isclose(Regularization.get_batch_norm(grad, torch.tensor(2.0), "ent"), sq.mean() / 2)
    assert torch.isclose(Regularization.get_batch_norm(grad, estimation="var"), sq.mean())
    per_row = torch.tensor([1.0, 2.0, 4.0])
    assert torch.isclose(Regularization.get_batch_norm(grad, per_row, "ent"), (sq / per_row).mean())
    with pytest.raises(VQAError, match="loss="):
        Regularization.get_batch_norm(grad, estimation="ent")
    with pytest.raises(VQAError, match="dif_ent"):
        Regularization.get_batch_norm(grad, torch.tensor(1.0), "dif_ent")


def test_batch_statistics_against_hand_worked_values() -> None:
    f = torch.tensor([1.0, 2.0, 2.0, 4.0], dtype=torch.float64)  # two samples, n = 2
    ent = [(0 + 2 * math.log(2)) / 2 - 1.5 * math.log(1.5),
           (2 * math.log(2) + 4 * math.log(4)) / 2 - 3 * math.log(3)]
    assert math.isclose(Regularization.get_batch_statistics(f, 2, "ent").item(), sum(ent) / 2)
    assert math.isclose(Regularization.get_batch_statistics(f, 2, "var").item(), (0.5 + 2.0) / 2)
    dif = [-(2 * math.log(2)) / 2, -(2 * math.log(2) + 4 * math.log(4)) / 2]
    assert math.isclose(Regularization.get_batch_statistics(f, 2, "dif_ent").item(), sum(dif) / 2)
    assert Regularization.get_batch_statistics(torch.full((6,), 0.7), 3, "ent").abs() < 1e-7  # constant f


@pytest.mark.parametrize("norm", [1.0, 2.0, 3.0])
def test_regularization_terms_against_direct_formula(norm: float) -> None:
    s = torch.tensor([0.5, 0.25])

    def p_norm(v: list[float]) -> float:
        return sum(abs(x) ** norm for x in v) ** (1 / norm)

    term = Regularization.get_regularization_term
    assert math.isclose(term(s, norm, "max_ent").item(), p_norm([2.0, 4.0]), rel_tol=1e-6)
    assert math.isclose(term(s, norm, "min_ent").item(), p_norm([0.5, 0.25]), rel_tol=1e-6)
    assert math.isclose(term(s, norm, "max_ent_minus").item(), 0.1 - p_norm([0.5, 0.25]), rel_tol=1e-6)
    with pytest.raises(VQAError, match="optim_method"):
        term(s, norm, "normalized")


def test_max_ent_is_overflow_safe_and_floored() -> None:
    tiny = torch.tensor([1e-12, 2e-12])
    naive = torch.linalg.vector_norm(1 / tiny, ord=4)  # (1e12)^4 overflows float32
    assert not torch.isfinite(naive)
    exact = sum((1 / x) ** 4 for x in (1e-12, 2e-12)) ** 0.25
    assert math.isclose(Regularization.get_regularization_term(tiny, 4.0).item(), exact, rel_tol=1e-6)
    # the floor is float32's smallest normal number: it lifts 0 and a denormal, not 1e-37 (contract of
    # issue #13; the old 1e-15 floor also lifted every score real training produces)
    assert SCORE_FLOOR == torch.finfo(torch.float32).tiny
    scores = torch.tensor([0.0, 1e-39, 1e-37, 0.5])
    term = Regularization.get_regularization_term(scores, 2.0)
    assert term.dtype == torch.float32 and torch.isfinite(term)
    assert math.isclose(term.item(), math.sqrt(2 / SCORE_FLOOR**2 + 1e74 + 4), rel_tol=1e-6)
    assert Regularization.count_floored(scores).item() == 2
    # float64 scores with a float32 result: the floor of float32; no gradient through a floored score
    s = torch.tensor([0.0, 1e-20, 0.5], dtype=torch.float64, requires_grad=True)
    term = Regularization.get_regularization_term(s, 2.0, dtype=torch.float32)
    assert term.dtype == torch.float32 and math.isclose(term.item(), 1 / SCORE_FLOOR, rel_tol=1e-6)
    (grad,) = torch.autograd.grad(term, s)
    assert grad[0] == 0 and torch.isfinite(grad).all() and grad[1] < 0 and grad[2] < 0


def test_published_size_scores_keep_their_gradient() -> None:
    """The published wiring's scores at batch 128 (5.5e-19, 1.2e-19): not floored, and
    d (lambda ||1/s||_2) / d s_i = -lambda s_i^-3 / ||1/s||_2, finite in float32 at lambda 1e-10."""
    s = torch.tensor([5.5e-19, 1.2e-19], requires_grad=True)
    assert Regularization.count_floored(s).item() == 0
    term = Regularization.get_regularization_term(s, 2.0)
    (grad,) = torch.autograd.grad(1e-10 * term, s)
    s64 = s.detach().double()
    norm = math.sqrt(sum(1 / x**2 for x in s64.tolist()))
    assert math.isclose(term.item(), norm, rel_tol=1e-6)
    want = [-1e-10 / x**3 / norm for x in s64.tolist()]
    assert torch.allclose(grad.double(), torch.tensor(want, dtype=torch.float64), rtol=1e-5)


def test_reg_parameters_alias_and_validation() -> None:
    p = RegParameters()
    assert (p.n_samples, p.norm, p.estimation, p.optim_method, p.grad) == (3, 2.0, "ent", "max_ent", True)
    p.delta = 0.5
    assert p.lambda_ == 0.5
    p.lambda_ = 0.25
    assert p.delta == 0.25
    for bad in ({"estimation": "kl"}, {"optim_method": "normalized"}, {"estimation": "dif_ent"},
                {"noise_dim": 2}, {"n_samples": 0}, {"score_floor": 0.0}, {"score_scale": "batch"}):
        with pytest.raises(VQAError):
            RegParameters(**bad)
    assert RegParameters(estimation="dif_ent", grad=False).estimation == "dif_ent"


# ----------------------------------------------------------------------------- log-Sobolev and the estimator


def test_log_sobolev_inequality_and_entropy_convergence() -> None:
    """Ent(f) <= (sigma^2/2) E[|f'|^2 / f], x ~ N(0, sigma^2); Ent(exp(a x)) = a^2 sigma^2/2 E[exp(a x)]."""
    g = torch.Generator().manual_seed(0)
    sigma, a, n = 0.7, 1.3, 400_000
    x = (sigma * torch.randn(n, 1, generator=g, dtype=torch.float64)).requires_grad_()
    for name, fn in (("exp", lambda t: torch.exp(a * t)), ("quad", lambda t: 1 + t**2),
                     ("softplus", lambda t: F.softplus(3 * t))):
        f = fn(x).squeeze(1)
        (df,) = torch.autograd.grad(f.sum(), x)
        ent = Regularization.get_batch_statistics(f.detach(), n, "ent").item()
        bound = sigma**2 / 2 * Regularization.get_batch_norm(df, f.detach(), "ent").item()
        assert 0 < ent <= bound * (1 + 5e-3), name
        if name == "exp":
            closed = a**2 * sigma**2 / 2 * math.exp(a**2 * sigma**2 / 2)
            assert math.isclose(ent, closed, rel_tol=2e-2)
            assert math.isclose(bound, closed, rel_tol=2e-2)  # equality case of the inequality
        if name == "quad":
            assert ent < 0.9 * bound  # strict for this f


# ----------------------------------------------------------------------------- information_regularizer


def head_fn(w1: Tensor, w2: Tensor, w3: Tensor):
    def head(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        joint = torch.tanh(a @ w1) * torch.tanh(b @ w2)
        return joint @ w3, joint
    return head


def weights(dtype: torch.dtype = torch.float64) -> list[Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(s, generator=g, dtype=dtype) for s in ((4, 5), (3, 5), (5, 6), (2, 4), (2, 3))]


def inputs(u1: Tensor, u2: Tensor, batch: int = 3) -> tuple[Tensor, Tensor]:
    """A tiny 'trunk' so that gradients also flow through the perturbed inputs."""
    g = torch.Generator().manual_seed(2)
    raw1 = torch.randn(batch, 2, generator=g, dtype=u1.dtype)
    raw2 = torch.randn(batch, 2, generator=g, dtype=u1.dtype)
    return torch.tanh(raw1 @ u1), torch.tanh(raw2 @ u2)


def fixed_noise(rows: int, dtype: torch.dtype = torch.float64) -> list[Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.randn(rows, 4, generator=g, dtype=dtype), torch.randn(rows, 3, generator=g, dtype=dtype)]


def manual_grad_scores(head, a: Tensor, b: Tensor, logits: Tensor, noise: list[Tensor], legacy: bool,
                       estimation: str, n: int = 3) -> Tensor:
    """The seed snippet written out by hand (no information_regularizer); legacy keeps the std in the graph."""
    ra, rb = a.repeat_interleave(n, 0), b.repeat_interleave(n, 0)
    sa, sb = (ra.std(0), rb.std(0)) if legacy else (ra.detach().std(0), rb.detach().std(0))
    pa, pb = ra + noise[0] * sa, rb + noise[1] * sb
    target = torch.softmax(logits, 1).repeat_interleave(n, 0)
    out = head(pa, pb)[0]
    loss = F.binary_cross_entropy_with_logits(target, out) if legacy else \
        F.binary_cross_entropy_with_logits(out, target)
    ga, gb = torch.autograd.grad(loss, [pa, pb], create_graph=True)
    div = loss if estimation == "ent" else 1.0
    return torch.stack([(ga**2).sum(1).mean() / div, (gb**2).sum(1).mean() / div])


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("estimation", ["ent", "var"])
def test_regularizer_matches_the_snippet_written_by_hand(legacy: bool, estimation: str) -> None:
    w1, w2, w3, u1, u2 = (w.requires_grad_() for w in weights())
    head = head_fn(w1, w2, w3)
    a, b = inputs(u1, u2)
    logits = head(a, b)[0]
    if legacy:
        a, b = a + 0.01, b - 0.01  # a "second trunk pass" over the same batch (other dropout masks)
    noise = fixed_noise(9)
    params = RegParameters(estimation=estimation)
    out = information_regularizer(head, [a, b], logits, params, legacy=legacy, noise=noise)
    want = manual_grad_scores(head, a, b, logits, noise, legacy, estimation)
    assert out.scores.dtype == torch.float64 and torch.allclose(out.scores, want)
    assert torch.allclose(out.term, torch.linalg.vector_norm(1 / want))
    assert out.floored.item() == 0


@pytest.mark.parametrize("estimation", ["ent", "var", "dif_ent"])
def test_gradient_free_scores_against_direct_formula(estimation: str) -> None:
    w1, w2, w3, u1, u2 = weights()
    head = head_fn(w1, w2, w3)
    a, b = inputs(u1, u2)
    logits = head(a, b)[0]
    noise = fixed_noise(9)
    params = RegParameters(estimation=estimation, grad=False, optim_method="min_ent")
    out = information_regularizer(head, [a, b], logits, params, noise=noise)
    target = torch.softmax(logits, 1).repeat_interleave(3, 0)
    ra, rb = a.repeat_interleave(3, 0), b.repeat_interleave(3, 0)
    want = []
    for probe in ([ra + noise[0] * ra.std(0), rb], [ra, rb + noise[1] * rb.std(0)]):
        f = F.binary_cross_entropy_with_logits(head(*probe)[0], target, reduction="none").mean(1).view(3, 3)
        if estimation == "ent":
            stat = (f * f.log()).mean(1) - f.mean(1) * f.mean(1).log()
        elif estimation == "var":
            stat = f.var(1)
        else:
            stat = -(f * f.log()).mean(1)
        want.append(stat.mean())
    assert torch.allclose(out.scores, torch.stack(want))
    assert torch.allclose(out.term, torch.linalg.vector_norm(torch.stack(want)))


@pytest.mark.parametrize("grad, legacy, noise_dim", [(True, False, 0), (True, True, 1), (False, False, 1)])
def test_gradcheck_through_the_whole_term(grad: bool, legacy: bool, noise_dim: int) -> None:
    """d term / d (head weights, trunk shifts), float64, fixed noise.

    The trunk parameters are scalar shifts c of the perturbed inputs: they reach the term through the
    perturbed tensors and the clean logits, while the (deliberately non-differentiated) noise std,
    over the batch or over each row, does not depend on them.
    """
    params = RegParameters(grad=grad, noise_dim=noise_dim, estimation="ent", n_samples=3)
    noise = fixed_noise(6)
    _, _, _, u1, u2 = weights()

    def term(w1: Tensor, w2: Tensor, w3: Tensor, c1: Tensor, c2: Tensor) -> Tensor:
        head = head_fn(w1, w2, w3)
        a, b = inputs(u1, u2, batch=2)
        a, b = a + c1, b + c2
        logits = head(a, b)[0]
        return information_regularizer(head, [a, b], logits, params, legacy=legacy, noise=noise).term

    shifts = torch.tensor(0.3, dtype=torch.float64), torch.tensor(-0.2, dtype=torch.float64)
    checked = (*weights()[:3], *shifts)
    assert torch.autograd.gradcheck(term, tuple(w.requires_grad_() for w in checked))


@pytest.mark.parametrize("noise_dim", [0, 1])
def test_legacy_term_differentiates_through_the_noise_std(noise_dim: int) -> None:
    """Scaling the inputs scales the noise std, so a finite-difference check of d term / d scale sees the
    std move: it passes with the std in the graph (legacy) and fails with the default's detached std."""
    params = RegParameters(noise_dim=noise_dim, n_samples=3)
    noise = fixed_noise(6)
    w1, w2, w3, u1, u2 = weights()
    head = head_fn(w1, w2, w3)

    def term(s1: Tensor, s2: Tensor, legacy: bool = True) -> Tensor:
        a, b = inputs(u1, u2, batch=2)
        a, b = a * s1, b * s2
        logits = head(a, b)[0]
        return information_regularizer(head, [a, b], logits, params, legacy=legacy, noise=noise).term

    scales = tuple(torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (1.3, 0.7))
    assert torch.autograd.gradcheck(term, scales)
    assert not torch.autograd.gradcheck(lambda s1, s2: term(s1, s2, legacy=False), scales, raise_exception=False)


def test_ignored_modality_scores_zero_and_term_stays_finite() -> None:
    torch.manual_seed(0)
    model = TwoInput(ignore_question=True)
    image, question = torch.randn(6, 4), torch.randn(6, 3)
    logits = model(image, question)
    out = information_regularizer(model, [image, question], logits, RegParameters())
    assert out.scores[0] > 0 and out.scores[1] == 0
    assert torch.isfinite(out.term) and math.isclose(out.term.item(), 1 / SCORE_FLOOR, rel_tol=1e-6)
    assert out.floored.item() == 1
    out.term.backward()
    assert model.b.weight.grad is None and model.a.weight.grad is not None
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_bf16_autocast_scores_in_float32() -> None:
    torch.manual_seed(0)
    model = TwoInput()
    image, question = torch.randn(8, 4), torch.randn(8, 3)
    noise = [torch.randn(24, 4), torch.randn(24, 3)]
    reference = information_regularizer(model, [image, question], model(image, question), RegParameters(),
                                        noise=noise)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(image, question)
        assert logits.dtype == torch.bfloat16
        out = information_regularizer(model, [image, question], logits, RegParameters(), noise=noise)
    assert out.scores.dtype == torch.float32 and out.term.dtype == torch.float32
    assert torch.allclose(out.scores, reference.scores, rtol=0.1)


def butd_step(lambda_: float | None, seed: int = 0) -> list[Tensor]:
    """Gradients of one training step of a tiny BUTD + learned-mixin +H (lambda None: no regulariser)."""
    torch.manual_seed(0)
    model = build_model("baseline0_newatt", ntoken=9, num_hid=6, v_dim=5, num_answers=4, emb_dim=3)
    loss_fn = build_loss("learned_mixin", num_hid=6)
    g = torch.Generator().manual_seed(1)
    v, q = torch.rand(4, 3, 5, generator=g), torch.randint(0, 9, (4, 5), generator=g)
    bias, target = torch.rand(4, 4, generator=g), torch.rand(4, 4, generator=g)
    torch.manual_seed(seed)
    q_emb, v_emb = model.trunk(v, q)
    logits, joint = model.head(q_emb, v_emb)
    loss = loss_fn(joint, logits, bias, target)
    if lambda_ is not None:
        params = RegParameters(lambda_=lambda_)
        reg = information_regularizer(model.head, [q_emb, v_emb], logits, params)
        loss = loss + params.lambda_ * reg.term
    return list(torch.autograd.grad(loss, [*model.parameters(), *loss_fn.parameters()]))


def test_lambda_zero_is_exactly_the_plain_step_and_lambda_positive_differs() -> None:
    plain = butd_step(None)
    zero = butd_step(0.0)
    assert all(torch.equal(p, z) for p, z in zip(plain, zero))
    reg = butd_step(1e-3)
    changed = [not torch.equal(p, r) for p, r in zip(plain, reg)]
    assert changed == [True] * (len(changed) - 3) + [False] * 3  # every model parameter; not the LMH ones


def test_token_inputs_through_the_embedding_output() -> None:
    """The docstring's recipe: perturb BUTD's word embeddings and image features, full trunk in the head."""
    torch.manual_seed(0)
    model = build_model("baseline0_newatt", ntoken=9, num_hid=6, v_dim=5, num_answers=4, emb_dim=3).eval()
    v, q = torch.rand(4, 3, 5), torch.randint(0, 9, (4, 5))

    def from_words(w: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        q_emb = model.q_emb(w)
        return model.head(q_emb, (model.v_att(v, q_emb) * v).sum(1))

    w = model.w_emb(q)
    logits, _ = from_words(w, v)
    assert torch.allclose(logits, model(v, q)[0])
    out = information_regularizer(from_words, [w, v], logits, RegParameters())
    assert (out.scores > 0).all() and torch.isfinite(out.term)
    out.term.backward()
    assert model.w_emb.emb.weight.grad is not None and model.q_emb.rnn.weight_hh_l0.grad.abs().sum() > 0


def test_input_row_checks() -> None:
    model = TwoInput()
    image, question = torch.randn(4, 4), torch.randn(4, 3)
    logits = model(image, question)
    with pytest.raises(VQAError, match="input 1 has 5 rows, expected 4"):
        information_regularizer(model, [image, torch.randn(5, 3)], logits, RegParameters(), legacy=True)
    with pytest.raises(VQAError, match="noise"):
        information_regularizer(model, [image, question], logits, RegParameters(), noise=[torch.randn(12, 4)])
