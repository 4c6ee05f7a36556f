"""Karcher merge: the weighted Riemannian (Fréchet) mean of the models' directions, times their mean norm.

Each tensor θ_t is split into its norm n_t = ‖θ_t‖ and direction u_t = θ_t / n_t (a point of the unit sphere).
With α_t = w_t / Σ w_t (mergekit: equal weights 1/T):

    m = argmin_{‖m‖=1} Σ_t α_t d(m, u_t)²        (d = great-circle distance; Karcher 1977)
    θ = (Σ_t α_t n_t) · m

m is found by the fixed-point iteration of :func:`orthokit.linalg._sphere.karcher_mean` (start at the normalized
weighted Euclidean mean, m ← exp_m(Σ α_t log_m u_t), at most ``max_iter`` steps, stop when the step is shorter
than ``tol``). Models with n_t ≤ ``tol`` do not enter the mean (their α is renormalized away) but do count in the
norm average; if every norm is ≤ ``tol`` the result is zero. Rounding follows mergekit 0.1.5
(``mergekit/merge_methods/karcher.py``): per-entry arithmetic in the tensors' dtype, norms in float32 (float64 for
float64 tensors), so results are bit-equal to ``merge_tensors(..., "karcher")`` in float32 and bfloat16
(tests/merge/test_mergekit_parity_a.py). ``max_iter: 10`` does not always reach ``tol`` for widely spread
directions; the float64 reference test measures how far from the true mean that leaves the result.

Reference: H. Karcher, "Riemannian center of mass and mollifier smoothing", Comm. Pure Appl. Math. 30 (1977);
mergekit 0.1.5 ``karcher`` (its reference: arXiv:2603.04972).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from orthokit.linalg._sphere import karcher_mean, norm_dtype
from orthokit.merge.registry import check_merge_inputs, register_merge_method

__all__ = ["karcher"]


@register_merge_method(
    "karcher",
    inputs="full",
    needs_base=False,
    per_model_params=("weights",),
    order_invariant=True,
    stochastic=False,
    base_policy="ignored",
    reference="Karcher 1977; arXiv:2603.04972",
    one_model_exact={},
    idempotent={},
    base_fixed_point={},
)
def karcher(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weights: Sequence[float] | None = None,
    max_iter: int = 10,
    tol: float = 1e-5,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Weighted Karcher mean of the directions of ``tensors``, scaled by their weighted mean norm.

    Args:
        base: ignored (mergekit's ``karcher`` averages every listed model; list the base among the inputs to
            include it).
        tensors: θ₁…θ_T, same shape and dtype.
        weights: w_t, normalized to α_t = w_t / Σ w_t (orthokit extension; default 1.0 each = mergekit's equal
            weights; must be positive).
        max_iter: the most fixed-point steps (mergekit default 10).
        tol: step length at which to stop, and the norm/angle below which a model or a term is skipped
            (mergekit default 1e-5).
        generator: unused (deterministic).

    Returns:
        The merged tensor (same shape and dtype as the inputs).

    Raises:
        ValueError: a non-positive weight, ``max_iter < 0`` or ``tol < 0``.

    Example:
        >>> import torch
        >>> karcher(None, [torch.tensor([2.0, 0.0]), torch.tensor([0.0, 4.0])])  # direction 45°, norm 3
        tensor([2.1213, 2.1213])

    Reference: Karcher, Comm. Pure Appl. Math. 1977; mergekit 0.1.5 ``karcher``.
    """
    w = check_merge_inputs(None, tensors, weights, needs_base=False)
    if any(x <= 0 for x in w):
        raise ValueError(f"karcher: weights must be positive, got {w}")
    if int(max_iter) != max_iter or max_iter < 0:
        raise ValueError(f"karcher: max_iter must be a non-negative integer, got {max_iter!r}")
    if not tol >= 0:
        raise ValueError(f"karcher: tol must be >= 0, got {tol!r}")
    if len(tensors) == 1:
        return tensors[0].clone()
    total = sum(w)
    alphas = [x / total for x in w]
    acc = norm_dtype(tensors[0])
    norms = [torch.linalg.vector_norm(t.to(acc)) for t in tensors]
    valid = [i for i, n in enumerate(norms) if float(n) > tol]
    if not valid:
        return torch.zeros_like(tensors[0])
    units = [(tensors[i] / norms[i]).to(tensors[i].dtype) for i in valid]
    mean, _ = karcher_mean(units, [alphas[i] for i in valid], max_iter=int(max_iter), tol=float(tol))
    scale = sum(a * n for a, n in zip(alphas, norms))
    return scale * mean
