"""AuON and Hybrid-AuON (Maity, arXiv:2509.24320) — "alternative unit-norm momentum updates".

AuON replaces Muon's semi-orthogonalization by a linear-time normalization (no matmuls): the Nesterov
momentum is Frobenius-normalized and divided by a hyperbolic-cosine RMS::

    M ← μ M + (1−μ) G ;  U = (1−μ) G + μ M
    Ĝ = U / (‖U‖_F + 1e-7)
    r = sqrt( mean_ij cosh(γ Ĝ_ij)² )
    O = Ĝ / (r + 1e-8) ;   W ← W(1 − ηλ) − η·sqrt(max(1, m/n))·O

(paper form as transcribed by junaidaliop.github.io/zij and the repository's older ``Auon_Adam_train.py``;
``γ = 1``). The current repository code (``github.com/ryyzn9/AuON`` ``auon/optimizer.py``) differs:
``γ = 1.5`` and the update is ``U / (r + 1e-8)`` — the *unnormalized* momentum — with no shape factor;
that is ``normalize=False, gamma=1.5, adjust_lr=None`` here.

Hybrid-AuON applies Newton–Schulz to ``U`` first — "a single Newton–Schulz iteration" in the paper's v1
abstract (``ns_steps=1`` here), 5 steps in the current code — and then the same cosh divisor.

**What the cosh factor does in practice.** With ``Σ Ĝ_ij² = 1`` and ``N = mn`` entries,
``mean cosh(γĜ)² = 1 + γ²/N + O(γ⁴/N²)`` (Taylor: ``cosh²x = 1 + x² + x⁴/3 + …``), so ``r − 1 ≈ γ²/(2N)``:
1.9e-6 for 768×768 (γ = 1.5), 0.018 for 8×8. At realistic sizes AuON is therefore Frobenius-normalized
Nesterov SGD (paper form) / plain Nesterov SGD (code form), and Hybrid-AuON is Muon without a shape factor;
the "trust region" brake only acts on tiny matrices. :func:`cosh_rms` lets the benchmark report ``r``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from orthokit.optim._normalizers import check_positive, fro_norm, work_dtype
from orthokit.optim.base import OrthogonalOptimizer
from orthokit.optim.muon import validate_muon_kwargs
from orthokit.optim.registry import register_optimizer
from orthokit.optim.transforms import (
    Transform,
    decoupled_weight_decay,
    momentum,
    orthogonalize,
    scale_by_shape,
)

__all__ = ["AuON", "HybridAuON", "cosh_rms", "auon_normalize", "cosh_normalize"]


def cosh_rms(x: torch.Tensor, gamma: float = 1.0, eps: float = 1e-7) -> torch.Tensor:
    r"""AuON's hyperbolic-cosine RMS ``r = sqrt(mean_ij cosh(γ X_ij / (‖X‖_F + eps))²)`` per matrix.

    Always ``≥ 1``; ``r − 1 ≈ γ² / (2mn)`` for spread-out matrices.

    Args:
        x: ``[..., m, n]``.
        gamma: sharpness ``γ`` (paper 1.0, current code 1.5).
        eps: added to the Frobenius norm.

    Returns:
        ``r`` with shape ``[..., 1, 1]`` (float32, or float64 for float64 input).

    Example:
        >>> r = cosh_rms(torch.randn(768, 768), gamma=1.5)
        >>> 0 < float(r) - 1 < 1e-5
        True

    Ref: arXiv:2509.24320.
    """
    if x.dim() < 2:
        raise ValueError(f"cosh_rms expects [..., m, n], got shape {tuple(x.shape)}")
    xf = x.to(work_dtype(x.dtype))
    xh = xf / (fro_norm(xf) + eps)
    return torch.cosh(gamma * xh).square().mean(dim=(-2, -1), keepdim=True).sqrt()


def auon_normalize(u: torch.Tensor, gamma: float = 1.0, normalize: bool = True) -> torch.Tensor:
    r"""AuON's direction: ``Û / (r + 1e-8)`` with ``Û = U/(‖U‖_F + 1e-7)`` (``normalize=True``, paper) or
    ``Û = U`` (``normalize=False``, current repository code), ``r`` = :func:`cosh_rms` of ``U``.

    Args:
        u: Nesterov momentum (AuON) or its Newton–Schulz image (Hybrid-AuON), ``[..., m, n]``.
        gamma: cosh sharpness.
        normalize: Frobenius-normalize before dividing by ``r``.

    Returns:
        Same shape and dtype as ``u``; with ``normalize=True`` its Frobenius norm is ``1/r ≤ 1``.

    Example:
        >>> y = auon_normalize(torch.randn(64, 64))
        >>> 0.999 < float(y.norm()) < 1.0
        True

    Ref: arXiv:2509.24320; github.com/ryyzn9/AuON.
    """
    r = cosh_rms(u, gamma)
    uf = u.to(r.dtype)
    if normalize:
        uf = uf / (fro_norm(uf) + 1e-7)
    return (uf / (r + 1e-8)).to(u.dtype)


class cosh_normalize(Transform):
    """Transform: :func:`auon_normalize` on each matrix view (reads ``gamma`` and ``normalize`` from the group).

    Example:
        >>> y = cosh_normalize().update([torch.randn(8, 8)], [{}], [torch.zeros(8, 8)], {"gamma": 1.0, "normalize": True})
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
    paper="Maity 2025, arXiv:2509.24320",
)
class AuON(OrthogonalOptimizer):
    """AuON: linear-time cosh-RMS normalized Nesterov momentum (no polar factor).

    Chain: ``momentum → cosh_normalize → scale_by_shape → decoupled_weight_decay``. With the paper form
    (``normalize=True``) ``‖ΔW‖_F ≈ lr·s(m,n)``; since the cosh factor is ``1 + O(1/mn)`` this is
    Frobenius-normalized Nesterov SGD at realistic sizes (module docstring).

    Args:
        params: parameters / ``(name, param)`` pairs / param groups.
        lr: learning rate (README: 0.08 for the code form).
        momentum: μ (0.95).
        gamma: cosh sharpness γ (paper 1.0; current code 1.5).
        normalize: Frobenius-normalize the momentum first (paper) — ``False`` reproduces the current code.
        nesterov, momentum_convention, weight_decay, scale, skip_nonfinite, batched: as in Muon
            (``scale="keller"`` default per the paper form; the current code uses ``"none"``).

    Example:
        >>> model = torch.nn.Linear(16, 32, bias=False)
        >>> opt = AuON(model.parameters(), lr=0.1)
        >>> model(torch.randn(4, 16)).square().mean().backward(); opt.step()

    Ref: Maity 2025, arXiv:2509.24320; github.com/ryyzn9/AuON.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | torch.Tensor = 0.08,
        momentum: float = 0.95,
        gamma: float = 1.0,
        normalize: bool = True,
        nesterov: bool = True,
        momentum_convention: str = "ema",
        weight_decay: float = 0.0,
        scale: str = "keller",
        skip_nonfinite: bool = False,
        batched: bool = True,
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
        super().__init__(params, defaults, skip_nonfinite=skip_nonfinite)

    def validate_group(self, group: dict[str, Any]) -> None:
        """Muon's checks plus ``gamma`` > 0 and ``normalize`` bool."""
        super().validate_group(group)
        if group["algorithm"] == "ortho":
            _validate_auon(group)

    def transforms(self, group: dict[str, Any]) -> Sequence[Transform]:
        """``momentum → cosh_normalize → scale_by_shape → decoupled_weight_decay``."""
        return [
            momentum(group["momentum"], group["nesterov"], group["momentum_convention"]),
            cosh_normalize(),
            scale_by_shape(group["scale"]),
            decoupled_weight_decay(),
        ]


