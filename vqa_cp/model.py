"""Bottom-up top-down VQA model (Anderson et al. 2018), as the reference "baseline0_newatt" / "baseline0".

The forward pass is split where the functional-entropy regulariser perturbs:

    trunk(v, q)          -> q_emb [B, H] (last GRU step), v_emb [B, D] = sum_k att_k v_k
    head(q_emb, v_emb)   -> logits [B, A], joint [B, H] = q_net(q_emb) * v_net(v_emb)

Every linear layer is weight-normalised with ONE scalar gain per matrix, w = g v / ||v||_F (legacy
`weight_norm(dim=None)`), through `torch.nn.utils.parametrizations.weight_norm(dim=None)`, whose
`original0` is the 0-d g and `original1` the full v. State-dict keys therefore map onto the reference
(legacy) keys as

    <layer>.parametrizations.weight.original0  [] <->  <layer>.weight_g  []   (older files: [1])
    <layer>.parametrizations.weight.original1      <->  <layer>.weight_v
    everything else (biases, w_emb.emb.weight, q_emb.rnn.*) is the same key in both.

`to_reference_state_dict` / `from_reference_state_dict` do that mapping; stripping a `module.`
prefix and dropping dead keys (`bias_lin.*`, `debias_loss_fn.*`) is the checkpoint loader's job.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from vqa_cp.errors import VQAError

MODEL_NAMES = ("baseline0_newatt", "baseline0")
_OURS_G, _OURS_V = "parametrizations.weight.original0", "parametrizations.weight.original1"
_REF_G, _REF_V = "weight_g", "weight_v"


def wn_linear(in_dim: int, out_dim: int) -> nn.Linear:
    """Linear layer with scalar weight norm: w = g v / ||v||_F (g 0-d, initialised to ||w||_F)."""
    return weight_norm(nn.Linear(in_dim, out_dim), dim=None)


class FCNet(nn.Module):
    """`main` = [WN-Linear(in_dim -> out_dim), ReLU] (reference module name FCNet)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.main = nn.Sequential(wn_linear(in_dim, out_dim), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        return self.main(x)


class WordEmbedding(nn.Module):
    """Embedding of ntoken words plus one padding row (index ntoken, kept at zero)."""

    def __init__(self, ntoken: int, emb_dim: int) -> None:
        super().__init__()
        self.ntoken = ntoken
        self.emb = nn.Embedding(ntoken + 1, emb_dim, padding_idx=ntoken)

    def init_embedding(self, weights: np.ndarray) -> None:
        """Copy pretrained vectors [ntoken, emb_dim] (e.g. GloVe) into the rows of the real words."""
        expected = (self.ntoken, self.emb.embedding_dim)
        if not isinstance(weights, np.ndarray) or weights.shape != expected:
            shape = getattr(weights, "shape", type(weights).__name__)
            raise VQAError(f"word embedding init: expected an array of shape {expected}, got {shape}")
        if not np.isfinite(weights).all():
            raise VQAError("word embedding init: the array holds NaN or infinite values")
        with torch.no_grad():
            self.emb.weight[: self.ntoken].copy_(torch.from_numpy(weights))

    def forward(self, q: Tensor) -> Tensor:
        return self.emb(q)


class QuestionEmbedding(nn.Module):
    """One-layer GRU; the question embedding is the output at the last step (questions are left-padded)."""

    def __init__(self, emb_dim: int, num_hid: int) -> None:
        super().__init__()
        self.rnn = nn.GRU(emb_dim, num_hid, num_layers=1, batch_first=True)

    def forward(self, w: Tensor) -> Tensor:
        output, _ = self.rnn(w)
        return output[:, -1]


class NewAttention(nn.Module):
    """a = softmax_k( linear( dropout( v_proj(v_k) * q_proj(q) ) ) ) -- "baseline0_newatt"."""

    def __init__(self, v_dim: int, q_dim: int, num_hid: int, dropout: float = 0.2) -> None:
        super().__init__()
        self.v_proj = FCNet(v_dim, num_hid)
        self.q_proj = FCNet(q_dim, num_hid)
        self.dropout = nn.Dropout(dropout)
        self.linear = wn_linear(num_hid, 1)

    def forward(self, v: Tensor, q: Tensor) -> Tensor:
        joint = self.v_proj(v) * self.q_proj(q).unsqueeze(1)
        return torch.softmax(self.linear(self.dropout(joint)), dim=1)


class ConcatAttention(nn.Module):
    """a = softmax_k( linear( nonlinear([v_k; q]) ) ) -- "baseline0" (the reference has no dropout here)."""

    def __init__(self, v_dim: int, q_dim: int, num_hid: int) -> None:
        super().__init__()
        self.nonlinear = FCNet(v_dim + q_dim, num_hid)
        self.linear = wn_linear(num_hid, 1)

    def forward(self, v: Tensor, q: Tensor) -> Tensor:
        q_rep = q.unsqueeze(1).expand(-1, v.shape[1], -1)
        return torch.softmax(self.linear(self.nonlinear(torch.cat([v, q_rep], dim=2))), dim=1)


class SimpleClassifier(nn.Module):
    """`main` = [WN-Linear(in -> hid), ReLU, Dropout, WN-Linear(hid -> out)]."""

    def __init__(self, in_dim: int, hid_dim: int, out_dim: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.main = nn.Sequential(wn_linear(in_dim, hid_dim), nn.ReLU(), nn.Dropout(dropout),
                                  wn_linear(hid_dim, out_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.main(x)


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a BUTD model (all sizes come from here, none are hard-coded)."""

    name: str
    ntoken: int
    num_hid: int
    v_dim: int
    num_answers: int
    emb_dim: int = 300


class BUTD(nn.Module):
    """Bottom-up top-down VQA model split into `trunk` and `head` (see the module docstring)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.name not in MODEL_NAMES:
            raise VQAError(f"unknown model {config.name!r}; choose one of {', '.join(MODEL_NAMES)}")
        self.config = config
        h = config.num_hid
        self.w_emb = WordEmbedding(config.ntoken, config.emb_dim)
        self.q_emb = QuestionEmbedding(config.emb_dim, h)
        if config.name == "baseline0_newatt":
            self.v_att: nn.Module = NewAttention(config.v_dim, h, h)
        else:
            self.v_att = ConcatAttention(config.v_dim, h, h)
        self.q_net = FCNet(h, h)
        self.v_net = FCNet(config.v_dim, h)
        self.classifier = SimpleClassifier(h, 2 * h, config.num_answers, 0.5)

    @property
    def ntoken(self) -> int:
        return self.config.ntoken

    @property
    def num_answers(self) -> int:
        return self.config.num_answers

    def init_embedding(self, weights: np.ndarray) -> None:
        """Initialise the word embedding from an array [ntoken, emb_dim] (GloVe)."""
        self.w_emb.init_embedding(weights)

    def trunk(self, v: Tensor, q: Tensor, return_attention: bool = False) -> tuple[Tensor, ...]:
        """v [B, K, D] box features, q [B, T] token ids -> (q_emb [B, H], v_emb [B, D][, att [B, K, 1]])."""
        q_emb = self.q_emb(self.w_emb(q))
        att = self.v_att(v, q_emb)
        v_emb = (att * v).sum(dim=1)
        return (q_emb, v_emb, att) if return_attention else (q_emb, v_emb)

    def head(self, q_emb: Tensor, v_emb: Tensor) -> tuple[Tensor, Tensor]:
        """joint = q_net(q_emb) * v_net(v_emb); returns (classifier(joint) [B, A], joint [B, H])."""
        joint = self.q_net(q_emb) * self.v_net(v_emb)
        return self.classifier(joint), joint

    def forward(self, v: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
        """(logits [B, A], joint [B, H]) = head(*trunk(v, q))."""
        return self.head(*self.trunk(v, q))


def build_model(name: str, ntoken: int, num_hid: int, v_dim: int, num_answers: int,
                emb_dim: int = 300) -> BUTD:
    """Build a freshly initialised BUTD model ("baseline0_newatt" or "baseline0")."""
    return BUTD(ModelConfig(name, ntoken, num_hid, v_dim, num_answers, emb_dim))


def _shape(sd: Mapping[str, Tensor], key: str, ndim: int = 2) -> tuple[int, ...]:
    """Shape of `sd[key]`, which must be an `ndim`-dimensional tensor with no empty dimension."""
    if key not in sd:
        raise VQAError(f"model state_dict: missing key {key!r} (is this a BUTD checkpoint?)")
    value = sd[key]
    if not isinstance(value, Tensor) or value.dim() != ndim or 0 in value.shape:
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise VQAError(f"model state_dict: {key!r} has shape {shape}; expected a non-empty {ndim}-d tensor")
    return tuple(value.shape)


def config_from_state_dict(sd: Mapping[str, Tensor]) -> ModelConfig:
    """Infer the model variant and every size from the shapes of a state_dict in our key format."""
    if "v_att.v_proj.main.0." + _OURS_V in sd:
        name = "baseline0_newatt"
    elif "v_att.nonlinear.main.0." + _OURS_V in sd:
        name = "baseline0"
    elif any(_renamed(k, _REF_V, _OURS_V) for k in sd):
        raise VQAError("model state_dict uses reference keys (weight_g/weight_v): "
                       "convert it with from_reference_state_dict first")
    else:
        raise VQAError("model state_dict: no attention weights (v_att.v_proj / v_att.nonlinear) found")
    rows, emb_dim = _shape(sd, "w_emb.emb.weight")
    num_hid = _shape(sd, "q_emb.rnn.weight_hh_l0")[1]
    v_dim = _shape(sd, "v_net.main.0." + _OURS_V)[1]
    num_answers = _shape(sd, "classifier.main.3." + _OURS_V)[0]
    return ModelConfig(name, rows - 1, num_hid, v_dim, num_answers, emb_dim)


def build_model_from_state_dict(sd: Mapping[str, Tensor], name: str | None = None) -> BUTD:
    """Build the model a state_dict describes (sizes and variant from its shapes) and load its weights.

    `sd` uses our keys, without a `module.` prefix or dead keys; `name`, when given, must match the
    variant the keys imply.
    """
    config = config_from_state_dict(sd)
    if name is not None and name != config.name:
        raise VQAError(f"model state_dict holds a {config.name} model, not {name}")
    model = BUTD(config)
    missing, unexpected = model.load_state_dict(dict(sd), strict=False)
    if missing or unexpected:
        raise VQAError(f"model state_dict does not match {config.name}: "
                       f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    return model


def _renamed(key: str, suffix: str, new_suffix: str) -> str | None:
    """`prefix.suffix` (or bare `suffix`) -> `prefix.new_suffix`; None when `key` has another leaf."""
    if key == suffix:
        return new_suffix
    if key.endswith("." + suffix):
        return key[: -len(suffix)] + new_suffix
    return None


def to_reference_state_dict(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Our keys -> reference keys: `X.parametrizations.weight.original0/1` -> `X.weight_g/weight_v`."""
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        if (new := _renamed(key, _OURS_G, _REF_G)) is not None:
            out[new] = value.reshape(())
        elif (new := _renamed(key, _OURS_V, _REF_V)) is not None:
            out[new] = value
        else:
            out[key] = value
    return out


def from_reference_state_dict(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Reference keys -> our keys: `X.weight_g` ([] or [1]) -> 0-d `X.parametrizations.weight.original0`."""
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        if (new := _renamed(key, _REF_G, _OURS_G)) is not None:
            if value.numel() != 1:
                raise VQAError(f"reference state_dict: {key} has shape {tuple(value.shape)}; "
                               "expected one scalar gain (weight_norm with dim=None)")
            out[new] = value.reshape(())
        elif (new := _renamed(key, _REF_V, _OURS_V)) is not None:
            out[new] = value
        else:
            out[key] = value
    return out
