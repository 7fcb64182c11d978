"""Functional-entropy regulariser of Gat, Schwartz, Schwing and Hazan, "Removing Bias in Multi-modal
Classifiers: Regularization by Maximizing Functional Entropies" (NeurIPS 2020), with the seed's API.

For each modality m the model's output is probed with Gaussian perturbations of that modality's input
x_m. The information a modality carries is the functional entropy Ent(f) = E[f log f] - E[f] log E[f] of a
positive influence loss f, bounded by the log-Sobolev inequality for Gaussian measures,

    Ent(f) <= (sigma^2 / 2) E[ ||grad_x f||^2 / f ],

so the "gradient" information score is s_m = mean_rows ||d L_inf / d x_m||_2^2 / L_inf ('ent'; 'var'
drops the division, the Poincare bound). The regulariser 'max_ent' = || 1 / s ||_p pushes every
modality's score up, so the classifier cannot ignore one of them.

Layout: perturbed batches hold n_samples copies of each sample, sample-major: row b * n + j is copy j
of sample b (the authors' library layout; `Perturbation.repeat` makes it).

legacy=True reproduces the published VQA-CP wiring: the caller passes the head inputs of a second
trunk pass over the same batch, the noise std stays in the graph (the published perturbation does not
detach it, so the term also differentiates through std(q_emb) and std(v_emb)), and the influence
loss's arguments are reversed.

Scale of the scores ('paper', the default, the published code's): the influence loss L is a mean over
the N = B n A elements of the perturbed batch (B rows, n copies, A answers), so with l_r the loss of
perturbed row r summed over its answers, d L / d x_r = (1 / N) d l_r / d x_r and

    s_m = (1 / N^2) mean_r ||d l_r / d x_r||^2 / L        (gradient path, 'ent'; 'var' drops the / L).

The scores shrink like 1 / (batch x answers)^2: at 2,000 answers and batch 512 they are ~1e-14 (default
wiring) or ~1e-20 (legacy), and a 4,096 global batch under torchrun makes them 64 times smaller again.
score_scale='per_question' (opt-in, beyond the published code) scores each row's influence loss summed
over its answers, so that the score no longer depends on the batch size:

    s_m = mean_r ||d l_r / d x_r||^2 / mean_r l_r = N^2 / A * s_m(paper)   ('var': N^2 * s_m(paper)),

the same model scores alike at batch 64 and 512 (global, torchrun included) and lambda keeps its meaning
when the batch changes. Gradient-free path: the per-row influence loss is the mean over answers
('paper') or the sum ('per_question'); both are batch-size free already.

Numerics (real sizes: s ~ 1e-22 .. 1e-12): from the squared gradient norms on, the scores and the term
are computed in float64 (d term / d s ~ lambda / s^2 would overflow float32 at a ~1e-25 score), the
term's p-norm scaled by its largest entry; the term and the returned scores are then cast to the
widened dtype of the logits (float32; float64 stays float64). The largest value the backward then
hands to float32 is d (lambda term) / d (d L / d x) ~ 2 lambda / (rows sqrt(D L) s^1.5) (D the input
width): ~1e19 at s = 1e-22 and lambda 1e-10, overflowing only below s ~ 1e-34.

Floor: a score of exactly 0 (a modality the head ignores: its gradient is exactly zero) would make
1/s infinite. 'max_ent' therefore clamps each score at `RegParameters.score_floor`, by default the
smallest normal number of the returned dtype (`torch.finfo(float32).tiny` ~ 1.2e-38), so the floor
only ever acts on a zero or denormal score, never on one real training produces. A floored score holds
its part of the term at 1/floor (~8.5e37; lambda 1e-10 x term ~ 8.5e27, finite) with no gradient, as
the limit s -> 0 does (||1/s||_p is then dominated by that entry). Which scores the floor lifted is
returned (`RegOutput.floored`, `floored_mask`, `floor_messages`) so that the caller can report it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from vqa_cp.errors import VQAError
from vqa_cp.losses import widen

ESTIMATIONS = ("ent", "var", "dif_ent")
OPTIM_METHODS = ("max_ent", "min_ent", "max_ent_minus")
SCORE_SCALES = ("paper", "per_question")
SCORE_FLOOR = float(torch.finfo(torch.float32).tiny)  # the default floor of float32 scores, ~1.2e-38
MODALITY_NAMES = ("question", "image")  # BUTD's order of the regulariser's inputs (q_emb, v_emb)
AllReduce = Callable[[Tensor], Tensor]  # a differentiable sum over processes (torch.distributed.nn)


@dataclass
class RegParameters:
    """The regulariser's settings (the seed's arguments, plus noise_dim, score_scale and score_floor).

    lambda_ (alias `delta`): strength, loss += lambda_ * term; norm: p of the p-norm; estimation: 'ent'
    (functional entropy), 'var' (variance) or 'dif_ent' (differential entropy -E[f log f], gradient-free
    only); optim_method: 'max_ent' | 'min_ent' | 'max_ent_minus'; n_samples: perturbations per sample;
    grad: use the log-Sobolev gradient bound (True) or the gradient-free estimate (False);
    noise_dim: noise std over the repeated batch per feature (0, the library's default) or over each
    row's features (1, the published VQA-CP folder's copy); score_scale: 'paper' (the published
    scores, ~1 / (batch x answers)^2) or 'per_question' (batch-size free, see the module docstring);
    score_floor: the clamp of 'max_ent' on a zero score, None = the smallest normal number of the
    scores' dtype (see the module docstring; a larger floor may act on real scores and kill the term's
    gradient).
    """

    lambda_: float = 1e-10
    norm: float = 2.0
    estimation: str = "ent"
    optim_method: str = "max_ent"
    n_samples: int = 3
    grad: bool = True
    noise_dim: int = 0
    score_floor: float | None = None
    score_scale: str = "paper"

    def __post_init__(self) -> None:
        if self.estimation not in ESTIMATIONS:
            raise VQAError(f"unknown estimation {self.estimation!r}; choose one of {', '.join(ESTIMATIONS)}")
        if self.optim_method not in OPTIM_METHODS:
            raise VQAError(f"unknown optim_method {self.optim_method!r}; "
                           f"choose one of {', '.join(OPTIM_METHODS)}")
        if self.estimation == "dif_ent" and self.grad:
            raise VQAError("estimation 'dif_ent' has no gradient bound: use it with grad=False")
        if self.n_samples < 1 or (not self.grad and self.n_samples < 2):
            raise VQAError(f"n_samples must be >= 1 (>= 2 without the gradient bound), got {self.n_samples}")
        if self.norm <= 0:
            raise VQAError(f"norm must be > 0, got {self.norm}")
        if self.noise_dim not in (0, 1):
            raise VQAError(f"noise_dim must be 0 (over the batch) or 1 (per sample), got {self.noise_dim}")
        if self.score_floor is not None and not self.score_floor > 0:
            raise VQAError(f"score_floor must be > 0 (or None: the dtype's smallest normal number), "
                           f"got {self.score_floor}")
        if self.score_scale not in SCORE_SCALES:
            raise VQAError(f"unknown score_scale {self.score_scale!r}; choose one of {', '.join(SCORE_SCALES)}")

    @property
    def delta(self) -> float:
        """The strength under the seed snippet's name; the same value as `lambda_`."""
        return self.lambda_

    @delta.setter
    def delta(self, value: float) -> None:
        self.lambda_ = value


