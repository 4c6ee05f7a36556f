"""AuON and Hybrid-AuON (Maity, arXiv:2509.24320) — "alternative unit-norm momentum updates".

Defaults follow the released code, github.com/ryyzn9/AuON ``auon/optimizer.py`` @ bba2e82 (classes ``AuON`` and
``HybridAuON``), with the learning rate the authors use (README quick start and ``training/config.py``:
``auon_lr = 0.08``; the classes' own signature default is 0.24)::

    M ← μM + (1−μ)G ;  U = (1−μ)G + μM                      (μ = 0.95, Nesterov)
    r = sqrt( mean_ij cosh(γ·U_ij / (‖U‖_F + 1e-7))² )       (γ = 1.5)
    W ← W(1 − ηλ) − η · U / (r + 1e-8)                       (no shape factor; λ = 0)

Hybrid-AuON: ``U ← NS₅(U)`` (Keller's quintic Newton–Schulz, 5 steps, in the update's dtype) before the same
cosh divisor.

The paper form (as transcribed by junaidaliop.github.io/zij and the repository's older ``Auon_Adam_train.py``)
divides the *Frobenius-normalized* momentum, uses ``γ = 1`` and Muon's shape factor: ``normalize=True,
gamma=1.0, scale="keller"`` here. The paper's v1 abstract describes Hybrid-AuON with "a single Newton–Schulz
iteration": ``ns_steps=1``.

**What the cosh factor does in practice.** With ``Σ Ĝ_ij² = 1`` and ``N = mn`` entries,
``mean cosh(γĜ)² = 1 + γ²/N + O(γ⁴/N²)`` (Taylor: ``cosh²x = 1 + x² + x⁴/3 + …``), so ``r − 1 ≈ γ²/(2N)``:
1.9e-6 for 768×768 (γ = 1.5), 0.018 for 8×8. At realistic sizes AuON (code form) is therefore plain Nesterov
SGD with lr η (Frobenius-normalized Nesterov SGD in the paper form), and Hybrid-AuON is Muon with Keller's NS5 and
no shape factor; the "trust region" brake only acts on tiny matrices. :func:`cosh_rms` lets the benchmark
report ``r``.

Robustness: norms are taken after dividing by the largest entry, so a huge finite gradient gives a finite ``r``
and (paper form) a unit-norm step instead of a zero one; the momentum write is committed only when the update is
finite.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from orthokit.optim._normalizers import (
    StepStage,
    check_positive,
    commit_stage,
    max_abs,
    safe_norm,
    staged_momentum,
    work_dtype,
)
from orthokit.optim.base import OrthogonalOptimizer
from orthokit.optim.muon import validate_muon_kwargs
from orthokit.optim.registry import register_optimizer
from orthokit.optim.transforms import Transform, decoupled_weight_decay, orthogonalize, scale_by_shape

__all__ = ["AuON", "HybridAuON", "cosh_rms", "auon_normalize", "cosh_normalize"]


def _unit(x: torch.Tensor, eps: float) -> torch.Tensor:
    """``X / (‖X‖_F + eps)`` per matrix in the working dtype, with the norm taken overflow-free (float64)."""
    a = max_abs(x)
    n = safe_norm(x, scale=a)
    return x.to(work_dtype(x.dtype)) * (1.0 / (n + eps)).to(work_dtype(x.dtype))


def cosh_rms(x: torch.Tensor, gamma: float = 1.5, eps: float = 1e-7) -> torch.Tensor:
    r"""AuON's hyperbolic-cosine RMS ``r = sqrt(mean_ij cosh(γ X_ij / (‖X‖_F + eps))²)`` per matrix.

    Always ``≥ 1``; ``r − 1 ≈ γ² / (2mn)`` for spread-out matrices. Finite for any finite ``x``.

    Args:
        x: ``[..., m, n]``.
        gamma: sharpness ``γ`` (released code 1.5, paper transcription 1.0).
        eps: added to the Frobenius norm.

    Returns:
        ``r`` with shape ``[..., 1, 1]`` (float32, or float64 for float64 input).

    Example:
        >>> r = cosh_rms(torch.randn(768, 768), gamma=1.5)
        >>> 0 < float(r) - 1 < 1e-5
        True

    Ref: arXiv:2509.24320; github.com/ryyzn9/AuON auon/optimizer.py.
    """
    if x.dim() < 2:
        raise ValueError(f"cosh_rms expects [..., m, n], got shape {tuple(x.shape)}")
    xh = _unit(x, eps)
    return torch.cosh(gamma * xh).square().mean(dim=(-2, -1), keepdim=True).sqrt()


def auon_normalize(u: torch.Tensor, gamma: float = 1.5, normalize: bool = False) -> torch.Tensor:
    r"""AuON's direction ``Û / (r + 1e-8)``: ``Û = U`` (``normalize=False``, released code) or
    ``Û = U/(‖U‖_F + 1e-7)`` (``normalize=True``, paper form); ``r`` = :func:`cosh_rms` of ``U``.

    Args:
        u: Nesterov momentum (AuON) or its Newton–Schulz image (Hybrid-AuON), ``[..., m, n]``.
        gamma: cosh sharpness.
        normalize: Frobenius-normalize before dividing by ``r``.

    Returns:
        Same shape and dtype as ``u``; with ``normalize=True`` its Frobenius norm is ``1/r ≤ 1``.

    Example:
        >>> y = auon_normalize(torch.randn(64, 64), normalize=True)
        >>> 0.999 < float(y.norm()) < 1.0
        True

    Ref: arXiv:2509.24320; github.com/ryyzn9/AuON.
    """
    r = cosh_rms(u, gamma)
    uf = _unit(u, 1e-7) if normalize else u.to(r.dtype)
    return (uf / (r + 1e-8)).to(u.dtype)


class cosh_normalize(Transform):
    """Transform: :func:`auon_normalize` on each matrix view (reads ``gamma`` and ``normalize`` from the group).

    Example:
        >>> grp = {"gamma": 1.0, "normalize": True}
        >>> y = cosh_normalize().update([torch.randn(8, 8)], [{}], [torch.zeros(8, 8)], grp)
        >>> float(y[0].norm()) < 1.0
        True
    """

    name = "cosh_normalize"

    def update(
        self, updates: list[Tensor], states: list[dict[str, Any]], params: list[Tensor], group: dict[str, Any]
    ) -> list[Tensor]:
        out = []
        for u, p in zip(updates, params):
            v = self._view(p)
            out.append(auon_normalize(v.as_matrices(u), group["gamma"], group["normalize"]).reshape(v.shape))
        return out


def _validate_auon(group: dict[str, Any]) -> None:
    validate_muon_kwargs(group)
    check_positive("gamma", group["gamma"])
    if not isinstance(group["normalize"], bool):
        raise TypeError(f"normalize must be a bool, got {type(group['normalize']).__name__}")


@register_optimizer(
    "auon",
    default_lr=0.1,
    state_keys=("momentum_buffer",),
    supports_batched=True,
    supports_distributed=False,
    direction="normalized",  # cosh-RMS-normalized momentum, no polar step (tests/optim/test_auon.py)
    paper="Maity 2025, arXiv:2509.24320; github.com/ryyzn9/AuON",
)
class AuON(OrthogonalOptimizer):
    """AuON: linear-time cosh-RMS normalized Nesterov momentum (no polar factor), released-code defaults.

    Chain: ``momentum → cosh_normalize → scale_by_shape → commit → decoupled_weight_decay``. The update is
    ``U/(r + 1e-8)`` with ``r = 1 + O(1/mn)``, i.e. Nesterov SGD at realistic sizes (module docstring).

    Args:
        params: parameters / ``(name, param)`` pairs / param groups.
        lr: learning rate (0.08: the authors' README and training config; the released class default is 0.24).
        momentum: μ (0.95).
        gamma: cosh sharpness γ (released code 1.5; paper transcription 1.0).
        normalize: Frobenius-normalize the momentum first (paper form); ``False`` = released code.
        nesterov, momentum_convention, weight_decay, skip_nonfinite, batched: as in Muon.
        scale: shape scale, ``"none"`` as in the released code (``"keller"`` for the paper form).

    Example:
        >>> model = torch.nn.Linear(16, 32, bias=False)
        >>> opt = AuON(model.parameters())
        >>> model(torch.randn(4, 16)).square().mean().backward(); opt.step()

    Ref: Maity 2025, arXiv:2509.24320; github.com/ryyzn9/AuON @ bba2e82.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | torch.Tensor = 0.08,
        momentum: float = 0.95,
        gamma: float = 1.5,
        normalize: bool = False,
        nesterov: bool = True,
        momentum_convention: str = "ema",
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
            lr=lr,
            momentum=momentum,
            gamma=gamma,
            normalize=normalize,
            nesterov=nesterov,
            momentum_convention=momentum_convention,
            weight_decay=weight_decay,
            ns_method="polar_express",  # unused by AuON; kept so Muon's validation applies unchanged
            ns_steps=None,
            ns_dtype="auto",
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
        """Muon's checks plus ``gamma`` > 0 and ``normalize`` bool."""
        super().validate_group(group)
        if group["algorithm"] == "ortho":
            _validate_auon(group)

    def transforms(self, group: dict[str, Any]) -> Sequence[Transform]:
        """``momentum → cosh_normalize → scale_by_shape → decoupled_weight_decay``."""
        stage = StepStage()
        return [
            staged_momentum(group["momentum"], group["nesterov"], stage, group["momentum_convention"]),
            cosh_normalize(),
            scale_by_shape(group["scale"]),
            commit_stage(stage),
            decoupled_weight_decay(),
        ]


@register_optimizer(
    "hybrid_auon",
    aliases=("hybridauon",),
    default_lr=0.02,
    state_keys=("momentum_buffer",),
    supports_batched=True,
    supports_distributed=True,
    paper="Maity 2025, arXiv:2509.24320; github.com/ryyzn9/AuON",
)
class HybridAuON(OrthogonalOptimizer):
    """Hybrid-AuON: Newton–Schulz (Keller's coefficients, 5 steps as in the released code) on the Nesterov
    momentum, then AuON's cosh-RMS divisor; no shape factor.

    Chain: ``momentum → orthogonalize("keller", ns_steps) → cosh_normalize(normalize=False) → scale_by_shape →
    commit → decoupled_weight_decay``. Since ``r = 1 + O(1/mn)`` this is Muon with Keller's NS5 and no shape
    factor at realistic sizes. ``ns_steps=1`` is the paper's v1 abstract ("a single Newton–Schulz iteration");
    one step maps normalized singular values by ``3.4445σ − 4.775σ³ + 2.0315σ⁵`` (far from orthogonal).

    Args:
        params: parameters / ``(name, param)`` pairs / param groups.
        lr: learning rate (0.08, the authors' README value; released class default 0.24).
        momentum: μ (0.95).
        ns_steps: Newton–Schulz iterations (5, released code).
        ns_method: coefficient schedule (``"keller"``).
        gamma: cosh sharpness (1.5, released code).
        ns_dtype: iteration dtype (``None`` = the update's dtype, as the released code iterates in fp32).
        nesterov, momentum_convention, weight_decay, skip_nonfinite, batched, distributed, process_group:
            as in Muon.
        scale: shape scale (``"none"``, released code).

    Example:
        >>> model = torch.nn.Linear(16, 32, bias=False)
        >>> opt = HybridAuON(model.parameters())
        >>> model(torch.randn(4, 16)).square().mean().backward(); opt.step()

    Ref: Maity 2025, arXiv:2509.24320; github.com/ryyzn9/AuON @ bba2e82 (``HybridAuON``).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | torch.Tensor = 0.08,
        momentum: float = 0.95,
        ns_steps: int = 5,
        ns_method: str = "keller",
        gamma: float = 1.5,
        nesterov: bool = True,
        momentum_convention: str = "ema",
        weight_decay: float = 0.0,
        ns_dtype: torch.dtype | str | None = None,
        scale: str = "none",
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
            gamma=gamma,
            normalize=False,
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
        """Muon's checks plus ``gamma`` > 0."""
        super().validate_group(group)
        if group["algorithm"] == "ortho":
            _validate_auon(group)

    def transforms(self, group: dict[str, Any]) -> Sequence[Transform]:
        """``momentum → orthogonalize → cosh_normalize → scale_by_shape → decoupled_weight_decay``."""
        stage = StepStage()
        return [
            staged_momentum(group["momentum"], group["nesterov"], stage, group["momentum_convention"]),
            orthogonalize(group["ns_method"], group["ns_steps"], group["ns_dtype"], group["batched"]),
            cosh_normalize(),
            scale_by_shape(group["scale"]),
            commit_stage(stage),
            decoupled_weight_decay(),
        ]
