"""AuON cosh-RMS normalization (arXiv:2509.24320): closed form, asymptotics, direction."""

from __future__ import annotations

import math

import pytest
import torch

from orthokit.optim.auon import auon_normalize, cosh_rms


def test_cosh_rms_matches_float64_formula() -> None:
    x = torch.randn(5, 7, dtype=torch.float64)
    g = 1.5
    xh = x / (x.norm() + 1e-7)
    ref = math.sqrt(float(torch.cosh(g * xh).pow(2).mean()))
    assert cosh_rms(x, g).item() == pytest.approx(ref, rel=1e-13)


@pytest.mark.parametrize(("m", "n"), [(8, 8), (64, 64), (768, 768)])
def test_cosh_rms_is_one_plus_gamma2_over_2N(m: int, n: int) -> None:
    # mean cosh(γx)² = 1 + γ²/N + O(γ⁴ Σx⁴/N) with Σx² = 1  ⇒  r − 1 ≈ γ²/(2N)
    x = torch.randn(m, n, dtype=torch.float64)
    r = cosh_rms(x, gamma=1.5).item()
    assert r - 1 == pytest.approx(1.5**2 / (2 * m * n), rel=0.05)


def test_cosh_factor_768_is_within_2e_6_of_one() -> None:
    r = cosh_rms(torch.randn(768, 768), gamma=1.5).item()
    assert 0 < r - 1 < 2.5e-6


def test_auon_direction_paper_and_code_forms() -> None:
    u = torch.randn(16, 8, dtype=torch.float64) * 3
    r = cosh_rms(u, 1.0)
    y = auon_normalize(u, 1.0, normalize=True)
    torch.testing.assert_close(y, u / (u.norm() + 1e-7) / (r + 1e-8))
    assert y.norm().item() < 1.0
    z = auon_normalize(u, 1.5, normalize=False)
    torch.testing.assert_close(z, u / (cosh_rms(u, 1.5) + 1e-8))
    assert auon_normalize(u.float()).dtype == torch.float32


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="m, n"):
        cosh_rms(torch.randn(5))


def _released_auon(
    w0: torch.Tensor,
    grads: list[torch.Tensor],
    *,
    lr: float,
    mu: float,
    wd: float,
    gamma: float,
    ns_steps: int = 0,
) -> torch.Tensor:
    """github.com/ryyzn9/AuON auon/optimizer.py @ bba2e82 (``AuON`` for ns_steps=0, ``HybridAuON`` otherwise),
    re-written in plain float64: decoupled decay, EMA + Nesterov, optional Keller NS (Frobenius-normalized,
    on the wide orientation), cosh divisor, no shape factor."""
    w, m = w0.clone(), torch.zeros_like(w0)
    a, b, c = 3.4445, -4.7750, 2.0315
    for g in grads:
        w = w * (1 - lr * wd)
        m = mu * m + (1 - mu) * g
        u = (1 - mu) * g + mu * m
        if ns_steps:
            x = u.T if u.shape[0] > u.shape[1] else u
            x = x / (x.norm() + 1e-7)
            for _ in range(ns_steps):
                A = x @ x.T
                x = a * x + (b * A + c * A @ A) @ x
            u = x.T if u.shape[0] > u.shape[1] else x
        r = torch.sqrt(torch.mean(torch.cosh(gamma * u / (u.norm() + 1e-7)) ** 2))
        w = w - lr * u / (r + 1e-8)
    return w


@pytest.mark.parametrize("shape", [(12, 6), (6, 12), (3, 7)])
@pytest.mark.parametrize("hybrid", [False, True])
def test_defaults_reproduce_the_released_code(shape: tuple[int, int], hybrid: bool) -> None:
    from orthokit.optim.auon import AuON, HybridAuON

    torch.manual_seed(0)
    w0 = torch.randn(shape, dtype=torch.float64)
    grads = [torch.randn(shape, dtype=torch.float64) * 0.1 for _ in range(10)]
    w = torch.nn.Parameter(w0.clone())
    opt = (HybridAuON if hybrid else AuON)([w], weight_decay=0.01)  # every other knob at its default
    for g in grads:
        w.grad = g.clone()
        opt.step()
    ref = _released_auon(w0, grads, lr=0.08, mu=0.95, wd=0.01, gamma=1.5, ns_steps=5 if hybrid else 0)
    assert float((ref - w0).norm()) > 1e-3
    torch.testing.assert_close(w.detach(), ref, rtol=1e-6, atol=1e-9)


def test_auon_paper_form_option() -> None:
    from orthokit.optim.auon import AuON

    w0 = torch.randn(12, 6, dtype=torch.float64)
    grads = [torch.randn(12, 6, dtype=torch.float64) for _ in range(2)]
    lr, mu, wd = 0.1, 0.9, 0.01
    w = torch.nn.Parameter(w0.clone())
    opt = AuON([w], lr=lr, momentum=mu, weight_decay=wd, gamma=1.0, normalize=True, scale="keller")
    m, ref = torch.zeros_like(w0), w0.clone()
    for g in grads:
        w.grad = g.clone()
        opt.step()
        m = mu * m + (1 - mu) * g
        u = (1 - mu) * g + mu * m
        r = math.sqrt(float(torch.cosh(u / (u.norm() + 1e-7)).pow(2).mean()))
        ref = ref * (1 - lr * wd) - lr * math.sqrt(2) * (u / (u.norm() + 1e-7)) / (r + 1e-8)
    torch.testing.assert_close(w.detach(), ref, rtol=1e-10, atol=1e-10)


def test_hybrid_auon_single_newton_schulz_step_option() -> None:
    # v1 abstract: one Keller NS step maps normalized singular values by p(σ) = 3.4445σ − 4.775σ³ + 2.0315σ⁵
    from orthokit.optim.auon import HybridAuON

    w0 = torch.zeros(16, 16, dtype=torch.float64)
    g = torch.randn(16, 16, dtype=torch.float64)
    w = torch.nn.Parameter(w0.clone())
    opt = HybridAuON([w], lr=1.0, momentum=0.0, ns_steps=1, gamma=1.0)
    w.grad = g.clone()
    opt.step()
    upd = -w.detach()
    u, s, vh = torch.linalg.svd(g)
    x = s / (g.norm() + 1e-7)
    p = 3.4445 * x - 4.7750 * x**3 + 2.0315 * x**5
    o = u @ torch.diag(p) @ vh
    ref = o / (cosh_rms(o, 1.0) + 1e-8)
    torch.testing.assert_close(upd, ref, rtol=1e-6, atol=1e-8)
    sv = torch.linalg.svdvals(upd)
    assert (sv.max() / sv.min()).item() > 5  # one step is nowhere near orthogonal


def test_optimizer_rejects_bad_hyperparameters() -> None:
    from orthokit.optim.auon import AuON, HybridAuON

    p = [torch.nn.Parameter(torch.randn(4, 3))]
    with pytest.raises(ValueError, match="gamma"):
        AuON(p, gamma=0.0)
    with pytest.raises(ValueError, match="ns_steps"):
        HybridAuON(p, ns_steps=0)