class Perturbation:
    """Repeating and perturbing tensors (batch first), and the clean targets of the influence loss."""

    @staticmethod
    def repeat(tensor: Tensor, n_samples: int) -> Tensor:
        """n_samples copies of each row, sample-major: row b * n + j = tensor[b]."""
        return tensor.repeat_interleave(n_samples, dim=0)

    @staticmethod
    def _noise_std(tensor: Tensor, n_samples: int, dim: int, all_reduce: AllReduce | None = None,
                   std_grad: bool = False) -> Tensor:
        """Std of `n_samples` copies of `tensor`, shaped to broadcast over [B, n, ...]; detached unless std_grad.

        dim 0: per feature over the B * n rows, sqrt(n sum_b (x_b - mean)^2 / (n B - 1)); dim 1: per row over
        its features (copies share it). With `all_reduce` (a sum over processes) the dim-0 std is the one
        of the whole global batch.
        """
        x = tensor if std_grad else tensor.detach()
        rows = x.shape[0]
        flat = x.reshape(rows, -1)
        if dim == 0 and all_reduce is not None:
            wide = flat.double()
            stats = all_reduce(torch.cat([wide.sum(0), wide.square().sum(0),
                                          torch.full((1,), float(rows), dtype=torch.float64, device=x.device)]))
            feats = flat.shape[1]
            total, mean = stats[-1], stats[:feats] / stats[-1]
            var = (stats[feats:2 * feats] / total - mean.square()).clamp(min=0)
            count = total * n_samples
            if rows * n_samples < 2 and count < 2:  # (the host-side test first: no sync when it cannot fail)
                raise VQAError("perturbation noise: the std over the batch needs at least 2 rows")
            return (var * (count / (count - 1))).sqrt().to(x.dtype).reshape(1, 1, *x.shape[1:])
        if dim == 0:
            if rows * n_samples < 2:
                raise VQAError("perturbation noise: the std over the batch needs at least 2 rows")
            # the std of the repeated rows itself, the published op: the scores' float32 rounding follows it
            return Perturbation.repeat(flat, n_samples).std(dim=0).reshape(1, 1, *x.shape[1:])
        if dim == 1:
            if flat.shape[1] < 2:
                raise VQAError("perturbation noise: the per-sample std needs at least 2 features")
            return flat.std(dim=1).reshape(rows, 1, *([1] * (x.dim() - 1)))
        raise VQAError(f"perturbation noise: dim must be 0 or 1, got {dim}")

    @classmethod
    def perturb_tensor(cls, tensor: Tensor, n_samples: int, perturbation: bool = True, dim: int = 0,
                       noise: Tensor | None = None, all_reduce: AllReduce | None = None,
                       std_grad: bool = False) -> Tensor:
        """Repeat n_samples times (sample-major) and add eps * std, eps ~ N(0, 1) (std: see dim).

        The std is detached (a constant of the perturbation) unless std_grad is set (the published
        VQA-CP code keeps it in the graph). `noise` injects eps (shape [B * n, ...]) for reproducible
        runs. The result always requires grad: it stays attached to `tensor`'s graph when there is one,
        otherwise it is a fresh leaf, so that torch.autograd.grad can be taken with respect to it.
        Token ids (Long) cannot be perturbed: perturb the embedding output instead, e.g. for BUTD
        `Perturbation.perturb_tensor(model.w_emb(q), n)`, or capture it with a forward hook on the first
        embedding layer.
        """
        if not tensor.is_floating_point():
            raise VQAError(f"cannot perturb a {tensor.dtype} tensor: perturb the embedding output instead")
        rows = tensor.shape[0]
        if not perturbation:
            out = cls.repeat(tensor, n_samples)
        else:
            if noise is None:
                noise = torch.randn((rows * n_samples, *tensor.shape[1:]), dtype=tensor.dtype,
                                    device=tensor.device)
            elif noise.shape != (rows * n_samples, *tensor.shape[1:]):
                raise VQAError(f"perturbation noise has shape {tuple(noise.shape)}, expected "
                               f"{(rows * n_samples, *tensor.shape[1:])}")
            eps = noise.reshape(rows, n_samples, *tensor.shape[1:])
            std = cls._noise_std(tensor, n_samples, dim, all_reduce, std_grad)
            out = (tensor.unsqueeze(1) + eps * std).reshape(rows * n_samples, *tensor.shape[1:])
        return out if out.requires_grad else out.requires_grad_()

    @staticmethod
    def get_expanded_logits(logits: Tensor, n_samples: int, logits_flg: bool = True) -> Tensor:
        """softmax(logits) over answers (skipped when logits_flg is False), repeated n_samples times."""
        probs = torch.softmax(logits, dim=1) if logits_flg else logits
        return Perturbation.repeat(probs, n_samples)


