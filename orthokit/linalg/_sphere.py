"""Geometry of the unit hypersphere: exp/log maps, geodesic interpolation and the weighted Karcher mean.

A tensor of any shape is treated as one point of the sphere S^{n−1} ⊂ R^n (n = numel). For a unit point x and
a unit point y at angle θ = arccos⟨x, y⟩:

* log map   log_x(y) = θ / sin θ · (y − ⟨x, y⟩ x)            (a tangent vector at x of length θ; 0 when θ = 0)
* exp map   exp_x(v) = cos‖v‖ · x + sin‖v‖ · v / ‖v‖
* geodesic  slerp(x, y; t) = sin((1 − t)θ)/sin θ · x + sin(tθ)/sin θ · y
* Karcher (Fréchet) mean  m = argmin_m Σ_i α_i d(m, x_i)²,  found by Riemannian gradient descent with unit step:
  m ← exp_m(Σ_i α_i log_m(x_i)) (normalized weights α), which is a fixed point exactly when Σ_i α_i log_m(x_i) = 0.

The functions keep the tensors' dtype for the per-entry work and compute norms in float32 (float64 for float64
inputs); the Karcher iteration follows the operation order of mergekit 0.1.5's ``karcher`` merge method
(``mergekit/merge_methods/karcher.py``), so :func:`orthokit.merge.karcher.karcher` is bit-equal to it in float32
and bfloat16.

References: H. Karcher, "Riemannian center of mass and mollifier smoothing", Comm. Pure Appl. Math. 30 (1977);
S. R. Buss & J. P. Fillmore, "Spherical averages and applications to spherical splines and interpolation",
ACM TOG 20(2), 2001 (the fixed-point iteration on the sphere); K. Shoemake, "Animating rotation with quaternion
curves", SIGGRAPH 1985 (slerp).

Example:
    >>> import torch
    >>> from orthokit.linalg._sphere import sphere_exp, sphere_log, karcher_mean
    >>> x, y = torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    >>> v = sphere_log(x, y)                       # length π/2, pointing at y
    >>> torch.allclose(sphere_exp(x, v), y)
    True
    >>> m, iters = karcher_mean([x, y], [0.5, 0.5])
    >>> torch.allclose(m, torch.tensor([2 ** -0.5, 2 ** -0.5], dtype=torch.float64)), iters <= 10
    (True, True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["norm_dtype", "sphere_log", "sphere_exp", "geodesic_distance", "karcher_mean"]


def norm_dtype(x: Tensor) -> torch.dtype:
    """The dtype norms are computed in: float64 for float64 tensors, else float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check_pair(x: Tensor, y: Tensor, what: str) -> None:
    for n, t in (("x", x), ("y", y)):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise TypeError(f"{what}: {n} must be a floating-point torch.Tensor, got {type(t).__name__}")
    if x.shape != y.shape:
        raise ValueError(f"{what}: x has shape {tuple(x.shape)} but y has {tuple(y.shape)}")
    if x.dtype != y.dtype:
        raise TypeError(f"{what}: x is {x.dtype} but y is {y.dtype}")


def sphere_log(x: Tensor, y: Tensor, *, weight: float = 1.0, tol: float = 0.0) -> Tensor:
    """Weighted log map ``weight · log_x(y) = weight · θ/sin θ · (y − ⟨x, y⟩ x)`` at the unit point ``x``.

    ``⟨x, y⟩`` is the dot product of the flattened tensors in their dtype, clamped to [−1, 1]; the scalar
    ``weight · θ/sin θ`` is formed before it multiplies the vector (mergekit's rounding order). Points closer
    than ``tol`` in angle (and θ = 0 always) give the zero vector. Antipodal points (θ = π) have no unique log;
    the result is then not finite.

    Args:
        x: the base point (unit norm). y: the target point (unit norm), same shape and dtype.
        weight: a scalar multiplying the tangent vector. tol: angle below which the result is zero.

    Returns:
        A tangent vector at ``x`` (same shape and dtype).

    Example:
        >>> import torch
        >>> sphere_log(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))
        tensor([0.0000, 1.5708])
    """
    _check_pair(x, y, "sphere_log")
    dot = torch.clamp(torch.dot(x.reshape(-1), y.reshape(-1)), -1.0, 1.0)
    theta = torch.arccos(dot)
    if float(theta) < tol or float(theta) == 0.0:
        return torch.zeros_like(x)
    return (weight * (theta / torch.sin(theta))) * (y - dot * x)