@register_optimizer(
    "hybrid_auon",
    aliases=("hybridauon",),
    default_lr=0.02,
    state_keys=("momentum_buffer",),
    supports_batched=True,
    supports_distributed=True,
    paper="Maity 2025, arXiv:2509.24320",
)
class HybridAuON(OrthogonalOptimizer):
    """Hybrid-AuON: ``ns_steps`` Newton–Schulz iterations (Keller coefficients, 1 per the paper's v1 abstract)
    on the Nesterov momentum, then AuON's cosh-RMS divisor.

    Chain: ``momentum → orthogonalize("keller", ns_steps) → cosh_normalize(normalize=False) → scale_by_shape →
    decoupled_weight_decay``. One NS step maps normalized singular values by ``3.4445σ − 4.775σ³ + 2.0315σ⁵``
    (far from orthogonal for small σ); ``ns_steps=5`` is the current repository code, i.e. Muon-with-KJ-NS.

    Args:
        params: parameters / ``(name, param)`` pairs / param groups.
        lr: learning rate.
        momentum: μ (0.95).
        ns_steps: Newton–Schulz iterations (1).
        ns_method: coefficient schedule (``"keller"``).
        gamma: cosh sharpness (1.0).
        nesterov, momentum_convention, weight_decay, ns_dtype, scale, skip_nonfinite, batched, distributed,
            process_group: as in Muon.

    Example:
        >>> model = torch.nn.Linear(16, 32, bias=False)
        >>> opt = HybridAuON(model.parameters(), lr=0.02)
        >>> model(torch.randn(4, 16)).square().mean().backward(); opt.step()

    Ref: Maity 2025, arXiv:2509.24320 (v1 abstract: "a single Newton-Schulz iteration").
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | torch.Tensor = 0.02,
        momentum: float = 0.95,
        ns_steps: int = 1,
        ns_method: str = "keller",
        gamma: float = 1.0,
        nesterov: bool = True,
        momentum_convention: str = "ema",
        weight_decay: float = 0.0,
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
        )

    def validate_group(self, group: dict[str, Any]) -> None:
        """Muon's checks plus ``gamma`` > 0."""
        super().validate_group(group)
        if group["algorithm"] == "ortho":
            _validate_auon(group)

    def transforms(self, group: dict[str, Any]) -> Sequence[Transform]:
        """``momentum → orthogonalize → cosh_normalize → scale_by_shape → decoupled_weight_decay``."""
        return [
            momentum(group["momentum"], group["nesterov"], group["momentum_convention"]),
            orthogonalize(group["ns_method"], group["ns_steps"], group["ns_dtype"], group["batched"]),
            cosh_normalize(),
            scale_by_shape(group["scale"]),
            decoupled_weight_decay(),
        ]
