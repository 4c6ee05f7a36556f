"""Orthonormal column bases by reduced QR with a unique sign convention (diag(R) > 0)."""

from __future__ import annotations

import torch

from orthokit.linalg._checks import check_finite, check_matrix, compute_dtype

__all__ = ["qr_basis"]


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
