"""ROOT — Robust Orthogonalized Optimizer (Huawei Noah's Ark; arXiv:2511.20626; reference code
github.com/huawei-noah/noah-research ``ROOT/``).

Two ideas on top of Muon:

1. **Proximal outlier suppression.** Split the (Nesterov) momentum ``U`` by an element-wise soft threshold
   ``τ`` into outliers ``S_τ(U) = sign(U)·max(|U| − τ, 0)`` and the bounded remainder
   ``B = U − S_τ(U) = clamp(U, −τ, τ)``; only ``B`` is orthogonalized, the outliers are dropped from the step.
   The reference example sets ``τ`` to the 0.9-quantile of ``|U|``, recomputed every step.
2. **Shape-adaptive Newton iterations ("AdaNewton").** One ``(a, b, c)`` triple per matrix shape
   (key ``(min(m,n), max(m,n))``) applied for 5 steps after Frobenius normalization; unknown shapes fall back to
   Keller Jordan's (3.4445, −4.7750, 2.0315).

Update::  W ← W(1 − ηλ) − η·0.2·sqrt(max(m, n))·NS_shape(clamp(U, −τ, τ)),
with sum-momentum ``M ← μM + G``, ``U = G + μM`` (reference code).

**Safety of the published shape table (our finding, reproduced by the tests).** The (2048, 2048) triple
(3.4916, −4.8224, 2.1095) is unstable: its single-step maximum on [0, 1] is ≈ 1.2246 and ``p(1.2246) > 1.2246``,
so a normalized singular value near 0.56 is driven to ≈ 3.3 after 5 steps. ROOT therefore only uses a shape
entry whose 5-step scalar map passes :func:`root_schedule_is_safe` (iterates stay in ``(0, 1.5]`` on
``[1e-3, 1]`` and land in ``[0.5, 1.5]`` on ``[0.1, 1]``; when the engine's ``orthokit.linalg.validate_schedule``
is available it is consulted as well) and otherwise falls back to the default triple and says so
(``root_coefficients(..., return_reason=True)``).
"""

from __future__ import annotations

import warnings

import torch

from orthokit.optim._normalizers import abs_quantile, fro_norm, work_dtype

__all__ = [
    "ROOT_SHAPE_COEFFICIENTS",
    "ROOT_DEFAULT_COEFFICIENTS",
    "root_split",
    "root_schedule_is_safe",
    "root_coefficients",
    "newton_schulz_constant",
]

#: Per-shape quintic coefficients published with ROOT (``ROOT/examples/example_train.py``), keyed by
#: ``(min(m, n), max(m, n))``. Not all of them are safe — see :func:`root_schedule_is_safe`.
ROOT_SHAPE_COEFFICIENTS: dict[tuple[int, int], tuple[float, float, float]] = {
    (2048, 2048): (3.4916, -4.8224, 2.1095),
    (2048, 3072): (3.4509, -4.5790, 1.9325),
    (2048, 8192): (2.9794, -3.6674, 1.6207),
    (2048, 16384): (3.1943, -3.8221, 1.5322),
}
#: Fallback (Keller Jordan's Muon coefficients), also the reference code's fallback.
ROOT_DEFAULT_COEFFICIENTS: tuple[float, float, float] = (3.4445, -4.7750, 2.0315)


