"""Task-vector diagnostics: cosine, subspace overlap, sign conflicts, STI, weight disentanglement."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import functional_call

from orthokit.merge.diagnostics import (
    disentanglement_grid,
    pairwise_cosine,
    sign_conflict_rate,
    singular_task_interference,
    subspace_overlap,
    task_vectors,
    weight_disentanglement_error,
)

D64 = torch.float64


def test_task_vectors_and_cosine() -> None:
    base = {"w": torch.zeros(2, 2), "b": torch.zeros(2), "step": torch.tensor(3)}
    fts = [
        {"w": torch.eye(2), "b": torch.zeros(2), "step": torch.tensor(3)},
        {"w": -torch.eye(2), "b": torch.ones(2), "step": torch.tensor(3)},
    ]
    tv = task_vectors(base, fts)
    assert set(tv[0]) == {"w", "b"}
    C = pairwise_cosine(tv)
    a = torch.cat([tv[0]["w"].flatten(), tv[0]["b"]]).double()
    b = torch.cat([tv[1]["w"].flatten(), tv[1]["b"]]).double()
    assert C[0, 1].item() == pytest.approx(float(a @ b / (a.norm() * b.norm())))
    assert torch.allclose(C.diag(), torch.ones(2, dtype=D64))
    assert pairwise_cosine([torch.zeros(3), torch.ones(3)])[0, 1].item() == 0.0
    with pytest.raises(ValueError, match="different keys"):
        task_vectors(base, [{"w": torch.eye(2)}])
    with pytest.raises(ValueError, match="shape mismatch"):
        task_vectors(base, [{"w": torch.eye(3), "b": torch.zeros(2), "step": torch.tensor(3)}])


def test_subspace_overlap_closed_forms() -> None:
    n, k = 12, 3
    P, _ = torch.linalg.qr(torch.randn(n, n, dtype=D64))
    Q, _ = torch.linalg.qr(torch.randn(n, n, dtype=D64))
    t1 = {
        "w": P[:, :k] @ torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=D64)) @ Q[:, :k].T,
        "b": torch.ones(n),
    }
    t2 = {"w": P[:, k : 2 * k] @ Q[:, :k].T, "b": torch.ones(n)}  # orthogonal outputs, same inputs
    # t3 shares one output direction at angle θ with t1's top direction
    th = 0.4
    u = math.cos(th) * P[:, 0] + math.sin(th) * P[:, 5]
    t3 = {"w": torch.outer(u, Q[:, 7]) * 5, "b": torch.ones(n)}
    left = subspace_overlap([t1, t2, t3], rank=k)
    assert left.per_tensor["w"][0, 1].item() == pytest.approx(0.0, abs=1e-12)
    assert left.per_tensor["w"][0, 0].item() == pytest.approx(1.0)
    right = subspace_overlap([t1, t2], rank=k, side="right")
    assert right.mean[0, 1].item() == pytest.approx(1.0, abs=1e-12)
    one = subspace_overlap([t1, t3], rank=1)
    assert one.angles["w"][0, 1, 0].item() == pytest.approx(th, abs=1e-10)
    assert one.mean[0, 1].item() == pytest.approx(math.cos(th) ** 2, abs=1e-10)
    assert "b" not in left.per_tensor and left.chance["w"] == pytest.approx(k / n)
    with pytest.raises(ValueError, match="no 2-D"):
        subspace_overlap([{"b": torch.ones(3)}, {"b": torch.ones(3)}])


def test_sign_conflict_rate() -> None:
    a = torch.tensor([1.0, -2.0, 3.0, 0.1])
    b = torch.tensor([-1.0, -2.0, 3.0, 0.1])
    assert sign_conflict_rate([a, b], density=1.0) == pytest.approx(0.25)
    assert sign_conflict_rate([a, b], density=0.5) == pytest.approx(0.0)  # only entries 1, 2 kept: agree
    assert sign_conflict_rate([{"x": a}, {"x": -a}], density=1.0) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="density"):
        sign_conflict_rate([a, b], density=0.0)


def test_singular_task_interference() -> None:
    n, T, r = 8, 2, 3
    P, _ = torch.linalg.qr(torch.randn(n, n, dtype=D64))
    taus = [P[:, t * r : (t + 1) * r] @ P[:, t * r : (t + 1) * r].T for t in range(T)]
    assert singular_task_interference(taus, rank=r) == pytest.approx(0.0, abs=1e-10)
    same = [taus[0], taus[0]]
    # identical bases: (ÛᵀÛ − I) has identity off-diagonal blocks; closed form = 2·Σ σ = 2·r
    assert singular_task_interference(same, rank=r) == pytest.approx(2.0 * r, rel=1e-10)
    with pytest.raises(ValueError, match="shape mismatch"):
        singular_task_interference([taus[0], torch.zeros(3, 3)])


def test_weight_disentanglement_error_on_a_model() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    base = {k: v.detach().clone() for k, v in model.named_parameters()}
    f = lambda p, x: functional_call(model, p, (x,))
    # task vectors acting on disjoint input coordinates of the first layer, zero elsewhere
    tv1 = {k: torch.zeros_like(v) for k, v in base.items()}
    tv2 = {k: torch.zeros_like(v) for k, v in base.items()}
    tv1["0.weight"][:, :3] = torch.randn(16, 3)
    tv2["0.weight"][:, 3:] = torch.randn(16, 3)
    x1 = torch.zeros(50, 6)
    x1[:, :3] = torch.randn(50, 3)
    x2 = torch.zeros(50, 6)
    x2[:, 3:] = torch.randn(50, 3)
    # each task's inputs are blind to the other task vector ⇒ perfectly disentangled
    assert weight_disentanglement_error(f, base, [tv1, tv2], [x1, x2], [1.0, 1.0]) == 0.0
    assert weight_disentanglement_error(f, base, [tv1, tv2], [x1, x2], [1.0, 1.0], "l2") == pytest.approx(
        0, abs=1e-12
    )
    # on dense inputs the second task vector changes predictions
    xd = torch.randn(200, 6)
    tv3 = {k: 5 * torch.randn_like(v) for k, v in base.items()}
    e = weight_disentanglement_error(f, base, [tv1, tv3], [xd, xd], [1.0, 1.0])
    assert 0.0 < e <= 2.0
    grid = disentanglement_grid(f, base, [tv1, tv3], [xd, xd], [0.0, 1.0])
    assert grid[0, 0].item() == 0.0 and grid[1, 1].item() == pytest.approx(e)
    # per-task forward functions (shared backbone, task heads): same value when all heads are equal
    assert weight_disentanglement_error([f, f], base, [tv1, tv3], [xd, xd], [1.0, 1.0]) == pytest.approx(e)
    g = lambda p, x: -f(p, x)  # a different "head" for task 2 changes its term only
    e2 = weight_disentanglement_error([f, g], base, [tv1, tv3], [xd, xd], [1.0, 1.0])
    assert 0.0 < e2 <= 2.0
    with pytest.raises(ValueError, match="forward functions"):
        weight_disentanglement_error([f], base, [tv1, tv2], [x1, x2], [1.0, 1.0])
    with pytest.raises(ValueError, match="one input batch"):
        weight_disentanglement_error(f, base, [tv1, tv2], [x1], [1.0, 1.0])
    with pytest.raises(ValueError, match="pair"):
        disentanglement_grid(f, base, [tv1, tv2], [x1, x2], [0.0], pair=(0, 0))
