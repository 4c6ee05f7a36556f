"""Muon — MomentUm Orthogonalized by Newton–Schulz (Jordan et al. 2024), with Moonlight's scaling option.

Update for each matrix parameter :math:`W ∈ R^{m×n}` (``m`` = fan-out, ``n`` = fan-in) with gradient :math:`G`:

.. math::
    M_t &= μ M_{t-1} + (1-μ) G_t \\quad(\\text{ema; } M_t = μM_{t-1} + G_t \\text{ with convention "sum"}) \\\\
    U_t &= (1-μ) G_t + μ M_t \\ (\\text{Nesterov}) \\quad\\text{or}\\quad U_t = M_t \\\\
    O_t &= \\mathrm{polar}(U_t) ≈ U_s V_sᵀ \\quad (U_t = U_s Σ V_sᵀ;\\ \\text{Polar Express by default}) \\\\
    W_t &= W_{t-1}(1 - ηλ) - η · s(m, n) · O_t

with the shape scale :math:`s` named explicitly (``scale=``): ``"keller"`` :math:`\\sqrt{\\max(1, m/n)}`,
``"match_rms_adamw"`` :math:`0.2\\sqrt{\\max(m,n)}` (Moonlight: update RMS ≈ 0.2·η, so AdamW's lr and wd
transfer), ``"spectral"`` :math:`\\sqrt{m/n}`. Weight decay is decoupled and uses the UNADJUSTED lr.

References: K. Jordan et al., "Muon: An optimizer for hidden layers in neural networks" (2024,
kellerjordan.github.io/posts/muon); J. Liu et al., "Muon is Scalable for LLM Training" (Moonlight,
arXiv:2502.16982); N. Amsel et al., "The Polar Express" (arXiv:2505.16932).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from orthokit.optim.base import OrthogonalOptimizer
from orthokit.optim.registry import register_optimizer
from orthokit.optim.transforms import (
    MOMENTUM_CONVENTIONS,
    SCALE_MODES,
    Transform,
    decoupled_weight_decay,
    momentum,
    orthogonalize,
    resolve_ns_dtype,
    resolve_polar_method,
    scale_by_shape,
)

__all__ = ["Muon", "validate_muon_kwargs"]


def validate_muon_kwargs(group: dict[str, Any]) -> None:
    """Validate the Muon-family keys of a param group (shared by variants that build on Muon's kwargs).

    Keys: ``momentum`` ∈ [0,1), ``nesterov`` bool, ``momentum_convention`` ∈ {"ema","sum"}, ``ns_method`` str,
    ``ns_steps`` int in [1,100) or None, ``ns_dtype``, ``scale`` ∈ SCALE_MODES, ``eps`` > 0 (if present),
    ``batched`` bool.
    """
    mu = group["momentum"]
    if isinstance(mu, bool) or not isinstance(mu, (int, float)) or not 0.0 <= mu < 1.0:
        raise ValueError(f"momentum must be a float in [0, 1), got {mu!r}")
    if not isinstance(group["nesterov"], bool):
        raise TypeError(f"nesterov must be a bool, got {type(group['nesterov']).__name__}")
    if group["momentum_convention"] not in MOMENTUM_CONVENTIONS:
        raise ValueError(
            f"momentum_convention must be one of {MOMENTUM_CONVENTIONS}, got {group['momentum_convention']!r}"
        )
    resolve_polar_method(group["ns_method"])
    st = group["ns_steps"]
    if st is not None and (isinstance(st, bool) or not isinstance(st, int) or not 1 <= st < 100):
        raise ValueError(f"ns_steps must be an int in [1, 100) or None, got {st!r}")
    resolve_ns_dtype(group["ns_dtype"], torch.device("cpu"))
    if group["scale"] not in SCALE_MODES:
        raise ValueError(f"scale must be one of {SCALE_MODES}, got {group['scale']!r}")
    if "eps" in group:
        eps = group["eps"]
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"eps must be a float > 0, got {eps!r}")
    if not isinstance(group["batched"], bool):
        raise TypeError(f"batched must be a bool, got {type(group['batched']).__name__}")


@register_optimizer(
    "muon",
    default_lr=0.02,
    state_keys=("momentum_buffer",),
    supports_batched=True,
    supports_distributed=True,
    direction="polar",
    direction_at="update",
    paper="Jordan et al. 2024; Liu et al. 2025 (arXiv:2502.16982)",
)
class Muon(OrthogonalOptimizer):
    """Muon: orthogonalized (Nesterov) momentum for matrix parameters.

    Chain: ``momentum → orthogonalize → scale_by_shape → decoupled_weight_decay``, then ``W ← W − lr·update``.

    Args:
        params: parameters, ``(name, param)`` pairs or param groups (see :class:`OrthogonalOptimizer`). Parameters
            with < 2 dims go to an internal AdamW group (``fallback="adamw"``; ``"error"`` raises instead); use
            :func:`orthokit.optim.hybrid` to also route embeddings and heads to AdamW, as Muon's authors do.
        lr: learning rate η (0.02 with ``scale="keller"``, Keller's default; with ``"match_rms_adamw"`` use your
            AdamW lr, e.g. 1e-3–3e-3).
        momentum: μ (0.95).
        nesterov: Nesterov look-ahead (True).
        momentum_convention: ``"ema"`` (torch/Keller buffer) or ``"sum"`` (Moonlight/Dion buffer).
        weight_decay: decoupled λ (0.0, Keller's default; Moonlight uses 0.1): ``W ← W(1 − ηλ)``.
        ns_method: ``orthokit.polar`` method (``"polar_express"``; ``"svd"``, ``"eigh"``, ...) or a Newton–Schulz
            schedule name (``"keller"`` = torch/Keller NS5, ``"quintic"``, ...; ``"cans"`` and ``"cubic5"`` are
            refused, see :mod:`orthokit.optim._schedule_safety`). The normalization (safety factor and ε) belongs
            to the method/schedule, so Muon has no separate ``eps``.
        ns_steps: polar iterations (None → the method's default, 5 for Polar Express).
        ns_dtype: iteration dtype: ``"auto"`` (bf16 on GPU; on CPU whichever of fp32/bf16 measured faster on this
            host for the shape class, probed once per process — :mod:`orthokit.linalg.dispatch`;
            ``ORTHOKIT_CPU_BF16=0|1`` overrides; see :func:`~orthokit.optim.transforms.resolve_ns_dtype`),
            ``None`` (parameter dtype) or a torch dtype.
        scale: ``"keller"`` (√max(1,m/n)), ``"match_rms_adamw"`` (0.2·√max(m,n)), ``"spectral"`` (√(m/n)) or
            ``"none"``.
        skip_nonfinite: skip the step with a warning instead of raising on NaN/inf gradients.
        batched: stack same-shape matrices into one polar call (equal to the per-parameter path).
        distributed: ``False``/``True``/``"auto"`` — shard orthogonalization across DDP ranks.
        process_group: process group for ``distributed``.
        fallback, fallback_lr, fallback_betas, fallback_eps, fallback_weight_decay: the AdamW fallback for
            non-matrix parameters (see :class:`OrthogonalOptimizer`; an orthokit extension, not Muon's).

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(16, 32, bias=False)
        >>> opt = Muon(model.parameters(), lr=0.02, weight_decay=0.01)
        >>> model(torch.randn(4, 16)).square().mean().backward(); opt.step()

    References: Jordan et al. 2024 (Muon); Liu et al. 2025, arXiv:2502.16982 (Moonlight scaling + weight decay);
    Amsel et al. 2025, arXiv:2505.16932 (Polar Express).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | torch.Tensor = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        momentum_convention: str = "ema",
        weight_decay: float = 0.0,
        ns_method: str = "polar_express",
        ns_steps: int | None = None,
        ns_dtype: torch.dtype | str | None = "auto",
        scale: str = "keller",
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
            nesterov=nesterov,
            momentum_convention=momentum_convention,
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
            fallback=fallback,
            fallback_lr=fallback_lr,
            fallback_betas=fallback_betas,
            fallback_eps=fallback_eps,
            fallback_weight_decay=fallback_weight_decay,
        )

    def validate_group(self, group: dict[str, Any]) -> None:
        """Base checks plus :func:`validate_muon_kwargs` for orthogonalized groups."""
        super().validate_group(group)
        if group["algorithm"] == "ortho":
            validate_muon_kwargs(group)

    def transforms(self, group: dict[str, Any]) -> Sequence[Transform]:
        """``momentum → orthogonalize → scale_by_shape → decoupled_weight_decay``."""
        return [
            momentum(group["momentum"], group["nesterov"], group["momentum_convention"]),
            orthogonalize(group["ns_method"], group["ns_steps"], group["ns_dtype"], group["batched"]),
            scale_by_shape(group["scale"]),
            decoupled_weight_decay(),
        ]
