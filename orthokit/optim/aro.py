"""ARO — Adaptively Rotated Optimization (Gong, Zazo, Luo, Wang, Hensman, Ma; Microsoft Research;
arXiv:2602.09006).

ARO performs normed steepest descent in a rotated coordinate frame whose rotation is re-estimated from the
momentum every step ("norm-informed" rotation policy); Muon, SOAP and SPlus are special cases::

    M ← βM + (1−β)G
    R_t = orth( M · f(R_{t−1}ᵀ M)ᵀ )               (R ∈ O(s), s = min(m, n); QR with positive diag(R))
    ΔW = R_t · f(R_tᵀ M);     W ← W(1 − ηλ) − η·ΔW

``f`` is the base projection of the rotated momentum: ``"sign"`` (SignGD, RMS 1) or ``"sinkhorn"`` (SinkGD:
alternating row/column ℓ₂ normalization to row norms ``sqrt(n)`` and column norms ``sqrt(s)``, RMS ≈ 1; the
paper reports ARO-Sinkhorn as the strongest). Both give Adam-like update RMS ≈ 1, so Adam-like learning rates
apply. If ``f`` were the identity, ``R_t`` would be the polar/left-singular frame and the method reduces to a
rotated SGD; with ``f = polar`` it is rotation-invariant and reduces to Muon (paper Appendix A).

Source caveats: the abstract fixes the idea and results (1.3–1.35× over AdamW, 1.1–1.15× over orthogonalized
methods up to 8B activated parameters). The update equations follow the secondary transcription at
junaidaliop.github.io/zij/math/aro; the paper's shifted Cholesky-QR (a GPU speed trick) is replaced by
Householder QR, and we rotate on the smaller side (``s = min(m, n)``, transposing tall matrices) to bound the
``s×s`` state — both are our choices.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from orthokit.optim._normalizers import (
    StepStage,
    check_unit_interval,
    commit_stage,
    max_abs,
    staged_momentum,
    state_dtype,
)
from orthokit.optim.base import OrthogonalOptimizer
from orthokit.optim.registry import register_optimizer
from orthokit.optim.transforms import SCALE_MODES, Transform, decoupled_weight_decay, scale_by_shape

__all__ = ["ARO", "ARO_BASE_PROJECTIONS", "aro_base_projection", "aro_rotation_step", "adaptive_rotate"]

ARO_BASE_PROJECTIONS = ("sign", "sinkhorn")


def aro_base_projection(
    x: torch.Tensor, kind: str = "sign", iters: int = 5, eps: float = 1e-8
) -> torch.Tensor:
    """ARO's base projection ``f`` (applied in the rotated frame).

    ``"sign"``: ``sign(X)``. ``"sinkhorn"``: ``iters`` rounds of ``X ← sqrt(n)·X/‖X_{i,:}‖`` then
    ``X ← sqrt(r)·X/‖X_{:,j}‖`` for ``X ∈ R^{r×n}`` (SinkGD multi-normalization), ending with unit column RMS.

    Example:
        >>> y = aro_base_projection(torch.randn(8, 16), "sinkhorn")
        >>> torch.allclose(y.pow(2).mean(0), torch.ones(16), atol=1e-4)
        True
    """
    if kind == "sign":
        return torch.sign(x)
    if kind != "sinkhorn":
        raise ValueError(f"ARO base projection must be one of {ARO_BASE_PROJECTIONS}, got {kind!r}")
    r, n = x.shape[-2], x.shape[-1]
    y = x
    for _ in range(iters):
        y = y * (n**0.5 / (torch.linalg.vector_norm(y, dim=-1, keepdim=True) + eps))
        y = y * (r**0.5 / (torch.linalg.vector_norm(y, dim=-2, keepdim=True) + eps))
    return y


def _qr_positive(a: torch.Tensor) -> torch.Tensor:
    q, r = torch.linalg.qr(a)
    d = torch.sign(r.diagonal(dim1=-2, dim2=-1))
    d = torch.where(d == 0, torch.ones_like(d), d)
    return q * d.unsqueeze(-2)


def aro_rotation_step(
    m: torch.Tensor, rot: torch.Tensor, kind: str = "sign"
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""One ARO direction: new rotation ``R_t = orth(M f(R_{t-1}ᵀM)ᵀ)`` and update ``ΔW = R_t f(R_tᵀ M)``.

    Args:
        m: momentum ``[..., m, n]``.
        rot: previous rotation ``[..., s, s]`` with ``s = min(m, n)`` (identity at step 0); the problem is
            transposed when ``m > n`` so that the rotation acts on the smaller side.
        kind: base projection, see :func:`aro_base_projection`.

    Returns:
        ``(delta, rot_new)``; ``rot_new`` is orthogonal (QR with positive ``diag(R)``).

    Example:
        >>> M = torch.randn(6, 10); R = torch.eye(6)
        >>> d, R2 = aro_rotation_step(M, R)
        >>> torch.allclose(R2.T @ R2, torch.eye(6), atol=1e-5)
        True

    Ref: arXiv:2602.09006 (equations per the transcription noted in the module docstring).
    """
    transpose = m.shape[-2] > m.shape[-1]
    # The direction is invariant to a positive rescaling of M (sign, Sinkhorn and the QR frame all are), so M is
    # divided by its largest entry first: no norm below can overflow for a huge finite gradient.
    m = m / max_abs(m).to(m.dtype)
    x = m.mT if transpose else m  # [.., s, big]
    s = x.shape[-2]
    if rot.shape[-2:] != (s, s):
        raise ValueError(f"ARO rotation has shape {tuple(rot.shape)}, expected [..., {s}, {s}]")
    rw = rot.to(x.dtype)
    cross = x @ aro_base_projection(rw.mT @ x, kind).mT  # [.., s, s]
    r_new = _qr_positive(cross)
    delta = r_new @ aro_base_projection(r_new.mT @ x, kind)
    delta = delta.mT if transpose else delta
    return delta, r_new.to(rot.dtype)