class Regularization:
    """Information scores of each modality and the regularisation term built from them."""

    @staticmethod
    def get_batch_norm(grad: Tensor, loss: Tensor | None = None, estimation: str = "ent") -> Tensor:
        """Gradient information score: mean_rows ||grad_row||_2^2 / loss ('ent'); 'var' drops the division.

        The norm runs over all non-batch dims. `loss` is the scalar influence loss, or one value per row.
        """
        sq_norm = grad.reshape(grad.shape[0], -1).square().sum(dim=1)
        if estimation == "ent":
            if loss is None:
                raise VQAError("estimation 'ent' divides by the influence loss: pass loss=")
            return (sq_norm / loss).mean()
        if estimation == "var":
            return sq_norm.mean()
        raise VQAError(f"estimation {estimation!r} has no gradient score; use 'ent' or 'var'")

    @staticmethod
    def get_batch_statistics(loss: Tensor, n_samples: int, estimation: str = "ent") -> Tensor:
        """Gradient-free score from per-row positive losses f [B * n] (sample-major), mean over the batch of

        'ent': E[f log f] - E[f] log E[f];  'var': unbiased variance;  'dif_ent': -E[f log f]
        (expectations over each sample's n_samples perturbations). The authors' library L1-normalises
        each sample's losses for 'ent' and sums -f log f over the batch for 'dif_ent'; we keep the plain
        definitions (Ent is 1-homogeneous, Ent(c f) = c Ent(f), so only the scale differs).
        """
        f = loss.reshape(-1, n_samples)
        if estimation == "ent":
            mean = f.mean(dim=1)
            stat = torch.xlogy(f, f).mean(dim=1) - torch.xlogy(mean, mean)
        elif estimation == "var":
            stat = f.var(dim=1)
        elif estimation == "dif_ent":
            stat = -torch.xlogy(f, f).mean(dim=1)
        else:
            raise VQAError(f"unknown estimation {estimation!r}; choose one of {', '.join(ESTIMATIONS)}")
        return stat.mean()

    @staticmethod
    def default_floor(dtype: torch.dtype) -> float:
        """The floor of 'max_ent' for scores of `dtype`: its smallest normal number (finfo.tiny)."""
        return float(torch.finfo(dtype).tiny)

    @staticmethod
    def count_floored(inf_scores: Tensor, floor: float | None = None) -> Tensor:
        """How many scores lie below the floor (None: the scores' dtype's) (0-d int64 tensor; no host sync)."""
        floor = Regularization.default_floor(inf_scores.dtype) if floor is None else floor
        return (inf_scores.detach() < floor).sum()

    @staticmethod
    def get_regularization_term(inf_scores: Tensor, norm: float = 2.0, optim_method: str = "max_ent",
                                floor: float | None = None, dtype: torch.dtype | None = None) -> Tensor:
        """'max_ent': || 1 / max(s, floor) ||_p;  'min_ent': || s ||_p;  'max_ent_minus': -|| s ||_p + 0.1.

        Computed in float64 (1/s scaled by its largest entry inside the norm) and returned in `dtype`
        (default: the scores'); floor None = the smallest normal number of that dtype, so that only a
        zero or denormal score is lifted and 1/floor stays finite in it.
        """
        dtype = inf_scores.dtype if dtype is None else dtype
        s = inf_scores.double()
        if optim_method == "max_ent":
            floor = Regularization.default_floor(dtype) if floor is None else floor
            inv = 1.0 / s.clamp(min=floor)
            scale = inv.detach().max()
            term = scale * torch.linalg.vector_norm(inv / scale, ord=norm)
        elif optim_method == "min_ent":
            term = torch.linalg.vector_norm(s, ord=norm)
        elif optim_method == "max_ent_minus":
            term = -torch.linalg.vector_norm(s, ord=norm) + 0.1
        else:
            raise VQAError(f"unknown optim_method {optim_method!r}; choose one of {', '.join(OPTIM_METHODS)}")
        return term.to(dtype)


