"""FOT against an independent float64 re-implementation of the authors' code.

Reference: github.com/duygunuryldz/Federated_Orthogonal_Training (commit 6adce7c). Client
(``trainer/mnist_trainer.py::collect_activations``): ``R`` = layer inputs ``[n, N]``; with a basis ``U``:
``R̂ = R − UUᵀR``, ``ratio = ‖R̂‖/‖R‖`` (else ``ratio = 1``); sends ``R̂ @ (rand(N, n)·2 − 1)``, ratio, N.
Server (``FedAVGAggregator.py::expand_orth_set``): sum of sketches, ``w = N_c/ΣN``, ``avg = Σ w·ratio``,
``eps' = (avg − (1 − eps))/avg``, SVD, first ``i`` with ``‖S[:i+1]‖²/‖A‖² > eps'``, concat ``U[:, :i+1]``, QR,
``eps += eps_inc``; ``aggregate``: ``grad = global − avg``, ``grad −= (UUᵀ gradᵀ)ᵀ`` for the listed weights only,
``new = global − grad`` (biases averaged plainly). Written from that code's equations, not from orthokit.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from orthokit.projection.fot import FOT, fot_client_layer_statistics, fot_expand_basis


def _ref_client(R: torch.Tensor, U: torch.Tensor | None, seed: int) -> tuple[torch.Tensor, float, int]:
    ratio = 1.0
    if U is not None:
        rem = R - U @ U.T @ R
        ratio = float(rem.norm() / R.norm())
        R = rem
    g = torch.Generator().manual_seed(seed)
    omega = torch.rand((R.shape[1], R.shape[0]), generator=g, dtype=torch.float64) * 2 - 1
    return R @ omega, ratio, R.shape[1]


def _ref_expand(U: torch.Tensor | None, sent: list, eps: float) -> torch.Tensor:
    A = sum(s[0] for s in sent)
    w = torch.tensor([s[2] for s in sent], dtype=torch.float64)
    w = w / w.sum()
    avg = float((w * torch.tensor([s[1] for s in sent], dtype=torch.float64)).sum())
    new_eps = (avg - (1 - eps)) / avg
    Us, S, _ = torch.linalg.svd(A)
    total = float(A.norm() ** 2)
    for i in range(len(S)):
        if float(S[: i + 1].norm() ** 2) / total > new_eps:
            break
    M = Us[:, : i + 1] if U is None else torch.cat([U, Us[:, : i + 1]], 1)
    return torch.linalg.qr(M).Q


def _proj(B: torch.Tensor) -> torch.Tensor:
    return B.double() @ B.double().T


def _client_data(task: int, client: int, n: int = 10, N: int = 25) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 * task + client)
    scales = torch.logspace(0, -2, n, dtype=torch.float64)
    return torch.randn(N + 5 * client, n, generator=g, dtype=torch.float64) * scales  # rows [N, n]


def test_expand_rule_and_sketch_match_reference_over_three_tasks() -> None:
    n, eps, inc = 10, 0.9, 0.03
    model = nn.Sequential(nn.Linear(n, 4, bias=False)).double()
    fot = FOT(model, threshold=eps, eps_inc=inc)  # defaults: sketch="uniform", ratio_rule="fot"
    U_ref: torch.Tensor | None = None
    for task in range(3):
        data = [_client_data(task, c) for c in range(2)]
        seeds = [1000 * task + c for c in range(2)]
        stats = [FOT.client_statistics(model, fot, [x], seed=s) for x, s in zip(data, seeds)]
        fot.end_task(stats)
        sent = [_ref_client(x.T, U_ref, s) for x, s in zip(data, seeds)]
        U_ref = _ref_expand(U_ref, sent, eps + task * inc)
        M = fot.memory.basis("0")
        assert M.shape == U_ref.shape, (task, M.shape, U_ref.shape)
        assert torch.allclose(_proj(M), _proj(U_ref), atol=1e-6), task
    assert fot.threshold == pytest.approx(eps + 3 * inc)


def test_relative_threshold_uses_mean_norm_ratio_not_pooled_energy() -> None:
    """Issue 15's numbers: residual norm ratio 0.5 (energy ratio 0.25), ε = 0.95 → FOT ε' = 0.90, pooled 0.80."""
    M = torch.eye(4, dtype=torch.float64)[:, :1]
    rows = torch.tensor([[3.0**0.5, 1.0, 0.0, 0.0], [3.0**0.5, 0.0, 0.0, 0.0]], dtype=torch.float64)
    rows = torch.cat([rows, torch.tensor([[0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)])
    st = fot_client_layer_statistics(rows, M, sketch=None)
    assert st["ratio"] == pytest.approx(1 / 7**0.5)
    # a client with ‖R̂‖² / ‖R‖² = 1/4 exactly
    rows = torch.tensor([[3.0**0.5, 1.0, 0.0, 0.0]], dtype=torch.float64)
    st = fot_client_layer_statistics(rows, M, sketch=None)
    assert st["ratio"] == pytest.approx(0.5)
    _, info = fot_expand_basis(M, [st], 0.95)
    assert info["relative_threshold"] == pytest.approx(0.90)
    _, info = fot_expand_basis(M, [st], 0.95, ratio_rule="energy")
    assert info["relative_threshold"] == pytest.approx(0.80)


def test_aggregation_matches_reference_with_bias_ignore() -> None:
    """``bias="ignore"`` is FOT's code exactly: weights projected, biases averaged plainly."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    fot = FOT(model, threshold=0.9, bias="ignore")
    fot.end_task([FOT.client_statistics(model, fot, [torch.randn(30, 6, dtype=torch.float64)], seed=3)])
    bases = {n: fot.memory.basis(n).double() for n in ("0", "2")}
    ref = copy.deepcopy(model)
    for rnd in range(3):
        clients = []
        for c in range(3):
            m = copy.deepcopy(model)
            with torch.no_grad():
                g = torch.Generator().manual_seed(10 * rnd + c)
                for p in m.parameters():
                    p += 0.1 * torch.randn(p.shape, generator=g, dtype=torch.float64)
            clients.append(m)
        fot.aggregate([c.state_dict() for c in clients])
        # reference
        gp = ref.state_dict()
        avg = {k: sum(c.state_dict()[k] for c in clients) / 3 for k in gp}
        new = {}
        for k in gp:
            grad = gp[k] - avg[k]
            if k.endswith("weight"):
                U = bases[k.split(".")[0]]
                grad = grad - (U @ U.T @ grad.T).T
            new[k] = gp[k] - grad
        ref.load_state_dict(new)
        for k, v in model.state_dict().items():
            assert torch.allclose(v, ref.state_dict()[k], atol=1e-10), (rnd, k)
