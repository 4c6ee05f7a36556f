"""HLOP: Oja's subspace rule converges to the principal subspace of a float64 reference; projection is exact."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from orthokit.projection.hlop import HLOP, HebbianSubspace, HLOPMemory


def _stream(n: int = 20, k: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples with a clear top-k principal subspace (variances 9,7,5 then 0.05)."""
    g = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64)).Q
    sd = torch.cat(
        [
            torch.tensor([3.0, 2.6, 2.2], dtype=torch.float64)[:k],
            torch.full((n - k,), 0.22, dtype=torch.float64),
        ]
    )
    z = torch.randn(6000, n, generator=g, dtype=torch.float64) * sd
    return z @ Q.T, Q


def _max_angle(A: torch.Tensor, B: torch.Tensor) -> float:
    s = torch.linalg.svdvals(torch.linalg.qr(A).Q.T @ torch.linalg.qr(B).Q).clamp(max=1.0)
    return float(torch.arccos(s.min()))


@pytest.mark.parametrize("normalize", [True, False])
def test_oja_converges_to_principal_subspace_of_float64_reference(normalize: bool) -> None:
    x, _ = _stream()
    C = x.T @ x / x.shape[0]
    evecs = torch.linalg.eigh(C).eigenvectors.flip(1)[:, :3]  # float64 reference principal subspace
    lr = 1.0 if normalize else 0.05  # EMA momentum (HLOP): step η(1 − μ) per batch at start
    h = HebbianSubspace(
        20,
        3,
        lr=lr,
        momentum=0.9,
        iters=1,
        generator=torch.Generator().manual_seed(1),
        dtype=torch.float64,
        normalize=normalize,
    )
    start = _max_angle(h.H.T, evecs)
    for xb in x.split(50):
        h.update(xb)
    assert start > 0.5
    assert _max_angle(h.H.T, evecs) < 0.05
    assert (h.H @ h.H.T - torch.eye(3, dtype=torch.float64)).abs().max() < 0.05  # Oja: orthonormal rows


def test_growth_learns_residual_subspace_and_freezes_old_rows() -> None:
    x, Q = _stream(k=3)
    h = HebbianSubspace(
        20, 1, lr=0.1, iters=2, generator=torch.Generator().manual_seed(2), dtype=torch.float64
    )
    for xb in x.split(50):
        h.update(xb)
    first = h.H.clone()
    h.add_neurons(2)
    for xb in x.split(50):
        h.update(xb)
    assert torch.equal(h.H[:1], first)  # frozen
    assert h.k == 3 and h.n_frozen == 1
    assert _max_angle(h.basis(), Q[:, :3]) < 0.05  # together: the top-3 subspace


def test_projection_exact_and_errors() -> None:
    h = HebbianSubspace(6, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    G = torch.randn(4, 6, dtype=torch.float64)
    P = h.project(G)
    assert (P @ h.basis()).abs().max() < 1e-12
    with pytest.raises(ValueError):
        h.update(torch.randn(3, 5))
    with pytest.raises(ValueError):
        h.update(torch.full((3, 6), float("nan")))
    with pytest.raises(ValueError):
        HebbianSubspace(4, 5)
    with pytest.raises(ValueError):
        h.project(torch.randn(2, 5))
    st = h.state_dict()
    h2 = HebbianSubspace(6, 0)
    h2.load_state_dict(st)
    assert torch.equal(h2.H, h.H) and h2.n_frozen == h.n_frozen


def test_hlop_memory_projects_layer_gradients_and_registered_method_protects_old_inputs() -> None:
    x, _ = _stream(n=12, k=3)
    x = x.float()
    model = nn.Sequential(nn.Linear(12, 8, bias=False), nn.ReLU(), nn.Linear(8, 3, bias=False))
    mem = HLOPMemory(model, ["0"], k_new=3, lr=0.1)
    mem.begin_task()
    mem.observe(model, list(x[:3000].split(100)))
    model(torch.randn(5, 12)).sum().backward()
    mem.project_grads()
    assert (model[0].weight.grad @ mem.subspaces["0"].basis()).abs().max() < 1e-5
    with pytest.raises(TypeError):
        HLOPMemory(model, ["1"], k_new=1)
    # registered method: after a task on low-rank inputs, training on new data leaves layer-0 outputs on old
    # inputs (nearly) unchanged — they lie (up to the 0.05 residual) in the learned subspace
    method = HLOP(model, ["0"], k_new=3, passes=2)
    added = method.after_task([(x[:3000], None)])
    assert added == {"0": 3}
    old = x[:200]
    before = model[0](old).detach()
    opt = method.wrap(torch.optim.SGD(model.parameters(), lr=0.05))
    for _ in range(5):
        opt.zero_grad()
        model(torch.randn(32, 12)).pow(2).mean().backward()
        opt.step()
    change = (model[0](old).detach() - before).norm() / before.norm()
    assert change < 0.02
