"""NAMO and NAMO-D — "Adam Improves Muon: Adaptive Moment Estimation with Orthogonalized Momentum"
(Zhang, Liu, Schaeffer; arXiv:2602.17080).

NAMO keeps Muon's direction ``O = polar(M)`` and multiplies it by one Adam-type adaptive scalar built from
norms (noise adaptation at the level of the whole matrix)::

    M ← μ₁ M + (1−μ₁) G
    v ← μ₂ v + (1−μ₂) ‖G‖_F²                                   (scalar)
    α = sqrt(1−μ₂ᵗ)/(1−μ₁ᵗ) · ‖M‖_F / (sqrt(v) + ε)
    W ← W − η α (O + λ W)                                      (weight decay folded into the scaled step)

``α ≤ ~1``: it is 1 when the gradient is noiseless and constant, and shrinks when ``‖E G‖ ≪ sqrt(E‖G‖²)``.

NAMO-D right-multiplies ``O`` by a clamped diagonal matrix instead (one adaptive scale per column)::

    v_j ← μ₂ v_j + (1−μ₂) ‖G_{:,j}‖²
    d_j = sqrt(1−μ₂ᵗ)/(1−μ₁ᵗ) · ‖M_{:,j}‖ / (sqrt(v_j) + ε)
    d_j ← clamp(d_j, c·d̄, d̄/c),   d̄ = mean_j d_j,   c ∈ (0, 1]
    W ← W − η (O·diag(d) + d̄ λ W)

Sources and caveats: the paper's abstract fixes the structure (scalar / right-multiplied clamped diagonal,
extra clamping hyperparameter). The exact equations above follow secondary transcriptions of the paper
(junaidaliop.github.io/zij/math/namo for NAMO; emergentmind "Diagonal NAMO" for the column statistics and
the clamping "toward the average"); the primary PDF text was not available to us, so the clamp interval
``[c·d̄, d̄/c]`` is our reading (``c = 1`` recovers a NAMO-like scalar step ``d̄·O``, ``c → 0`` an unclamped
diagonal). NVIDIA Emerging-Optimizers (``moment2_method="namo"``) instead uses the Nesterov input in the
numerator and no bias correction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from orthokit.optim._normalizers import check_positive, check_unit_interval, fro_norm, state_dtype, work_dtype
from orthokit.optim.base import OrthogonalOptimizer
from orthokit.optim.muon import validate_muon_kwargs
from orthokit.optim.registry import register_optimizer
from orthokit.optim.transforms import Transform, momentum, orthogonalize, scale_by_shape

__all__ = ["NAMO", "NAMOD", "namo_scale", "namo_d_diagonal", "namo_adapt"]


def _bias(step: int, beta1: float, beta2: float) -> float:
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    for name, b in (("beta1", beta1), ("beta2", beta2)):
        if not 0.0 <= b < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {b}")
    return (1.0 - beta2**step) ** 0.5 / (1.0 - beta1**step)


def namo_scale(
    m: torch.Tensor,
    g: torch.Tensor,
    v: torch.Tensor,
    step: int,
    beta1: float,
    beta2: float,
    eps: float = 1e-8,
) -> torch.Tensor:
    r"""NAMO's adaptive scalar ``α_t`` per matrix (updates the scalar state ``v`` in place).

    .. math::
        v \leftarrow \mu_2 v + (1-\mu_2)\|G\|_F^2,\qquad
        \alpha = \frac{\sqrt{1-\mu_2^t}}{1-\mu_1^t}\,\frac{\|M\|_F}{\sqrt{v}+\epsilon}

    Args:
        m: momentum ``[..., r, c]`` (already updated with ``G``).
        g: gradient, same shape.
        v: float32/float64 state ``[..., 1, 1]``.
        step: 1-based step count.
        beta1, beta2: ``μ₁`` (momentum) and ``μ₂`` (second moment).
        eps: stabilizer.

    Returns:
        ``α`` of shape ``[..., 1, 1]`` in ``v.dtype``.

    Example:
        >>> g = torch.randn(4, 3); m = 0.1 * g; v = torch.zeros(1, 1)
        >>> float(namo_scale(m, g, v, step=1, beta1=0.9, beta2=0.99))  # noiseless first step: α = 1
        0.99999...

    Ref: arXiv:2602.17080.
    """
    c = _bias(step, beta1, beta2)
    if v.shape != (*m.shape[:-2], 1, 1):
        raise ValueError(f"NAMO state has shape {tuple(v.shape)}, expected {(*m.shape[:-2], 1, 1)}")
    v.mul_(beta2).add_(fro_norm(g).to(v.dtype).square(), alpha=1.0 - beta2)
    return c * fro_norm(m).to(v.dtype) / (v.sqrt() + eps)


def namo_d_diagonal(
    m: torch.Tensor,
    g: torch.Tensor,
    v: torch.Tensor,
    step: int,
    beta1: float,
    beta2: float,
    clamp: float = 0.5,
    eps: float = 1e-8,
) -> torch.Tensor:
    r"""NAMO-D's clamped diagonal ``d ∈ R^n`` (one entry per column; updates ``v ∈ R^{1×n}`` in place).

    .. math::
        v_j \leftarrow \mu_2 v_j + (1-\mu_2)\|G_{:,j}\|^2,\quad
        d_j = \frac{\sqrt{1-\mu_2^t}}{1-\mu_1^t}\frac{\|M_{:,j}\|}{\sqrt{v_j}+\epsilon},\quad
        d_j \leftarrow \min(\max(d_j, c\bar d), \bar d / c)

    Args:
        m, g: momentum and gradient ``[..., r, n]``.
        v: float32/float64 state ``[..., 1, n]``.
        step: 1-based step count.
        beta1, beta2: moment coefficients.
        clamp: ``c ∈ (0, 1]``; 1 gives equal entries (scalar step), small ``c`` a nearly unclamped diagonal.
        eps: stabilizer.

    Returns:
        ``d`` of shape ``[..., 1, n]`` — the update is ``O * d`` (``O·diag(d)``).

    Example:
        >>> g = torch.randn(6, 4); d = namo_d_diagonal(0.1 * g, g, torch.zeros(1, 4), 1, 0.9, 0.99, clamp=1.0)
        >>> torch.allclose(d, d.mean())
        True

    Ref: arXiv:2602.17080 (NAMO-D); equations per the secondary transcription noted in the module docstring.
    """
    if not 0.0 < clamp <= 1.0:
        raise ValueError(f"NAMO-D clamp must be in (0, 1], got {clamp}")
    c = _bias(step, beta1, beta2)
    if v.shape != (*m.shape[:-2], 1, m.shape[-1]):
        raise ValueError(
            f"NAMO-D state has shape {tuple(v.shape)}, expected {(*m.shape[:-2], 1, m.shape[-1])}"
        )
    wd = v.dtype if v.dtype in (torch.float32, torch.float64) else work_dtype(m.dtype)
    col_g = g.to(wd).square().sum(dim=-2, keepdim=True)
    v.mul_(beta2).add_(col_g, alpha=1.0 - beta2)
    d = c * torch.linalg.vector_norm(m.to(wd), dim=-2, keepdim=True) / (v.sqrt() + eps)
    dbar = d.mean(dim=-1, keepdim=True)
    return torch.minimum(torch.maximum(d, clamp * dbar), dbar / clamp)


class namo_adapt(Transform):
    """Transform: NAMO's scalar (``diagonal=False``) or NAMO-D's clamped column diagonal (``diagonal=True``)
    applied to the orthogonalized update, with the weight decay folded into the adapted step.

    Reads the momentum ``M`` from ``state["momentum_buffer"]`` (written by the preceding :class:`momentum`
    transform, EMA convention) and ``G`` from ``p.grad``; hyperparameters ``momentum`` (μ₁), ``beta2`` (μ₂),
    ``eps``, ``clamp`` (NAMO-D), ``lr``, ``weight_decay`` from the group. Applies ``W ← W(1 − lr·s̄·λ)`` in place,
    where ``s̄`` is α (NAMO) or the mean of ``d`` (NAMO-D). State: ``namo_v`` and ``namo_step``.

    Example:
        >>> t = namo_adapt(diagonal=True)
        >>> t.init(torch.zeros(4, 3), {})["namo_v"].shape
        torch.Size([1, 1, 3])
    """

    name = "namo_adapt"
    state_keys = ("namo_v", "namo_step")

    def __init__(self, diagonal: bool = False) -> None:
        self.diagonal = bool(diagonal)

    def init(self, param: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        v = self._view(param)
        shape = (v.mats, 1, v.n) if self.diagonal else (v.mats, 1, 1)
        return {
            "namo_v": torch.zeros(shape, dtype=state_dtype(param.dtype), device=param.device),
            "namo_step": torch.tensor(0.0, dtype=torch.float32),
        }

    def update(
        self, updates: list[Tensor], states: list[dict[str, Any]], params: list[Tensor], group: dict[str, Any]
    ) -> list[Tensor]:
        out = []
        b1, b2, eps = group["momentum"], group["beta2"], group["eps"]
        wd, lr = group.get("weight_decay", 0.0), group["lr"]
        for u, st, p in zip(updates, states, params):
            v = self._view(p)
            st["namo_step"].add_(1.0)
            t = int(st["namo_step"].item())
            m = v.as_matrices(st["momentum_buffer"])
            g = v.as_matrices(p.grad)
            if self.diagonal:
                s = namo_d_diagonal(m, g, st["namo_v"], t, b1, b2, group["clamp"], eps)
                sbar = s.mean(dim=-1, keepdim=True)
            else:
                s = namo_scale(m, g, st["namo_v"], t, b1, b2, eps)
                sbar = s
            o = (v.as_matrices(u).to(s.dtype) * s).to(u.dtype)
            if isinstance(wd, Tensor) or wd != 0:
                # W ← W − η·s̄·λ·W  (per matrix of the view)
                pm = p.view(v.mats, v.m, v.n) if p.is_contiguous() else None
                factor = 1 - lr * wd * sbar
                if pm is not None:
                    pm.mul_(factor.to(p.dtype))
                else:
                    p.copy_((v.as_matrices(p) * factor.to(p.dtype)).reshape(v.shape))
            out.append(o.reshape(v.shape))
        return out


class _NAMOBase(OrthogonalOptimizer):
    _diagonal = False

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | torch.Tensor = 0.02,
        momentum: float = 0.95,
        beta2: float = 0.99,
        eps: float = 1e-8,
        clamp: float = 0.5,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        ns_method: str = "polar_express",
        ns_steps: int | None = None,
        ns_dtype: torch.dtype | str | None = "auto",
        scale: str = "keller",
        skip_nonfinite: bool = False,
        batched: bool = True,
        distributed: bool | str = False,
        process_group: Any = None,
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
        )

    def validate_group(self, group: dict[str, Any]) -> None:
        """Muon's checks plus ``beta2`` ∈ [0, 1), ``eps`` > 0, ``clamp`` ∈ (0, 1], EMA momentum only."""
        super().validate_group(group)
        if group["algorithm"] == "ortho":
            validate_muon_kwargs(group)
            check_unit_interval("beta2", group["beta2"])
            check_positive("eps", group["eps"])
            c = group["clamp"]
            if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0.0 < c <= 1.0:
                raise ValueError(f"clamp must be a float in (0, 1], got {c!r}")
            if group["momentum_convention"] != "ema":
                raise ValueError("NAMO's bias correction assumes the EMA momentum convention ('ema')")

    def transforms(self, group: dict[str, Any]) -> Sequence[Transform]:
        """``momentum(ema) → orthogonalize → namo_adapt (incl. folded weight decay) → scale_by_shape``."""
        return [
            momentum(group["momentum"], group["nesterov"], "ema"),
            orthogonalize(group["ns_method"], group["ns_steps"], group["ns_dtype"], group["batched"]),
            namo_adapt(diagonal=self._diagonal),
            scale_by_shape(group["scale"]),
        ]


