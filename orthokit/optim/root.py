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
entry whose 5-step scalar map passes the polar engine's validation (:func:`root_schedule_is_safe`, i.e.
``orthokit.linalg.validate_schedule`` on ``[1e-3, 1]``) and otherwise falls back to the default triple and says so
(``root_coefficients(..., return_reason=True)``).
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

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
    results to the per-parameter path). Reads ``quantile``, ``ns_steps``, ``ns_dtype``, ``batched``, ``shape_table``.
    A fallback from an unsafe published entry is warned about once per shape.

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
                coeffs, reason = root_coefficients((v0.m, v0.n), return_reason=True)
                key = (min(v0.m, v0.n), max(v0.m, v0.n))
                if reason == "unsafe table entry" and key not in _WARNED:
                    _WARNED.add(key)
                    warnings.warn(
                        f"ROOT: the published coefficients for shape {key} fail the engine's scalar-map "
                        f"validation; using {ROOT_DEFAULT_COEFFICIENTS}",
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
        shape_table: use the published per-shape coefficients where they pass validation (True); False always
            uses Keller's triple.
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
        ns_steps: int = 5,
        ns_dtype: torch.dtype | str | None = "auto",
        nesterov: bool = True,
        momentum_convention: str = "sum",
        weight_decay: float = 0.1,
        scale: str = "match_rms_adamw",
        skip_nonfinite: bool = False,
        batched: bool = True,
    ) -> None:
        defaults = dict(
            lr=lr,
            momentum=momentum,
            quantile=quantile,
            shape_table=shape_table,
            nesterov=nesterov,
            momentum_convention=momentum_convention,
            weight_decay=weight_decay,
            ns_method="keller",  # validated name; the coefficients themselves are chosen per shape
            ns_steps=ns_steps,
            ns_dtype=ns_dtype,
            scale=scale,
            batched=batched,
        )
        super().__init__(params, defaults, skip_nonfinite=skip_nonfinite)

    def validate_group(self, group: dict[str, Any]) -> None:
        """Muon's checks plus ``quantile`` ∈ (0, 1] and ``shape_table`` bool."""
        super().validate_group(group)
        if group["algorithm"] == "ortho":
            validate_muon_kwargs(group)
            q = group["quantile"]
            if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0.0 < q <= 1.0:
                raise ValueError(f"quantile must be a float in (0, 1], got {q!r}")
            if not isinstance(group["shape_table"], bool):
                raise TypeError(f"shape_table must be a bool, got {type(group['shape_table']).__name__}")

    def transforms(self, group: dict[str, Any]) -> Sequence[Transform]:
        """``momentum → robust_orthogonalize → scale_by_shape → decoupled_weight_decay``."""
        return [
            momentum(group["momentum"], group["nesterov"], group["momentum_convention"]),
            robust_orthogonalize(),
            scale_by_shape(group["scale"]),
            decoupled_weight_decay(),
        ]
