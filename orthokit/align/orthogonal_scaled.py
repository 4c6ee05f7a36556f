r"""``orthogonal_scaled``: Umeyama similarity alignment — ``T(x) = s·(x − μ_s) Q + μ_t``.

Umeyama (1991), "Least-squares estimation of transformation parameters between two point patterns": the
Procrustes rotation ``Q = U D Vᵀ`` of ``X̃ᵀỸ = U Σ Vᵀ`` plus the optimal isotropic scale
``s = tr(Σ D) / ‖X̃‖_F²`` (``D`` = identity, or the Kabsch sign fix with ``rotation_only=True``), computed by
:func:`orthokit.linalg.procrustes` with ``scale=True``. Pairwise distances are multiplied by exactly ``s``;
cosine similarities between centered rows are preserved. Needs ``d_s ≤ d_t``: a wider source is refused with
a ``ValueError`` (no similarity into a narrower space; use ``affine`` or reduce the source first).

Example:
    >>> import torch
    >>> from orthokit.align.orthogonal_scaled import fit_orthogonal_scaled
    >>> X = torch.randn(200, 3, dtype=torch.float64)
    >>> Q = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))[0]
    >>> a = fit_orthogonal_scaled(X, 0.5 * X @ Q - 1.0)
    >>> round(a.scale, 9), a.distortion(X, up_to_scale=True) < 1e-12
    (0.5, True)
"""

from __future__ import annotations

import torch
from torch import Tensor

from orthokit.align._aligner import Aligner, check_narrow_source, check_pair, resolve_dtype
from orthokit.align.registry import ALIGNERS
from orthokit.linalg import procrustes

__all__ = ["fit_orthogonal_scaled"]


@ALIGNERS.register("orthogonal_scaled", aliases=("umeyama", "similarity"), kind="similarity")
def fit_orthogonal_scaled(
    source: Tensor,
    target: Tensor,
    *,
    center: bool = True,
    rotation_only: bool = False,
    dtype: torch.dtype | None = None,
) -> Aligner:
    """Umeyama (1991) similarity map: orthogonal ``W`` and one global scale ``s ≥ 0``.

    Args:
        source: ``[n, d_s]`` anchors in the source space (finite, ``n ≥ 2``).
        target: ``[n, d_t]`` the same anchors in the target space.
        center: remove both means first (default).
        rotation_only: force ``det W = +1`` (needs ``d_s = d_t``).
        dtype: computation dtype (default float64).

    Returns:
        :class:`~orthokit.align._aligner.Aligner` with ``kind="similarity"`` (``s = 0`` only if the centered
        source is all zeros).
    """
    cd = resolve_dtype(dtype)
    X, Y = check_pair(source, target, dtype=cd)
    check_narrow_source(X, Y, "orthogonal_scaled")
    if rotation_only and X.shape[1] != Y.shape[1]:
        raise ValueError(f"rotation_only=True needs equal widths, got d_s={X.shape[1]}, d_t={Y.shape[1]}")
    res = procrustes(
        X.detach().to(cd),
        Y.detach().to(cd),
        center=bool(center),
        scale=True,
        rotation_only=bool(rotation_only),
    )
    return Aligner(
        res.Q,
        res.mean_a,
        res.mean_b,
        float(res.scale),
        method="orthogonal_scaled",
        kind="similarity",
        info={"center": bool(center), "rotation_only": bool(rotation_only)},
    )
