"""ROOT — Robust Orthogonalized Optimizer (Huawei Noah's Ark; arXiv:2511.20626; reference code
github.com/huawei-noah/noah-research ``ROOT/``).

Two ideas on top of Muon:

1. **Proximal outlier suppression.** Split the (Nesterov) momentum ``U`` by an element-wise soft threshold
   ``τ`` into outliers ``S_τ(U) = sign(U)·max(|U| − τ, 0)`` and the bounded remainder
   ``B = U − S_τ(U) = clamp(U, −τ, τ)``; only ``B`` is orthogonalized, the outliers are dropped from the step.
   The reference example sets ``τ`` to the 0.9-quantile of ``|U|``, recomputed every step.
2. **Shape-adaptive Newton iterations ("AdaNewton").** One ``(a, b, c)`` triple per matrix shape
   (key ``(min(m,n), max(m,n))``) applied for 5 steps after Frobenius normalization. The published table covers
   four 2048-row shapes; every other shape falls back, as in the reference code, to Keller Jordan's
   (3.4445, −4.7750, 2.0315) — with a warning once per shape — unless ``fit_shapes=True``, which gives it a
   triple **fitted for that shape** by :func:`fit_root_coefficients` (cached per shape; measured slightly worse
   in training at this repository's benchmark sizes, docs/optim/root.md).

**The per-shape fit (orthokit's generator; the authors' fitting code and data are not published).** ROOT's stated
goal is the same orthogonalization precision for every matrix size. For a shape ``p × q`` (``p ≤ q``) the
Frobenius-normalized singular values of a Gaussian matrix follow, for large sizes, the Marchenko–Pastur law
``σ = sqrt(λ/p)``, ``λ ∈ [(1−√y)², (1+√y)²]``, ``y = p/q``. The fit minimizes, over ``(a, b, c)``,

    J = ½·E_{σ∼MP(p,q)} (p⁵(σ) − 1)²  +  ½·E_{log σ ∼ U[log ℓ, 0]} (p⁵(σ) − 1)²,   ℓ = max((1−√y)/√p, 1e-3)

(``p⁵`` = five applications of ``x ↦ ax + bx³ + cx⁵``): the first half is the mean-square error of the polar
factor of a noise-like matrix of that shape (``‖NS(X) − UVᵀ‖²_F / p``), the second keeps every singular value
between the bulk's lower edge ``ℓ`` and 1 (signal directions above the bulk) close to 1 as well. Levenberg–Marquardt
from Keller's triple, float64, 1024 quadrature nodes per half; a step is accepted only if it lowers ``J`` and the
5-step map stays in the engine's safe region on ``[1e-3, 1]`` (iterates in ``(0, 1.95]``, output ``≤ 1.45``), and
the result must pass :func:`root_schedule_is_safe`. The published entries are **not** reproduced by this fit (their
fitting data are unknown; docs/optim/root.md gives the numbers): for the published shapes the published triples
are used verbatim.

Update::  W ← W(1 − ηλ) − η·0.2·sqrt(max(m, n))·NS_shape(clamp(U, −τ, τ)),
with sum-momentum ``M ← μM + G``, ``U = G + μM`` (reference code).

**Safety of the published shape table (our finding, reproduced by the tests).** The (2048, 2048) triple
(3.4916, −4.8224, 2.1095) is unstable: its single-step maximum on [0, 1] is ≈ 1.2246 and ``p(1.2246) > 1.2246``,
so a normalized singular value near 0.56 is driven to ≈ 3.3 after 5 steps. ROOT therefore only uses a shape
entry whose 5-step scalar map passes the polar engine's validation (:func:`root_schedule_is_safe`, i.e.
``orthokit.linalg.validate_schedule`` on ``[1e-3, 1]``) and otherwise falls back to the default triple and says so
(``root_coefficients(..., return_reason=True)``).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from orthokit.linalg.polar import polar
from orthokit.linalg.schedules import Schedule, validate_schedule
from orthokit.optim._normalizers import abs_quantile, work_dtype
from orthokit.optim.base import OrthogonalOptimizer
from orthokit.optim.muon import validate_muon_kwargs
from orthokit.optim.registry import register_optimizer
from orthokit.optim.transforms import (
    Transform,
    decoupled_weight_decay,
    momentum,
    resolve_ns_dtype,
    scale_by_shape,
)

__all__ = [
    "ROOT",
    "robust_orthogonalize",
    "ROOT_SHAPE_COEFFICIENTS",
    "ROOT_DEFAULT_COEFFICIENTS",
    "root_split",
    "root_schedule",
    "root_schedule_is_safe",
    "root_coefficients",
    "fit_root_coefficients",
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
        >>> from orthokit.optim._normalizers import soft_threshold
        >>> u = torch.randn(32, 16)
        >>> b, tau = root_split(u, 0.9)
        >>> torch.allclose(b + soft_threshold(u, tau), u)
        True

    Ref: arXiv:2511.20626 (soft-thresholding), reference example (0.9-quantile).
    """
    tau = abs_quantile(u, quantile)
    t = tau.to(u.dtype)
    return torch.minimum(torch.maximum(u, -t), t), tau


