"""NAMO / NAMO-D adaptive scales (arXiv:2602.17080; official code github.com/minxin-zhg/namo): closed-form
cases, float64 references of the scale functions, options, bad input. The full optimizer trajectory against the
official rule is in ``test_reference_namo.py``."""

from __future__ import annotations

import math

import pytest
import torch

from orthokit.optim.namo import NAMO, NAMOD, namo_bias_correction, namo_d_diagonal, namo_scale


def test_alpha_is_one_for_a_constant_noiseless_gradient() -> None:
    g = torch.randn(7, 5, dtype=torch.float64)
    m = torch.zeros_like(g)
    r = torch.zeros(1, 1, dtype=torch.float64)
    b1, b2 = 0.9, 0.99
    for t in range(1, 20):
        m = b1 * m + (1 - b1) * g  # non-Nesterov input: U = M
        a, r = namo_scale(m, g, r, beta2=b2, eps=0.0)
        assert float(a) * namo_bias_correction(t, b1, b2) == pytest.approx(1.0, abs=1e-10)


def test_alpha_shrinks_with_noise_and_matches_reference() -> None:
    torch.manual_seed(1)
    b1, b2, eps = 0.9, 0.99, 1e-8
    m = torch.zeros(6, 4, dtype=torch.float64)
    r = torch.zeros(1, 1, dtype=torch.float64)
    v_ref = 0.0
    mean = torch.full((6, 4), 0.05, dtype=torch.float64)
    for _ in range(1, 60):
        g = mean + torch.randn(6, 4, dtype=torch.float64)  # SNR ≪ 1
        m = b1 * m + (1 - b1) * g
        u = (1 - b1) * g + b1 * m  # Nesterov input
        a, r = namo_scale(u, g, r, beta2=b2, eps=eps)
        v_ref = b2 * v_ref + (1 - b2) * float(g.pow(2).sum())
        ref = float(u.norm()) / (math.sqrt(v_ref) + eps)
        assert float(a) == pytest.approx(ref, rel=1e-12)
        assert float(r) == pytest.approx(math.sqrt(v_ref), rel=1e-12)
    assert float(a) * namo_bias_correction(59, b1, b2) < 0.6  # noise-dominated: the step shrinks


def test_namo_d_reference_and_clamp() -> None:
    torch.manual_seed(2)
    b2, c, eps = 0.95, 0.5, 1e-8
    r = torch.zeros(1, 6, dtype=torch.float64)
    v_ref = torch.zeros(6, dtype=torch.float64)
    scales = torch.tensor([0.01, 0.1, 1.0, 1.0, 3.0, 10.0], dtype=torch.float64)  # very different SNR
    for _ in range(7):
        g = torch.randn(8, 6, dtype=torch.float64) * scales + 0.5
        u = 0.3 * g * torch.tensor([20.0, 1.0, 1.0, 1.0, 0.1, 0.01], dtype=torch.float64)
        d, r = namo_d_diagonal(u, g, r, b2, clamp=c, eps=eps)
        v_ref = b2 * v_ref + (1 - b2) * g.pow(2).sum(0)
        raw = u.norm(dim=0) / (v_ref.sqrt() + eps)
        ref = raw.clamp(min=c * raw.mean(), max=raw.mean() / c)
        torch.testing.assert_close(d.flatten(), ref, rtol=1e-12, atol=1e-14)
    assert bool((raw < c * raw.mean()).any() or (raw > raw.mean() / c).any())  # the clamp was active
    d1, _ = namo_d_diagonal(u, g, r.clone(), b2, clamp=1.0)
    torch.testing.assert_close(d1, d1.mean().expand_as(d1))
    d0, _ = namo_d_diagonal(u, g, r.clone(), b2, clamp=0.0)  # c = 0: no clamping (official)
    assert float(d0.max() / d0.min()) > 4.0


def test_bias_correction_matches_official_expression() -> None:
    for t in (1, 2, 10, 100):
        ref = math.sqrt(1 - 0.99**t) / (1 - 0.95**t + 1e-12)
        assert namo_bias_correction(t, 0.95, 0.99) == pytest.approx(ref, rel=1e-15)


def test_bad_inputs() -> None:
    g = torch.randn(3, 2)
    with pytest.raises(ValueError, match="clamp"):
        namo_d_diagonal(g, g, torch.zeros(1, 2), 0.9, clamp=1.5)
    with pytest.raises(ValueError, match="state has shape"):
        namo_scale(g, g, torch.zeros(2), 0.9)
    with pytest.raises(ValueError, match="beta1"):
        namo_bias_correction(1, 1.0, 0.9)
    with pytest.raises(ValueError, match="step"):
        namo_bias_correction(0, 0.9, 0.9)


def test_signature_defaults_are_the_official_ones() -> None:
    opt = NAMOD([torch.nn.Parameter(torch.randn(4, 3))])
    g = opt.param_groups[0]
    assert (g["lr"], g["weight_decay"], g["momentum"], g["beta2"], g["eps"], g["nesterov"], g["clamp"]) == (
        1e-2,
        0.1,
        0.95,
        0.99,
        1e-8,
        True,
        0.75,
    )
    assert g["scale"] == "match_rms_adamw" and g["cap"] is True


def test_in_out_layout_uses_semantic_columns() -> None:
    """A weight stored transposed (HF Conv1D) gets the same update, transposed, as its nn.Linear twin."""
    torch.manual_seed(3)
    w0 = torch.randn(7, 4, dtype=torch.float64)
    a = torch.nn.Parameter(w0.clone())
    b = torch.nn.Parameter(w0.T.clone())
    oa = NAMOD([a], ns_method="svd", lr=0.05)
    ob = NAMOD([{"params": [b], "layout": "in_out"}], ns_method="svd", lr=0.05)
    for _ in range(3):
        g = torch.randn(7, 4, dtype=torch.float64)
        a.grad, b.grad = g.clone(), g.T.clone()
        oa.step()
        ob.step()
    torch.testing.assert_close(b.detach().T, a.detach(), rtol=1e-10, atol=1e-12)


def test_optimizer_rejects_bad_hyperparameters() -> None:
    p = [torch.nn.Parameter(torch.randn(4, 3))]
    with pytest.raises(ValueError, match="clamp"):
        NAMOD(p, clamp=1.5)
    with pytest.raises(ValueError, match="beta2"):
        NAMO(p, beta2=1.0)
    with pytest.raises(TypeError, match="cap"):
        NAMO(p, cap=1)
