"""Tests for orthokit.linalg.qr_basis: reduced QR with positive diag(R), float64 references."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from orthokit.linalg import qr_basis

D = torch.float64


def _gram_schmidt_reference(A: torch.Tensor) -> torch.Tensor:
    """Modified Gram–Schmidt in float64 (gives diag(R) > 0 by construction)."""
    A = A.double().clone()
    m, n = A.shape
    Q = torch.zeros(m, n, dtype=D)
    for j in range(n):
        v = A[:, j].clone()
        for i in range(j):
            v -= (Q[:, i] @ v) * Q[:, i]
        Q[:, j] = v / v.norm()
    return Q


def test_matches_gram_schmidt_and_reconstructs() -> None:
    A = torch.randn(9, 5, dtype=D)
    Q, R = qr_basis(A, return_r=True)
    torch.testing.assert_close(Q, _gram_schmidt_reference(A))
    torch.testing.assert_close(Q @ R, A)
    assert (torch.diagonal(R) > 0).all()
    torch.testing.assert_close(R, R.triu())


def test_unique_under_sign_flips_of_lapack() -> None:
    A = torch.randn(6, 4, dtype=D)
    # negating a column negates the corresponding column of Q (still diag(R) > 0)
    s = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=D)
    torch.testing.assert_close(qr_basis(A * s), qr_basis(A) * s)


def test_batched_wide_and_dtypes() -> None:
    A = torch.randn(2, 3, 7, 4, dtype=D)
    Q = qr_basis(A)
    assert Q.shape == (2, 3, 7, 4)
    torch.testing.assert_close(Q.mT @ Q, torch.eye(4, dtype=D).expand(2, 3, 4, 4))
    W = torch.randn(3, 8, dtype=D)
    Qw, Rw = qr_basis(W, return_r=True)
    assert Qw.shape == (3, 3) and Rw.shape == (3, 8)
    torch.testing.assert_close(Qw @ Rw, W)
    Ab = torch.randn(16, 4).to(torch.bfloat16)
    Qb = qr_basis(Ab)
    assert Qb.dtype == torch.bfloat16
    ref = _gram_schmidt_reference(Ab.double())
    assert (Qb.double() - ref).abs().max() < 2e-2


def test_ill_conditioned_columns() -> None:
    # columns with condition number ~1e12: float64 QR stays orthonormal (Householder, unlike CGS)
    U = torch.linalg.qr(torch.randn(50, 6, dtype=D)).Q
    A = U @ torch.diag(torch.logspace(0, -12, 6, dtype=D)) @ torch.linalg.qr(torch.randn(6, 6, dtype=D)).Q
    Q = qr_basis(A)
    assert (Q.T @ Q - torch.eye(6, dtype=D)).abs().max() < 1e-13
    assert torch.isfinite(Q).all()


def test_errors() -> None:
    with pytest.raises(ValueError, match="non-finite"):
        qr_basis(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="floating"):
        qr_basis(torch.ones(3, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="at least 2 dims"):
        qr_basis(torch.ones(3))
    with pytest.raises(TypeError):
        qr_basis([[1.0]])  # type: ignore[arg-type]


def test_gradcheck() -> None:
    A = torch.randn(5, 3, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(qr_basis, (A,))


@given(
    seed=st.integers(0, 2**31 - 1),
    m=st.integers(1, 20),
    n=st.integers(1, 20),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_property_orthonormal_positive_r(seed: int, m: int, n: int, dtype: torch.dtype) -> None:
    torch.manual_seed(seed)
    A = torch.randn(m, n, dtype=dtype)
    Q, R = qr_basis(A, return_r=True)
    k = min(m, n)
    assert Q.shape == (m, k) and Q.dtype == dtype
    tol = 1e-12 if dtype == D else 1e-5
    assert (Q.mT @ Q - torch.eye(k, dtype=dtype)).abs().max() < tol
    assert (torch.diagonal(R) >= 0).all()
    assert (Q @ R - A).abs().max() < tol * 10 * max(1.0, float(A.abs().max()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cholesky_qr2_matches_unique_qr(dtype: torch.dtype) -> None:
    from orthokit.linalg import cholesky_qr2

    g = torch.Generator().manual_seed(0)
    A = torch.randn(3, 400, 30, generator=g, dtype=torch.float64)
    A[1] = A[1] @ torch.diag(torch.logspace(0, -2.5, 30, dtype=torch.float64))  # κ ≈ 3e2·κ(gaussian)
    Q, R = cholesky_qr2(A.to(dtype), return_r=True)
    Q64, R64 = qr_basis(A, return_r=True)
    tol = 5e-4 if dtype == torch.float32 else 1e-10
    eye = torch.eye(30, dtype=torch.float64)
    assert Q.dtype == dtype and Q.shape == A.shape
    assert (Q.double().mT @ Q.double() - eye).abs().max() < (2e-5 if dtype == torch.float32 else 1e-13)
    assert (Q.double() - Q64).abs().max() < tol
    assert (Q.double() @ R.double() - A).abs().max() < tol * A.abs().max()
    assert (torch.diagonal(R, dim1=-2, dim2=-1) > 0).all()


def test_cholesky_qr2_falls_back_on_rank_deficient_and_ill_conditioned() -> None:
    from orthokit.linalg import cholesky_qr2

    g = torch.Generator().manual_seed(1)
    good = torch.randn(200, 16, generator=g)
    lowrank = torch.randn(200, 4, generator=g) @ torch.randn(4, 16, generator=g)  # rank 4 < 16
    illcond = good @ torch.diag(torch.logspace(0, -6, 16))  # κ ≈ 1e6 > u^{-1/2} in fp32
    A = torch.stack([good, lowrank, illcond])
    Q = cholesky_qr2(A)
    eye = torch.eye(16)
    for i in range(3):
        assert torch.isfinite(Q[i]).all()
        assert (Q[i].mT @ Q[i] - eye).abs().max() < 1e-5, i
    # the good entry is untouched by the others' fallback; the fallback is qr_basis itself
    torch.testing.assert_close(Q[0], cholesky_qr2(good))
    torch.testing.assert_close(Q[1], qr_basis(lowrank), atol=0, rtol=0)
    # spans: the well-determined leading directions of the ill-conditioned entry are kept
    Qref = qr_basis(illcond.double())
    assert (Q[2].double()[:, :4] - Qref[:, :4]).abs().max() < 1e-3
    with pytest.raises(ValueError, match="tall"):
        cholesky_qr2(torch.randn(4, 8))
    with pytest.raises(ValueError, match="non-finite"):
        cholesky_qr2(torch.full((8, 4), float("nan")))


def test_cholesky_qr2_uses_householder_only_where_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    from orthokit.linalg import cholesky_qr2

    calls: list[int] = []
    real = torch.linalg.qr
    monkeypatch.setattr(torch.linalg, "qr", lambda A, *a, **k: calls.append(A.shape[0]) or real(A, *a, **k))
    g = torch.Generator().manual_seed(2)
    A = torch.randn(5, 300, 24, generator=g)
    cholesky_qr2(A)
    assert calls == []  # well-conditioned: Cholesky route only
    A[3] = 0.0
    Q = cholesky_qr2(A)
    assert calls == [1]  # only the zero entry fell back
    assert (Q[3].mT @ Q[3] - torch.eye(24)).abs().max() < 1e-5
    # κ ≈ 1e4 in fp32: the first Cholesky succeeds but ‖Q₁ᵀQ₁ − I‖_F ≈ 1.1 > 1/2 → Householder for that entry
    g64 = torch.Generator().manual_seed(1)
    U = torch.linalg.qr(torch.randn(200, 16, generator=g64, dtype=torch.float64)).Q
    V = torch.linalg.qr(torch.randn(16, 16, generator=g64, dtype=torch.float64)).Q
    B = (U @ torch.diag(torch.logspace(0, -4, 16, dtype=torch.float64)) @ V).float()
    L, info = torch.linalg.cholesky_ex(B.mT @ B)
    assert int(info) == 0  # the case the orthogonality test (not the Cholesky failure) must catch
    calls.clear()
    Qb = cholesky_qr2(torch.stack([torch.randn(200, 16, generator=g), B]))
    assert calls == [1]
    torch.testing.assert_close(Qb[1], qr_basis(B), atol=0, rtol=0)