@dataclass
class RegOutput:
    """term: the regulariser (multiply by lambda_ yourself); scores [n_modalities] (float32 for float32 or
    bf16 models), before any floor; floored: 0-d int64 count of scores the floor lifted (always 0 unless
    optim_method is 'max_ent'); floored_mask: bool [n_modalities], which ones; floor: the floor used."""

    term: Tensor
    scores: Tensor
    floored: Tensor
    floored_mask: Tensor | None = None
    floor: float | None = None

    def floor_messages(self, names: Sequence[str] = MODALITY_NAMES) -> list[str]:
        """One line per floored modality, naming it and its score (host sync: call when floored > 0)."""
        if self.floored_mask is None or not bool(self.floored_mask.any()):
            return []
        values = self.scores.detach().double().cpu().tolist()
        lines = []
        for m in torch.nonzero(self.floored_mask.cpu()).flatten().tolist():
            name = names[m] if m < len(names) else f"modality {m}"
            lines.append(f"regulariser: the {name} information score is {values[m]:.3g}, below the floor "
                         f"{self.floor:.3g} (does the head ignore the {name}?); its part of the term is held at "
                         f"1/floor = {1 / self.floor:.3g}, with no gradient")
        return lines


def _first(output: Tensor | Sequence[Tensor]) -> Tensor:
    return output if isinstance(output, Tensor) else output[0]