def root_schedule(coeffs: tuple[float, float, float], steps: int = 5, name: str = "root") -> Schedule:
    """An engine :class:`~orthokit.linalg.Schedule` applying one constant quintic ``steps`` times.

    Normalization ``X / (‖X‖_F + 1e-7)`` (no safety factor), as in ROOT's reference code.

    Example:
        >>> root_schedule((3.4445, -4.7750, 2.0315)).steps
        5
    """
    return Schedule(
        name,
        (tuple(float(t) for t in coeffs),),
        tail="stationary",
        default_steps=steps,
        norm_eps=1e-7,
        citation="ROOT, arXiv:2511.20626 (shape-adaptive Newton coefficients)",
    )


def root_schedule_is_safe(coeffs: tuple[float, float, float], steps: int = 5) -> bool:
    """Whether ``steps`` applications of ``p(x) = ax + bx³ + cx⁵`` pass the polar engine's scalar-map validation.

    Delegates to :func:`orthokit.linalg.validate_schedule` on ``[1e-3, 1]``: every iterate must stay positive
    (no sign flip of a singular value), intermediates ``≤ 2`` and outputs ``≤ 1.5``.

    Example:
        >>> root_schedule_is_safe((3.4445, -4.7750, 2.0315)), root_schedule_is_safe((3.4916, -4.8224, 2.1095))
        (True, False)
    """
    try:
        validate_schedule(root_schedule(coeffs, steps), steps, lower=1e-3)
    except ValueError:
        return False
    return True


_SAFE_CACHE: dict[tuple[float, float, float], bool] = {}
_FIT_NODES = 1024
_SAFE_GRID = np.geomspace(1e-3, 1.0, 2001)
_FIT_WARNED: set[tuple[int, int, int]] = set()


