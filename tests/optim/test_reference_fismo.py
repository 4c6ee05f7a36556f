"""Reference mode for FISMO (arXiv:2601.21750; no official code): orthokit's optimizer against an independent
float64 re-implementation of the documented equations (docs/optim/fismo_aro.md), written here with the
*unnormalized* factor EMAs P̃, Q̃ kept explicitly (orthokit stores them as normalized matrix + RMS scale), and the
scale-invariance the method intends: gradients × c for c ∈ {1e-3, 1, 1e3} give the same trajectory.
"""

from __future__ import annotations

import math

import pytest
import torch

from orthokit.optim import FISMO

SHAPES = [(8, 5), (5, 8), (3, 6)]
STEPS = 10


def _polar64(x: torch.Tensor) -> torch.Tensor:
    u, _, vh = torch.linalg.svd(x, full_matrices=False)
    return u @ vh


def _isqrt(a: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh(0.5 * (a + a.T))
    return (v * w.rsqrt()[None, :]) @ v.T


def _reference(
    w0: torch.Tensor,
    grads: list[torch.Tensor],
    *,
    lr: float,
    mu: float,
    gamma: float,
    delta: float,
    wd: float = 0.0,
) -> torch.Tensor:
    m, n = w0.shape
    Pt: torch.Tensor | None = None  # unnormalized Fisher EMAs; None until the first gradient
    Qt: torch.Tensor | None = None
    P, Q = torch.eye(m, dtype=torch.float64), torch.eye(n, dtype=torch.float64)
    M = torch.zeros_like(w0)
    w = w0.clone()
    for g in grads:
        L = g @ torch.linalg.inv(Q) @ g.T / n
        if Pt is None:
            Pt = (torch.trace(L) / m) * torch.eye(
                m, dtype=torch.float64
            )  # identity prior at the gradient's scale
        L = L + delta * torch.trace(Pt) / m * torch.eye(m, dtype=torch.float64)
        Pt = gamma * Pt + (1 - gamma) * L
        P = m * Pt / torch.trace(Pt)
        R = g.T @ torch.linalg.inv(P) @ g / m
        if Qt is None:
            Qt = (torch.trace(R) / n) * torch.eye(n, dtype=torch.float64)
        R = R + delta * torch.trace(Qt) / n * torch.eye(n, dtype=torch.float64)
        Qt = gamma * Qt + (1 - gamma) * R
        Q = n * Qt / torch.trace(Qt)
        Pi, Qi = _isqrt(P), _isqrt(Q)
        M = mu * M + (1 - mu) * (Pi @ g @ Qi)
        w = w * (1 - lr * wd) - lr * math.sqrt(max(1.0, m / n)) * (Pi @ _polar64(M) @ Qi)
    return w


def _grads(shape: tuple[int, int], seed: int, scale: float = 1.0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(shape[0], 2, generator=gen, dtype=torch.float64)
    b = torch.randn(2, shape[1], generator=gen, dtype=torch.float64)
    return [
        scale * (a @ b + 0.3 * torch.randn(shape, generator=gen, dtype=torch.float64)) for _ in range(STEPS)
    ]


def _run(w0: torch.Tensor, grads: list[torch.Tensor], **kw: object) -> torch.Tensor:
    w = torch.nn.Parameter(w0.clone())
    opt = FISMO([w], **kw)
    for g in grads:
        w.grad = g.clone()
        opt.step()
    return w.detach()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("grad_scale", [1e-2, 1.0, 10.0])
def test_fismo_matches_float64_reference(shape: tuple[int, int], grad_scale: float) -> None:
    torch.manual_seed(0)
    w0 = torch.randn(shape, dtype=torch.float64)
    grads = _grads(shape, 1, grad_scale)
    kw = dict(lr=0.05, momentum=0.9, fisher_beta=0.8, damping=0.1, weight_decay=0.1)
    got = _run(w0, grads, ns_method="svd", **kw)
    ref = _reference(w0, grads, lr=0.05, mu=0.9, gamma=0.8, delta=0.1, wd=0.1)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 1e-5)])
def test_fismo_is_invariant_to_loss_scaling(dtype: torch.dtype, tol: float) -> None:
    shape = (12, 7)
    w0 = torch.randn(shape, dtype=torch.float64).to(dtype)
    base = _grads(shape, 2)
    runs = [_run(w0, [(c * g).to(dtype) for g in base], lr=0.02) for c in (1e-3, 1.0, 1e3)]
    assert float((runs[1] - w0).norm()) > 1e-2
    for r in (runs[0], runs[2]):
        torch.testing.assert_close(r, runs[1], rtol=tol, atol=tol)


def test_fismo_preconditioner_is_active_at_every_gradient_scale() -> None:
    """The factor's condition number depends on the gradient's structure, not on its RMS (1e-3 … 10)."""
    shape = (16, 12)
    conds = []
    for c in (1e-3, 1e-2, 1.0, 10.0):
        w = torch.nn.Parameter(torch.zeros(shape, dtype=torch.float64))
        opt = FISMO([w])
        for g in _grads(shape, 3, c):
            w.grad = g
            opt.step()
        conds.append(float(torch.linalg.cond(opt.state[w]["fismo_p"][0])))
    assert min(conds) > 2.0  # not the identity (Muon without Nesterov)
    assert max(conds) / min(conds) == pytest.approx(1.0, rel=1e-6)