def _influence_loss(perturbed_logits: Tensor, expanded: Tensor, legacy: bool, reduction: str) -> Tensor:
    """BCE-with-logits(perturbed logits, clean softmax) -- legacy: the published code's reversed order."""
    if legacy:
        return F.binary_cross_entropy_with_logits(expanded, perturbed_logits, reduction=reduction)
    return F.binary_cross_entropy_with_logits(perturbed_logits, expanded, reduction=reduction)


def _global_batch_norm(grads: Sequence[Tensor], inf_loss: Tensor, estimation: str, all_reduce: AllReduce,
                       world_size: int) -> Tensor:
    """get_batch_norm of the global batch from each rank's gradients of its own (mean) influence loss, in
    float64 from the squared norms on."""
    rows = grads[0].shape[0]
    sq = torch.stack([g.double().reshape(rows, -1).square().sum() for g in grads])
    if estimation == "ent":
        summed = all_reduce(torch.cat([sq, inf_loss.reshape(1).double()]))  # one collective
        return summed[:-1] / (world_size**2 * rows * summed[-1:])
    if estimation == "var":
        return all_reduce(sq) / (world_size**3 * rows)
    raise VQAError(f"estimation {estimation!r} has no gradient score; use 'ent' or 'var'")


def _per_question_factor(estimation: str, elements: int, answers: int) -> float:
    """score(per_question) / score(paper) on the gradient path: N^2 / A ('ent') or N^2 ('var'), N = B n A."""
    return float(elements) ** 2 / (answers if estimation == "ent" else 1)


