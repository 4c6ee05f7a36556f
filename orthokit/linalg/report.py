"""Orthogonality diagnostics: how close is ``X`` to a semi-orthogonal matrix / to the polar factor of ``G``?"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from orthokit.linalg._checks import check_finite, check_matrix

__all__ = ["OrthogonalityReport", "orthogonality_report"]


@dataclass(frozen=True)
class OrthogonalityReport:
    """Worst case over the batch (Python floats) plus per-matrix tensors (shape = the batch shape).

    Fields:
        sigma_min, sigma_max: extreme singular values of ``X`` (the ``min(m, n)`` of them); 1 and 1 for a
            semi-orthogonal ``X``. Worst case = min of minima / max of maxima.
        rel_error: ``‖X − P‖_F / ‖P‖_F`` with ``P = U Vᵀ`` the exact polar factor of ``G`` (max over the batch;
            ``None`` without ``G``).
        alignment: energy-weighted alignment ``⟨X, P⟩ / ‖P‖_F²`` = mean of the diagonal of ``Uᵀ X V`` — 1 for
            ``X = P``; the mean fraction of each polar direction that ``X`` carries (worst case = the batch entry
            farthest from 1; ``None`` without ``G``).
        per_sigma_min, per_sigma_max, per_rel_error, per_alignment: float64 per-matrix tensors.
        rank: numerical rank of ``G`` used for ``P`` (max over the batch; ``None`` without ``G``).
    """

    sigma_min: float
    sigma_max: float
    rel_error: float | None
    alignment: float | None
    per_sigma_min: torch.Tensor
    per_sigma_max: torch.Tensor
    per_rel_error: torch.Tensor | None
    per_alignment: torch.Tensor | None
    rank: int | None = None

    def as_dict(self) -> dict[str, float | int | None]:
        """The scalar (worst-case) fields, e.g. for a JSON benchmark record."""
        return {
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
            "rel_error": self.rel_error,
            "alignment": self.alignment,
            "rank": self.rank,
        }


def orthogonality_report(X: torch.Tensor, G: torch.Tensor | None = None) -> OrthogonalityReport:
    """Singular-value range of ``X`` and (with ``G``) its distance and alignment to the polar factor of ``G``.

    Math: with ``σ(X)`` the singular values of ``X`` and ``G = U Σ Vᵀ`` (reduced SVD, float64),
    ``P = U_r V_rᵀ`` over the numerically nonzero ``σ(G)`` (``σ > max(m,n)·eps·σ_max``; for full-rank ``G``
    the polar factor), the report holds ``σ_min(X), σ_max(X)``, ``rel_error = ‖X − P‖_F/‖P‖_F`` and
    ``alignment = ⟨X, P⟩/‖P‖_F²``. Whole-matrix ``rel_error`` is dominated by directions whose normalized σ is
    below what the iteration can lift (Polar Express: ``ℓ = 1e-3``), so the alignment — weighted by the
    energy of ``P`` uniformly over directions — and the σ-range are the primary diagnostics.

    Args:
        X: ``[..., m, n]`` candidate (semi-)orthogonal matrix (any float dtype; analysed in float64).
        G: optional ``[..., m, n]`` matrix whose polar factor ``X`` approximates (same shape as ``X``).

    Returns:
        :class:`OrthogonalityReport` (worst case over leading batch dims + per-matrix tensors).

    Raises:
        ValueError: non-finite input or shape mismatch.

    Example:
        >>> import orthokit
        >>> G = torch.randn(64, 128)
        >>> r = orthogonality_report(orthokit.polar(G), G)
        >>> 0.85 < r.sigma_min <= r.sigma_max < 1.15 and r.rel_error < 0.2
        True

    Reference: Amsel et al., arXiv:2505.16932 (2025) (σ-range and polar error as the accuracy measures).
    """
    check_matrix(X, "X")
    check_finite(X, "X")
    ed = torch.float32 if X.device.type == "mps" else torch.float64
    Xd = X.detach().to(ed)
    sx = torch.linalg.svdvals(Xd)
    per_min = sx.amin(dim=-1)
    per_max = sx.amax(dim=-1)
    rel = align = None
    rank: int | None = None
    if G is not None:
        check_matrix(G, "G")
        check_finite(G, "G")
        if G.shape != X.shape:
            raise ValueError(f"X and G must have the same shape, got {tuple(X.shape)} and {tuple(G.shape)}")
        Gd = G.detach().to(device=X.device, dtype=ed)
        U, S, Vh = torch.linalg.svd(Gd, full_matrices=False)
        m, n = G.shape[-2], G.shape[-1]
        tol = S.amax(dim=-1, keepdim=True) * (max(m, n) * torch.finfo(ed).eps)
        mask = (S > tol).to(ed)
        P = (U * mask.unsqueeze(-2)) @ Vh
        pn2 = mask.sum(dim=-1)  # ‖P‖_F² = rank
        safe = pn2.clamp_min(1.0)
        rel = torch.linalg.vector_norm(Xd - P, dim=(-2, -1)) / safe.sqrt()
        align = (Xd * P).sum(dim=(-2, -1)) / safe
        zero = pn2 == 0  # G = 0: P = 0; report the absolute error and alignment 1 iff X = 0 too
        if bool(zero.any()):
            xn = torch.linalg.vector_norm(Xd, dim=(-2, -1))
            rel = torch.where(zero, xn, rel)
            align = torch.where(zero, (xn == 0).to(ed), align)
        rank = int(pn2.max())
    return OrthogonalityReport(
        sigma_min=float(per_min.min()),
        sigma_max=float(per_max.max()),
        rel_error=None if rel is None else float(rel.max()),
        alignment=None if align is None else float(align.flatten()[(align - 1.0).abs().argmax()]),
        per_sigma_min=per_min,
        per_sigma_max=per_max,
        per_rel_error=rel,
        per_alignment=align,
        rank=rank,
    )
