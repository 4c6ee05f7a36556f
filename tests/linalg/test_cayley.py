"""Tests for orthokit.linalg.cayley / inverse_cayley (float64 references, π and reflection guards)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from orthokit.linalg import cayley, expm_skew, inverse_cayley

D = torch.float64


def _skew(n: int, batch: tuple[int, ...] = (), scale: float = 1.0) -> torch.Tensor:
    X = torch.randn(*batch, n, n, dtype=D)
    return scale * (X - X.mT) / 2


def test_matches_explicit_inverse_formula_and_is_rotation() -> None:
    A = _skew(6, (3,))
    Q = cayley(A)
    eye = torch.eye(6, dtype=D)
    ref = torch.linalg.inv(eye - A) @ (eye + A)
    torch.testing.assert_close(Q, ref)
    torch.testing.assert_close(Q, (eye + A) @ torch.linalg.inv(eye - A))  # factors commute
    torch.testing.assert_close(Q.mT @ Q, eye.expand(3, 6, 6))
    torch.testing.assert_close(torch.linalg.det(Q), torch.ones(3, dtype=D))


def test_angle_is_two_arctan() -> None:
    for lam in (1e-8, 0.3, 1.0, 10.0, 1e6):
        A = torch.tensor([[0.0, -lam], [lam, 0.0]], dtype=D)
        th = 2 * math.atan(lam)
        ref = torch.tensor([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]], dtype=D)
        torch.testing.assert_close(cayley(A), ref, atol=1e-14, rtol=0)
    # second order agreement with exp(2A) for small A
    A = _skew(5, scale=1e-4)
    assert (cayley(A) - expm_skew(2 * A)).abs().max() < 1e-11


def test_roundtrip_and_inverse_formula() -> None:
    A = _skew(7, (2,), scale=2.0)
    Q = cayley(A)
    torch.testing.assert_close(inverse_cayley(Q), A, atol=1e-12, rtol=1e-10)
    eye = torch.eye(7, dtype=D)
    ref = (Q - eye) @ torch.linalg.inv(Q + eye)
    torch.testing.assert_close(inverse_cayley(Q), ref, atol=1e-12, rtol=1e-10)
    R = expm_skew(_skew(5, scale=0.5))
    torch.testing.assert_close(cayley(inverse_cayley(R)), R)


def test_inverse_cayley_rejects_near_pi_and_reflections() -> None:
    th = math.pi - 1e-9
    Q = torch.tensor([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]], dtype=D)
    with pytest.raises(ValueError, match=r"ill-conditioned.*κ = 2/σ_min\(Q \+ I\) = [0-9.e+]+"):
        inverse_cayley(Q)
    # with the guard relaxed the value is tan(θ/2) (finite, huge)
    A = inverse_cayley(Q, max_cond=float("inf"))
    assert abs(float(A[1, 0]) / math.tan(th / 2) - 1) < 1e-6
    refl = torch.diag(torch.tensor([1.0, -1.0, 1.0], dtype=D))
    with pytest.raises(ValueError, match="eigenvalue near -1"):
        inverse_cayley(refl)
    with pytest.raises(ValueError, match="exactly singular|eigenvalue near -1"):
        inverse_cayley(refl, max_cond=float("inf"))
    with pytest.raises(ValueError, match="not orthogonal"):
        inverse_cayley(torch.eye(3, dtype=D) * 2)
    # moderate angle (π - 0.1) passes by default in float64
    th2 = math.pi - 0.1
    Q2 = torch.tensor([[math.cos(th2), -math.sin(th2)], [math.sin(th2), math.cos(th2)]], dtype=D)
    assert abs(float(inverse_cayley(Q2)[1, 0]) - math.tan(th2 / 2)) < 1e-10


def test_skew_validation_and_dtypes() -> None:
    X = torch.randn(4, 4, dtype=D)
    with pytest.raises(ValueError, match="not skew-symmetric"):
        cayley(X)
    torch.testing.assert_close(cayley(X, project=True), cayley((X - X.T) / 2))
    with pytest.raises(ValueError, match="square"):
        cayley(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="non-finite"):
        cayley(torch.tensor([[0.0, float("nan")], [float("nan"), 0.0]]))
    Ab = _skew(8).to(torch.bfloat16)
    Qb = cayley(Ab)
    assert Qb.dtype == torch.bfloat16
    assert (Qb.double() - cayley(Ab.double())).abs().max() < 0.02
    Q32 = cayley(_skew(8).float())
    assert Q32.dtype == torch.float32 and inverse_cayley(Q32).dtype == torch.float32


def test_gradcheck() -> None:
    A = _skew(4).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: cayley(a, project=True), (A,))
    assert torch.autograd.gradcheck(lambda a: inverse_cayley(cayley(a, project=True)), (A,))


@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 8), scale=st.floats(0.0, 50.0))
def test_property_orthogonal_and_roundtrip(seed: int, n: int, scale: float) -> None:
    torch.manual_seed(seed)
    A = _skew(n, scale=scale)
    Q = cayley(A)
    assert torch.isfinite(Q).all()
    assert (Q.mT @ Q - torch.eye(n, dtype=D)).abs().max() < 1e-12
    try:
        back = inverse_cayley(Q)
    except ValueError as e:  # only allowed when an angle is within ~1e-7 of π
        assert "ill-conditioned" in str(e)
        assert float(torch.linalg.matrix_norm(A, ord=2)) > 1e6
        return
    # forward error grows like cond(Q + I) ≈ ‖A‖²
    rel = float((back - A).abs().max()) / max(1.0, float(A.abs().max()))
    assert rel < 1e-13 * max(1.0, float(torch.linalg.matrix_norm(A, ord=2)) ** 2)
