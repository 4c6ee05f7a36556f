"""Minimax odd-quintic coefficients for Newton–Schulz-type polar iterations (Polar Express).

Every Newton–Schulz step maps each singular value σ of the (normalized) iterate through the odd quintic
``p(σ) = a·σ + b·σ³ + c·σ⁵``. Polar Express (Amsel, Persson, Musco, Gower 2025, arXiv:2505.16932) chooses, at
step ``t``, the odd quintic that minimizes the worst-case distance to 1 on the current singular-value
interval ``[ℓ_t, u_t]``::

    p_t = argmin_{p odd quintic} max_{x ∈ [ℓ_t, u_t]} |1 − p(x)|

and then propagates the interval, ``ℓ_{t+1} = p_t(ℓ_t)``, ``u_{t+1} = 2 − ℓ_{t+1}`` (by equioscillation the
image of ``[ℓ_t, u_t]`` is exactly ``[ℓ_{t+1}, u_{t+1}]``). The minimax polynomial equioscillates at four
points ``ℓ < q < r < u`` (Chebyshev alternation), which a simplified Remez exchange finds by alternating

1. solve the 4×4 linear system ``p(ℓ) = 1 − E, p(q) = 1 + E, p(r) = 1 − E, p(u) = 1 + E`` for ``(a, b, c, E)``;
2. move ``q, r`` to the critical points of ``p`` (roots of ``p′(x) = a + 3bx² + 5cx⁴``, a quadratic in x²).

Two published stabilizations are reproduced (paper §4.4 and its reference code):

* ``cushion``: optimize on ``[max(ℓ, cushion·u), u]`` (avoids huge slopes at tiny ℓ), then rescale the
  polynomial so that ``p(ℓ)`` and ``p(u)`` straddle 1 symmetrically (``p ← 2p/(p(ℓ) + p(u))``);
* ``safety``: divide ``(a, b, c)`` by ``(1+safety)^(1, 3, 5)`` for every polynomial except the last one, i.e.
  ``p(x) ← p(x/(1+safety))`` — round-off in bf16 can push a singular value slightly above ``u_t``; the safety
  margin keeps it inside the basin of attraction.

With ``lower=1e-3, steps=5, safety=0.02, cushion=0.02`` this reproduces the NanoGPT-speedrun / Dion "PE-5" table
(first row ``(8.156554524902461, −22.48329292557795, 15.878769915207462)``) to ~1e-14.
"""

from __future__ import annotations

import math
from typing import Any

import mpmath

__all__ = ["optimal_quintic", "polar_express_coefficients", "CLEANUP_QUINTIC"]

#: The limit of :func:`optimal_quintic` as ``ℓ/u → 1`` (for ``u = 1``): ``p(x) = (15x − 10x³ + 3x⁵)/8``,
#: the unique odd quintic with ``p(1) = 1, p′(1) = p″(1) = 0`` — the classical convergent "cleanup" step.
CLEANUP_QUINTIC: tuple[float, float, float] = (15 / 8, -10 / 8, 3 / 8)

# Above this ℓ/u the optimal quintic equals the cleanup limit to ~1e-18 (its deviation is ≈ 1.05·((u−ℓ)/2)²).
_DEGENERATE_RATIO = 1.0 - 1e-9
# The 4×4 Remez system is a Vandermonde-like matrix on four points inside [ℓ, u]; its condition number grows
# like ((u−ℓ)/u)^-3, so in float64 the late Polar Express steps (ℓ/u ≈ 1 − 1e-5) lose ~6 digits (a = 1.8749983
# instead of 1.87500000002). The solve runs in mpmath at this many decimal digits instead.
_DPS = 50


def _check_interval(lower: float, upper: float) -> tuple[float, float]:
    for name, v in (("lower", lower), ("upper", upper)):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
        if not math.isfinite(v):
            raise ValueError(f"{name} must be finite, got {v}")
    if not 0.0 < upper:
        raise ValueError(f"upper must be > 0, got {upper}")
    if not 0.0 <= lower <= upper:
        raise ValueError(f"need 0 <= lower <= upper, got lower={lower}, upper={upper}")
    return float(lower), float(upper)


