"""Every registered projection method follows the protocol in docs/projection/design.md."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from orthokit.projection import PROJECTIONS, SubspaceMemory
from orthokit.projection.registry import REQUIRED_CAPABILITIES

NAMES = PROJECTIONS.names()


def _model() -> nn.Sequential:
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 5))


def _task_batches(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(12, 3, generator=g))[0]
    x = torch.randn(40, 3, generator=g) @ basis.T
    y = torch.randint(0, 5, (40,), generator=g)
    return [(x[:20], y[:20]), (x[20:], y[20:])]


def _steps(model: nn.Module, opt: torch.optim.Optimizer, n: int = 3, seed: int = 11) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x, y = torch.randn(16, 12, generator=g), torch.randint(0, 5, (16,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def _violation(mem: SubspaceMemory, before: dict[nn.Parameter, torch.Tensor]) -> float:
    """Largest relative component of the applied update inside the memory's protected subspaces."""
    worst = 0.0
    deltas = {p: (p.detach() - b).double() for p, b in before.items()}
    if mem.flat_basis is not None:
        params = [p for lay in mem.layer_names for p in mem.layer(lay).params]
        d = torch.cat([deltas.get(p, torch.zeros_like(p, dtype=torch.float64)).reshape(-1) for p in params])
        s = mem.flat_basis.double()
        return float((s.T @ d).norm() / d.norm().clamp_min(1e-30))
    for name in mem.layer_names:
        lay = mem.layer(name)
        if lay.k == 0:
            continue
        dw = deltas[lay.module.weight]
        db = deltas.get(lay.module.bias) if lay.has_bias else None
        if lay.kind == "gradient":
            d = torch.cat([dw.reshape(-1)] + ([] if db is None else [db.reshape(-1)]))
            viol = (lay.basis.double().T @ d).norm() / d.norm().clamp_min(1e-30)
        else:
            mat = lay.to_mat(dw, db)
            if lay.kind == "weight":
                viol = ((lay.u.double().T @ mat).norm() + (mat @ lay.basis.double()).norm()) / mat.norm()
            else:
                viol = (mat @ lay.basis.double()).norm() / mat.norm().clamp_min(1e-30)
        worst = max(worst, float(viol))
    return worst


def test_registry_not_empty() -> None:
    assert {"gpm", "sgp", "ogd"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_capabilities_and_docs(name: str) -> None:
    caps = PROJECTIONS.capabilities(name)
    for c in REQUIRED_CAPABILITIES:
        assert c in caps, f"{name} lacks capability {c}"
    cls = PROJECTIONS.get(name)
    assert (cls.__doc__ or "").strip(), f"{name} has no docstring"
    assert "Example" in cls.__doc__


@pytest.mark.parametrize("name", NAMES)
def test_wrap_before_memory_is_noop(name: str) -> None:
    model = _model()
    ref = copy.deepcopy(model)
    method = PROJECTIONS.get(name)(model)
    opt = method.wrap(torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1))
    assert isinstance(opt, torch.optim.Optimizer)
    _steps(model, opt)
    _steps(ref, torch.optim.AdamW(ref.parameters(), lr=0.01, weight_decay=0.1))
    for a, b in zip(model.parameters(), ref.parameters()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("name", NAMES)
def test_after_task_wrap_and_guarantee(name: str) -> None:
    caps = PROJECTIONS.capabilities(name)
    model = _model()
    method = PROJECTIONS.get(name)(model)
    added = method.after_task(_task_batches(0))
    assert isinstance(added, dict) and sum(added.values()) > 0, added
    if caps["optimizer_agnostic"]:
        inner = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
    else:
        inner = torch.optim.SGD(model.parameters(), lr=0.05)
    opt = method.wrap(inner)
    before = {p: p.detach().clone() for p in model.parameters()}
    _steps(model, opt)
    moved = max(float((p.detach() - b).norm()) for p, b in before.items())
    assert moved > 1e-4, f"{name}: nothing was learned"
    if caps["guarantee"] != "soft" and getattr(method, "mode", "hard") == "hard":
        assert _violation(method.memory, before) < 1e-5, name


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(name: str) -> None:
    model = _model()
    method = PROJECTIONS.get(name)(model)
    method.after_task(_task_batches(0))
    method.after_task(_task_batches(1))
    model2 = copy.deepcopy(model)
    other = PROJECTIONS.get(name)(model2)
    other.load_state_dict(copy.deepcopy(method.state_dict()))
    opt_a = method.wrap(torch.optim.SGD(model.parameters(), lr=0.05))
    opt_b = other.wrap(torch.optim.SGD(model2.parameters(), lr=0.05))
    _steps(model, opt_a)
    _steps(model2, opt_b)
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b), name