@register_optimizer(
    "namo",
    default_lr=0.02,
    state_keys=("momentum_buffer", "namo_v", "namo_step"),
    supports_batched=True,
    supports_distributed=True,
    paper="Zhang, Liu, Schaeffer 2026, arXiv:2602.17080",
)
class NAMO(_NAMOBase):
    """NAMO: Muon's orthogonalized momentum times one Adam-type adaptive scalar ``α`` (norm-based noise adaptation).

    ``W ← W − η·s(m,n)·α·O − η·α·λ·W`` with ``α = sqrt(1−μ₂ᵗ)/(1−μ₁ᵗ)·‖M‖_F/(sqrt(v)+ε)``,
    ``v`` = EMA of ``‖G‖_F²`` (module docstring). ``s(m, n)`` is the shape scale (``scale="keller"`` default so
    that Muon's lr transfers; ``"none"`` is the paper's bare form).

    Args:
        params: parameters / ``(name, param)`` pairs / param groups.
        lr: learning rate η.
        momentum: μ₁ (0.95).
        beta2: μ₂ for the squared-norm EMA (0.99).
        eps: ε (1e-8).
        clamp: unused by NAMO (NAMO-D's clamping constant).
        nesterov: orthogonalize the Nesterov input instead of ``M`` (paper: False).
        weight_decay: λ, folded into the adapted step.
        ns_method, ns_steps, ns_dtype, scale, skip_nonfinite, batched, distributed, process_group: as in Muon.

    Example:
        >>> model = torch.nn.Linear(16, 32, bias=False)
        >>> opt = NAMO(model.parameters(), lr=0.02)
        >>> model(torch.randn(4, 16)).square().mean().backward(); opt.step()

    Ref: Zhang, Liu, Schaeffer 2026, arXiv:2602.17080.
    """

    _diagonal = False