def information_regularizer(head: Callable[..., Tensor | Sequence[Tensor]], inputs: Sequence[Tensor],
                            logits: Tensor, params: RegParameters, *, legacy: bool = False,
                            noise: Sequence[Tensor] | None = None, all_reduce: AllReduce | None = None,
                            world_size: int = 1) -> RegOutput:
    """The seed snippet for a model split into a trunk and `head`: loss += params.lambda_ * out.term.

    inputs: the head's inputs, one per modality, [B, ...]: from the clean pass (e.g. BUTD's q_emb,
    v_emb), or with `legacy=True` from a second trunk pass over the same batch (the published VQA-CP
    wiring, which also keeps the noise std in the graph and reverses the influence-loss arguments).
    logits: the clean logits [B, A]; their softmax, repeated, is the influence loss's target (not
    detached, as in the seed). head(*perturbed) returns logits or a tuple starting with them.
    grad=True: s_m = get_batch_norm(d L_inf / d x~_m) with all modalities perturbed at once; the
    double backward stays inside the head. grad=False: one head pass per modality (the others repeated
    clean) and s_m = get_batch_statistics of the per-row influence losses (mean over answers; summed
    with score_scale 'per_question').
    noise: optional standard-normal draws, one per modality, shaped like the perturbed tensors.
    all_reduce / world_size: under torchrun, a differentiable sum over the `world_size` processes (each
    holding an equal share of the batch); the noise std and the scores are then those of the global
    batch, so 2 ranks x B/2 give the term of 1 rank x B. With L_r and S_r = sum_rows ||d L_r / d x||^2
    of rank r (R_r rows), d L / d x = (d L_r / d x) / W gives s = sum_r S_r / (W^2 R_r sum_r L_r) ('ent').

    score_scale 'per_question': the scores of each row's influence loss summed over its answers,
    N^2 / A times the 'paper' ones (N = B n A elements of the global perturbed batch; see the module
    docstring), independent of the batch size.

    With autocast off, even when the head runs under bf16 autocast: the softmax target, the influence
    loss and the gradients are float32 (the widened dtype of the logits); the scores, from the squared
    gradient norms on, and the term are float64, then returned in that widened dtype.

    Token inputs: Long ids cannot be perturbed; perturb the word-embedding output instead, e.g. BUTD
    from its embeddings on (the seed's advice; a forward hook on the embedding layer does the same):
    >>> def from_words(w, v):
    ...     q_emb = model.q_emb(w)
    ...     return model.head(q_emb, (model.v_att(v, q_emb) * v).sum(1))
    >>> w = model.w_emb(q)                                   # [B, T, E] float, not the ids
    >>> logits, joint = from_words(w, v)
    >>> reg = information_regularizer(from_words, [w, v], logits, params)
    """
    rows = logits.shape[0]
    for m, x in enumerate(inputs):
        if x.shape[0] != rows:
            raise VQAError(f"regulariser input {m} has {x.shape[0]} rows, expected {rows} (one per logits row)")
    if noise is not None and len(noise) != len(inputs):
        raise VQAError(f"regulariser: {len(noise)} noise tensors for {len(inputs)} inputs")
    n = params.n_samples
    device = logits.device.type

    def perturb(m: int, x: Tensor) -> Tensor:
        return Perturbation.perturb_tensor(widen(x), n, dim=params.noise_dim,
                                           noise=None if noise is None else noise[m], all_reduce=all_reduce,
                                           std_grad=legacy)

    out_dtype = widen(logits).dtype
    per_question = params.score_scale == "per_question"
    with torch.autocast(device, enabled=False):
        expanded = Perturbation.get_expanded_logits(widen(logits), params.n_samples)
    if params.grad:
        perturbed = [perturb(m, x) for m, x in enumerate(inputs)]
        out = _first(head(*perturbed))
        with torch.autocast(device, enabled=False):
            inf_loss = _influence_loss(widen(out), expanded, legacy, "mean")
            # a modality the head ignores gets a zero gradient (score 0), not an error
            grads = torch.autograd.grad(inf_loss, perturbed, create_graph=True, allow_unused=True,
                                        materialize_grads=True)
            # float64 from the squared norms on: d term / d s ~ lambda / s^2 overflows float32 at s ~ 1e-25
            if all_reduce is None:
                scores = torch.stack([Regularization.get_batch_norm(g.double(), inf_loss.double(),
                                                                    params.estimation) for g in grads])
            else:
                scores = _global_batch_norm(grads, inf_loss, params.estimation, all_reduce, world_size)
            if per_question:
                answers = out[0].numel()
                scores = scores * _per_question_factor(params.estimation, out.shape[0] * world_size * answers,
                                                       answers)
    else:
        stats = []
        for m in range(len(inputs)):
            probe = [perturb(k, x) if k == m else Perturbation.repeat(widen(x), n) for k, x in enumerate(inputs)]
            out = _first(head(*probe))
            with torch.autocast(device, enabled=False):
                per_answer = _influence_loss(widen(out), expanded, legacy, "none").double()
                per_row = per_answer.sum(dim=1) if per_question else per_answer.mean(dim=1)
                stats.append(Regularization.get_batch_statistics(per_row, params.n_samples,
                                                                 params.estimation))
        scores = torch.stack(stats)
        if all_reduce is not None:
            scores = all_reduce(scores) / world_size
    floor = Regularization.default_floor(out_dtype) if params.score_floor is None else params.score_floor
    with torch.autocast(device, enabled=False):
        term = Regularization.get_regularization_term(scores, params.norm, params.optim_method, floor,
                                                      dtype=out_dtype)
    if params.optim_method == "max_ent":
        mask = scores.detach() < floor
    else:
        mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    return RegOutput(term, scores.to(out_dtype), mask.sum(), mask, floor)
