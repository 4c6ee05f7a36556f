"""Orthogonal Procrustes (Schönemann 1966), Kabsch rotation (det = +1) and Umeyama similarity alignment."""

from __future__ import annotations

from typing import NamedTuple

import torch

from orthokit.linalg._checks import check_finite, check_matrix, compute_dtype

__all__ = ["procrustes", "ProcrustesResult"]


class ProcrustesResult(NamedTuple):
    """Result of :func:`procrustes`: ``B ≈ (A − mean_a) · scale · Q + mean_b``.

    Attributes:
        Q: ``[..., p, q]`` orthogonal (``p = q``) or semi-orthogonal map.
        scale: ``[...]`` isotropic scale (ones unless ``scale=True``).
        mean_a: ``[..., p]`` row mean of ``A`` (zeros unless ``center=True``).
        mean_b: ``[..., q]`` row mean of ``B`` (zeros unless ``center=True``).
    """

    Q: torch.Tensor
    scale: torch.Tensor
    mean_a: torch.Tensor
    mean_b: torch.Tensor

    def transform(self, X: torch.Tensor) -> torch.Tensor:
        """Apply the fitted map to rows of ``X`` (``[..., N, p]``): ``(X − mean_a) · scale · Q + mean_b``."""
        cd = compute_dtype(torch.promote_types(X.dtype, self.Q.dtype))
        out = (X.to(cd) - self.mean_a.to(cd).unsqueeze(-2)) @ self.Q.to(cd)
        out = out * self.scale.to(cd)[..., None, None] + self.mean_b.to(cd).unsqueeze(-2)
        return out.to(X.dtype)


def procrustes(
    A: torch.Tensor,
    B: torch.Tensor,
    *,
    center: bool = False,
    scale: bool = False,
    rotation_only: bool = False,
    dtype: torch.dtype | None = None,
) -> ProcrustesResult:
    r"""Orthogonal Procrustes: ``Q = argmin_{QᵀQ = I} ‖(A − μ_A)·s·Q − (B − μ_B)‖_F``.

    Rows of ``A`` and ``B`` are corresponding points / samples. With ``M = ÃᵀB̃ = U Σ Vᵀ``
    (``Ã``, ``B̃`` centered when ``center=True``):

    * Schönemann (1966): ``Q = U Vᵀ`` (the orthogonal polar factor of ``M``), any ``det``.
    * Kabsch (1976) / ``rotation_only=True``: ``Q = U diag(1, …, 1, d) Vᵀ`` with
      ``d = sign det(U Vᵀ)``, the best *rotation* (``det Q = +1``) — the last singular vector is
      flipped when the unconstrained optimum is a reflection.
    * Umeyama (1991) / ``scale=True``: ``s = tr(Σ D) / ‖Ã‖_F²`` (``D`` the sign matrix above),
      the optimal isotropic scale; ``s = 0`` when ``Ã = 0``.

    ``A`` and ``B`` may have different widths (``p ≠ q``): ``Q = U Vᵀ`` is then the ``p×q``
    semi-orthogonal solution (orthonormal columns if ``p ≥ q``); ``rotation_only`` needs ``p = q``.
    When ``M`` is rank-deficient the minimizer is not unique and one minimizer is returned.
    The SVD runs in ``dtype`` (default: input dtype promoted to ≥ float32; pass ``torch.float64``
    for ill-conditioned ``M``); all outputs are returned in the promoted input dtype.
    Differentiable through the SVD when the singular values of ``M`` are distinct and non-zero.

    Args:
        A: ``[..., N, p]`` source points (rows), finite.
        B: ``[..., N, q]`` target points, same leading shape and ``N`` as ``A``.
        center: subtract row means first (translation-invariant fit).
        scale: also fit an isotropic scale ``s``.
        rotation_only: force ``det Q = +1`` (Kabsch); requires ``p = q``.
        dtype: computation dtype for the SVD.

    Returns:
        :class:`ProcrustesResult` ``(Q, scale, mean_a, mean_b)``.

    Example:
        >>> A = torch.randn(50, 3, dtype=torch.float64)
        >>> R = torch.linalg.matrix_exp(torch.tensor([[0., -1, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.float64))
        >>> res = procrustes(A, 2.0 * A @ R + 1.0, center=True, scale=True, rotation_only=True)
        >>> bool(torch.allclose(res.Q, R)), round(float(res.scale), 6)
        (True, 2.0)
    """
    check_matrix(A, "A")
    check_matrix(B, "B")
    if A.shape[:-1] != B.shape[:-1]:
        raise ValueError(
            f"A and B must have the same leading shape and number of rows N; got {tuple(A.shape)} and {tuple(B.shape)}"
        )
    p, q = A.shape[-1], B.shape[-1]
    if rotation_only and p != q:
        raise ValueError(f"rotation_only=True needs square Q (A and B of equal width), got p={p}, q={q}")
    check_finite(A, "A")
    check_finite(B, "B")
    out_dtype = torch.promote_types(A.dtype, B.dtype)
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype or None, got {dtype!r}")
    cd = compute_dtype(out_dtype if dtype is None else dtype)

    a = A.to(cd)
    b = B.to(cd)
    if center:
        mean_a = a.mean(dim=-2)
        mean_b = b.mean(dim=-2)
        a = a - mean_a.unsqueeze(-2)
        b = b - mean_b.unsqueeze(-2)
    else:
        mean_a = torch.zeros(a.shape[:-2] + (p,), dtype=cd, device=a.device)
        mean_b = torch.zeros(b.shape[:-2] + (q,), dtype=cd, device=b.device)

    m = a.mT @ b  # [..., p, q]
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    if rotation_only:
        det = torch.linalg.det(u @ vh)
        d = torch.ones_like(s)
        d[..., -1] = torch.where(det < 0, -1.0, 1.0).to(cd)
        d = d.detach()
        qmat = (u * d.unsqueeze(-2)) @ vh
        trace = (s * d).sum(-1)
    else:
        qmat = u @ vh
        trace = s.sum(-1)

    if scale:
        denom = (a * a).sum(dim=(-2, -1))
        safe = torch.where(denom > 0, denom, torch.ones_like(denom))
        s_fit = torch.where(denom > 0, trace / safe, torch.zeros_like(denom))
    else:
        s_fit = torch.ones(a.shape[:-2], dtype=cd, device=a.device)

    return ProcrustesResult(
        qmat.to(out_dtype), s_fit.to(out_dtype), mean_a.to(out_dtype), mean_b.to(out_dtype)
    )