def root_split(u: torch.Tensor, quantile: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
    r"""ROOT's proximal split: ``τ = Q_q(|U|)`` per matrix and the inlier part ``B = clamp(U, −τ, τ)``.

    ``U = B + S_τ(U)`` exactly, where ``S_τ`` is the soft threshold (the outliers dropped from the step).

    Args:
        u: ``[..., m, n]``.
        quantile: ``q`` in (0, 1]; ``q = 1`` keeps everything (``τ = max|U|``).

    Returns:
        ``(B, τ)`` with ``τ`` of shape ``[..., 1, 1]``.

    Example:
        >>> u = torch.randn(32, 16)
        >>> b, tau = root_split(u, 0.9)
        >>> torch.allclose(b + soft_threshold(u, tau), u)
        True

    Ref: arXiv:2511.20626 (soft-thresholding), reference example (0.9-quantile).
    """
    tau = abs_quantile(u, quantile)
    t = tau.to(u.dtype)
    return torch.minimum(torch.maximum(u, -t), t), tau


def _scalar_map(coeffs: tuple[float, float, float], x: torch.Tensor, steps: int) -> torch.Tensor:
    a, b, c = coeffs
    for _ in range(steps):
        x2 = x * x
        x = x * (a + x2 * (b + c * x2))
    return x


def root_schedule_is_safe(coeffs: tuple[float, float, float], steps: int = 5) -> bool:
    """Whether ``steps`` applications of the odd quintic ``p(x) = ax + bx³ + cx⁵`` are a safe polar iteration.

    Criterion on the scalar map (float64, 20 001 log-spaced points): every iterate of ``x ∈ [1e-3, 1]`` stays in
    ``(0, 1.5]`` (no sign flip, no blow-up) and the final image of ``[0.1, 1]`` lies in ``[0.5, 1.5]``. If the
    polar engine exports ``orthokit.linalg.validate_schedule`` and it rejects the table, this returns False too.

    Example:
        >>> root_schedule_is_safe((3.4445, -4.7750, 2.0315)), root_schedule_is_safe((3.4916, -4.8224, 2.1095))
        (True, False)
    """
    x = torch.logspace(-3, 0, 20001, dtype=torch.float64)
    a, b, c = (float(t) for t in coeffs)
    y = x
    for _ in range(steps):
        y2 = y * y
        y = y * (a + y2 * (b + c * y2))
        if not bool(((y > 0) & (y <= 1.5)).all()):
            return False
    tail = y[x >= 0.1]
    if not bool(((tail >= 0.5) & (tail <= 1.5)).all()):
        return False
    engine_ok = _engine_validates(coeffs, steps)
    return engine_ok is not False


def _engine_validates(coeffs: tuple[float, float, float], steps: int) -> bool | None:
    """The polar engine's verdict (None when the engine or a compatible signature is unavailable)."""
    try:
        from orthokit.linalg import validate_schedule
    except (ImportError, AttributeError, ModuleNotFoundError):
        return None
    try:
        res = validate_schedule([tuple(coeffs)] * steps)
    except (TypeError, ValueError) as exc:  # engine rejects the table outright
        return False if isinstance(exc, ValueError) else None
    ok = getattr(res, "ok", getattr(res, "passed", res))
    return bool(ok) if isinstance(ok, (bool, int)) else None


_SAFE_CACHE: dict[tuple[float, float, float], bool] = {}


def root_coefficients(
    shape: torch.Size | tuple[int, ...], *, warn: bool = False, return_reason: bool = False
) -> tuple[float, float, float] | tuple[tuple[float, float, float], str]:
    """The quintic ROOT uses for a ``[..., m, n]`` matrix: the published shape entry if it passes
    :func:`root_schedule_is_safe`, else :data:`ROOT_DEFAULT_COEFFICIENTS`.

    Args:
        shape: the matrix shape.
        warn: emit a ``UserWarning`` when falling back.
        return_reason: also return ``"table"``, ``"unknown shape"`` or ``"unsafe table entry"``.

    Example:
        >>> root_coefficients((2048, 3072)), root_coefficients((2048, 2048), return_reason=True)[1]
        ((3.4509, -4.579, 1.9325), 'unsafe table entry')
    """
    m, n = int(shape[-2]), int(shape[-1])
    key = (min(m, n), max(m, n))
    entry = ROOT_SHAPE_COEFFICIENTS.get(key)
    if entry is None:
        coeffs, reason = ROOT_DEFAULT_COEFFICIENTS, "unknown shape"
    else:
        if entry not in _SAFE_CACHE:
            _SAFE_CACHE[entry] = root_schedule_is_safe(entry)
        if _SAFE_CACHE[entry]:
            coeffs, reason = entry, "table"
        else:
            coeffs, reason = ROOT_DEFAULT_COEFFICIENTS, "unsafe table entry"
            if warn:
                warnings.warn(
                    f"ROOT: published coefficients {entry} for shape {key} fail the scalar-map safety check; "
                    f"using {ROOT_DEFAULT_COEFFICIENTS}",
                    stacklevel=2,
                )
    return (coeffs, reason) if return_reason else coeffs


def newton_schulz_constant(
    x: torch.Tensor,
    coeffs: tuple[float, float, float],
    steps: int = 5,
    eps: float = 1e-7,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    r"""Newton–Schulz with one constant quintic (ROOT's "AdaNewton" for a given shape), batched.

    ``X ← X/(‖X‖_F + eps)`` (transposed to wide), then ``steps`` times
    ``A = XXᵀ, X ← aX + (bA + cA²)X`` — singular values follow ``σ ↦ aσ + bσ³ + cσ⁵``.

    Args:
        x: ``[..., m, n]``.
        coeffs: ``(a, b, c)``.
        steps: iterations (ROOT: 5).
        eps: normalization stabilizer.
        dtype: iteration dtype (default: the input dtype promoted to float32 — ROOT iterates in fp32).

    Returns:
        Same shape and dtype as ``x``.

    Example:
        >>> y = newton_schulz_constant(torch.randn(20, 50), (3.4445, -4.7750, 2.0315))
        >>> s = torch.linalg.svdvals(y); bool((s > 0.6).all() and (s < 1.2).all())
        True

    Ref: arXiv:2511.20626; Keller Jordan's Muon for the iteration form.
    """
    a, b, c = (float(t) for t in coeffs)
    it = dtype or work_dtype(x.dtype)
    X = x.to(it)
    tall = X.shape[-2] > X.shape[-1]
    if tall:
        X = X.mT
    X = X / (fro_norm(X).to(it) + eps)
    for _ in range(steps):
        A = X @ X.mT
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    if tall:
        X = X.mT
    return X.to(x.dtype)