def optimal_quintic(
    l: float, u: float, *, tol: float = 1e-40, max_iter: int = 100
) -> tuple[float, float, float]:
    """The odd quintic ``p(x) = a x + b x³ + c x⁵`` minimizing ``max_{x∈[l,u]} |1 − p(x)|``.

    Math: by the Chebyshev alternation theorem the minimax polynomial equioscillates at four points
    ``l < q < r < u`` with alternating error signs ``−E, +E, −E, +E``. A Remez exchange solves the 4×4
    linear system for ``(a, b, c, E)`` on the current points, then moves ``q, r`` to the two positive roots of
    ``p′(x) = a + 3b x² + 5c x⁴``; it stops when ``E`` changes by less than ``tol``. The iteration runs in
    50-digit arithmetic (mpmath): the system's condition number grows like ``((u−l)/u)^-3``, and in float64 the
    late Polar Express steps lost ~6 digits. For ``l/u ≥ 1 − 10⁻⁹`` the limit ``(15/8, −10/8, 3/8)`` scaled to
    ``[·, u]`` is returned, ``(15/(8u), −10/(8u³), 3/(8u⁵))`` (the true optimum differs by ≈ 1.05·((u−l)/2u)²).

    Args:
        l: lower end of the interval, ``0 ≤ l ≤ u``.
        u: upper end, ``u > 0``.
        tol: convergence tolerance on the equioscillation error ``E`` (in 50-digit arithmetic).
        max_iter: Remez iteration cap (convergence is quadratic; ~5–10 iterations in practice).

    Returns:
        ``(a, b, c)`` as Python floats.

    Example:
        >>> a, b, c = optimal_quintic(1e-3, 1.0)
        >>> round(a, 3), round(b, 3), round(c, 3)  # = the first CANS step (Grishina et al. 2025)
        (8.47, -25.108, 18.629)
        >>> optimal_quintic(1.0, 1.0)
        (1.875, -1.25, 0.375)

    Reference: Amsel, Persson, Musco, Gower, "The Polar Express: Optimal Matrix Sign Methods and Their
    Application to the Muon Algorithm", arXiv:2505.16932 (2025), Alg. 1 / §4.
    """
    l, u = _check_interval(l, u)
    if l / u >= _DEGENERATE_RATIO:
        a, b, c = CLEANUP_QUINTIC
        return a / u, b / u**3, c / u**5
    return tuple(float(v) for v in _remez_mp(mpmath.mpf(l), mpmath.mpf(u), tol, max_iter))  # type: ignore[return-value]


def _remez_mp(l: Any, u: Any, tol: float, max_iter: int) -> tuple[Any, Any, Any]:
    """Remez exchange for :func:`optimal_quintic` in ``_DPS``-digit arithmetic (mpmath numbers in and out)."""
    with mpmath.workdps(_DPS):
        q, r = (3 * l + u) / 4, (l + 3 * u) / 4  # initial alternation points; exact in the limit l -> u
        ones = mpmath.matrix([1, 1, 1, 1])
        err_prev = None
        a, b, c = (mpmath.mpf(v) for v in CLEANUP_QUINTIC)
        for _ in range(max_iter):
            rows = [[x, x**3, x**5, sgn] for x, sgn in zip((l, q, r, u), (1, -1, 1, -1))]
            a, b, c, err = mpmath.lu_solve(mpmath.matrix(rows), ones)
            disc = 9 * b * b - 20 * a * c
            if c == 0 or disc < 0:  # pragma: no cover - cannot happen for 0 <= l < u (alternation exists)
                break
            roots = sorted(((-3 * b - mpmath.sqrt(disc)) / (10 * c), (-3 * b + mpmath.sqrt(disc)) / (10 * c)))
            if roots[0] <= 0:  # pragma: no cover - defensive
                break
            q, r = mpmath.sqrt(roots[0]), mpmath.sqrt(roots[1])
            if err_prev is not None and abs(err - err_prev) <= tol:
                break
            err_prev = err
        return a, b, c


