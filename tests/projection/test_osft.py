"""OSFT: the preserved top singular triplets stay exact while the complement trains."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from orthokit.projection.osft import OSFTLinear, OSFTOptimizer, apply_osft, select_rank


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(10, 12), nn.Tanh(), nn.Linear(12, 6)).double()


def test_decomposition_reconstructs_weight_and_is_orthogonal() -> None:
    lin = nn.Linear(9, 7).double()
    layer = OSFTLinear(lin, k=3)
    assert torch.allclose(layer.weight, lin.weight, atol=1e-12)
    x = torch.randn(4, 9, dtype=torch.float64)
    assert torch.allclose(layer(x), lin(x), atol=1e-12)
    assert layer.orthogonality_error() < 1e-12
    assert layer.S_low.numel() == 7 - 3 and layer.U_low.shape == (7, 4) and layer.V_low.shape == (4, 9)
    assert not layer.U_high.requires_grad


@pytest.mark.parametrize("inner", ["adamw", "sgd_momentum"])
def test_training_keeps_preserved_triplets_exact(inner: str) -> None:
    torch.manual_seed(0)
    net = _net()
    mods = apply_osft(net, preserve_ratio=0.5)
    params = list(net.parameters())
    base = (
        torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
        if inner == "adamw"
        else torch.optim.SGD(params, lr=0.1, momentum=0.9)
    )
    opt = OSFTOptimizer(base, mods)
    x = torch.randn(64, 10, dtype=torch.float64)
    with torch.no_grad():
        y = _net()(x) * 3.0  # a learnable teacher target
    hi = {n: (m.U_high.clone(), m.S_high.clone(), m.V_high.clone()) for n, m in mods.items()}
    w0 = {n: m.weight.detach().clone() for n, m in mods.items()}
    l0 = float(F.mse_loss(net(x), y).detach())
    for _ in range(30):
        opt.zero_grad()
        F.mse_loss(net(x), y).backward()
        opt.step()
    assert float(F.mse_loss(net(x), y).detach()) < 0.8 * l0  # it learns
    for n, m in mods.items():
        Uh, Sh, Vh = hi[n]
        W = m.weight.detach()
        assert (W - w0[n]).norm() > 1e-3
        assert torch.allclose(W @ Vh.T, Uh * Sh, atol=1e-10)  # W v_i = σ_i u_i for preserved i
        assert torch.allclose(Uh.T @ W, Sh[:, None] * Vh, atol=1e-10)  # u_iᵀ W = σ_i v_iᵀ
        assert m.orthogonality_error() < 1e-10


def test_gradient_hooks_project_both_sides() -> None:
    layer = OSFTLinear(nn.Linear(8, 8).double(), k=4)
    layer(torch.randn(5, 8, dtype=torch.float64)).pow(2).sum().backward()
    assert (layer.U_high.T @ layer.U_low.grad).abs().max() < 1e-12
    assert (layer.V_low.grad @ layer.V_high.T).abs().max() < 1e-12


def test_select_rank_rules_and_errors() -> None:
    S = torch.tensor([4.0, 2.0, 1.0, 1.0])
    assert select_rank(S, preserve_ratio=0.5) == 2
    assert select_rank(S, rank=9) == 4
    assert select_rank(S, energy=16 / 22) == 1  # exactly reached by the first direction
    assert select_rank(S, energy=0.75) == 2
    assert select_rank(S, energy=0.0) == 0
    with pytest.raises(ValueError, match="exactly one"):
        select_rank(S, preserve_ratio=0.5, rank=1)
    with pytest.raises(ValueError, match="preserve_ratio"):
        select_rank(S, preserve_ratio=1.5)
    with pytest.raises(ValueError, match="energy"):
        select_rank(S, energy=2.0)


def test_apply_osft_targets_and_rank_pattern() -> None:
    net = _net()
    ref = net(torch.ones(2, 10, dtype=torch.float64))
    mods = apply_osft(net, preserve_ratio=None, rank=3, targets=["0"], rank_pattern={"0": 5})
    assert list(mods) == ["0"] and isinstance(net[0], OSFTLinear) and isinstance(net[2], nn.Linear)
    assert mods["0"].k == 5
    assert torch.allclose(net(torch.ones(2, 10, dtype=torch.float64)), ref, atol=1e-12)
    mods = apply_osft(_net(), energy=0.9)
    assert all(0 < m.k <= min(m.in_features, m.out_features) for m in mods.values())
    with pytest.raises(ValueError, match="not found"):
        apply_osft(_net(), targets=["nope"])
    with pytest.raises(ValueError, match="no nn.Linear"):
        apply_osft(nn.Sequential(nn.Tanh()))
    with pytest.raises(ValueError, match="k must be"):
        OSFTLinear(nn.Linear(3, 3), k=4)
    with pytest.raises(TypeError):
        OSFTLinear(nn.Conv1d(3, 3, 1), k=1)  # type: ignore[arg-type]
    merged = mods["0"].merged()
    assert isinstance(merged, nn.Linear) and torch.allclose(merged.weight, mods["0"].weight)