def _mp_nodes(p: int, q: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Quadrature of the Marchenko–Pastur law of Frobenius-normalized singular values of a Gaussian ``p × q``.

    ``λ = λ₋ + (λ₊ − λ₋)(1 − cos θ)/2`` with the midpoint rule in ``θ`` (the density's square-root edges become
    smooth); weights ∝ ``sin²θ / λ``, summing to 1; ``σ = sqrt(λ/p)`` clipped to ``≤ 1``.
    """
    y = p / q
    lo, hi = (1 - math.sqrt(y)) ** 2, (1 + math.sqrt(y)) ** 2
    th = (np.arange(n) + 0.5) * math.pi / n
    lam = lo + (hi - lo) * (1 - np.cos(th)) / 2
    w = np.sin(th) ** 2 / lam
    return np.minimum(np.sqrt(lam / p), 1.0), w / w.sum()


def _map_and_jacobian(c: np.ndarray, x: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """``p^steps(x)`` and its derivative with respect to ``(a, b, c)`` (forward mode), float64."""
    jac = np.zeros((*x.shape, 3))
    for _ in range(steps):
        x2 = x * x
        dp = c[0] + x2 * (3 * c[1] + 5 * c[2] * x2)
        jac = jac * dp[:, None] + np.stack([x, x * x2, x * x2 * x2], axis=-1)
        x = x * (c[0] + x2 * (c[1] + c[2] * x2))
    return x, jac


def _in_safe_region(c: np.ndarray, steps: int) -> bool:
    x = _SAFE_GRID
    for _ in range(steps):
        x = x * (c[0] + x * x * (c[1] + c[2] * x * x))
        if not (np.all(x > 0) and np.all(x <= 1.95)):
            return False
    return bool(np.all(x <= 1.45))


@functools.lru_cache(maxsize=512)
def _fit(p: int, q: int, steps: int) -> tuple[tuple[float, float, float], float, float]:
    sig, w = _mp_nodes(p, q, _FIT_NODES)
    ell = max((1 - math.sqrt(p / q)) / math.sqrt(p), 1e-3)
    x = np.concatenate([sig, np.geomspace(ell, 1.0, _FIT_NODES)])
    sw = np.sqrt(np.concatenate([0.5 * w, np.full(_FIT_NODES, 0.5 / _FIT_NODES)]))

    def residual(c: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        y, jac = _map_and_jacobian(c, x, steps)
        r = sw * (y - 1.0)
        return r, jac * sw[:, None], float(r @ r)

    c = np.array(ROOT_DEFAULT_COEFFICIENTS, dtype=np.float64)
    r, jac, f = residual(c)
    f_keller, damping = f, 1e-3
    for _ in range(300):
        a, g = jac.T @ jac, jac.T @ r
        for _ in range(40):
            cand = c + np.linalg.solve(a + damping * np.diag(np.diag(a)), -g)
            r2, jac2, f2 = residual(cand)
            if f2 < f and _in_safe_region(cand, steps):
                break
            damping *= 4.0
        else:
            break  # no acceptable step: converged (or pinned at the safe region's boundary)
        done = (f - f2) <= 1e-12 * f
        c, r, jac, f = cand, r2, jac2, f2
        damping = max(damping / 3.0, 1e-12)
        if done:
            break
    coeffs = (round(float(c[0]), 6), round(float(c[1]), 6), round(float(c[2]), 6))
    return coeffs, math.sqrt(f), math.sqrt(f_keller)


def fit_root_coefficients(
    shape: torch.Size | tuple[int, ...], steps: int = 5, *, return_error: bool = False
) -> tuple[float, float, float] | tuple[tuple[float, float, float], float, float]:
    """ROOT's per-shape Newton–Schulz triple, fitted for any ``[..., m, n]`` shape (module docstring: objective).

    Deterministic (float64, no randomness), rounded to 6 decimals, cached per ``(min, max, steps)``; ~0.2 s
    per new shape. Falls back to :data:`ROOT_DEFAULT_COEFFICIENTS` with a one-time ``UserWarning`` when the
    fitted triple does not pass :func:`root_schedule_is_safe` or does not improve on Keller's triple.

    Args:
        shape: the matrix shape (only the last two dims matter; order does not).
        steps: number of Newton–Schulz steps the triple is fitted for (ROOT: 5).
        return_error: also return the root-mean-square objective ``sqrt(J)`` of the fit and of Keller's triple.

    Example:
        >>> c, err, err_keller = fit_root_coefficients((768, 3072), return_error=True)
        >>> root_schedule_is_safe(c), err < 0.25 * err_keller
        (True, True)
    """
    if len(shape) < 2:
        raise ValueError(f"shape must have at least 2 dims, got {tuple(shape)}")
    m, n = int(shape[-2]), int(shape[-1])
    if m < 1 or n < 1:
        raise ValueError(f"shape must have positive matrix dims, got {tuple(shape)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    p, q = min(m, n), max(m, n)
    coeffs, err, err_keller = _fit(p, q, steps)
    if not (err < err_keller and root_schedule_is_safe(coeffs, steps)):
        key = (p, q, steps)
        if key not in _FIT_WARNED:
            _FIT_WARNED.add(key)
            warnings.warn(
                f"ROOT: no safe per-shape coefficients improving on Keller's for shape {(p, q)} "
                f"({steps} steps); using {ROOT_DEFAULT_COEFFICIENTS}",
                stacklevel=2,
            )
        coeffs, err = ROOT_DEFAULT_COEFFICIENTS, err_keller
    return (coeffs, err, err_keller) if return_error else coeffs


def root_coefficients(
    shape: torch.Size | tuple[int, ...], *, fit: bool = True, warn: bool = False, return_reason: bool = False
) -> tuple[float, float, float] | tuple[tuple[float, float, float], str]:
    """The quintic ROOT uses for a ``[..., m, n]`` matrix.

    The published shape entry if it passes :func:`root_schedule_is_safe`; otherwise, with ``fit=True``, the
    triple fitted for the shape (:func:`fit_root_coefficients`); with ``fit=False``, the reference code's
    fallback :data:`ROOT_DEFAULT_COEFFICIENTS`.

    Args:
        shape: the matrix shape.
        fit: fit unknown shapes (True) or fall back to Keller's triple like the reference code (False).
        warn: emit a ``UserWarning`` when a published entry is rejected as unsafe.
        return_reason: also return ``"table"``, ``"fitted"``, ``"unsafe table entry, fitted"``,
            ``"unknown shape"`` or ``"unsafe table entry"`` (the last two: ``fit=False``).

    Example:
        >>> root_coefficients((2048, 3072)), root_coefficients((2048, 2048), fit=False, return_reason=True)[1]
        ((3.4509, -4.579, 1.9325), 'unsafe table entry')
        >>> root_coefficients((64, 32), return_reason=True)[1], root_coefficients((64, 32), fit=False)
        ('fitted', (3.4445, -4.775, 2.0315))
    """
    m, n = int(shape[-2]), int(shape[-1])
    key = (min(m, n), max(m, n))
    entry = ROOT_SHAPE_COEFFICIENTS.get(key)
    if entry is not None:
        if entry not in _SAFE_CACHE:
            _SAFE_CACHE[entry] = root_schedule_is_safe(entry)
        if _SAFE_CACHE[entry]:
            coeffs, reason = entry, "table"
        else:
            coeffs = fit_root_coefficients(key) if fit else ROOT_DEFAULT_COEFFICIENTS
            reason = "unsafe table entry, fitted" if fit else "unsafe table entry"
            if warn:
                warnings.warn(
                    f"ROOT: published coefficients {entry} for shape {key} fail the scalar-map safety check; "
                    f"using {coeffs}",
                    stacklevel=2,
                )
    elif fit:
        coeffs, reason = fit_root_coefficients(key), "fitted"
    else:
        coeffs, reason = ROOT_DEFAULT_COEFFICIENTS, "unknown shape"
    return (coeffs, reason) if return_reason else coeffs  # type: ignore[return-value]


def newton_schulz_constant(
    x: torch.Tensor,
    coeffs: tuple[float, float, float],
    steps: int = 5,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    r"""Newton–Schulz with one constant quintic (ROOT's "AdaNewton" for a given shape), batched, via the engine.

    ``X ← X/(‖X‖_F + 1e-7)`` (transposed to wide), then ``steps`` times ``A = XXᵀ, X ← aX + (bA + cA²)X`` —
    singular values follow ``σ ↦ aσ + bσ³ + cσ⁵``. Runs ``orthokit.polar(method="newton_schulz")`` with
    :func:`root_schedule`.

    Args:
        x: ``[..., m, n]``.
        coeffs: ``(a, b, c)``.
        steps: iterations (ROOT: 5).
        dtype: iteration dtype (``None``: the input dtype promoted to float32 — ROOT iterates in fp32).

    Returns:
        Same shape and dtype as ``x``.

    Example:
        >>> y = newton_schulz_constant(torch.randn(20, 50), (3.4445, -4.7750, 2.0315))
        >>> s = torch.linalg.svdvals(y); bool((s > 0.6).all() and (s < 1.2).all())
        True

    Ref: arXiv:2511.20626; Keller Jordan's Muon for the iteration form.
    """
    it = dtype or work_dtype(x.dtype)
    return polar(x, method="newton_schulz", steps=steps, dtype=it, schedule=root_schedule(coeffs, steps))


_WARNED: set[tuple[int, int]] = set()


class robust_orthogonalize(Transform):
    """Transform: ROOT's ``clamp(U, −τ, τ)`` (``τ`` = ``quantile`` of ``|U|`` per matrix) followed by the
    shape-adaptive constant-coefficient Newton–Schulz (:func:`root_coefficients`, engine-validated).

    Same-shape matrix views are stacked into one engine call when the group's ``batched`` is True (identical
    results to the per-parameter path). Reads ``quantile``, ``ns_steps``, ``ns_dtype``, ``batched``,
    ``shape_table``, ``fit_shapes``. A rejected (unsafe) published entry is warned about once per shape.

    Example:
        >>> t = robust_orthogonalize()
        >>> g = {"quantile": 0.9, "ns_steps": 5, "ns_dtype": None, "batched": True, "shape_table": True}
        >>> t.update([torch.randn(6, 4)], [{}], [torch.zeros(6, 4)], g)[0].shape
        torch.Size([6, 4])
    """

    name = "robust_orthogonalize"

    def update(
        self, updates: list[Tensor], states: list[dict[str, Any]], params: list[Tensor], group: dict[str, Any]
    ) -> list[Tensor]:
        views = [self._view(p) for p in params]
        steps = group["ns_steps"] or 5
        out: list[Tensor | None] = [None] * len(updates)
        buckets: dict[tuple[Any, ...], list[int]] = defaultdict(list)
        for i, (u, v) in enumerate(zip(updates, views)):
            key = (v.m, v.n, u.dtype, u.device) if group["batched"] else (i,)
            buckets[key].append(i)
        for idx in buckets.values():
            v0 = views[idx[0]]
            mats = [views[i].as_matrices(updates[i]) for i in idx]
            x = mats[0] if len(mats) == 1 else torch.cat(mats, dim=0)
            b, _ = root_split(x, group["quantile"])
            if group["shape_table"]:
                fit = group.get("fit_shapes", False)
                coeffs, reason = root_coefficients((v0.m, v0.n), fit=fit, return_reason=True)
                if steps != 5 and reason in ("fitted", "unsafe table entry, fitted"):
                    coeffs = fit_root_coefficients((v0.m, v0.n), steps)  # fitted for the step count in use
                key = (min(v0.m, v0.n), max(v0.m, v0.n))
                if reason.startswith("unsafe table entry") and key not in _WARNED:
                    _WARNED.add(key)
                    warnings.warn(
                        f"ROOT: the published coefficients for shape {key} fail the engine's scalar-map "
                        f"validation; using {coeffs}",
                        stacklevel=2,
                    )
                elif reason == "unknown shape" and key not in _WARNED:
                    _WARNED.add(key)
                    warnings.warn(
                        f"ROOT: shape {key} is not in the published coefficient table; using Keller's "
                        f"{coeffs} as the reference code does (fit_shapes=True fits coefficients per shape)",
                        stacklevel=2,
                    )
            else:
                coeffs = ROOT_DEFAULT_COEFFICIENTS
            dt = resolve_ns_dtype(group["ns_dtype"], x.device, b.shape)
            o = newton_schulz_constant(b, coeffs, steps=steps, dtype=dt)
            for i, oi in zip(idx, o.split([views[i].mats for i in idx], dim=0)):
                out[i] = oi.reshape(views[i].shape)
        return out  # type: ignore[return-value]


@register_optimizer(
    "root",
    default_lr=0.02,
    state_keys=("momentum_buffer",),
    supports_batched=True,
    supports_distributed=False,
    direction="polar_of_clipped",  # NS of clamp(U, −τ, τ), not of U (tests/optim/test_root.py)
    paper="arXiv:2511.20626 (ROOT, Huawei Noah's Ark)",
)
class ROOT(OrthogonalOptimizer):
    """ROOT: outlier-clipped (soft-threshold) momentum orthogonalized with shape-adaptive Newton–Schulz.

    Chain: ``momentum(sum, Nesterov) → robust_orthogonalize → scale_by_shape("match_rms_adamw") →
    decoupled_weight_decay`` (module docstring for the equations and the shape-table safety finding).

    Args:
        params: parameters / ``(name, param)`` pairs / param groups.
        lr: learning rate (reference default 1e-3 with Moonlight scaling, AdamW-like).
        momentum: μ (0.95), sum convention ``M ← μM + G`` as in the reference code.
        quantile: threshold quantile ``q`` of ``|U|`` (0.9); ``1.0`` disables the outlier clipping.
        shape_table: shape-adaptive coefficients (True): the published entry where it passes validation, else
            Keller's triple, warned once per shape (or the per-shape fit with ``fit_shapes=True``); False always
            uses Keller's triple.
        fit_shapes: fit the coefficients of shapes the published table does not cover (True); False (default)
            is the reference code's fallback to Keller's triple for them.
        ns_steps: Newton–Schulz steps (5).
        ns_dtype: iteration dtype (``"auto"``; ROOT iterates in fp32).
        weight_decay: decoupled λ (reference 0.1).
        nesterov, momentum_convention, scale, skip_nonfinite, batched: as in Muon.

    Example:
        >>> model = torch.nn.Linear(16, 32, bias=False)
        >>> opt = ROOT(model.parameters(), lr=1e-3)
        >>> model(torch.randn(4, 16)).square().mean().backward(); opt.step()

    Ref: arXiv:2511.20626; github.com/huawei-noah/noah-research (ROOT).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | torch.Tensor = 1e-3,
        momentum: float = 0.95,
        quantile: float = 0.9,
        shape_table: bool = True,
        fit_shapes: bool = False,
        ns_steps: int = 5,
        ns_dtype: torch.dtype | str | None = "auto",
        nesterov: bool = True,
        momentum_convention: str = "sum",
        weight_decay: float = 0.1,
        scale: str = "match_rms_adamw",
        skip_nonfinite: bool = False,
        batched: bool = True,
        fallback: str = "adamw",
        fallback_lr: float | torch.Tensor | None = None,
        fallback_betas: tuple[float, float] = (0.9, 0.95),
        fallback_eps: float = 1e-8,
        fallback_weight_decay: float | None = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            momentum=momentum,
            quantile=quantile,
            shape_table=shape_table,
            fit_shapes=fit_shapes,
            nesterov=nesterov,
            momentum_convention=momentum_convention,
            weight_decay=weight_decay,
            ns_method="keller",  # validated name; the coefficients themselves are chosen per shape
            ns_steps=ns_steps,
            ns_dtype=ns_dtype,
            scale=scale,
            batched=batched,
        )
        super().__init__(
            params,
            defaults,
            skip_nonfinite=skip_nonfinite,
            fallback=fallback,
            fallback_lr=fallback_lr,
            fallback_betas=fallback_betas,
            fallback_eps=fallback_eps,
            fallback_weight_decay=fallback_weight_decay,
        )

    def validate_group(self, group: dict[str, Any]) -> None:
        """Muon's checks plus ``quantile`` ∈ (0, 1] and ``shape_table`` bool."""
        super().validate_group(group)
        if group["algorithm"] == "ortho":
            validate_muon_kwargs(group)
            q = group["quantile"]
            if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0.0 < q <= 1.0:
                raise ValueError(f"quantile must be a float in (0, 1], got {q!r}")
            for k in ("shape_table", "fit_shapes"):
                if not isinstance(group.get(k, True), bool):
                    raise TypeError(f"{k} must be a bool, got {type(group[k]).__name__}")

    def transforms(self, group: dict[str, Any]) -> Sequence[Transform]:
        """``momentum → robust_orthogonalize → scale_by_shape → decoupled_weight_decay``."""
        return [
            momentum(group["momentum"], group["nesterov"], group["momentum_convention"]),
            robust_orthogonalize(),
            scale_by_shape(group["scale"]),
            decoupled_weight_decay(),
        ]
