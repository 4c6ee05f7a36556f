"""NAMO and NAMO-D — "Adam Improves Muon: Adaptive Moment Estimation with Orthogonalized Momentum"
(Zhang, Liu, Schaeffer; arXiv:2602.17080). Reference: the authors' code, github.com/minxin-zhg/namo
``src/namo.py`` (read at commit 344d11f).

NAMO keeps Muon's direction ``O = polar(U)`` (``U`` = Nesterov input, or the momentum without Nesterov) and
multiplies it by one Adam-type adaptive step built from norms::

    M ← μ₁M + (1−μ₁)G ;      U = (1−μ₁)G + μ₁M  (nesterov=True, default)  or  U = M
    v ← μ₂v + (1−μ₂)‖G‖_F²                                               (scalar per matrix)
    a = η · sqrt(1−μ₂ᵗ)/(1−μ₁ᵗ + 1e-12) · ‖U‖_F / (sqrt(v) + ε)
    W ← W · (1 − λ·min(a, 1))          W ← W − min(a·s(m,n), 1) · O,     s = 0.2·sqrt(max(m, n))

NAMO-D replaces the scalar by one scale per column (per input feature), clamped toward their mean::

    v_j ← μ₂v_j + (1−μ₂)‖G_{:,j}‖² ;   d_j = ‖U_{:,j}‖ / (sqrt(v_j) + ε)
    d_j ← clamp(d_j, c·d̄, d̄/c),  d̄ = mean_j d_j  (0 < c ≤ 1, default 0.75; c = 0 → no clamp)
    b = η · sqrt(1−μ₂ᵗ)/(1−μ₁ᵗ + 1e-12)
    W_{:,j} ← W_{:,j} · max(1 − λ·min(b·d_j, 1), 0)      W ← W − O · diag(min(b·s(m,n)·d_j, 1))

Both step factors are capped at 1 (``cap=True``), the weight decay uses the un-shaped factor, and the learning
rate sits inside the caps (so the update is not linear in ``lr``). Defaults are the official ones: lr 1e-2,
weight decay 0.1, μ₁ 0.95, μ₂ 0.99, ε 1e-8, Nesterov on, shape scale 0.2·sqrt(max(m, n)), clamp 0.75.

Robustness: norms are taken after dividing by the largest entry (no overflow for huge finite gradients), the
second-moment state stores ``sqrt(v)`` (an RMS, in range whenever the gradient is), and every state write and the
weight decay are staged and committed only when the whole update is finite (``_normalizers.StepStage``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from orthokit.optim._normalizers import (
    StepStage,
    check_positive,
    check_unit_interval,
    commit_stage,
    max_abs,
    safe_norm,
    staged_momentum,
    state_dtype,
)
from orthokit.optim.base import OrthogonalOptimizer
from orthokit.optim.muon import validate_muon_kwargs
from orthokit.optim.registry import register_optimizer
from orthokit.optim.transforms import MatrixView, Transform, orthogonalize, shape_scale

__all__ = ["NAMO", "NAMOD", "namo_scale", "namo_d_diagonal", "namo_adapt", "namo_bias_correction"]


def namo_bias_correction(step: int, beta1: float, beta2: float) -> float:
    """``sqrt(1 − μ₂ᵗ) / (1 − μ₁ᵗ + 1e-12)`` (the official code's AdamNorm-style correction).

    Example:
        >>> round(namo_bias_correction(1, 0.95, 0.99), 6)
        2.0
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise ValueError(f"step must be an int >= 1, got {step!r}")
    for name, b in (("beta1", beta1), ("beta2", beta2)):
        if not 0.0 <= b < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {b}")
    return math.sqrt(1.0 - beta2**step) / (1.0 - beta1**step + 1e-12)


def namo_scale(
    u: torch.Tensor, g: torch.Tensor, rms: torch.Tensor, beta2: float, eps: float = 1e-8
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""NAMO's un-corrected adaptive scalar per matrix, overflow-free (pure; returns the new state).

    .. math::
        v = \mu_2\,\mathrm{rms}^2 + (1-\mu_2)\|G\|_F^2,\qquad \alpha = \|U\|_F / (\sqrt{v} + \epsilon)

    Args:
        u: orthogonalizer input ``[..., m, n]`` (Nesterov input or momentum).
        g: gradient, same shape.
        rms: state ``sqrt(v)`` of the previous step, ``[..., 1, 1]``.
        beta2: ``μ₂``.
        eps: ε.

    Returns:
        ``(α, sqrt(v_new))``, both float64 ``[..., 1, 1]``; multiply ``α`` by
        :func:`namo_bias_correction` and the learning rate.

    Example:
        >>> g = torch.randn(4, 3); a, r = namo_scale(0.05 * g, g, torch.zeros(1, 1), 0.99)
        >>> round(float(a * namo_bias_correction(1, 0.95, 0.99)), 5)  # first step, no noise: 1
        1.0

    Ref: arXiv:2602.17080; github.com/minxin-zhg/namo src/namo.py (``NAMO.step``).
    """
    if rms.shape != (*u.shape[:-2], 1, 1):
        raise ValueError(f"NAMO state has shape {tuple(rms.shape)}, expected {(*u.shape[:-2], 1, 1)}")
    if not 0.0 <= beta2 < 1.0:
        raise ValueError(f"beta2 must be in [0, 1), got {beta2}")
    r64 = rms.to(torch.float64)
    v = beta2 * r64 * r64 + (1.0 - beta2) * safe_norm(g).square()
    root = v.sqrt()
    return safe_norm(u) / (root + eps), root


def namo_d_diagonal(
    u: torch.Tensor, g: torch.Tensor, rms: torch.Tensor, beta2: float, clamp: float = 0.75, eps: float = 1e-8
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""NAMO-D's clamped column scales ``d ∈ R^n`` per matrix (pure; returns the new state).

    .. math::
        v_j = \mu_2\,\mathrm{rms}_j^2 + (1-\mu_2)\|G_{:,j}\|^2,\quad d_j = \frac{\|U_{:,j}\|}{\sqrt{v_j}+\epsilon},
        \quad d_j \leftarrow \min(\max(d_j, c\bar d), \bar d / c)

    (no clamp when ``c = 0`` or when ``d̄`` is not a positive finite number, as in the official code).

    Args:
        u, g: orthogonalizer input and gradient ``[..., m, n]``.
        rms: state ``sqrt(v)`` ``[..., 1, n]``.
        beta2: ``μ₂``.
        clamp: ``c ∈ [0, 1]``; 1 gives equal entries.
        eps: ε.

    Returns:
        ``(d, sqrt(v_new))``, float64 ``[..., 1, n]``; the update is ``O·diag(d)`` times the corrected lr.

    Example:
        >>> g = torch.randn(6, 4); d, _ = namo_d_diagonal(g, g, torch.zeros(1, 4), 0.99, clamp=1.0)
        >>> torch.allclose(d, d.mean())
        True

    Ref: arXiv:2602.17080; github.com/minxin-zhg/namo src/namo.py (``NAMO_D.step``).
    """
    if isinstance(clamp, bool) or not 0.0 <= clamp <= 1.0:
        raise ValueError(f"NAMO-D clamp must be in [0, 1], got {clamp}")
    if rms.shape != (*u.shape[:-2], 1, u.shape[-1]):
        raise ValueError(
            f"NAMO-D state has shape {tuple(rms.shape)}, expected {(*u.shape[:-2], 1, u.shape[-1])}"
        )
    if not 0.0 <= beta2 < 1.0:
        raise ValueError(f"beta2 must be in [0, 1), got {beta2}")
    r64 = rms.to(torch.float64)
    v = beta2 * r64 * r64 + (1.0 - beta2) * safe_norm(g, dim=-2, scale=max_abs(g)).square()
    root = v.sqrt()
    d = safe_norm(u, dim=-2, scale=max_abs(u)) / (root + eps)
    if clamp > 0.0:
        mu = d.mean(dim=-1, keepdim=True)
        ok = torch.isfinite(mu) & (mu > 0)
        lo = torch.where(ok, mu * clamp, torch.zeros_like(mu))
        hi = torch.where(ok, mu / clamp, torch.full_like(mu, math.inf))
        d = torch.minimum(torch.maximum(d, lo), hi)
    return d, root


def _cols(x: Tensor, view: MatrixView) -> Tensor:
    """Matrices with the input features on the last dim (storage transposed for ``layout="in_out"``)."""
    return x.mT if view.transposed else x


class namo_adapt(Transform):
    """Transform: NAMO's scalar (``diagonal=False``) or NAMO-D's column diagonal (``diagonal=True``) step on the
    orthogonalized update, with the shape scale, the caps at 1 and the weight decay of the official code.

    Reads the orthogonalizer input from the :class:`StepStage` (written by ``staged_momentum``) and ``G`` from
    ``p.grad``; group keys ``lr``, ``momentum`` (μ₁), ``beta2`` (μ₂), ``eps``, ``clamp``, ``scale``, ``cap``,
    ``weight_decay``. Returns ``factor·O`` with ``factor = min(a·s, 1)/lr`` so the optimizer's ``p − lr·u`` applies
    the capped step; the weight decay and the state (``namo_rms``, ``namo_step``) are staged.

    Example:
        >>> t = namo_adapt(StepStage(), diagonal=True)
        >>> t.init(torch.zeros(4, 3), {})["namo_rms"].shape
        torch.Size([1, 1, 3])
    """

    name = "namo_adapt"
    state_keys = ("namo_rms", "namo_step")

    def __init__(self, stage: StepStage, diagonal: bool = False) -> None:
        self.stage_ = stage
        self.diagonal = bool(diagonal)

    def init(self, param: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        v = self._view(param)
        shape = (v.mats, 1, v.fan_in) if self.diagonal else (v.mats, 1, 1)
        return {
            "namo_rms": torch.zeros(shape, dtype=state_dtype(param.dtype), device=param.device),
            "namo_step": torch.tensor(0.0, dtype=torch.float32),
        }

    def update(
        self, updates: list[Tensor], states: list[dict[str, Any]], params: list[Tensor], group: dict[str, Any]
    ) -> list[Tensor]:
        b1, b2, eps = group["momentum"], group["beta2"], group["eps"]
        wd = float(group.get("weight_decay", 0.0))
        lr = group["lr"]
        lr_f = float(lr.item()) if isinstance(lr, Tensor) else float(lr)
        cap = group["cap"]
        out = []
        for i, (o, st, p) in enumerate(zip(updates, states, params)):
            v = self._view(p)
            step = int(st["namo_step"].item()) + 1
            self.stage_.stage(st["namo_step"], st["namo_step"] + 1.0)
            g = _cols(v.as_matrices(p.grad), v)
            u = _cols(v.as_matrices(self.stage_.inputs[i]), v)
            if self.diagonal:
                s, root = namo_d_diagonal(u, g, st["namo_rms"], b2, group["clamp"], eps)
            else:
                s, root = namo_scale(u, g, st["namo_rms"], b2, eps)
            self.stage_.stage(st["namo_rms"], root.to(st["namo_rms"].dtype))
            a = (
                lr_f * namo_bias_correction(step, b1, b2) * s
            )  # official "adaptive_lr" (NAMO) / col_scale·base_lr
            a_up = a * shape_scale(group["scale"], v.fan_out, v.fan_in)
            if cap:
                a, a_up = a.clamp(max=1.0), a_up.clamp(max=1.0)
            f = a_up / lr_f if lr_f > 0 else torch.zeros_like(a_up)
            om = _cols(v.as_matrices(o), v)
            out.append(_cols((om.to(f.dtype) * f).to(o.dtype), v).reshape(v.shape))
            if wd != 0.0 and lr_f > 0:
                decay = 1.0 - wd * a
                if self.diagonal:
                    decay = decay.clamp(min=0.0)
                if decay.numel() == 1:
                    self.stage_.scale_param(p, decay.reshape(()))
                else:
                    full = _cols(decay.expand(v.mats, 1, v.fan_in).expand(*u.shape), v)
                    self.stage_.scale_param(p, full.reshape(v.shape))
        return out


class _NAMOBase(OrthogonalOptimizer):
    _diagonal = False

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | torch.Tensor = 1e-2,
        momentum: float = 0.95,
        beta2: float = 0.99,
        eps: float = 1e-8,
        clamp: float = 0.75,
        nesterov: bool = True,
        weight_decay: float = 0.1,
        cap: bool = True,
        ns_method: str = "polar_express",
        ns_steps: int | None = None,
        ns_dtype: torch.dtype | str | None = "auto",
        scale: str = "match_rms_adamw",
        skip_nonfinite: bool = False,
        batched: bool = True,
        distributed: bool | str = False,
        process_group: Any = None,
        fallback: str = "adamw",
        fallback_lr: float | torch.Tensor | None = None,
        fallback_betas: tuple[float, float] = (0.9, 0.95),
        fallback_eps: float = 1e-8,
        fallback_weight_decay: float | None = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            momentum=momentum,
            beta2=beta2,
            eps=eps,
            clamp=clamp,
            nesterov=nesterov,
            momentum_convention="ema",
            weight_decay=weight_decay,
            cap=cap,
            ns_method=ns_method,
            ns_steps=ns_steps,
            ns_dtype=ns_dtype,
            scale=scale,
            batched=batched,
        )
        super().__init__(
            params,
            defaults,
            skip_nonfinite=skip_nonfinite,
            distributed=distributed,
            process_group=process_group,
            fallback=fallback,
            fallback_lr=fallback_lr,
            fallback_betas=fallback_betas,
            fallback_eps=fallback_eps,
            fallback_weight_decay=fallback_weight_decay,
        )

    def validate_group(self, group: dict[str, Any]) -> None:
        """Muon's checks plus ``beta2`` ∈ [0, 1), ``eps`` > 0, ``clamp`` ∈ [0, 1], ``cap`` bool, EMA momentum."""
        super().validate_group(group)
        if group["algorithm"] == "ortho":
            validate_muon_kwargs(group)
            check_unit_interval("beta2", group["beta2"])
            check_positive("eps", group["eps"])
            check_unit_interval("clamp", group["clamp"], closed_right=True)
            if not isinstance(group["cap"], bool):
                raise TypeError(f"cap must be a bool, got {type(group['cap']).__name__}")
            if group["momentum_convention"] != "ema":
                raise ValueError("NAMO's bias correction assumes the EMA momentum convention ('ema')")

    def transforms(self, group: dict[str, Any]) -> Sequence[Transform]:
        """``staged_momentum → orthogonalize → namo_adapt (shape scale, caps, staged decay) → commit_stage``."""
        stage = StepStage()
        return [
            staged_momentum(group["momentum"], group["nesterov"], stage),
            orthogonalize(group["ns_method"], group["ns_steps"], group["ns_dtype"], group["batched"]),
            namo_adapt(stage, diagonal=self._diagonal),
            commit_stage(stage),
        ]


@register_optimizer(
    "namo",
    default_lr=0.02,
    state_keys=("momentum_buffer", "namo_rms", "namo_step"),
    supports_batched=True,
    supports_distributed=True,
    paper="Zhang, Liu, Schaeffer 2026, arXiv:2602.17080; github.com/minxin-zhg/namo",
)
class NAMO(_NAMOBase):
    """NAMO: Muon's orthogonalized Nesterov momentum times one Adam-type adaptive step (official rule).

    ``a = η·sqrt(1−μ₂ᵗ)/(1−μ₁ᵗ)·‖U‖_F/(sqrt(v)+ε)``; ``W ← W(1 − λ·min(a,1)) − min(a·0.2·sqrt(max(m,n)), 1)·O``
    (module docstring).

    Args:
        params: parameters / ``(name, param)`` pairs / param groups.
        lr: learning rate η (official default 1e-2).
        momentum: μ₁ (0.95).
        beta2: μ₂ for the squared-norm EMA (0.99).
        eps: ε added to ``sqrt(v)`` (1e-8).
        clamp: unused by NAMO (NAMO-D's clamping constant).
        nesterov: orthogonalize (and measure) the Nesterov input (official default True).
        weight_decay: λ (official default 0.1), scaled by the capped adaptive step.
        cap: cap both step factors at 1 as the official code does.
        ns_method, ns_steps, ns_dtype, skip_nonfinite, batched, distributed, process_group: as in Muon
            (``ns_method="keller", ns_steps=5`` is the official orthogonalizer).
        scale: shape scale (``"match_rms_adamw"`` = the official ``0.2·sqrt(max(m, n))``).

    Example:
        >>> model = torch.nn.Linear(16, 32, bias=False)
        >>> opt = NAMO(model.parameters())
        >>> model(torch.randn(4, 16)).square().mean().backward(); opt.step()

    Ref: Zhang, Liu, Schaeffer 2026, arXiv:2602.17080; github.com/minxin-zhg/namo.
    """

    _diagonal = False


@register_optimizer(
    "namo_d",
    aliases=("namod",),
    default_lr=0.02,
    state_keys=("momentum_buffer", "namo_rms", "namo_step"),
    supports_batched=True,
    supports_distributed=True,
    paper="Zhang, Liu, Schaeffer 2026, arXiv:2602.17080; github.com/minxin-zhg/namo",
)
class NAMOD(_NAMOBase):
    """NAMO-D: orthogonalized Nesterov momentum right-multiplied by clamped per-column adaptive steps.

    ``W_{:,j} ← W_{:,j}·max(1 − λ·min(b·d_j, 1), 0)``; ``W ← W − O·diag(min(b·0.2·sqrt(max(m,n))·d_j, 1))`` with
    ``d_j`` clamped to ``[c·d̄, d̄/c]`` (module docstring). Columns are input features (``layout="in_out"``
    weights are handled in their semantic orientation).

    Args:
        params, lr, momentum, beta2, eps, nesterov, weight_decay, cap, ns_method, ns_steps, ns_dtype, scale,
            skip_nonfinite, batched, distributed, process_group: as in :class:`NAMO`.
        clamp: ``c ∈ [0, 1]`` (official 0.75): 1 → all columns share the mean scale; 0 → no clamping.

    Example:
        >>> model = torch.nn.Linear(16, 32, bias=False)
        >>> opt = NAMOD(model.parameters(), clamp=0.75)
        >>> model(torch.randn(4, 16)).square().mean().backward(); opt.step()

    Ref: Zhang, Liu, Schaeffer 2026, arXiv:2602.17080; github.com/minxin-zhg/namo.
    """

    _diagonal = True
