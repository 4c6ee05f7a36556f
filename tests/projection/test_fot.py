"""FOT: ratio_rule="energy" equals GPM's incremental criterion on the concatenated data; projected FedAvg."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from orthokit.projection.fot import FOT, fot_expand_basis, fot_project_update


def _gpm_reference(M: torch.Tensor, R: torch.Tensor, eps: float) -> torch.Tensor:
    """GPM Eq. 8–9 from the SVD of the residual activation matrix (float64)."""
    total = float((R * R).sum())
    Rh = R - M @ (M.T @ R)
    U, S, _ = torch.linalg.svd(Rh, full_matrices=False)
    acc = (total - float((Rh * Rh).sum())) / total
    k = 0
    while acc < eps - 1e-12 and k < len(S):
        acc += float(S[k] ** 2) / total
        k += 1
    return torch.cat([M, U[:, :k]], 1)


@pytest.mark.parametrize("eps", [0.8, 0.95, 0.99])
def test_expand_basis_matches_gpm_on_concatenated_client_data(eps: float) -> None:
    g = torch.Generator().manual_seed(0)
    n = 15
    M = torch.linalg.qr(torch.randn(n, 3, generator=g, dtype=torch.float64)).Q
    clients = [
        torch.randn(n, 30, generator=g, dtype=torch.float64)
        * torch.linspace(3, 0.1, n, dtype=torch.float64)[:, None]
        for _ in range(3)
    ]
    gram = sum(R @ R.T for R in clients)
    new, info = fot_expand_basis(M, gram, eps, ratio_rule="energy")  # orthokit's pooled rule
    ref = _gpm_reference(M, torch.cat(clients, 1), eps)
    assert new.shape == ref.shape
    s = torch.linalg.svdvals(new.T @ ref)  # same subspace
    assert float(s.min()) > 1 - 1e-8
    assert torch.allclose(new.T @ new, torch.eye(new.shape[1], dtype=torch.float64), atol=1e-10)
    assert 0 < info["residual_ratio"] < 1


def test_project_update_and_errors() -> None:
    M = torch.linalg.qr(torch.randn(6, 2, dtype=torch.float64)).Q
    d = torch.randn(4, 6, dtype=torch.float64)
    p = fot_project_update(d, M)
    assert (p @ M).abs().max() < 1e-12 and torch.allclose(p + (d @ M) @ M.T, d)
    with pytest.raises(ValueError):
        fot_project_update(d, torch.randn(5, 1))
    with pytest.raises(ValueError):
        fot_expand_basis(M, torch.eye(6, dtype=torch.float64), 1.5)
    with pytest.raises(ValueError):
        fot_expand_basis(M, torch.full((6, 6), float("nan"), dtype=torch.float64), 0.9)


def test_server_aggregation_protects_old_task_outputs() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 4)).double()
    fot = FOT(model, threshold=0.999, eps_inc=0.0005)
    basis = torch.linalg.qr(torch.randn(10, 4, dtype=torch.float64)).Q
    old_x = [
        torch.randn(40, 4, dtype=torch.float64) @ basis.T for _ in range(2)
    ]  # two clients, low-rank data
    stats = [FOT.client_statistics(model, fot, [x]) for x in old_x]
    added = fot.end_task(stats)
    assert added["0"] == 5  # 4 input directions + the bias coordinate (augmented rows)
    assert fot.threshold == pytest.approx(0.9995)
    h_old = model[0](old_x[0]).detach()
    clients = [copy.deepcopy(model) for _ in range(3)]
    for c in clients:  # local training on new data
        opt = torch.optim.SGD(c.parameters(), lr=0.1)
        for _ in range(5):
            opt.zero_grad()
            c(torch.randn(32, 10, dtype=torch.float64)).pow(2).mean().backward()
            opt.step()
    w_before = {k: v.clone() for k, v in model.state_dict().items()}
    removed = fot.aggregate([c.state_dict() for c in clients], weights=[1, 2, 3])
    assert removed["0"] > 0.1  # there was interference to remove
    assert torch.allclose(model[0](old_x[0]), h_old, atol=1e-10)  # old-task layer-0 outputs unchanged
    avg2 = sum(w * c.state_dict()["2.weight"] for w, c in zip([1, 2, 3], clients)) / 6
    assert not torch.allclose(model.state_dict()["2.weight"], w_before["2.weight"])
    assert (model.state_dict()["2.weight"] - avg2).abs().max() > 0  # layer 2 also protected (projected)
    with pytest.raises(ValueError):
        fot.aggregate([])
    with pytest.raises(ValueError):
        fot.aggregate([c.state_dict() for c in clients], weights=[1, -1, 1])
    with pytest.raises(ValueError):
        FOT(model, threshold=0.0)


def test_client_statistics_send_a_sketch_not_the_activations() -> None:
    model = nn.Sequential(nn.Linear(6, 3)).double()
    fot = FOT(model)
    x = torch.randn(40, 6, dtype=torch.float64)
    a = FOT.client_statistics(model, fot, [x])["0"]
    b = FOT.client_statistics(model, fot, [x])["0"]
    assert set(a) == {"sketch", "ratio", "energy", "resid_energy", "samples"} and a["samples"] == 40
    assert a["sketch"].shape == (7, 7) and a["ratio"] == 1.0  # bias-augmented rows, no basis yet
    assert not torch.allclose(a["sketch"], b["sketch"])  # every client call draws its own sketch
    s1 = FOT.client_statistics(model, fot, [x], seed=5)["0"]["sketch"]
    assert torch.equal(s1, FOT.client_statistics(model, fot, [x], seed=5)["0"]["sketch"])
    R = torch.cat([x, torch.ones(40, 1, dtype=torch.float64)], 1).T
    # the sketch spans the activations' column space but is not the Gram matrix
    Q = torch.linalg.qr(R).Q
    assert (s1 - Q @ (Q.T @ s1)).abs().max() < 1e-10
    assert not torch.allclose(s1, R @ R.T)
    exact = FOT.client_statistics(model, fot, [x], sketch=None)["0"]["gram"]
    assert torch.allclose(exact, R @ R.T)
    assert FOT.client_statistics(model, fot, [x], max_samples=10, sketch=None)["0"]["samples"] == 10
    with pytest.raises(ValueError, match="sketch"):
        FOT(model, sketch="haar")
    with pytest.raises(ValueError, match="ratio_rule"):
        FOT(model, ratio_rule="pooled")
    with pytest.raises(TypeError):
        FOT(model, thresh=0.9)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="no statistics"):
        fot.end_task([{}])
