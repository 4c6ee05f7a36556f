r"""``orthogonal``: Procrustes alignment with a mean shift — ``T(x) = (x − μ_s) Q + μ_t``, ``Q`` orthogonal.

Schönemann (1966), "A generalized solution of the orthogonal Procrustes problem": with centered anchors
``X̃ = X − μ_s`` and ``Ỹ = Y − μ_t``, ``Q = argmin_{QQᵀ=I} ‖X̃Q − Ỹ‖_F = U Vᵀ`` from ``X̃ᵀỸ = U Σ Vᵀ``
(computed by :func:`orthokit.linalg.procrustes`). ``rotation_only=True`` restricts to ``det Q = +1`` (Kabsch
1976). Centering is the default because representation spaces commonly differ by a global mean shift as well
as a rotation (Gupta et al., arXiv 2602.17584); without it the rotation has to absorb the offset, which on
sentence embeddings is worse than no map at all (``docs/align/maps.md``).

Widths: ``d_s = d_t`` gives an orthogonal ``Q`` (an isometry). ``d_s < d_t`` gives ``Q`` with orthonormal
rows (``QQᵀ = I``): still an isometry, into a subspace of the target. ``d_s > d_t`` is refused with a
``ValueError``: no isometry into a narrower space exists, and with orthonormal columns ``‖X̃Q‖`` depends on
``Q``, so ``U Vᵀ`` is not the least-squares fit there. Use ``affine``, or reduce the source first (PCA or
truncation to ``d_t`` features).

Example:
    >>> import torch
    >>> from orthokit.align.orthogonal import fit_orthogonal
    >>> X = torch.randn(200, 4, dtype=torch.float64)
    >>> Q = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))[0]
    >>> a = fit_orthogonal(X, X @ Q + 5.0)
    >>> bool(torch.allclose(a.W, Q)), a.distortion(X) < 1e-12
    (True, True)
"""

from __future__ import annotations

import torch
from torch import Tensor

from orthokit.align._aligner import Aligner, check_narrow_source, check_pair, resolve_dtype
from orthokit.align.registry import ALIGNERS
from orthokit.linalg import procrustes

__all__ = ["fit_orthogonal"]


@ALIGNERS.register("orthogonal", kind="isometry")
def fit_orthogonal(
    source: Tensor,
    target: Tensor,
    *,
    center: bool = True,
    rotation_only: bool = False,
    dtype: torch.dtype | None = None,
) -> Aligner:
    """Orthogonal Procrustes map from ``source`` rows to ``target`` rows (Schönemann 1966; Kabsch 1976).

    Args:
        source: ``[n, d_s]`` anchors in the source space (finite, ``n ≥ 2``).
        target: ``[n, d_t]`` the same anchors in the target space.
        center: remove both means first and add ``μ_t`` back (default; ``False`` fits a pure rotation).
        rotation_only: force ``det Q = +1`` (needs ``d_s = d_t``).
        dtype: computation dtype (default float64).

    Returns:
        :class:`~orthokit.align._aligner.Aligner` with ``kind="isometry"``, ``scale=1``.

    Raises:
        ValueError: ``d_s > d_t`` (see the module docstring), or values so large their squares overflow ``dtype``.
    """
    cd = resolve_dtype(dtype)
    X, Y = check_pair(source, target, dtype=cd)
    check_narrow_source(X, Y, "orthogonal")
    if rotation_only and X.shape[1] != Y.shape[1]:
        raise ValueError(f"rotation_only=True needs equal widths, got d_s={X.shape[1]}, d_t={Y.shape[1]}")
    res = procrustes(
        X.detach().to(cd), Y.detach().to(cd), center=bool(center), rotation_only=bool(rotation_only)
    )
    return Aligner(
        res.Q,
        res.mean_a,
        res.mean_b,
        1.0,
        method="orthogonal",
        kind="isometry",
        info={"center": bool(center), "rotation_only": bool(rotation_only)},
    )
