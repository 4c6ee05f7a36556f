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


def _task2_training(model: nn.Module, opt: torch.optim.Optimizer, seed: int = 0, steps: int = 60) -> None:
    """Regression onto a large random target: the trained complement outgrows the preserved directions."""
    g = torch.Generator().manual_seed(seed)
    target = 10.0 * torch.randn(16, 16, generator=g, dtype=torch.float64)
    x = torch.randn(64, 16, generator=g, dtype=torch.float64)
    for _ in range(steps):
        opt.zero_grad()
        F.mse_loss(model(x), x @ target.T).backward()
        opt.step()


def _still_protected(V_old: torch.Tensor, V_new: torch.Tensor, tol: float = 1e-6) -> int:
    """How many old directions lie in span(V_new)."""
    V_new = V_new.double()
    resid = V_old.double() - V_new @ (V_new.T @ V_old.double())
    return int((resid.norm(dim=0) < tol).sum())


def test_audit_16x16_all_task1_directions_stay_protected_after_task2() -> None:
    """Issue 15: 16×16 weight, ratio 0.5 — after task 2 all 8 task-1 directions are still preserved (the fixed
    top-k recomputation kept only 1 of 8)."""
    from orthokit.projection.osft import OSFTProjection

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16, bias=False)).double()
    osft = OSFTProjection(model, preserve_ratio=0.5)
    assert osft.after_task() == {"0": 8}
    V1, U1 = osft.memory.basis("0").clone(), osft.memory.layer("0").u.clone()
    W1 = model[0].weight.detach().clone()
    _task2_training(model, osft.wrap(torch.optim.SGD(model.parameters(), lr=0.05)))
    W2 = model[0].weight.detach()
    assert (W2 - W1).norm() > 10.0  # task 2 really trained the complement
    # the preserved triplets did not move during task 2
    assert torch.allclose(W2 @ V1.double(), W1 @ V1.double(), atol=1e-5)  # float32 bases
    added = osft.after_task()
    assert added == {"0": 4}  # preserve_ratio of the 8 free directions
    V2, U2 = osft.memory.basis("0"), osft.memory.layer("0").u
    assert V2.shape == (16, 12)
    assert _still_protected(V1, V2) == 8 and _still_protected(U1, U2) == 8
    # the earlier rule, still available, drops most of them on this example
    rec = OSFTProjection(model, preserve_ratio=0.5, across_tasks="recompute")
    rec.after_task()
    assert _still_protected(V1, rec.memory.basis("0"), tol=1e-3) <= 2


def test_osft_projection_grow_options_and_errors() -> None:
    from orthokit.projection.osft import OSFTProjection

    model = nn.Sequential(nn.Linear(16, 16, bias=False)).double()
    assert OSFTProjection(model, rank=3).after_task() == {"0": 3}
    m = OSFTProjection(model, rank=3)
    m.after_task()
    assert m.after_task() == {"0": 3}
    m = OSFTProjection(model, preserve_ratio=0.25, grow=2)
    assert [m.after_task(), m.after_task()] == [{"0": 4}, {"0": 2}]
    m = OSFTProjection(model, preserve_ratio=0.5, grow=1.0)
    assert [m.after_task(), m.after_task(), m.after_task()] == [{"0": 8}, {"0": 8}, {"0": 0}]
    for bad in ({"grow": -1}, {"grow": 1.5}, {"across_tasks": "x"}, {"preserve_ratio": 0.0}, {"rank": -1}):
        with pytest.raises(ValueError):
            OSFTProjection(model, **bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        OSFTProjection(model, preserve=0.5)  # type: ignore[call-arg]


def test_osft_linear_grow_keeps_weight_and_old_triplets() -> None:
    torch.manual_seed(1)
    layer = OSFTLinear(nn.Linear(10, 8).double(), k=3)
    W = layer.weight.detach().clone()
    Uh, Vh = layer.U_high.clone(), layer.V_high.clone()
    assert layer.grow(2) == 2 and layer.k == 5 and layer.S_low.numel() == 3
    assert torch.allclose(layer.weight, W, atol=1e-12)
    assert torch.equal(layer.U_high[:, :3], Uh) and torch.equal(layer.V_high[:3], Vh)
    assert layer.orthogonality_error() < 1e-12
    assert layer.grow(10) == 3 and layer.S_low.numel() == 0
    with pytest.raises(ValueError):
        layer.grow(-1)


def test_osft_optimizer_is_a_wrapped_optimizer() -> None:
    import pickle

    net = _net()
    mods = apply_osft(net)
    opt = OSFTOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), mods)
    assert isinstance(opt, torch.optim.Optimizer)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    net(torch.randn(3, 10, dtype=torch.float64)).sum().backward()
    opt.step()
    sched.step()
    assert opt.optimizer.param_groups[0]["lr"] == 0.05
    sd = opt.state_dict()
    assert set(sd) == {"state", "param_groups", "projection"} and sd["projection"]["preserved"] == [5, 3]
    pickle.loads(pickle.dumps(opt))
    with pytest.raises(TypeError):
        OSFTOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), [])
    with pytest.raises(TypeError):
        OSFTOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), mods, foo=1)  # type: ignore[call-arg]
