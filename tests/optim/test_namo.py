"""NAMO / NAMO-D adaptive scales (arXiv:2602.17080): closed-form cases and float64 references."""

from __future__ import annotations

import math

import pytest
import torch

from orthokit.optim.namo import namo_d_diagonal, namo_scale


def test_alpha_is_one_for_a_constant_noiseless_gradient() -> None:
    g = torch.randn(7, 5, dtype=torch.float64)
    m = torch.zeros_like(g)
    v = torch.zeros(1, 1, dtype=torch.float64)
    b1, b2 = 0.9, 0.99
    for t in range(1, 20):
        m = b1 * m + (1 - b1) * g
        a = namo_scale(m, g, v, step=t, beta1=b1, beta2=b2, eps=0.0)
        assert a.item() == pytest.approx(1.0, abs=1e-12)


def test_alpha_shrinks_with_noise_and_matches_reference() -> None:
    torch.manual_seed(1)
    b1, b2, eps = 0.9, 0.99, 1e-8
    m = torch.zeros(6, 4, dtype=torch.float64)
    v = torch.zeros(1, 1, dtype=torch.float64)
    v_ref = 0.0
    mean = torch.full((6, 4), 0.05, dtype=torch.float64)
    for t in range(1, 60):
        g = mean + torch.randn(6, 4, dtype=torch.float64)  # SNR ≪ 1
        m = b1 * m + (1 - b1) * g
        a = namo_scale(m, g, v, step=t, beta1=b1, beta2=b2, eps=eps)
        v_ref = b2 * v_ref + (1 - b2) * float(g.pow(2).sum())
        ref = math.sqrt(1 - b2**t) / (1 - b1**t) * float(m.norm()) / (math.sqrt(v_ref) + eps)
        assert a.item() == pytest.approx(ref, rel=1e-12)
    assert a.item() < 0.6  # noise-dominated: the step shrinks


def test_namo_d_reference_and_clamp() -> None:
    torch.manual_seed(2)
    b1, b2, c, eps = 0.9, 0.95, 0.5, 1e-8
    m = torch.zeros(8, 6, dtype=torch.float64)
    v = torch.zeros(1, 6, dtype=torch.float64)
    v_ref = torch.zeros(6, dtype=torch.float64)
    scales = torch.tensor(
        [0.01, 0.1, 1.0, 1.0, 3.0, 10.0], dtype=torch.float64
    )  # columns with very different SNR
    for t in range(1, 8):
        g = torch.randn(8, 6, dtype=torch.float64) * scales + 0.5
        m = b1 * m + (1 - b1) * g
        d = namo_d_diagonal(m, g, v, t, b1, b2, clamp=c, eps=eps)
        v_ref = b2 * v_ref + (1 - b2) * g.pow(2).sum(0)
        raw = math.sqrt(1 - b2**t) / (1 - b1**t) * m.norm(dim=0) / (v_ref.sqrt() + eps)
        ref = raw.clamp(min=c * raw.mean(), max=raw.mean() / c)
        torch.testing.assert_close(d.flatten(), ref, rtol=1e-12, atol=1e-14)
    assert bool((d >= c * raw.mean() - 1e-12).all() and (d <= raw.mean() / c + 1e-12).all())
    assert bool((raw < c * raw.mean()).any())  # the clamp was active in this example
    d1 = namo_d_diagonal(m, g, v.clone(), 8, b1, b2, clamp=1.0)
    torch.testing.assert_close(d1, d1.mean().expand_as(d1))


def test_bad_inputs() -> None:
    g = torch.randn(3, 2)
    with pytest.raises(ValueError, match="clamp"):
        namo_d_diagonal(g, g, torch.zeros(1, 2), 1, 0.9, 0.9, clamp=0.0)
    with pytest.raises(ValueError, match="state has shape"):
        namo_scale(g, g, torch.zeros(2), 1, 0.9, 0.9)
    with pytest.raises(ValueError, match="beta1"):
        namo_scale(g, g, torch.zeros(1, 1), 1, 1.0, 0.9)
    with pytest.raises(ValueError, match="step"):
        namo_d_diagonal(g, g, torch.zeros(1, 2), 0, 0.9, 0.9)


def _polar64(x: torch.Tensor) -> torch.Tensor:
    u, _, vh = torch.linalg.svd(x.double(), full_matrices=False)
    return u @ vh


@pytest.mark.parametrize("diagonal", [False, True])
def test_optimizer_step_equals_manual_float64(diagonal: bool) -> None:
    from orthokit.optim.namo import NAMO, NAMOD

    w0 = torch.randn(9, 5, dtype=torch.float64)
    grads = [torch.randn(9, 5, dtype=torch.float64) for _ in range(3)]
    lr, b1, b2, wd = 0.05, 0.9, 0.95, 0.1
    w = torch.nn.Parameter(w0.clone())
    cls = NAMOD if diagonal else NAMO
    opt = cls([w], lr=lr, momentum=b1, beta2=b2, weight_decay=wd, ns_method="svd", clamp=0.7)
    m, ref = torch.zeros_like(w0), w0.clone()
    v = torch.zeros(1, 5 if diagonal else 1, dtype=torch.float64)
    for t, g in enumerate(grads, start=1):
        w.grad = g.clone()
        opt.step()
        m = b1 * m + (1 - b1) * g
        o = _polar64(m)
        if diagonal:
            s = namo_d_diagonal(m, g, v, t, b1, b2, clamp=0.7)
            sbar = s.mean()
        else:
            s = sbar = namo_scale(m, g, v, t, b1, b2)
        ref = ref - lr * sbar * wd * ref - lr * (9 / 5) ** 0.5 * o * s
    torch.testing.assert_close(w.detach(), ref, rtol=1e-10, atol=1e-10)


def test_optimizer_rejects_bad_hyperparameters() -> None:
    from orthokit.optim.namo import NAMO, NAMOD

    p = [torch.nn.Parameter(torch.randn(4, 3))]
    with pytest.raises(ValueError, match="clamp"):
        NAMOD(p, clamp=1.5)
    with pytest.raises(ValueError, match="beta2"):
        NAMO(p, beta2=1.0)
