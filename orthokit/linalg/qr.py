"""Orthonormal column bases by reduced QR with a unique sign convention (diag(R) > 0)."""

from __future__ import annotations

import torch

from orthokit.linalg._checks import check_finite, check_matrix, compute_dtype

__all__ = ["qr_basis", "cholesky_qr2"]


def _sign_fix(q: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip columns of ``q`` / rows of ``r`` so that ``diag(r) >= 0`` (zeros count as positive)."""
    d = torch.diagonal(r, dim1=-2, dim2=-1)
    s = torch.where(d < 0, -torch.ones_like(d), torch.ones_like(d)).detach()
    return q * s.unsqueeze(-2), r * s.unsqueeze(-1)


def qr_basis(A: torch.Tensor, *, return_r: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    r"""Orthonormal basis of the column space of ``A`` from a reduced QR with ``diag(R) > 0``.

    For a full-column-rank ``A ∈ R^{m×n}`` (``m ≥ n``) the factorization ``A = Q R`` with
    ``QᵀQ = I_n`` and ``R`` upper triangular with **positive** diagonal is unique; this function
    returns that ``Q`` (Householder QR from LAPACK, then column signs flipped so ``R_ii > 0``).
    Uniqueness makes the output deterministic across backends and a continuous function of ``A``,
    which matters for reproducible bases and for autograd (Golub & Van Loan, *Matrix Computations*,
    4th ed., Thm. 5.2.3). For ``m < n`` the basis has ``m`` columns (``Q`` is square orthogonal).

    The factorization is computed in at least float32 (bf16/fp16 inputs are promoted) and ``Q`` is
    returned in the input dtype. Differentiable (``torch.linalg.qr`` backward) when ``m ≥ n``.

    Args:
        A: ``[..., m, n]`` real floating tensor, batched over leading dims, finite.
        return_r: also return the sign-fixed ``R`` (``[..., min(m,n), n]``), so that ``A ≈ Q @ R``.

    Returns:
        ``Q`` of shape ``[..., m, min(m, n)]`` (and ``R`` when ``return_r``).

    Raises:
        TypeError / ValueError: non-tensor, complex/integer, fewer than 2 dims, empty or non-finite.

    Example:
        >>> A = torch.randn(5, 3, dtype=torch.float64)
        >>> Q, R = qr_basis(A, return_r=True)
        >>> bool(torch.allclose(Q.T @ Q, torch.eye(3, dtype=torch.float64)))
        True
        >>> bool((torch.diagonal(R) > 0).all()) and bool(torch.allclose(Q @ R, A))
        True
    """
    check_matrix(A, "A")
    check_finite(A, "A")
    cd = compute_dtype(A.dtype)
    q, r = torch.linalg.qr(A.to(cd), mode="reduced")
    q, r = _sign_fix(q, r)
    if return_r:
        return q.to(A.dtype), r.to(A.dtype)
    return q.to(A.dtype)


def cholesky_qr2(
    A: torch.Tensor, *, return_r: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    r"""Orthonormal basis of a tall ``A`` by CholeskyQR2, with Householder QR where it would be inaccurate.

    One CholeskyQR pass: ``AᵀA = LLᵀ`` (Cholesky), ``R₁ = Lᵀ``, ``Q₁ = A R₁⁻¹`` (triangular solve). Its loss of
    orthogonality is ``O(u·κ(A)²)``; a second pass on ``Q₁`` removes it, giving ``‖QᵀQ − I‖ = O(u)`` whenever
    ``κ(A) ≲ u^{-1/2}`` (Yamamoto, Nakatsukasa, Yanagisawa, Fukaya, *ETNA* 44, 2015). The second pass's Gram
    ``Q₁ᵀQ₁`` measures the first pass's error for free: where the Cholesky fails or ``‖Q₁ᵀQ₁ − I‖_F > 1/2``
    (κ(A) too large, e.g. rank-deficient input) that batch entry falls back to :func:`qr_basis`. Both routes
    return the unique ``Q`` whose ``R`` has a positive diagonal, so the result does not depend on the route
    (up to rounding). Cost: two Gram matrices and two triangular solves (``4mn²`` flops, all BLAS-3) instead of
    Householder's panel factorization — 0.46× the time of ``torch.linalg.qr`` for 3072×192 (7.3 vs 16.8 ms,
    2 threads, 7 interleaved rounds). Used by
    :class:`~orthokit.optim.Dion` for its power-iteration step (the reference code uses a randomized
    Cholesky-QR for the same reason).

    Args:
        A: ``[..., m, n]`` with ``m ≥ n``, real floating, finite; computed in at least float32.
        return_r: also return ``R`` (``[..., n, n]``, upper triangular, positive diagonal) with ``A ≈ QR``.

    Returns:
        ``Q`` ``[..., m, n]`` in ``A``'s dtype (and ``R``).

    Raises:
        TypeError / ValueError: as :func:`qr_basis`; ``ValueError`` when ``m < n``.

    Example:
        >>> A = torch.randn(300, 20, dtype=torch.float64)
        >>> Q = cholesky_qr2(A)
        >>> bool(torch.allclose(Q, qr_basis(A)))
        True
    """
    check_matrix(A, "A")
    check_finite(A, "A")
    m, n = A.shape[-2], A.shape[-1]
    if m < n:
        raise ValueError(f"cholesky_qr2 needs a tall matrix (m >= n), got shape {tuple(A.shape)}")
    cd = compute_dtype(A.dtype)
    a = A.to(cd)
    eye = torch.eye(n, dtype=cd, device=a.device)
    L1, info1 = torch.linalg.cholesky_ex(a.mT @ a)
    q1 = torch.linalg.solve_triangular(L1.mT, a, upper=True, left=False)
    G2 = q1.mT @ q1
    bad = (info1 != 0) | ~(torch.linalg.matrix_norm(G2 - eye) <= 0.5)  # NaN-safe: NaN → bad
    L2, info2 = torch.linalg.cholesky_ex(torch.where(bad[..., None, None], eye, G2))
    bad = bad | (info2 != 0)
    q = torch.linalg.solve_triangular(L2.mT, q1, upper=True, left=False)
    r = L2.mT @ L1.mT if return_r else None
    if bool(bad.any()):
        flat_bad = bad.reshape(-1)
        qf, af = q.reshape(-1, m, n).clone(), a.reshape(-1, m, n)
        idx = torch.nonzero(flat_bad).flatten()
        qh, rh = torch.linalg.qr(af[idx], mode="reduced")
        qh, rh = _sign_fix(qh, rh)
        qf[idx] = qh
        q = qf.reshape(q.shape)
        if r is not None:
            rf = r.reshape(-1, n, n).clone()
            rf[idx] = rh
            r = rf.reshape(r.shape)
    if return_r:
        return q.to(A.dtype), r.to(A.dtype)  # type: ignore[union-attr]
    return q.to(A.dtype)
