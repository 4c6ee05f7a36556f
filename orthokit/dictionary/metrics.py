r"""Dictionary-recovery metrics and the planted (synthetic) data model.

A complete dictionary is identifiable only up to a signed permutation of its atoms, so recovery is measured per
atom: for every true atom ``d_j`` the best-matching learned atom gives ``c_j = max_i |⟨d̂_i, d_j⟩|``; the
**max atom angle** is ``max_j arccos c_j`` (the largest principal angle between the 1-D spans of matched atoms) and
the **column-match error** is ``max_j (1 − c_j)``. (Principal angles between the whole spans are all zero for two
complete bases, so they say nothing here.) For an orthogonal ``D̂`` every ``c_j > cos 45°`` forces a one-to-one
matching, so no assignment solver is needed.

Planted model (Zhai et al. 2020, arXiv 1906.02435, Sec. 1.2; Xue & Lau, arXiv 2103.01484, Sec. VI):
``Y = D₀ X`` with ``D₀`` Haar-orthogonal and ``X_ij = Ω_ij · G_ij``, ``Ω ~ Bernoulli(θ)``, ``G ~ N(0, 1)``.

Example:
    >>> import torch
    >>> from orthokit.dictionary.metrics import atom_recovery, planted_data
    >>> Y, D0 = planted_data(8, 100, theta=0.3, seed=0)
    >>> P = D0[:, torch.randperm(8)] * torch.tensor([1.0, -1.0] * 4, dtype=torch.float64)
    >>> r = atom_recovery(P, D0)                     # a signed permutation is a perfect recovery
    >>> r["max_angle_deg"] < 1e-5, r["column_match_error"] < 1e-12
    (True, True)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["atom_recovery", "planted_data"]


def atom_recovery(D_hat: Tensor, D_true: Tensor) -> dict[str, float]:
    """Signed-permutation-invariant recovery of ``D_true`` ``[d, k]`` by ``D_hat`` ``[d, d]`` (columns are atoms).

    Returns:
        ``{"max_angle_deg", "mean_angle_deg", "column_match_error"}`` (see the module docstring); columns of both
        are normalized first.

    Raises:
        TypeError: a non-tensor or non-real argument. ValueError: NaN/inf entries, or shapes that do not fit.
    """
    for name, M in (("D_hat", D_hat), ("D_true", D_true)):
        if not isinstance(M, Tensor):
            raise TypeError(
                f"{name} must be a torch.Tensor [d, k] (columns are atoms), got {type(M).__name__}"
            )
        if M.is_complex() or M.dtype == torch.bool:
            raise TypeError(f"{name} must be a real tensor, got dtype {M.dtype}")
        if M.numel() and not bool(torch.isfinite(M).all()):
            raise ValueError(f"{name} contains NaN or inf")
    if D_hat.ndim != 2 or D_true.ndim != 2 or D_hat.shape[0] != D_true.shape[0]:
        raise ValueError(
            f"D_hat and D_true must be [d, *] with the same d, got {tuple(D_hat.shape)}, {tuple(D_true.shape)}"
        )
    A = D_hat.to(torch.float64)
    B = D_true.to(torch.float64)
    A = A / A.norm(dim=0, keepdim=True).clamp_min(1e-300)
    B = B / B.norm(dim=0, keepdim=True).clamp_min(1e-300)
    M = A.T @ B
    idx = M.abs().argmax(dim=0)
    c = M.abs().gather(0, idx[None]).squeeze(0).clamp(0.0, 1.0)
    # arccos loses precision near 1: the sine is the norm of b_j's residual off its matched atom
    Am = A[:, idx]
    sin = (B - Am * (Am * B).sum(0, keepdim=True)).norm(dim=0)
    ang = torch.atan2(sin, c)
    return {
        "max_angle_deg": float(ang.max()) * 180.0 / math.pi,
        "mean_angle_deg": float(ang.mean()) * 180.0 / math.pi,
        "column_match_error": float((1 - c).max()),
    }


def planted_data(
    d: int, n: int, *, theta: float = 0.1, seed: int = 0, dtype: torch.dtype = torch.float64
) -> tuple[Tensor, Tensor]:
    """``(Y [d, n], D₀ [d, d])`` from the Bernoulli–Gaussian planted model with sparsity rate ``theta``."""
    from orthokit.dictionary._common import check_dim, check_seed, haar_orthogonal

    check_dim(d)
    seed = check_seed(seed, allow_none=False)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if isinstance(theta, bool) or not isinstance(theta, (int, float)):
        raise TypeError(f"theta must be a float in (0, 1], got {type(theta).__name__}")
    if not (0.0 < theta <= 1.0):
        raise ValueError(f"theta must lie in (0, 1], got {theta}")
    g = torch.Generator().manual_seed(seed)
    D0 = haar_orthogonal(d, seed=seed + 7919, dtype=torch.float64)
    X = (torch.rand(d, n, generator=g, dtype=torch.float64) < theta) * torch.randn(
        d, n, generator=g, dtype=torch.float64
    )
    return (D0 @ X).to(dtype), D0.to(dtype)
