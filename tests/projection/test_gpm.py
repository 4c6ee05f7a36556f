"""GPM end to end: reference-code equivalence of one projected SGD step, schedules, forgetting on permuted digits."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from orthokit.bench.models import MLP
from orthokit.projection import GPM, PROJECTIONS


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    return x, y


def _train(
    model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, epochs: int
) -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=g)
        for idx in perm.split(16):
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()


@torch.no_grad()
def _acc(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(1) == y).float().mean())


def test_registered() -> None:
    assert "gpm" in PROJECTIONS
    caps = PROJECTIONS.capabilities("gpm")
    assert caps["subspace"] == "activation" and caps["guarantee"] == "exact"
    assert PROJECTIONS.get("gradient_projection_memory") is GPM


def test_one_step_equals_reference_train_projected() -> None:
    """GPM's train_projected: grad ← grad − grad·(M Mᵀ) with a dense projector, then plain SGD."""
    model = MLP([20, 30, 5])
    ref = copy.deepcopy(model)
    gpm = GPM(model, threshold=[0.9, 0.95], max_samples=None)
    gpm.after_task([torch.randn(64, 20)])
    feature_mat = [gpm.memory.basis(n) @ gpm.memory.basis(n).T for n in gpm.memory.layer_names]
    opt = gpm.wrap(torch.optim.SGD(model.parameters(), lr=0.05))
    x, y = torch.randn(10, 20), torch.randint(0, 5, (10,))
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    nn.functional.cross_entropy(ref(x), y).backward()
    with torch.no_grad():
        for p, fm in zip([p for p in ref.parameters()], feature_mat):
            p -= 0.05 * (p.grad - p.grad @ fm)
    for a, b in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_threshold_schedule_and_state() -> None:
    model = MLP([20, 30, 5])
    eps_seen: list[float] = []

    def schedule(t: int, name: str) -> float:
        eps = 0.97 + 0.003 * t  # GPM's CIFAR-100 schedule
        eps_seen.append(eps)
        return eps

    gpm = GPM(model, threshold=schedule)
    gpm.after_task([torch.randn(50, 20)])
    gpm.after_task([torch.randn(50, 20)])
    assert eps_seen == pytest.approx([0.97, 0.97, 0.973, 0.973])
    other = GPM(MLP([20, 30, 5]))
    other.load_state_dict(gpm.state_dict())
    assert [s.k for s in other.summary()] == [s.k for s in gpm.summary()]


@pytest.mark.slow
def test_gpm_reduces_forgetting_on_permuted_digits() -> None:
    x, y = _digits()
    g = torch.Generator().manual_seed(1)
    perm = torch.randperm(64, generator=g)
    x2 = x[:, perm]
    tr, te = slice(0, 1400), slice(1400, None)
    torch.manual_seed(0)
    base = MLP([64, 64, 64, 10])
    _train(base, torch.optim.SGD(base.parameters(), lr=0.1), x[tr], y[tr], epochs=3)
    acc1 = _acc(base, x[te], y[te])
    assert acc1 > 0.85

    finetune = copy.deepcopy(base)
    _train(finetune, torch.optim.SGD(finetune.parameters(), lr=0.1), x2[tr], y[tr], epochs=3)

    model = copy.deepcopy(base)
    gpm = GPM(model, threshold=[0.95, 0.99, 0.99], max_samples=300)
    gpm.after_task([x[tr]])
    _train(model, gpm.wrap(torch.optim.SGD(model.parameters(), lr=0.1)), x2[tr], y[tr], epochs=3)

    forget_ft = acc1 - _acc(finetune, x[te], y[te])
    forget_gpm = acc1 - _acc(model, x[te], y[te])
    print(f"acc1={acc1:.3f} forgetting: fine-tune {forget_ft:.3f}, GPM {forget_gpm:.3f}")
    assert forget_gpm < 0.5 * forget_ft, (forget_gpm, forget_ft)
    assert _acc(model, x2[te], y[te]) > 0.6  # still learns the new task


def test_whole_network_outputs_on_memorized_samples_unchanged() -> None:
    """With ε → 1 every layer's old inputs are inside its basis, so (by induction over layers) the network's
    outputs on the old samples stay fixed under any optimizer — here AdamW with weight decay."""
    model = MLP([20, 30, 30, 5])
    x_old = torch.randn(8, 20)
    gpm = GPM(model, threshold=1.0 - 1e-10, criterion="minimal", max_samples=None)
    added = gpm.after_task([x_old])
    assert all(0 < k <= 8 for k in added.values())
    with torch.no_grad():
        y0 = model(x_old).clone()
    opt = gpm.wrap(torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.2))
    w_before = [p.detach().clone() for p in model.parameters()]
    for _ in range(5):
        x, y = torch.randn(16, 20), torch.randint(0, 5, (16,))
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        rel = float((model(x_old) - y0).norm() / y0.norm())
    assert rel < 1e-5
    assert all(float((p.detach() - w).norm()) > 1e-2 for p, w in zip(model.parameters(), w_before))