def _apply(coeffs: tuple[Any, Any, Any], x: Any) -> Any:
    a, b, c = coeffs
    x2 = x * x
    return x * (a + x2 * (b + c * x2))


def polar_express_coefficients(
    lower: float = 1e-3,
    steps: int = 5,
    safety: float = 0.02,
    cushion: float = 0.02,
) -> tuple[tuple[float, float, float], ...]:
    """Per-step optimal Polar Express coefficients for ``steps`` Newton–Schulz steps.

    Math (Amsel et al. 2025, Alg. 1 with the §4.4 stabilizations): start from ``[ℓ₀, u₀] = [lower, 1]``; for
    each step ``t``

    1. ``p_t = optimal_quintic(max(ℓ_t, cushion·u_t), u_t)``;
    2. recenter: ``p_t ← 2 p_t / (p_t(ℓ_t) + p_t(u_t))`` so the image of ``[ℓ_t, u_t]`` straddles 1;
    3. unless it is the last step, apply the safety margin ``(a, b, c) ← (a/s, b/s³, c/s⁵)``, ``s = 1 + safety``;
    4. ``ℓ_{t+1} = p_t(ℓ_t)``, ``u_{t+1} = 2 − ℓ_{t+1}``.

    As ``ℓ_t → 1`` the polynomials converge to the cleanup quintic ``(15/8, −10/8, 3/8)``, so any number of
    steps is well defined (no cycling, no NaN).

    Args:
        lower: ``ℓ₀ ∈ (0, 1)``, the smallest normalized singular value to be lifted (1e-3 in the paper).
        steps: number of polynomials (``≥ 1``).
        safety: multiplicative margin (``≥ 0``) for bf16 round-off, applied to all but the last step.
        cushion: ``∈ [0, 1)``; optimize on ``[max(ℓ, cushion·u), u]``.

    Returns:
        Tuple of ``steps`` coefficient triples ``(a, b, c)`` (Python floats).

    Example:
        >>> pe5 = polar_express_coefficients(1e-3, 5, safety=0.02, cushion=0.02)
        >>> [round(v, 6) for v in pe5[0]]
        [8.156555, -22.483293, 15.87877]

    Reference: Amsel, Persson, Musco, Gower, arXiv:2505.16932 (2025); the (ℓ=1e-3, 5, 0.02, 0.02) table is the
    one used by the modded-nanogpt speedrun (record #38) and microsoft/dion.
    """
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise TypeError(f"steps must be an int, got {type(steps).__name__}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    lower, _ = _check_interval(lower, 1.0)
    if not 0.0 < lower < 1.0:
        raise ValueError(f"lower must lie in (0, 1), got {lower}")
    for name, v in (("safety", safety), ("cushion", cushion)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{name} must be a finite real number, got {v!r}")
    if safety < 0.0:
        raise ValueError(f"safety must be >= 0, got {safety}")
    if not 0.0 <= cushion < 1.0:
        raise ValueError(f"cushion must lie in [0, 1), got {cushion}")

    out: list[tuple[float, float, float]] = []
    with mpmath.workdps(_DPS):
        lo, hi = mpmath.mpf(lower), mpmath.mpf(1)
        s = 1 + mpmath.mpf(safety)
        for t in range(steps):
            lo_opt = max(lo, cushion * hi)
            if lo_opt / hi >= _DEGENERATE_RATIO:
                p = tuple(mpmath.mpf(v) / hi ** (2 * k + 1) for k, v in enumerate(CLEANUP_QUINTIC))
            else:
                p = _remez_mp(lo_opt, hi, 1e-40, 100)
            scale = 2 / (_apply(p, lo) + _apply(p, hi))
            a, b, c = (p[0] * scale, p[1] * scale, p[2] * scale)
            if t < steps - 1 and safety > 0.0:
                a, b, c = a / s, b / s**3, c / s**5
            out.append((float(a), float(b), float(c)))
            lo = min(max(_apply((a, b, c), lo), mpmath.mpf(0)), mpmath.mpf(1))
            hi = 2 - lo
    return tuple(out)