@register_optimizer(
    "namo_d",
    aliases=("namod",),
    default_lr=0.02,
    state_keys=("momentum_buffer", "namo_v", "namo_step"),
    supports_batched=True,
    supports_distributed=True,
    paper="Zhang, Liu, Schaeffer 2026, arXiv:2602.17080",
)
class NAMOD(_NAMOBase):
    """NAMO-D: orthogonalized momentum right-multiplied by a clamped diagonal of per-column adaptive scales.

    ``W ← W − η·s(m,n)·O·diag(d) − η·d̄·λ·W`` with ``d_j`` the column-wise NAMO scale clamped to
    ``[c·d̄, d̄/c]`` (``clamp=c``; module docstring for the equations and the source caveat).

    Args:
        params, lr, momentum, beta2, eps, nesterov, weight_decay, ns_method, ns_steps, ns_dtype, scale,
            skip_nonfinite, batched, distributed, process_group: as in :class:`NAMO`.
        clamp: ``c ∈ (0, 1]`` (0.5): 1 → all columns share the mean scale; smaller → more per-column adaptation.

    Example:
        >>> model = torch.nn.Linear(16, 32, bias=False)
        >>> opt = NAMOD(model.parameters(), lr=0.02, clamp=0.5)
        >>> model(torch.randn(4, 16)).square().mean().backward(); opt.step()

    Ref: Zhang, Liu, Schaeffer 2026, arXiv:2602.17080.
    """

    _diagonal = True