def sphere_exp(x: Tensor, v: Tensor) -> Tensor:
    """Exp map ``exp_x(v) = cos‖v‖ · x + sin‖v‖ · v/‖v‖`` at the unit point ``x`` (``x`` itself when v = 0).

    ‖v‖ is computed in float32 (float64 for float64 tensors) and the result keeps the tensors' dtype.

    Example:
        >>> import torch, math
        >>> sphere_exp(torch.tensor([1.0, 0.0]), torch.tensor([0.0, math.pi / 2]))
        tensor([-4.3711e-08,  1.0000e+00])
    """
    _check_pair(x, v, "sphere_exp")
    n = torch.linalg.vector_norm(v.to(norm_dtype(v)))
    if float(n) == 0.0:
        return x.clone()
    return (torch.cos(n) * x + torch.sin(n) * (v / n)).to(x.dtype)


def geodesic_distance(x: Tensor, y: Tensor) -> float:
    """Great-circle distance arccos⟨x̂, ŷ⟩ ∈ [0, π] between the directions of ``x`` and ``y`` (float64).

    Example:
        >>> import torch
        >>> round(geodesic_distance(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 3.0])), 6)
        1.570796
    """
    _check_pair(x, y, "geodesic_distance")
    a = x.reshape(-1).to(torch.float64)
    b = y.reshape(-1).to(torch.float64)
    na, nb = float(torch.linalg.vector_norm(a)), float(torch.linalg.vector_norm(b))
    if na == 0.0 or nb == 0.0:
        raise ValueError("geodesic_distance: a zero vector has no direction")
    return math.acos(max(-1.0, min(1.0, float(torch.dot(a, b)) / (na * nb))))


def karcher_mean(
    units: Sequence[Tensor],
    weights: Sequence[float],
    *,
    max_iter: int = 10,
    tol: float = 1e-5,
) -> tuple[Tensor, int]:
    """Weighted Karcher (Fréchet) mean of unit points on the sphere by fixed-point iteration.

    Start at the normalized weighted Euclidean mean (the first point if that mean is shorter than ``tol``),
    then repeat ``m ← exp_m(Σ_i α_i log_m(x_i))`` and renormalize, with α = weights / Σ weights, skipping points
    within ``tol`` (in angle) of m, until the tangent step is shorter than ``tol`` or ``max_iter`` steps were
    taken. Per-entry arithmetic is in the points' dtype, norms in float32/float64 (mergekit 0.1.5's order).

    Args:
        units: the points x_i (unit norm, same shape and dtype). weights: α_i before normalization (sum ≠ 0).
        max_iter: the most iterations (≥ 0). tol: convergence threshold on the step length (> 0 or 0).

    Returns:
        ``(m, iterations)`` — the mean (unit norm, the points' dtype) and how many exp steps were taken.

    Raises:
        ValueError: no points, a length mismatch, weights summing to zero, ``max_iter < 0`` or ``tol < 0``.
        TypeError: non-floating or mixed-dtype points.

    Example:
        >>> import torch
        >>> e = torch.eye(3, dtype=torch.float64)
        >>> m, _ = karcher_mean([e[0], e[1], e[2]], [1.0, 1.0, 1.0], max_iter=50, tol=1e-12)
        >>> torch.allclose(m, torch.full((3,), 3 ** -0.5, dtype=torch.float64))
        True
    """
    if len(units) == 0:
        raise ValueError("karcher_mean: need at least one point")
    if len(weights) != len(units):
        raise ValueError(f"karcher_mean: got {len(weights)} weights for {len(units)} points")
    if int(max_iter) != max_iter or max_iter < 0:
        raise ValueError(f"karcher_mean: max_iter must be a non-negative integer, got {max_iter!r}")
    if not tol >= 0:
        raise ValueError(f"karcher_mean: tol must be >= 0, got {tol!r}")
    for u in units[1:]:
        _check_pair(units[0], u, "karcher_mean")
    total = sum(float(w) for w in weights)
    if total == 0.0 or not math.isfinite(total):
        raise ValueError(f"karcher_mean: weights must have a finite non-zero sum, got {list(weights)}")
    alphas = [float(w) / total for w in weights]
    acc = norm_dtype(units[0])
    dtype = units[0].dtype

    mean = torch.zeros_like(units[0])
    for a, u in zip(alphas, units):
        mean += a * u
    n0 = torch.linalg.vector_norm(mean.to(acc))
    mean = units[0].clone() if float(n0) < tol else (mean / n0).to(dtype)

    steps = 0
    for _ in range(int(max_iter)):
        step = torch.zeros_like(mean)
        for a, u in zip(alphas, units):
            step += sphere_log(mean, u, weight=a, tol=tol)
        length = torch.linalg.vector_norm(step.to(acc))
        if float(length) < tol:
            break
        mean = (torch.cos(length) * mean + torch.sin(length) * (step / length)).to(dtype)
        steps += 1
        renorm = torch.linalg.vector_norm(mean.to(acc))
        if float(renorm) > tol:
            mean = (mean / renorm).to(dtype)
    return mean, steps
