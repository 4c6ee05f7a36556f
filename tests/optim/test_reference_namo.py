"""Reference mode: orthokit's NAMO / NAMO-D against an independent float64 re-implementation of the authors'
update (github.com/minxin-zhg/namo ``src/namo.py`` @ 344d11f, ``NAMO.step`` / ``NAMO_D.step`` with
``use_exact_svd=True``), written here in plain torch from the official code's equations.

Several steps on deterministic noisy gradients, tall / wide / 3×k shapes, parameters compared to 1e-6 (rel).
"""

from __future__ import annotations

import math

import pytest
import torch

from orthokit.optim import NAMO, NAMOD

SHAPES = [(12, 5), (5, 12), (3, 7)]
STEPS = 12


def _polar64(x: torch.Tensor) -> torch.Tensor:
    u, _, vh = torch.linalg.svd(x, full_matrices=False)
    return u @ vh


def _grads(shape: tuple[int, int], seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(shape, generator=g, dtype=torch.float64)
    col = torch.logspace(-1, 1, shape[1], dtype=torch.float64)  # columns with different noise levels
    return [0.3 * mean + torch.randn(shape, generator=g, dtype=torch.float64) * col for _ in range(STEPS)]


def _reference_namo(
    w0: torch.Tensor,
    grads: list[torch.Tensor],
    *,
    lr: float,
    wd: float,
    mu: float = 0.95,
    mu2: float = 0.99,
    eps: float = 1e-8,
    nesterov: bool = True,
    coeff: float = 0.2,
) -> torch.Tensor:
    w = w0.clone()
    buf = torch.zeros_like(w)
    v2 = 0.0
    for t, g in enumerate(grads, start=1):
        gn = float(torch.linalg.vector_norm(g))
        buf = mu * buf + (1 - mu) * g
        x = (1 - mu) * g + mu * buf if nesterov else buf
        gn_m = float(torch.linalg.vector_norm(x))
        v2 = mu2 * v2 + (1 - mu2) * gn * gn
        u = _polar64(x)
        bc1, bc2 = 1 - mu**t, 1 - mu2**t
        a = lr * math.sqrt(bc2) / (bc1 + 1e-12) * gn_m / (math.sqrt(v2) + eps)
        a_c = min(a, 1.0)
        adj = min(a * coeff * math.sqrt(max(w.shape)), 1.0)
        w = w * (1 - wd * a_c)
        w = w - adj * u
    return w


def _reference_namo_d(
    w0: torch.Tensor,
    grads: list[torch.Tensor],
    *,
    lr: float,
    wd: float,
    c: float = 0.75,
    mu: float = 0.95,
    mu2: float = 0.99,
    eps: float = 1e-8,
    coeff: float = 0.2,
) -> torch.Tensor:
    w = w0.clone()
    buf = torch.zeros_like(w)
    V = torch.zeros(w.shape[1], dtype=torch.float64)
    for t, g in enumerate(grads, start=1):
        V = mu2 * V + (1 - mu2) * g.pow(2).sum(0)
        buf = mu * buf + (1 - mu) * g
        x = (1 - mu) * g + mu * buf
        o = _polar64(x)
        base = lr * math.sqrt(1 - mu2**t) / (1 - mu**t + 1e-12)
        col = x.pow(2).sum(0).sqrt() / (V.sqrt() + eps)
        if 0 < c <= 1:
            m = col.mean()
            col = col.clamp(min=float(m) * c, max=float(m) / c)
        decay = (1 - wd * (col * base).clamp(max=1.0)).clamp(min=0.0)
        w = w * decay[None, :]
        up = (col * base * coeff * math.sqrt(max(w.shape))).clamp(max=1.0)
        w = w - o * up[None, :]
    return w


def _run(cls: type, w0: torch.Tensor, grads: list[torch.Tensor], **kw: object) -> torch.Tensor:
    w = torch.nn.Parameter(w0.clone())
    opt = cls([w], ns_method="svd", **kw)
    for g in grads:
        w.grad = g.clone()
        opt.step()
    return w.detach()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("lr,wd", [(1e-2, 0.1), (0.3, 0.5)])  # the second one hits both caps at 1
def test_namo_default_is_the_official_rule(shape: tuple[int, int], lr: float, wd: float) -> None:
    torch.manual_seed(0)
    w0 = torch.randn(shape, dtype=torch.float64)
    grads = _grads(shape, 1)
    got = _run(NAMO, w0, grads, lr=lr, weight_decay=wd)
    ref = _reference_namo(w0, grads, lr=lr, wd=wd)
    assert (ref - w0).norm() > 1e-3  # the trajectory moved
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-9)


def test_namo_signature_defaults_are_the_official_ones() -> None:
    shape = (6, 4)
    w0 = torch.randn(shape, dtype=torch.float64)
    grads = _grads(shape, 2)
    got = _run(NAMO, w0, grads)  # lr 1e-2, wd 0.1, nesterov, 0.2·sqrt(max)
    torch.testing.assert_close(got, _reference_namo(w0, grads, lr=1e-2, wd=0.1), rtol=1e-6, atol=1e-9)


def test_namo_without_nesterov_matches_official_option() -> None:
    shape = (5, 9)
    w0 = torch.randn(shape, dtype=torch.float64)
    grads = _grads(shape, 3)
    got = _run(NAMO, w0, grads, lr=0.05, weight_decay=0.1, nesterov=False)
    ref = _reference_namo(w0, grads, lr=0.05, wd=0.1, nesterov=False)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("lr,wd", [(1e-2, 0.1), (0.3, 0.5)])
def test_namo_d_default_is_the_official_rule(shape: tuple[int, int], lr: float, wd: float) -> None:
    torch.manual_seed(0)
    w0 = torch.randn(shape, dtype=torch.float64)
    grads = _grads(shape, 4)
    got = _run(NAMOD, w0, grads, lr=lr, weight_decay=wd)
    ref = _reference_namo_d(w0, grads, lr=lr, wd=wd)
    assert (ref - w0).norm() > 1e-3
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-9)


def test_namo_d_clamp_option() -> None:
    shape = (8, 6)
    w0 = torch.randn(shape, dtype=torch.float64)
    grads = _grads(shape, 5)
    for c in (0.0, 0.3, 1.0):
        got = _run(NAMOD, w0, grads, lr=0.02, weight_decay=0.1, clamp=c)
        torch.testing.assert_close(
            got, _reference_namo_d(w0, grads, lr=0.02, wd=0.1, c=c), rtol=1e-6, atol=1e-9
        )
