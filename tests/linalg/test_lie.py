"""Tests for orthokit.linalg.lie: expm_skew / logm_orthogonal, round trips near angle π, reflections."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from orthokit.linalg import expm_skew, logm_orthogonal

D = torch.float64


def _skew_with_angles(n: int, angles: list[float], rotate: bool = True) -> torch.Tensor:
    M = torch.zeros(n, n, dtype=D)
    for j, t in enumerate(angles):
        M[2 * j, 2 * j + 1] = -t
        M[2 * j + 1, 2 * j] = t
    if rotate:
        P = torch.linalg.qr(torch.randn(n, n, dtype=D)).Q
        M = P @ M @ P.T
    return M


def _rodrigues(axis: torch.Tensor, angle: float) -> torch.Tensor:
    a = axis / axis.norm()
    K = torch.tensor([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]], dtype=D)
    return torch.eye(3, dtype=D) + math.sin(angle) * K + (1 - math.cos(angle)) * K @ K


def test_expm_skew_closed_form_so3() -> None:
    axis = torch.tensor([1.0, 2.0, -0.5], dtype=D)
    a = axis / axis.norm()
    for angle in (0.0, 1e-8, 0.7, 2.5, math.pi - 1e-6):
        K = torch.tensor([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]], dtype=D)
        torch.testing.assert_close(expm_skew(angle * K), _rodrigues(axis, angle), atol=1e-13, rtol=0)


@pytest.mark.parametrize("a", [1e-4, 3e-3, 0.01, 0.02, 0.03, 0.045, 0.059, 0.061, 0.1, 1.0])
def test_expm_skew_small_norm_accuracy_float64(a: float) -> None:
    # torch.linalg.matrix_exp is off by up to ~1e-10 for 1-norms in [0.005, 0.05]; expm_skew is exact
    A = torch.tensor([[0.0, -a], [a, 0.0]], dtype=D)
    ref = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=D)
    assert (expm_skew(A) - ref).abs().max() < 1e-15
    # batched mixture of small- and large-norm matrices takes both paths
    X = torch.randn(5, 4, 4, dtype=D)
    S = (X - X.mT) * torch.tensor([0.001, 0.01, 0.5, 2.0, 0.005], dtype=D)[:, None, None]
    import scipy.linalg

    ref_b = torch.stack([torch.from_numpy(scipy.linalg.expm(s.numpy())) for s in S])
    assert (expm_skew(S) - ref_b).abs().max() < 1e-14


def test_expm_skew_orthogonal_batched_dtype() -> None:
    X = torch.randn(4, 6, 6, dtype=D)
    Q = expm_skew(X - X.mT)
    torch.testing.assert_close(Q.mT @ Q, torch.eye(6, dtype=D).expand(4, 6, 6))
    torch.testing.assert_close(torch.linalg.det(Q), torch.ones(4, dtype=D))
    Qb = expm_skew((X - X.mT).to(torch.bfloat16))
    assert Qb.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="not skew-symmetric"):
        expm_skew(X)
    torch.testing.assert_close(
        expm_skew(X, project=True), Q @ torch.eye(6, dtype=D) if False else expm_skew(0.5 * (X - X.mT))
    )
    with pytest.raises(ValueError, match="square"):
        expm_skew(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="non-finite"):
        expm_skew(torch.full((2, 2), float("nan")))


def test_logm_so3_closed_form() -> None:
    axis = torch.tensor([0.3, -1.0, 2.0], dtype=D)
    a = axis / axis.norm()
    K = torch.tensor([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]], dtype=D)
    for angle in (1e-12, 1e-6, 0.4, 2.0, math.pi - 1e-4, math.pi - 1e-9):
        L = logm_orthogonal(_rodrigues(axis, angle))
        # forward error near π is bounded by the condition number ≈ π/δ
        delta = math.pi - angle
        tol = 1e-14 * max(1.0, math.pi / delta) + 1e-14
        assert (L - angle * K).abs().max() < tol, angle


@pytest.mark.parametrize(
    "angles",
    [
        [0.3, 1.1, 2.0],
        [math.pi - 1e-3, 0.5],
        [math.pi - 1e-6, math.pi - 2e-6, 0.5, 0.5],
        [math.pi - 1e-9] * 3,
        [math.pi - 1e-12, 1.0],
        [1e-9] * 4,
        [0.7] * 4,
        [3.0, -3.0, 3.1],
    ],
)
@pytest.mark.parametrize("n_extra", [0, 1])
def test_roundtrip_expm_logm_float64(angles: list[float], n_extra: int) -> None:
    n = 2 * len(angles) + n_extra
    Q = expm_skew(_skew_with_angles(n, angles))
    L = logm_orthogonal(Q)
    torch.testing.assert_close(L, -L.T, atol=0, rtol=0)
    assert (expm_skew(L) - Q).abs().max() < 1e-10
    # principal branch: eigen-angles of L are the |angles| (all < π)
    ev = torch.linalg.eigvals(L).imag.abs().sort().values
    ref = torch.tensor(sorted([abs(a) for a in angles for _ in (0, 1)] + [0.0] * n_extra), dtype=D)
    assert (ev - ref).abs().max() < 1e-6


def test_logm_inverts_expm_inside_principal_domain() -> None:
    A = _skew_with_angles(8, [0.2, -1.5, 2.9, 0.01])
    torch.testing.assert_close(logm_orthogonal(expm_skew(A)), A, atol=1e-12, rtol=0)
    # angles > π wrap to the principal log (angle - 2π)
    B = _skew_with_angles(2, [4.0], rotate=False)
    torch.testing.assert_close(
        logm_orthogonal(expm_skew(B)), _skew_with_angles(2, [4.0 - 2 * math.pi], rotate=False)
    )


def test_exactly_pi_documented_choice() -> None:
    for Q in (-torch.eye(4, dtype=D), torch.diag(torch.tensor([-1.0, -1.0, 1.0], dtype=D))):
        P = torch.linalg.qr(torch.randn(Q.shape[0], Q.shape[0], dtype=D)).Q
        for M in (Q, P @ Q @ P.T):
            L = logm_orthogonal(M)
            torch.testing.assert_close(L, -L.T)
            assert (expm_skew(L) - M).abs().max() < 1e-12
            # minimal-norm log: every eigen-angle is π (or 0)
            ang = torch.linalg.eigvals(L).imag.abs()
            assert ((ang - math.pi).abs() < 1e-10).sum() == int((torch.linalg.eigvalsh(M) < 0).sum())


def test_reflection_and_non_orthogonal_rejected() -> None:
    R = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=D))
    with pytest.raises(ValueError, match="reflection"):
        logm_orthogonal(R)
    batch = torch.stack([torch.eye(3, dtype=D), R])
    with pytest.raises(ValueError, match=r"reflection.*\[1\]"):
        logm_orthogonal(batch)
    with pytest.raises(ValueError, match="not orthogonal"):
        logm_orthogonal(torch.eye(3, dtype=D) * 1.01)
    with pytest.raises(ValueError, match="square"):
        logm_orthogonal(torch.eye(3, 2, dtype=D))
    with pytest.raises(ValueError, match="non-finite"):
        logm_orthogonal(torch.full((3, 3), float("inf")))


def test_batched_float32_and_bf16() -> None:
    A = torch.stack([_skew_with_angles(6, [0.5, 1.0, 2.5]), _skew_with_angles(6, [3.1, 0.1, 0.0])])
    Q = expm_skew(A)
    L32 = logm_orthogonal(Q.float())
    assert L32.dtype == torch.float32 and L32.shape == (2, 6, 6)
    assert (L32.double() - A).abs().max() < 1e-4
    Lb = logm_orthogonal(Q.to(torch.bfloat16), atol=0.05)
    assert Lb.dtype == torch.bfloat16 and torch.isfinite(Lb.float()).all()


def test_gradcheck_exp_and_log() -> None:
    X = torch.randn(4, 4, dtype=D)
    A = (0.5 * (X - X.T)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: expm_skew(a, project=True), (A,))
    # log ∘ exp is the identity inside the principal domain, so its Jacobian is the skew projector
    assert torch.autograd.gradcheck(lambda a: logm_orthogonal(expm_skew(a, project=True)), (A,))


@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 9), scale=st.floats(0.0, 3.0))
def test_property_roundtrip(seed: int, n: int, scale: float) -> None:
    torch.manual_seed(seed)
    X = torch.randn(n, n, dtype=D)
    A = scale * (X - X.T) / max(1.0, float(torch.linalg.matrix_norm(X - X.T, ord=2)))
    Q = expm_skew(A)
    L = logm_orthogonal(Q)
    assert torch.isfinite(L).all()
    assert (expm_skew(L) - Q).abs().max() < 1e-10
    if scale < 3.0:  # all angles < π: principal log is A itself
        assert (L - A).abs().max() < 1e-8


@pytest.mark.parametrize(
    "angles", [[0.2, -1.5, 2.9, 0.01], [1e-9, 0.7, 0.7], [3.0, -3.0, 3.1], [math.pi - 1e-3, 0.5]]
)
def test_eigh_route_matches_eig_route(angles: list[float]) -> None:
    """method="eigh" (symmetric-part eigendecomposition) gives the same principal log as the real-Schur route."""
    torch.manual_seed(0)
    A = _skew_with_angles(2 * len(angles) + 1, angles)
    Q = expm_skew(A)
    L = logm_orthogonal(Q, method="eigh")
    torch.testing.assert_close(L, -L.T, atol=0, rtol=0)
    assert (L - logm_orthogonal(Q)).abs().max() < 1e-9
    assert (expm_skew(L) - Q).abs().max() < 1e-10
    # batched, float32, and the π branch
    Qb = torch.stack([Q, expm_skew(_skew_with_angles(Q.shape[0], [0.3]))])
    torch.testing.assert_close(
        logm_orthogonal(Qb.float(), method="eigh").double(), logm_orthogonal(Qb), atol=2e-4, rtol=0
    )
    M = torch.diag(torch.tensor([-1.0, -1.0, 1.0], dtype=D))
    assert (expm_skew(logm_orthogonal(M, method="eigh")) - M).abs().max() < 1e-12


def test_eigh_route_rejects_reflections_and_unknown_method() -> None:
    R = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=D))
    with pytest.raises(ValueError, match="reflection"):
        logm_orthogonal(R, method="eigh")
    with pytest.raises(ValueError, match="det = -1"):
        logm_orthogonal(R, method="eigh", check=False)
    with pytest.raises(ValueError, match="'eig' or 'eigh'"):
        logm_orthogonal(torch.eye(3, dtype=D), method="schur")
