"""pvd.training: the pieces both training loops share, against hand-computed cases."""

import math

import pytest
import torch

from pvd.metrics import chamfer_distance
from pvd.training import cosine_factor, derive_seed, ema_update, shape_head_loss, warmup_factor


def test_shape_head_loss_is_chamfer_plus_the_emd_of_a_hand_computed_case():
    # Truth: the first M = 2 points are (0,0,0) and (1,0,0); the regressor piles both of its
    # points on the first. Chamfer (squared): 0 one way, (0 + 1) / 2 the other; the best
    # bijection pairs one point at distance 0 and one at distance 1: EMD 0.5.
    truth = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [1, 0, 0], [0, 0, 0]]])
    piled = torch.zeros(1, 2, 3, requires_grad=True)
    assert torch.allclose(shape_head_loss(piled, truth), chamfer_distance(piled, truth))
    assert torch.allclose(chamfer_distance(piled, truth), torch.tensor([0.5]))
    loss = shape_head_loss(piled, truth, emd_weight=2.0)
    assert torch.allclose(loss, torch.tensor([0.5 + 2.0 * 0.5]))
    # The EMD term pulls one of the piled points towards the bare truth point (Chamfer's gradient
    # alone reaches it only through the nearest-point term, which ties both points at (0,0,0)).
    (grad,) = torch.autograd.grad(shape_head_loss(piled, truth, emd_weight=1.0) - chamfer_distance(piled, truth), piled)
    moved = grad[0, :, 0].argmin()
    assert grad[0, moved, 0] == pytest.approx(-0.5)  # d/dx of |1 - x| / 2 at x = 0
    assert grad[0, 1 - moved].abs().max() == 0


def test_shape_head_loss_emd_term_penalises_a_piled_cloud():
    torch.manual_seed(0)
    truth = torch.rand(1, 256, 3)
    spread = truth[:, :64].clone()
    # Piled: half the points on one truth point, the others on the rest of the subset.
    piled = torch.cat([truth[:, :1].expand(1, 32, 3), truth[:, 32:64]], dim=1)
    gap_chamfer = float(shape_head_loss(piled, truth) - shape_head_loss(spread, truth))
    gap_emd = float(shape_head_loss(piled, truth, 1.0) - shape_head_loss(spread, truth, 1.0))
    assert gap_emd > gap_chamfer + 0.05  # the EMD term adds the mean move of 31 piled points


def test_shape_head_loss_needs_enough_truth_points():
    with pytest.raises(ValueError, match="at least 8 truth points"):
        shape_head_loss(torch.zeros(1, 8, 3), torch.zeros(1, 4, 3), emd_weight=1.0)


def test_shape_head_loss_under_bf16_autocast_matches_float32():
    """Under bf16 autocast (CPU autocast follows CUDA's rules) the Chamfer term's nearest-neighbour
    search stays in float32: in bf16 it picked wrong neighbours for ~13% of the points of these
    2048-point clouds (jittered by 0.01, spacing ~0.08) and inflated the loss. The gradient still
    reaches the regressed cloud, also when the head emits bf16 as an autocast network does."""
    g = torch.Generator().manual_seed(0)
    truth = torch.rand(2, 2048, 3, generator=g) * 2 - 1
    regressed = (truth + 0.01 * torch.randn(2, 2048, 3, generator=g)).requires_grad_()
    want = shape_head_loss(regressed, truth)
    (want_grad,) = torch.autograd.grad(want.sum(), regressed)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = shape_head_loss(regressed, truth)
    (got_grad,) = torch.autograd.grad(got.sum(), regressed)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-6, atol=1e-12)
    low = regressed.detach().bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = shape_head_loss(low, truth)
    torch.testing.assert_close(got, shape_head_loss(low.detach().float(), truth), rtol=1e-6, atol=0)
    (low_grad,) = torch.autograd.grad(got.sum(), low)
    assert low_grad.dtype == torch.bfloat16 and low_grad.abs().sum() > 0


def test_learning_rate_factors():
    assert [warmup_factor(s, 4) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0
    assert cosine_factor(10, 10, 110, 0.1) == pytest.approx(1.0)
    assert cosine_factor(60, 10, 110, 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert cosine_factor(500, 10, 110, 0.1) == pytest.approx(0.1)


def test_ema_update_warms_up_then_uses_the_decay():
    model, average = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
        average.weight.fill_(0.0)
    ema_update(average, model, step=0, decay=0.99)  # warmed-up decay min(0.99, 1/10)
    assert float(average.weight.detach()) == pytest.approx(0.9)
    ema_update(average, model, step=10_000, decay=0.99)
    assert float(average.weight.detach()) == pytest.approx(0.9 + 0.01 * 0.1)


def test_derive_seed_separates_keys():
    seeds = {derive_seed(1, step, i) for step in range(50) for i in range(20)}
    assert len(seeds) == 1000 and all(0 <= s < 2**63 for s in seeds)
    assert derive_seed(1, 2, 3) == derive_seed(1, 2, 3) != derive_seed(1, 3, 2)
