"""BUTD model: structure, reference key mapping, weight norm, trunk / head split (tiny sizes)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vqa_cp.errors import VQAError
from vqa_cp.model import (
    BUTD,
    build_model,
    build_model_from_state_dict,
    config_from_state_dict,
    from_reference_state_dict,
    to_reference_state_dict,
    wn_linear,
)

NTOKEN, EMB, HID, VDIM, ANS, K, T, B = 11, 5, 6, 7, 4, 3, 4, 2


def tiny(name: str = "baseline0_newatt") -> BUTD:
    torch.manual_seed(0)
    return build_model(name, ntoken=NTOKEN, num_hid=HID, v_dim=VDIM, num_answers=ANS, emb_dim=EMB)


def batch(k: int = K) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    v = torch.rand(B, k, VDIM, generator=g)
    q = torch.randint(0, NTOKEN, (B, T), generator=g)
    q[0, :2] = NTOKEN  # left padding
    return v, q


def legacy_wn_linear(in_dim: int, out_dim: int) -> nn.Linear:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.nn.utils.weight_norm(nn.Linear(in_dim, out_dim), dim=None)


def wn_weight(layer: nn.Module) -> torch.Tensor:
    """w = g v / ||v||_F from the raw parameters (independent of the parametrization machinery)."""
    p = layer.parametrizations.weight
    return p.original0 * p.original1 / p.original1.norm()


def linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x @ wn_weight(layer).T + layer.bias


def test_weight_norm_is_one_scalar_gain_like_legacy() -> None:
    torch.manual_seed(0)
    ours = wn_linear(4, 3)
    g, v = ours.parametrizations.weight.original0, ours.parametrizations.weight.original1
    assert g.shape == () and v.shape == (3, 4)
    assert torch.allclose(g, v.norm())  # initialised to ||w||_F
    with torch.no_grad():
        g.fill_(2.5)
    assert torch.allclose(ours.weight, 2.5 * v / v.norm())
    legacy = legacy_wn_linear(4, 3)
    assert legacy.weight_g.shape == ()
    legacy.load_state_dict(to_reference_state_dict(ours.state_dict()))
    x = torch.randn(5, 4)
    assert torch.allclose(legacy(x), ours(x), atol=1e-6)


def test_reference_key_mapping_round_trip_and_legacy_gain_shapes() -> None:
    legacy = legacy_wn_linear(4, 3)
    sd = from_reference_state_dict({**legacy.state_dict(), "weight_g": legacy.weight_g.detach().reshape(1)})
    assert set(sd) == {"bias", "parametrizations.weight.original0", "parametrizations.weight.original1"}
    assert sd["parametrizations.weight.original0"].shape == ()
    ours = wn_linear(4, 3)
    ours.load_state_dict(sd)
    x = torch.randn(2, 4)
    assert torch.allclose(ours(x), legacy(x), atol=1e-6)
    back = to_reference_state_dict(ours.state_dict())
    shapes = {k: tuple(t.shape) for k, t in legacy.state_dict().items()}
    assert {k: tuple(t.shape) for k, t in back.items()} == shapes
    with pytest.raises(VQAError, match="weight_g"):
        from_reference_state_dict({"x.weight_g": torch.ones(3), "x.weight_v": torch.ones(3, 2)})


@pytest.mark.parametrize("name, att_keys", [
    ("baseline0_newatt", {"v_att.v_proj.main.0": (HID, VDIM), "v_att.q_proj.main.0": (HID, HID)}),
    ("baseline0", {"v_att.nonlinear.main.0": (HID, VDIM + HID)}),
])
def test_reference_module_names_and_shapes(name: str, att_keys: dict[str, tuple[int, int]]) -> None:
    ref = to_reference_state_dict(tiny(name).state_dict())
    expected = {"w_emb.emb.weight": (NTOKEN + 1, EMB), "q_emb.rnn.weight_ih_l0": (3 * HID, EMB),
                "q_emb.rnn.weight_hh_l0": (3 * HID, HID), "v_att.linear.weight_v": (1, HID),
                "q_net.main.0.weight_v": (HID, HID), "v_net.main.0.weight_v": (HID, VDIM),
                "classifier.main.0.weight_v": (2 * HID, HID), "classifier.main.3.weight_v": (ANS, 2 * HID)}
    expected.update({f"{k}.weight_v": s for k, s in att_keys.items()})
    for key, shape in expected.items():
        assert tuple(ref[key].shape) == shape, key
        if key.endswith(".weight_v"):
            assert ref[key.replace("weight_v", "weight_g")].shape == (), key
    wn_layers = {k[: -len(".weight_v")] for k in ref if k.endswith(".weight_v")}
    assert wn_layers == {k[: -len(".weight_v")] for k in expected if k.endswith(".weight_v")}


def test_embedding_padding_row_and_init() -> None:
    model = tiny()
    assert torch.count_nonzero(model.w_emb.emb.weight[NTOKEN]) == 0
    glove = np.arange(NTOKEN * EMB, dtype=np.float32).reshape(NTOKEN, EMB)
    model.init_embedding(glove)
    assert np.array_equal(model.w_emb.emb.weight[:NTOKEN].detach().numpy(), glove)
    assert torch.count_nonzero(model.w_emb.emb.weight[NTOKEN]) == 0
    with pytest.raises(VQAError, match=r"\(11, 5\)"):
        model.init_embedding(np.zeros((NTOKEN + 1, EMB), dtype=np.float32))


@pytest.mark.parametrize("name", ["baseline0_newatt", "baseline0"])
@pytest.mark.parametrize("k", [1, K, 9])
def test_trunk_and_head_match_a_hand_written_forward(name: str, k: int) -> None:
    model = tiny(name).eval()
    v, q = batch(k)
    q_emb, v_emb, att = model.trunk(v, q, return_attention=True)
    assert q_emb.shape == (B, HID) and v_emb.shape == (B, VDIM) and att.shape == (B, k, 1)

    out, _ = model.q_emb.rnn(model.w_emb.emb.weight[q])
    assert torch.allclose(q_emb, out[:, -1])
    a = model.v_att
    if name == "baseline0_newatt":
        hidden = F.relu(linear(a.v_proj.main[0], v)) * F.relu(linear(a.q_proj.main[0], q_emb))[:, None]
    else:
        cat = torch.cat([v, q_emb[:, None].expand(B, k, HID)], dim=2)
        hidden = F.relu(linear(a.nonlinear.main[0], cat))
    expected_att = torch.softmax(linear(a.linear, hidden), dim=1)
    assert torch.allclose(att, expected_att, atol=1e-6)
    assert torch.allclose(att.sum(1), torch.ones(B, 1))
    assert torch.allclose(v_emb, (expected_att * v).sum(1), atol=1e-6)

    logits, joint = model.head(q_emb, v_emb)
    expected_joint = F.relu(linear(model.q_net.main[0], q_emb)) * F.relu(linear(model.v_net.main[0], v_emb))
    hidden = F.relu(linear(model.classifier.main[0], expected_joint))
    expected_logits = linear(model.classifier.main[3], hidden)
    assert torch.allclose(joint, expected_joint, atol=1e-6)
    assert torch.allclose(logits, expected_logits, atol=1e-6)
    f_logits, f_joint = model(v, q)
    assert torch.equal(f_logits, logits) and torch.equal(f_joint, joint)


def test_dropout_rates_and_train_mode_randomness() -> None:
    model = tiny()
    rates = {name: m.p for name, m in model.named_modules() if isinstance(m, nn.Dropout)}
    assert rates == {"v_att.dropout": 0.2, "classifier.main.2": 0.5}
    v, q = batch()
    torch.manual_seed(3)
    first = model(v, q)[0]
    second = model(v, q)[0]
    assert not torch.equal(first, second)
    model.eval()
    assert torch.equal(model(v, q)[0], model(v, q)[0])


@pytest.mark.parametrize("name", ["baseline0_newatt", "baseline0"])
def test_build_from_state_dict_infers_sizes_and_variant(name: str) -> None:
    model = tiny(name).eval()
    sd = model.state_dict()
    config = config_from_state_dict(sd)
    assert config == model.config
    rebuilt = build_model_from_state_dict(sd, name=name).eval()
    assert (rebuilt.ntoken, rebuilt.num_answers) == (NTOKEN, ANS)
    v, q = batch()
    assert torch.equal(rebuilt(v, q)[0], model(v, q)[0])
    other = "baseline0" if name == "baseline0_newatt" else "baseline0_newatt"
    with pytest.raises(VQAError, match=f"not {other}"):
        build_model_from_state_dict(sd, name=other)


def test_state_dict_errors_are_clear() -> None:
    sd = tiny().state_dict()
    with pytest.raises(VQAError, match="from_reference_state_dict"):
        config_from_state_dict(to_reference_state_dict(sd))
    with pytest.raises(VQAError, match="q_emb.rnn.weight_hh_l0"):
        config_from_state_dict({k: t for k, t in sd.items() if not k.startswith("q_emb")})
    with pytest.raises(VQAError, match="unexpected"):
        build_model_from_state_dict({**sd, "bias_lin.weight": torch.zeros(1, HID)})
    with pytest.raises(VQAError, match="unknown model"):
        build_model("baseline1", NTOKEN, HID, VDIM, ANS)
