"""CUDA checks (skipped without a GPU; bench/gpu_check.sh runs them on one)."""

import pytest
import torch

from vqa_cp.losses import build_loss
from vqa_cp.model import build_model
from vqa_cp.objective import Objective
from vqa_cp.regularization import RegParameters
from vqa_cp.training import train_step

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _objective(device: str, lam: float = 1e-4) -> Objective:
    torch.manual_seed(0)
    model = build_model("baseline0_newatt", ntoken=50, num_hid=64, v_dim=32, num_answers=20)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return Objective(model, build_loss("learned_mixin", num_hid=64), RegParameters(lambda_=lam)).to(device)


def _batch(device: str) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    v = torch.rand(16, 10, 32, generator=g)
    q = torch.randint(0, 51, (16, 14), generator=g)
    target = (torch.rand(16, 20, generator=g) > 0.8).float()
    bias = torch.softmax(torch.randn(16, 20, generator=g), dim=1)
    return tuple(t.to(device) for t in (v, q, target, bias))


def test_cuda_step_matches_cpu_step_with_cudnn_gru_and_regulariser():
    assert torch.backends.cudnn.enabled  # the GRU keeps cuDNN: the double backward stays in the head
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    results = {}
    for device in ("cpu", "cuda"):
        objective = _objective(device)
        optimizer = torch.optim.Adamax(objective.parameters(), lr=2e-3)
        loss, _, parts = train_step(objective, optimizer, _batch(device), step_id=0, grad_clip=0.25)
        results[device] = (loss.item(), parts["score_q"].item(), parts["score_v"].item(),
                           {k: v.detach().cpu() for k, v in objective.state_dict().items()})
    cpu, gpu = results["cpu"], results["cuda"]
    for a, b in zip(cpu[:3], gpu[:3]):
        assert a == pytest.approx(b, rel=1e-3)
    for key in cpu[3]:
        torch.testing.assert_close(gpu[3][key], cpu[3][key], rtol=1e-3, atol=1e-4, msg=key)


@pytest.mark.skipif(torch.cuda.is_available() and not torch.cuda.is_bf16_supported(), reason="no bf16")
def test_bf16_autocast_keeps_information_scores_in_float32():
    objective = _objective("cuda")
    optimizer = torch.optim.Adamax(objective.parameters(), lr=2e-3)
    loss, _, parts = train_step(objective, optimizer, _batch("cuda"), step_id=0, grad_clip=0.25, amp=True)
    assert torch.isfinite(loss)
    assert parts["score_q"].dtype == torch.float32 and parts["score_v"].dtype == torch.float32
