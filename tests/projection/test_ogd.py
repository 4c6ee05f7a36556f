"""OGD: stored basis = orthonormalised ground-truth-logit gradients (float64 reference); first-order invariance."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from orthokit.bench.models import MLP
from orthokit.projection import OGD, PROJECTIONS
from orthokit.projection.ogd import output_scalars


def _flat_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Reference: one backward per example with batch size 1 (sketchogd / infty style), float64."""
    cols = []
    for i in range(x.shape[0]):
        model.zero_grad()
        model(x[i : i + 1])[0, y[i]].backward()
        cols.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double())
    model.zero_grad()
    return torch.stack(cols, 1)


def test_registered_and_variants() -> None:
    caps = PROJECTIONS.capabilities("ogd")
    assert caps["subspace"] == "gradient" and caps["guarantee"] == "first_order"
    logits = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    assert output_scalars(logits, torch.tensor([2, 0])).tolist() == [3.0, 4.0]
    assert output_scalars(logits, None, "ave").tolist() == [2.0, 5.0]
    assert output_scalars(logits, None, "all").shape == (6,)
    with pytest.raises(ValueError, match="targets"):
        output_scalars(logits, None, "gtl")
    with pytest.raises(ValueError, match="variant"):
        OGD(MLP([4, 2]), variant="max")


def test_basis_spans_gtl_gradients() -> None:
    model = MLP([10, 12, 4])
    x, y = torch.randn(7, 10), torch.randint(0, 4, (7,))
    ogd = OGD(model, samples_per_task=5)
    added = ogd.after_task([(x[:3], y[:3]), (x[3:], y[3:])])
    assert added == {"__model__": 5}
    s = ogd.memory.flat_basis.double()
    torch.testing.assert_close(s.T @ s, torch.eye(5, dtype=torch.float64), atol=1e-6, rtol=0)
    g = _flat_grads(model, x[:5], y[:5])
    # span(S) == span(G): projector of S reproduces G, and both have rank 5
    torch.testing.assert_close(s @ (s.T @ g), g, atol=1e-5 * float(g.abs().max()), rtol=0)
    # second task: new directions are orthogonal to the old ones and the basis grows
    ogd.after_task([(x[5:], y[5:])])
    s2 = ogd.memory.flat_basis.double()
    assert s2.shape[1] == 7
    torch.testing.assert_close(s2.T @ s2, torch.eye(7, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(s2[:, :5], s, atol=0, rtol=0)


def test_update_orthogonal_to_stored_gradients_and_first_order_invariance() -> None:
    model = MLP([10, 16, 4]).double()
    x_old, y_old = torch.randn(6, 10, dtype=torch.float64), torch.randint(0, 4, (6,))
    ogd = OGD(model, samples_per_task=6)
    ogd.after_task([(x_old, y_old)])
    g = _flat_grads(model, x_old, y_old)
    theta0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()
    with torch.no_grad():
        f0 = model(x_old).gather(1, y_old[:, None]).squeeze(1).clone()
    lr = 1e-3
    opt = ogd.wrap(torch.optim.SGD(model.parameters(), lr=lr))
    x, y = torch.randn(32, 10, dtype=torch.float64), torch.randint(0, 4, (32,))
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    plain = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double() * lr
    opt.step()
    delta = (torch.cat([p.detach().reshape(-1) for p in model.parameters()]) - theta0).double()
    # ⟨Δθ, ∇f_i⟩ = 0 for every stored example
    assert float((g.T @ delta).abs().max()) < 1e-6 * float(g.norm(dim=0).max() * delta.norm())
    with torch.no_grad():
        f1 = model(x_old).gather(1, y_old[:, None]).squeeze(1)
    # output change is second order: much smaller than the first-order change an unprojected step would cause
    first_order_unprojected = (g.T @ plain).abs().max()
    assert float((f1 - f0).abs().max()) < 1e-2 * float(first_order_unprojected)


def test_pca_rank_and_state_round_trip() -> None:
    model = MLP([10, 12, 4])
    ogd = OGD(model, samples_per_task=8, rank=3)
    x, y = torch.randn(8, 10), torch.randint(0, 4, (8,))
    added = ogd.after_task([(x, y)])
    assert added["__model__"] == 3
    # independent float64 reference: top-3 left singular vectors of the batch-size-1 GTL gradients
    ref_model = copy.deepcopy(model).double()
    params = [p for p in ref_model.parameters()]
    cols = []
    for i in range(8):
        out = ref_model(x[i : i + 1].double())[0, y[i]]
        cols.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(out, params)]))
    u = torch.linalg.svd(torch.stack(cols, 1), full_matrices=False)[0][:, :3]
    s = ogd.memory.flat_basis.double()
    torch.testing.assert_close(s @ s.T, u @ u.T, atol=1e-5, rtol=0)
    other = OGD(MLP([10, 12, 4]))
    other.load_state_dict(ogd.state_dict())
    torch.testing.assert_close(other.memory.flat_basis, ogd.memory.flat_basis, atol=0, rtol=0)
    with pytest.raises(ValueError, match="dim"):
        OGD(MLP([10, 13, 4])).load_state_dict(ogd.state_dict())
