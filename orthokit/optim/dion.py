"""Dion — distributed orthonormalized updates with low-rank power iteration and error feedback
(Ahn et al. 2025, arXiv:2504.05295; reference code github.com/microsoft/dion ``dion_simple.py``).

Per matrix ``W ∈ R^{m×n}`` (rank ``r ≤ min(m, n)``; ``Q ∈ R^{n×r}`` is the warm start)::

    B ← M + G                                        (momentum buffer, accumulates without decay)
    P ← orthonormalize(B Q)                          (one power-iteration step + QR, m×r)
    R ← Bᵀ P                                         (n×r)
    M ← B − (1−μ) P Rᵀ                               (error feedback: only the captured part decays)
    Q ← R / ‖R_{:,j}‖                                (column normalization, next warm start)
    W ← (1 − ηλ)W − η·sqrt(m/n)·P Qᵀ                 (rank-r orthonormal-ish update, "spectral_norm" scale)

``P Qᵀ`` has singular values ``≤ 1`` and is invariant to QR sign conventions. Where ``n > m`` the
computation runs on the transpose so that ``Q`` lives on the smaller side (as the reference code does);
the shape factor always uses the original ``(m, n) = (fan_out, fan_in)``. With ``r = min(m, n)`` and a
well-conditioned ``B`` the update approaches Muon's polar factor. The reference code uses a randomized
Cholesky-QR for tall ``P`` (a GPU speed trick); we use Householder QR (exact, fine on CPU).
"""

from __future__ import annotations

import math

import torch

__all__ = ["dion_rank", "dion_init_q", "dion_step"]


def dion_rank(shape: torch.Size | tuple[int, ...], rank: int | float) -> int:
    """Dion's rank for a ``[..., m, n]`` matrix: an ``int`` (clipped to ``min(m, n)``) or a fraction in (0, 1]
    of ``min(m, n)`` (rounded up).

    Example:
        >>> dion_rank((3072, 768), 0.25), dion_rank((64, 32), 100)
        (192, 32)
    """
    if isinstance(rank, bool) or not isinstance(rank, (int, float)):
        raise TypeError(f"rank must be an int or a float fraction, got {type(rank).__name__}")
    k = min(shape[-2], shape[-1])
    if isinstance(rank, float):
        if not 0.0 < rank <= 1.0:
            raise ValueError(f"a fractional Dion rank must be in (0, 1], got {rank}")
        return max(1, min(k, math.ceil(rank * k)))
    if rank < 1:
        raise ValueError(f"Dion rank must be >= 1, got {rank}")
    return min(k, rank)


def dion_init_q(
    shape: torch.Size | tuple[int, ...],
    rank: int,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Deterministic warm start ``Q ∈ R^{[..., s, r]}`` (``s = min(m, n)``) with orthonormal columns.

    Seeded per call (``seed``) so the batched and per-parameter paths, and restarts, agree bit-for-bit.

    Example:
        >>> dion_init_q((64, 32), 8).shape
        torch.Size([32, 8])
    """
    *lead, m, n = tuple(shape)
    s = min(m, n)
    g = torch.Generator().manual_seed(int(seed))
    q = torch.randn(*lead, s, rank, generator=g, dtype=torch.float64)
    q = torch.linalg.qr(q).Q
    return q.to(dtype=dtype, device=device)


def dion_step(
    m: torch.Tensor, q: torch.Tensor, mu: float, eps: float = 1e-8
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""One Dion step on the momentum ``M`` (**already** ``M + G``); updates ``M`` in place (error feedback).

    .. math::
        P = \mathrm{orth}(MQ),\ R = M^\top P,\ M \leftarrow M - (1-\mu)PR^\top,\
        Q' = R\,\mathrm{diag}(\|R_{:,j}\|+\epsilon)^{-1},\ \Delta = P Q'^\top

    Args:
        m: momentum ``[..., m, n]`` (float32/float64), modified in place.
        q: warm start ``[..., s, r]`` with ``s = min(m, n)`` (transposed problem when ``n > m``).
        mu: momentum coefficient ``μ`` in [0, 1).
        eps: column-normalization stabilizer.

    Returns:
        ``(delta, q_new)``: the rank-``r`` update ``[..., m, n]`` (spectral norm ≤ 1, no shape factor) and the
        next warm start.

    Example:
        >>> M = torch.randn(40, 20); q = dion_init_q(M.shape, 20)
        >>> d, q2 = dion_step(M.clone(), q, mu=0.95)
        >>> float(torch.linalg.matrix_norm(d, ord=2)) <= 1 + 1e-5
        True

    Ref: arXiv:2504.05295, Algorithm 1.
    """
    if not 0.0 <= mu < 1.0:
        raise ValueError(f"mu must be in [0, 1), got {mu}")
    transpose = m.shape[-1] > m.shape[-2]
    b = m.mT if transpose else m  # tall view [.., big, small]; in-place ops reach m
    if q.shape[-2] != b.shape[-1]:
        raise ValueError(f"Dion warm start has shape {tuple(q.shape)}, expected [..., {b.shape[-1]}, r]")
    qw = q.to(b.dtype)
    p = torch.linalg.qr(b @ qw).Q  # [.., big, r]
    r = b.mT @ p  # [.., small, r]
    b.sub_(p @ r.mT, alpha=1.0 - mu)
    q_new = r / (torch.linalg.vector_norm(r, dim=-2, keepdim=True) + eps)
    delta = p @ q_new.mT
    delta = delta.mT if transpose else delta
    return delta, q_new.to(q.dtype)
