"""Tests for orthokit.linalg.procrustes (in _procrustes.py): Schönemann, Kabsch (det=+1), Umeyama scale; float64 references."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from orthokit.linalg import ProcrustesResult, procrustes

D = torch.float64


def _haar(n: int, det: int = 1, batch: tuple[int, ...] = ()) -> torch.Tensor:
    q = torch.linalg.qr(torch.randn(*batch, n, n, dtype=D)).Q
    flip = torch.where(torch.linalg.det(q) * det < 0, -1.0, 1.0).to(D)
    q = q.clone()
    q[..., :, 0] = q[..., :, 0] * flip[..., None]
    return q


def _objective(A: torch.Tensor, B: torch.Tensor, Q: torch.Tensor) -> float:
    return float(torch.linalg.norm(A @ Q - B))


def test_recovers_planted_rotation_and_reflection() -> None:
    A = torch.randn(40, 5, dtype=D)
    for det in (1, -1):
        R = _haar(5, det)
        res = procrustes(A, A @ R)
        assert isinstance(res, ProcrustesResult)
        torch.testing.assert_close(res.Q, R)
        assert float(res.scale) == 1.0 and res.mean_a.abs().max() == 0


def test_optimality_against_random_orthogonal_and_scipy() -> None:
    import scipy.linalg

    A = torch.randn(30, 6, dtype=D)
    B = torch.randn(30, 6, dtype=D)
    Q = procrustes(A, B).Q
    ref, _ = scipy.linalg.orthogonal_procrustes(A.numpy(), B.numpy())
    torch.testing.assert_close(Q, torch.from_numpy(ref))
    best = _objective(A, B, Q)
    for _ in range(50):
        assert best <= _objective(A, B, _haar(6, 1 if _ % 2 else -1)) + 1e-12
    # first-order optimality: M Qᵀ = AᵀB Qᵀ is symmetric positive semidefinite
    S = (A.T @ B) @ Q.T
    torch.testing.assert_close(S, S.T)
    assert torch.linalg.eigvalsh(S).min() > -1e-10


def test_kabsch_forces_rotation() -> None:
    A = torch.randn(25, 3, dtype=D)
    R = _haar(3, -1)  # planted reflection
    B = A @ R + 0.01 * torch.randn(25, 3, dtype=D)
    free = procrustes(A, B).Q
    rot = procrustes(A, B, rotation_only=True).Q
    assert torch.linalg.det(free) < 0
    torch.testing.assert_close(torch.linalg.det(rot), torch.tensor(1.0, dtype=D))
    torch.testing.assert_close(rot.T @ rot, torch.eye(3, dtype=D))
    # brute force: best rotation among many random rotations near the Kabsch answer is not better
    obj = _objective(A, B, rot)
    for _ in range(200):
        cand = torch.linalg.matrix_exp(0.05 * (lambda X: X - X.T)(torch.randn(3, 3, dtype=D))) @ rot
        assert obj <= _objective(A, B, cand) + 1e-12
    # when the optimum is already a rotation, rotation_only changes nothing
    R2 = _haar(3, 1)
    torch.testing.assert_close(procrustes(A, A @ R2, rotation_only=True).Q, procrustes(A, A @ R2).Q)


def test_umeyama_similarity_recovery() -> None:
    A = torch.randn(100, 4, dtype=D)
    R = _haar(4, 1)
    t = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=D)
    B = 0.7 * A @ R + t
    res = procrustes(A, B, center=True, scale=True, rotation_only=True)
    torch.testing.assert_close(res.Q, R)
    torch.testing.assert_close(res.scale, torch.tensor(0.7, dtype=D))
    torch.testing.assert_close(res.mean_a, A.mean(0))
    torch.testing.assert_close(res.mean_b, B.mean(0))
    torch.testing.assert_close(res.transform(A), B)
    # closed-form optimal scale for noisy data equals the minimizer of the 1-D quadratic
    Bn = B + 0.3 * torch.randn_like(B)
    r2 = procrustes(A, Bn, center=True, scale=True)
    Ac, Bc = A - A.mean(0), Bn - Bn.mean(0)
    AQ = Ac @ r2.Q
    s_ref = float((AQ * Bc).sum() / (AQ * AQ).sum())
    assert abs(float(r2.scale) - s_ref) < 1e-12


def test_rectangular_semi_orthogonal() -> None:
    A = torch.randn(20, 6, dtype=D)
    B = torch.randn(20, 3, dtype=D)
    Q = procrustes(A, B).Q
    assert Q.shape == (6, 3)
    torch.testing.assert_close(Q.T @ Q, torch.eye(3, dtype=D))
    # optimal among random semi-orthogonal maps
    best = _objective(A, B, Q)
    for _ in range(30):
        cand = torch.linalg.qr(torch.randn(6, 3, dtype=D)).Q
        assert best <= _objective(A, B, cand) + 1e-12
    with pytest.raises(ValueError, match="rotation_only"):
        procrustes(A, B, rotation_only=True)


def test_batched_and_dtypes() -> None:
    A = torch.randn(2, 3, 10, 4, dtype=D)
    R = _haar(4, 1, batch=(2, 3))
    res = procrustes(A, A @ R, center=True, scale=True)
    torch.testing.assert_close(res.Q, R)
    assert res.scale.shape == (2, 3) and res.mean_a.shape == (2, 3, 4)
    Ab = A.float().to(torch.bfloat16)
    rb = procrustes(Ab, (A @ R).to(torch.bfloat16))
    assert rb.Q.dtype == torch.bfloat16
    assert (rb.Q.double() - R).abs().max() < 0.05
    r64 = procrustes(A.float(), (A @ R).float(), dtype=torch.float64)
    assert r64.Q.dtype == torch.float32
    assert (r64.Q.double() - R).abs().max() < 1e-6


def test_degenerate_inputs_no_nan() -> None:
    A = torch.ones(5, 3, dtype=D)  # zero variance after centering
    res = procrustes(A, torch.randn(5, 3, dtype=D), center=True, scale=True)
    assert torch.isfinite(res.Q).all() and float(res.scale) == 0.0
    torch.testing.assert_close(res.Q.T @ res.Q, torch.eye(3, dtype=D))
    z = procrustes(torch.zeros(4, 2, dtype=D), torch.zeros(4, 2, dtype=D), rotation_only=True)
    assert torch.isfinite(z.Q).all()


def test_errors() -> None:
    with pytest.raises(ValueError, match="same leading shape"):
        procrustes(torch.randn(5, 3), torch.randn(6, 3))
    bad = torch.randn(5, 3)
    bad[2, 1] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        procrustes(bad, torch.randn(5, 3))
    with pytest.raises(ValueError, match="floating"):
        procrustes(torch.ones(5, 3, dtype=torch.int32), torch.randn(5, 3))
    with pytest.raises(TypeError, match="dtype"):
        procrustes(torch.randn(5, 3), torch.randn(5, 3), dtype="float64")  # type: ignore[arg-type]


def test_gradcheck() -> None:
    A = torch.randn(8, 3, dtype=D, requires_grad=True)
    B = torch.randn(8, 3, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: procrustes(a, b, center=True, scale=True).Q, (A, B))
    assert torch.autograd.gradcheck(lambda a, b: procrustes(a, b, rotation_only=True).Q, (A, B))


@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 6),
    N=st.integers(1, 20),
    rot=st.booleans(),
    dtype=st.sampled_from([torch.float32, D]),
)
def test_property_orthogonal_output(seed: int, n: int, N: int, rot: bool, dtype: torch.dtype) -> None:
    torch.manual_seed(seed)
    A = torch.randn(N, n, dtype=dtype)
    B = torch.randn(N, n, dtype=dtype)
    res = procrustes(A, B, rotation_only=rot, center=True, scale=True)
    tol = 1e-10 if dtype == D else 1e-4
    assert (res.Q.mT @ res.Q - torch.eye(n, dtype=dtype)).abs().max() < tol
    if rot:
        assert abs(float(torch.linalg.det(res.Q.double())) - 1.0) < tol
    if not rot:  # Σσ_i >= 0; with the Kabsch flip tr(ΣD) (hence the Umeyama scale) may be negative
        assert float(res.scale) >= -tol
    assert torch.isfinite(res.scale).all()