class adaptive_rotate(Transform):
    """Transform: ARO's rotation update and rotated base projection (:func:`aro_rotation_step`) per matrix view.

    State: ``aro_rotation`` ``[mats, s, s]`` (identity at start; float32, float64 for float64 params). Reads
    ``base`` from the group.

    Example:
        >>> adaptive_rotate().init(torch.zeros(6, 4), {})["aro_rotation"].shape
        torch.Size([1, 4, 4])
    """

    name = "adaptive_rotate"
    state_keys = ("aro_rotation",)

    def __init__(self, stage: StepStage | None = None) -> None:
        self.stage_ = stage

    def init(self, param: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        v = self._view(param)
        s = min(v.m, v.n)
        eye = torch.eye(s, dtype=state_dtype(param.dtype), device=param.device)
        return {"aro_rotation": eye.expand(v.mats, s, s).clone()}

    def update(
        self, updates: list[Tensor], states: list[dict[str, Any]], params: list[Tensor], group: dict[str, Any]
    ) -> list[Tensor]:
        out = []
        for u, st, p in zip(updates, states, params):
            v = self._view(p)
            rot = st["aro_rotation"]
            delta, r_new = aro_rotation_step(v.as_matrices(u).to(rot.dtype), rot, group["base"])
            if self.stage_ is not None:
                self.stage_.stage(rot, r_new)
            else:
                rot.copy_(r_new)
            out.append(delta.to(u.dtype).reshape(v.shape))
        return out


@register_optimizer(
    "aro",
    default_lr=0.005,
    state_keys=("momentum_buffer", "aro_rotation"),
    supports_batched=True,
    supports_distributed=False,
    direction="rotation",  # polar of the rotated momentum, rotated back (tests/optim/test_fismo_aro.py)
    paper="Gong et al. 2026, arXiv:2602.09006",
)
class ARO(OrthogonalOptimizer):
    """ARO: steepest descent under a base norm (sign / Sinkhorn) in an adaptively rotated frame.

    Chain: ``momentum(ema, no Nesterov) → adaptive_rotate → scale_by_shape("none") → commit →
    decoupled_weight_decay`` (state writes are committed only when the update is finite).
    Update RMS ≈ 1 (Adam-like), so use Adam-like learning rates.

    Args:
        params: parameters / ``(name, param)`` pairs / param groups.
        lr: learning rate (Adam-like, 1e-3).
        momentum: β (0.9).
        base: ``"sinkhorn"`` (default, the paper's strongest) or ``"sign"``.
        weight_decay: decoupled λ (0.0).
        scale: shape scale (``"none"``).
        skip_nonfinite: skip the step with a warning on NaN/inf gradients.

    Example:
        >>> model = torch.nn.Linear(16, 32, bias=False)
        >>> opt = ARO(model.parameters(), lr=1e-3)
        >>> model(torch.randn(4, 16)).square().mean().backward(); opt.step()

    Ref: Gong et al. 2026, arXiv:2602.09006.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | torch.Tensor = 1e-3,
        momentum: float = 0.9,
        base: str = "sinkhorn",
        weight_decay: float = 0.0,
        scale: str = "none",
        skip_nonfinite: bool = False,
        batched: bool = True,
        fallback: str = "adamw",
        fallback_lr: float | torch.Tensor | None = None,
        fallback_betas: tuple[float, float] = (0.9, 0.95),
        fallback_eps: float = 1e-8,
        fallback_weight_decay: float | None = None,
    ) -> None:
        defaults = dict(
            lr=lr, momentum=momentum, base=base, weight_decay=weight_decay, scale=scale, batched=batched
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
        """Base checks plus ``momentum`` ∈ [0, 1), ``base`` ∈ {"sign", "sinkhorn"}, ``scale`` ∈ SCALE_MODES."""
        super().validate_group(group)
        if group["algorithm"] == "ortho":
            check_unit_interval("momentum", group["momentum"])
            if group["base"] not in ARO_BASE_PROJECTIONS:
                raise ValueError(f"base must be one of {ARO_BASE_PROJECTIONS}, got {group['base']!r}")
            if group["scale"] not in SCALE_MODES:
                raise ValueError(f"scale must be one of {SCALE_MODES}, got {group['scale']!r}")

    def transforms(self, group: dict[str, Any]) -> Sequence[Transform]:
        """``momentum → adaptive_rotate → scale_by_shape → commit → decoupled_weight_decay``."""
        stage = StepStage()
        return [
            staged_momentum(group["momentum"], False, stage),
            adaptive_rotate(stage),
            scale_by_shape(group["scale"]),
            commit_stage(stage),
            decoupled_weight_decay(),
        ]
