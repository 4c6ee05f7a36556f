r"""``affine``: least-squares affine map ``T(x) = (x − μ_s) W + μ_t`` (optionally ridge-regularized).

``W = argmin ‖X̃W − Ỹ‖_F² + α‖W‖_F²`` on centered anchors; the intercept ``b = μ_t − μ_s W`` is the exact
least-squares intercept and is not penalized. ``α = 0`` solves by ``torch.linalg.lstsq`` in float64 (the
minimum-norm solution when ``n ≤ d_s`` or the anchors are rank-deficient); ``α > 0`` solves the augmented
system ``[X̃; √α I] W = [Ỹ; 0]``. No geometric guarantee: it fits the anchors best but may distort the source
geometry (on MiniLM layer 3 → final it keeps 31 % of the 10-NN neighbourhoods; ``benchmarks/results/align_canonical.md``).

Example:
    >>> import torch
    >>> from orthokit.align.affine import fit_affine
    >>> X = torch.randn(100, 3, dtype=torch.float64)
    >>> A = torch.tensor([[2.0, 0, 0], [0, 1, 0], [1, 0, 3]], dtype=torch.float64)
    >>> a = fit_affine(X, X @ A + 1.0)
    >>> bool(torch.allclose(a.W, A)), bool(torch.allclose(a.bias, torch.ones(3, dtype=torch.float64)))
    (True, True)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from orthokit.align._aligner import Aligner, check_pair, resolve_dtype
from orthokit.align.registry import ALIGNERS

__all__ = ["fit_affine", "least_squares_map"]


def least_squares_map(Xc: Tensor, Yc: Tensor, alpha: float = 0.0) -> Tensor:
    """``argmin_W ‖Xc W − Yc‖_F² + α‖W‖_F²`` (``[d_s, d_t]``), in the inputs' dtype."""
    if alpha > 0:
        d = Xc.shape[1]
        Xa = torch.cat([Xc, math.sqrt(alpha) * torch.eye(d, dtype=Xc.dtype, device=Xc.device)])
        Ya = torch.cat([Yc, torch.zeros(d, Yc.shape[1], dtype=Yc.dtype, device=Yc.device)])
        return torch.linalg.lstsq(Xa, Ya).solution
    if Xc.device.type == "cpu":
        return torch.linalg.lstsq(Xc, Yc, driver="gelsd").solution
    return torch.linalg.pinv(Xc) @ Yc


@ALIGNERS.register("affine", aliases=("linear", "least_squares"), kind="affine")
def fit_affine(
    source: Tensor,
    target: Tensor,
    *,
    center: bool = True,
    alpha: float = 0.0,
    dtype: torch.dtype | None = None,
) -> Aligner:
    """Least-squares affine map (ridge ``alpha`` on ``W`` only).

    Args:
        source: ``[n, d_s]`` anchors (finite, ``n ≥ 2``).
        target: ``[n, d_t]`` the same anchors in the target space.
        center: fit an intercept (default); ``False`` fits a linear map through the origin.
        alpha: ridge strength ``α ≥ 0`` on ``W`` (in units of the summed squared residual).
        dtype: computation dtype (default float64).

    Returns:
        :class:`~orthokit.align._aligner.Aligner` with ``kind="affine"``.
    """
    cd = resolve_dtype(dtype)
    X, Y = check_pair(source, target, dtype=cd)
    if (
        isinstance(alpha, bool)
        or not isinstance(alpha, (int, float))
        or not math.isfinite(alpha)
        or alpha < 0
    ):
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
    Xd, Yd = X.to(cd), Y.to(cd)
    if center:
        mu_s, mu_t = Xd.mean(0), Yd.mean(0)
    else:
        mu_s = torch.zeros(Xd.shape[1], dtype=cd, device=Xd.device)
        mu_t = torch.zeros(Yd.shape[1], dtype=cd, device=Yd.device)
    W = least_squares_map(Xd - mu_s, Yd - mu_t, float(alpha))
    return Aligner(
        W,
        mu_s,
        mu_t,
        1.0,
        method="affine",
        kind="affine",
        info={"center": bool(center), "alpha": float(alpha)},
    )
