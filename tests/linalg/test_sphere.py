"""Sphere exp/log maps and the Karcher mean (orthokit.linalg._sphere) against float64 closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from orthokit.linalg._sphere import geodesic_distance, karcher_mean, sphere_exp, sphere_log

D64 = torch.float64


def _unit(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g, dtype=D64)
    return x / x.norm()


def test_log_and_exp_match_the_closed_form() -> None:
    """log_x(y) has length arccos⟨x,y⟩, is tangent at x and points at y; exp_x(log_x(y)) = y."""
    for seed in range(5):
        x, y = _unit(7, seed), _unit(7, seed + 100)
        xn, yn = x.numpy(), y.numpy()
        c = float(np.clip(xn @ yn, -1, 1))
        th = math.acos(c)
        want = th / math.sin(th) * (yn - c * xn)
        v = sphere_log(x, y)
        np.testing.assert_allclose(v.numpy(), want, rtol=1e-12, atol=1e-14)
        assert abs(float(v @ x)) < 1e-13 and abs(float(v.norm()) - th) < 1e-13
        np.testing.assert_allclose(sphere_exp(x, v).numpy(), yn, atol=1e-13)
        # exp of a tangent vector, closed form on the great circle through x and v
        w = v * 0.3
        nw = 0.3 * th
        np.testing.assert_allclose(
            sphere_exp(x, w).numpy(), math.cos(nw) * xn + math.sin(nw) * w.numpy() / nw, atol=1e-14
        )
        assert geodesic_distance(3 * x, 0.5 * y) == pytest.approx(th, abs=1e-13)


def test_log_of_the_point_itself_and_weight_and_tol() -> None:
    x, y = _unit(5, 1), _unit(5, 2)
    assert float(sphere_log(x, x).abs().max()) < 1e-12  # ⟨x, x⟩ rounds to 1 − ε: θ ~ 1e-8, log ~ 1e-16
    e = torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0], dtype=D64)
    assert torch.equal(sphere_log(e, e), torch.zeros(5, dtype=D64))  # θ = 0 exactly: zero, not 0/0
    torch.testing.assert_close(sphere_log(x, y, weight=0.25), 0.25 * sphere_log(x, y), rtol=1e-14, atol=1e-15)
    assert torch.equal(sphere_log(x, y, tol=4.0), torch.zeros(5, dtype=D64))  # every angle is < π < 4
    assert torch.equal(sphere_exp(x, torch.zeros(5, dtype=D64)), x)


def test_karcher_mean_on_a_circle_is_the_weighted_mean_angle() -> None:
    """On S¹ the Karcher mean of points within a half circle is at the weighted mean of their angles."""
    phis = np.array([0.1, 0.9, 1.7, 2.3])
    w = [1.0, 0.5, 2.0, 1.5]
    pts = [torch.tensor([math.cos(p), math.sin(p)], dtype=D64) for p in phis]
    m, iters = karcher_mean(pts, w, max_iter=200, tol=1e-14)
    phi = float(np.dot(phis, w) / np.sum(w))
    np.testing.assert_allclose(m.numpy(), [math.cos(phi), math.sin(phi)], atol=1e-12)
    assert iters >= 1  # on S¹ one exp step lands exactly on the mean (the log map is linear in the angle)
    # the normalized Euclidean mean (the starting point) is measurably off: the iteration is needed
    e = sum(wi * p for wi, p in zip(w, pts))
    assert float((e / e.norm() - m).abs().max()) > 1e-3


def test_karcher_mean_first_order_condition_in_high_dimension() -> None:
    """At the mean the weighted log maps cancel (Σ α_i log_m x_i = 0), computed here in numpy."""
    pts = [_unit(40, s) for s in range(6)]
    w = [1.0, 2.0, 0.5, 1.0, 3.0, 0.7]
    m, _ = karcher_mean(pts, w, max_iter=500, tol=1e-15)
    mn, a = m.numpy(), np.array(w) / np.sum(w)
    resid = np.zeros(40)
    for ai, p in zip(a, pts):
        pn = p.numpy()
        c = float(np.clip(mn @ pn, -1, 1))
        th = math.acos(c)
        resid += ai * th / math.sin(th) * (pn - c * mn)
    assert np.linalg.norm(resid) < 1e-12
    assert abs(np.linalg.norm(mn) - 1) < 1e-14


def test_karcher_mean_of_two_points_is_the_geodesic_midpoint() -> None:
    x, y = _unit(9, 3), _unit(9, 4)
    m, _ = karcher_mean([x, y], [1.0, 1.0], max_iter=50, tol=1e-14)
    mid = (x + y) / (x + y).norm()
    torch.testing.assert_close(m, mid, rtol=0, atol=1e-13)


def test_karcher_mean_keeps_float32_and_bfloat16() -> None:
    pts = [_unit(64, s).to(torch.bfloat16) for s in range(3)]
    m, _ = karcher_mean(pts, [1.0, 1.0, 1.0])
    assert m.dtype == torch.bfloat16
    ref, _ = karcher_mean([p.double() for p in pts], [1.0, 1.0, 1.0], max_iter=100, tol=1e-14)
    assert float((m.double() - ref).abs().max()) < 0.02  # bf16 resolution ~ 4e-3 relative


def test_errors_are_one_line_and_named() -> None:
    x = _unit(3, 0)
    with pytest.raises(ValueError, match="at least one point"):
        karcher_mean([], [])
    with pytest.raises(ValueError, match="2 weights for 1 points"):
        karcher_mean([x], [1.0, 2.0])
    with pytest.raises(ValueError, match="non-zero sum"):
        karcher_mean([x, x], [1.0, -1.0])
    with pytest.raises(ValueError, match="max_iter"):
        karcher_mean([x], [1.0], max_iter=-1)
    with pytest.raises(ValueError, match="tol"):
        karcher_mean([x], [1.0], tol=float("nan"))
    with pytest.raises(TypeError, match="x is torch.float64 but y is torch.float32"):
        sphere_log(x, x.float())
    with pytest.raises(ValueError, match="shape"):
        sphere_exp(x, torch.zeros(4, dtype=D64))
    with pytest.raises(ValueError, match="zero vector"):
        geodesic_distance(x, torch.zeros(3, dtype=D64))
