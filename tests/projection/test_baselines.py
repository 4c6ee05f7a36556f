"""Baselines (EWC, A-GEM, fine-tune) and the benchmark metrics (ACC / BWT exactly as GPM prints them)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from orthokit.bench.continual import acc_bwt
from orthokit.projection.baselines import AGEM, EWC, FineTune


def _lf(m: nn.Module, x: torch.Tensor, y: torch.Tensor, t: int) -> torch.Tensor:
    return F.cross_entropy(m(x), y)


def _data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(12, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (12,), generator=g)


def test_ewc_fisher_and_penalty_match_float64_reference() -> None:
    model = nn.Linear(5, 3).double()
    ewc = EWC(lam=2.0, loss_fn=_lf, fisher_samples=12)
    anchors, fishers = [], []
    for t in range(2):
        x, y = _data(t)
        ref = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
        for i in range(12):
            model.zero_grad()
            _lf(model, x[i : i + 1], y[i : i + 1], t).backward()
            for n, p in model.named_parameters():
                ref[n] += p.grad**2 / 12
        model.zero_grad()
        F_t = ewc.fisher(model, x, y, t)
        for n in ref:
            assert torch.allclose(F_t[n], ref[n], atol=1e-14)
        ewc.end_task(model, t, x, y)
        anchors.append({n: p.detach().clone() for n, p in model.named_parameters()})
        fishers.append(ref)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.3)
    pen = ewc.penalty(model)
    expect = sum(
        (fishers[t][n] * (p - anchors[t][n]) ** 2).sum()
        for t in range(2)
        for n, p in model.named_parameters()
    )
    assert torch.isclose(pen, 0.5 * 2.0 * expect, rtol=1e-10)
    assert ewc.memory_floats() == 2 * sum(p.numel() for p in model.parameters())
    with pytest.raises(ValueError):
        EWC(-1.0, _lf)


def test_agem_projects_only_conflicting_gradients() -> None:
    model = nn.Linear(5, 3).double()
    agem = AGEM(_lf, mem_per_task=12, ref_batch=12, generator=torch.Generator().manual_seed(0))
    agem.before_step(model, 0)  # no memory yet: no-op
    x, y = _data(0)
    agem.end_task(model, 0, x, y)
    gref = [torch.randn_like(p) for p in model.parameters()]
    agem._reference_grad = lambda m, ps: gref  # type: ignore[method-assign]
    for sign in (-1.0, 1.0):
        for p, r in zip(model.parameters(), gref):
            p.grad = sign * r + 0.1 * torch.randn_like(p)
        g0 = [p.grad.clone() for p in model.parameters()]
        agem.before_step(model, 1)
        dot = sum(float((p.grad * r).sum()) for p, r in zip(model.parameters(), gref))
        if sign < 0:
            assert abs(dot) < 1e-12  # projected onto the plane ⟂ g_ref
        else:
            assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), g0))
    assert agem.n_projected == 1 and agem.n_steps == 2
    assert agem.memory_floats() == 12 * 5 + 12


def test_agem_reference_gradient_is_the_memory_loss_gradient() -> None:
    model = nn.Linear(5, 3).double()
    agem = AGEM(_lf, mem_per_task=12, ref_batch=10_000, generator=torch.Generator().manual_seed(0))
    x, y = _data(1)
    agem.end_task(model, 0, x, y)
    params = list(model.parameters())
    # independent reference: the gradient of the loss on the whole stored memory; the reference batch is drawn
    # with replacement, so its gradient is an unbiased estimate: the mean of many draws converges to it
    xm, ym, _ = agem.mem[0]
    full = torch.cat([g.reshape(-1) for g in torch.autograd.grad(_lf(model, xm, ym, 0), params)])
    draws = torch.stack(
        [torch.cat([g.reshape(-1) for g in agem._reference_grad(model, params)]) for _ in range(400)]
    )
    mean = draws.mean(0)
    assert float((mean - full).norm() / full.norm()) < 0.1
    assert float((draws[0] - full).norm() / full.norm()) > 1e-3  # a single draw is a sample, not the mean
    assert FineTune().penalty(model) is None and FineTune().memory_floats() == 0


def test_acc_bwt_definitions() -> None:
    R = [[90.0, None, None], [80.0, 95.0, None], [70.0, 85.0, 99.0]]
    m = acc_bwt(R)
    assert m["ACC"] == pytest.approx((70 + 85 + 99) / 3)
    assert m["BWT"] == pytest.approx(((70 - 90) + (85 - 95)) / 2)
    assert m["LA"] == pytest.approx((90 + 95 + 99) / 3)
    with pytest.raises(ValueError):
        acc_bwt([[1.0, 2.0]])
    with pytest.raises(ValueError):
        acc_bwt([[1.0, None], [None, 2.0]])


def test_run_sequence_on_a_synthetic_stream_fills_the_lower_triangle() -> None:
    from orthokit.bench.continual import MethodSpec, TaskStream, _gpm_strategy, _sgd, run_sequence
    from orthokit.bench.models import MLP

    g = torch.Generator().manual_seed(0)
    tasks = []
    for _ in range(3):
        w, B = torch.randn(3, 3, generator=g), torch.randn(3, 8, generator=g)
        z = torch.randn(500, 3, generator=g)  # each task lives in its own 3-dim input subspace
        x, y = z @ B, (z @ w).argmax(1)
        tasks.append((x[:400], y[:400], x[400:], y[400:]))
    stream = TaskStream(
        "toy", 3, lambda t: tasks[t], False, ["layers.0", "layers.1"], lambda: MLP([8, 16, 3])
    )
    spec = MethodSpec(
        "GPM", lambda s, seed: _gpm_strategy("gpm", s.protected_layers, (0.97, 0.97), 100), _sgd(0.1)
    )
    res = run_sequence(stream, spec, "gpm", seed=0, epochs=2)
    assert all(res.R[i][j] is not None for i in range(3) for j in range(i + 1))
    assert all(res.R[i][j] is None for i in range(3) for j in range(i + 1, 3))
    assert (
        set(res.metrics) == {"ACC", "BWT", "LA"} and res.R[0][0] > 60 and res.metrics["LA"] > 50
    )  # chance 33 %
    assert res.dims["layers.0"] > 0 and res.memory_floats > 0
    ft = run_sequence(stream, MethodSpec("FT", lambda s, seed: FineTune(), _sgd(0.1)), "ft", seed=0, epochs=2)
    assert ft.R[0][0] == res.R[0][0]  # identical until the first projection (same seed, same data order)
