"""FISMO — Fisher-Structured Momentum-Orthogonalized optimizer (Xu, Yan, Zhang; arXiv:2601.21750).

FISMO generalizes Muon's isotropic step ``polar(M)`` to a trust region in a Kronecker-factored Fisher metric
``P ⊗ Q`` (``P ∈ R^{m×m}`` left/output factor, ``Q ∈ R^{n×n}`` right/input factor)::

    L  = (1/n)·G Q⁻¹ Gᵀ + δ·tr(P)/m·I          P̃ = γP + (1−γ)L      P ← sym(m·P̃ / tr(P̃))
    Rf = (1/m)·Gᵀ P⁻¹ G + δ·tr(Q)/n·I          Q̃ = γQ + (1−γ)Rf     Q ← sym(n·Q̃ / tr(Q̃))
    G̃ = P^{-1/2} G Q^{-1/2};   M ← βM + (1−β)G̃;   ΔW = P^{-1/2} · polar(M) · Q^{-1/2}
    W ← W(1 − ηλ) − η·sqrt(max(1, m/n))·ΔW

(``sym(X) = (X + Xᵀ)/2``; traces normalized to ``m`` and ``n`` so both factors have mean eigenvalue 1 and the
step has Muon's scale.) With ``P = I, Q = I`` (``γ = 1``) FISMO is exactly Muon on ``M``.

Source caveat: the abstract (arXiv:2601.21750) fixes the idea (Kronecker-factored Fisher trust region,
``O(1/√T)`` rate with mini-batch variance reduction). The equations above follow the secondary transcription at
junaidaliop.github.io/zij/math/fismo; the primary text was not available to us. Defaults ``γ = 0.95``,
``δ = 0.1`` are ours (the transcription gives no values); ``L`` uses the previous ``Q`` and ``Rf`` the freshly
updated ``P``. Cost: two ``eigh`` of ``m×m`` and ``n×n`` per step plus the polar factor (Shampoo-like state).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from orthokit.optim._normalizers import check_positive, check_unit_interval, state_dtype
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

__all__ = ["FISMO", "fismo_update_factors", "inverse_sqrt_spd", "fisher_whiten", "fisher_unwhiten"]


def inverse_sqrt_spd(a: torch.Tensor, floor: float = 1e-12) -> torch.Tensor:
    """``A^{-1/2}`` of a symmetric positive-definite matrix via ``eigh`` (eigenvalues floored at ``floor·λ_max``).

    Example:
        >>> a = torch.tensor([[4.0, 0.0], [0.0, 9.0]], dtype=torch.float64)
        >>> inverse_sqrt_spd(a).diagonal()
        tensor([0.5000, 0.3333], dtype=torch.float64)
    """
    w, v = torch.linalg.eigh(a)
    w = w.clamp(min=floor * w.amax(dim=-1, keepdim=True).clamp(min=torch.finfo(w.dtype).tiny))
    return (v * w.rsqrt().unsqueeze(-2)) @ v.mT


def _sym_trace_normalize(x: torch.Tensor, size: int) -> torch.Tensor:
    x = 0.5 * (x + x.mT)
    tr = x.diagonal(dim1=-2, dim2=-1).sum(-1)[..., None, None]
    return x * (size / tr)


def fismo_update_factors(
    g: torch.Tensor, p: torch.Tensor, q: torch.Tensor, gamma: float = 0.95, damping: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Update FISMO's Kronecker factors in place and return ``(P^{-1/2}, Q^{-1/2})``.

    .. math::
        L = \tfrac1n G Q^{-1} G^\top + \delta\tfrac{\mathrm{tr}P}{m} I,\
        P \leftarrow \mathrm{sym}\Big(m\frac{\gamma P + (1-\gamma)L}{\mathrm{tr}(\cdot)}\Big),\
        R = \tfrac1m G^\top P^{-1} G + \delta\tfrac{\mathrm{tr}Q}{n} I,\
        Q \leftarrow \mathrm{sym}\Big(n\frac{\gamma Q + (1-\gamma)R}{\mathrm{tr}(\cdot)}\Big)

    Args:
        g: gradient ``[..., m, n]``.
        p: left factor ``[..., m, m]`` (SPD, start with ``I``), float32/float64; modified in place.
        q: right factor ``[..., n, n]`` (SPD, start with ``I``); modified in place.
        gamma: factor EMA coefficient in [0, 1].
        damping: ``δ > 0``, relative Tikhonov damping.

    Returns:
        ``(P^{-1/2}, Q^{-1/2})`` of the updated factors, in ``p.dtype``.

    Example:
        >>> g = torch.randn(6, 4); p = torch.eye(6); q = torch.eye(4)
        >>> pi, qi = fismo_update_factors(g, p, q)
        >>> round(float(p.trace()), 4), round(float(q.trace()), 4)
        (6.0, 4.0)

    Ref: arXiv:2601.21750 (equations per the transcription noted in the module docstring).
    """
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"FISMO gamma must be in [0, 1], got {gamma}")
    if not damping > 0.0:
        raise ValueError(f"FISMO damping must be > 0, got {damping}")
    m, n = g.shape[-2], g.shape[-1]
    if p.shape[-2:] != (m, m) or q.shape[-2:] != (n, n):
        raise ValueError(
            f"FISMO factors {tuple(p.shape)}, {tuple(q.shape)} do not match gradient {tuple(g.shape)}"
        )
    gf = g.to(p.dtype)
    eye_m = torch.eye(m, dtype=p.dtype, device=p.device)
    eye_n = torch.eye(n, dtype=p.dtype, device=p.device)
    tr_p = p.diagonal(dim1=-2, dim2=-1).sum(-1)[..., None, None]
    left = gf @ torch.linalg.solve(q, gf.mT) / n + damping * (tr_p / m) * eye_m
    p.copy_(_sym_trace_normalize(gamma * p + (1.0 - gamma) * left, m))
    tr_q = q.diagonal(dim1=-2, dim2=-1).sum(-1)[..., None, None]
    right = gf.mT @ torch.linalg.solve(p, gf) / m + damping * (tr_q / n) * eye_n
    q.copy_(_sym_trace_normalize(gamma * q + (1.0 - gamma) * right, n))
    return inverse_sqrt_spd(p), inverse_sqrt_spd(q)


class _FactorCache:
    """Per-step hand-over of ``(P^{-1/2}, Q^{-1/2})`` from :class:`fisher_whiten` to :class:`fisher_unwhiten`."""

    def __init__(self) -> None:
        self.roots: dict[int, tuple[Tensor, Tensor]] = {}


class fisher_whiten(Transform):
    """Transform: update FISMO's Kronecker factors from the gradient and return ``P^{-1/2} G Q^{-1/2}``.

    State: ``fismo_p`` ``[mats, m, m]`` and ``fismo_q`` ``[mats, n, n]`` (identity at start; float32, float64 for
    float64 params). Reads ``fisher_beta`` (γ) and ``damping`` (δ) from the group.

    Example:
        >>> t = fisher_whiten(_FactorCache())
        >>> st = t.init(torch.zeros(5, 3), {})
        >>> st["fismo_p"].shape, st["fismo_q"].shape
        (torch.Size([1, 5, 5]), torch.Size([1, 3, 3]))
    """

    name = "fisher_whiten"
    state_keys = ("fismo_p", "fismo_q")

    def __init__(self, cache: _FactorCache) -> None:
        self.cache = cache

    def init(self, param: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        v = self._view(param)
        dt = state_dtype(param.dtype)
        eye = lambda k: torch.eye(k, dtype=dt, device=param.device).expand(v.mats, k, k).clone()  # noqa: E731
        return {"fismo_p": eye(v.m), "fismo_q": eye(v.n)}

    def update(
        self, updates: list[Tensor], states: list[dict[str, Any]], params: list[Tensor], group: dict[str, Any]
    ) -> list[Tensor]:
        out = []
        for i, (g, st, p) in enumerate(zip(updates, states, params)):
            v = self._view(p)
            pis, qis = fismo_update_factors(
                v.as_matrices(g), st["fismo_p"], st["fismo_q"], group["fisher_beta"], group["damping"]
            )
            self.cache.roots[i] = (pis, qis)
            gm = v.as_matrices(g).to(pis.dtype)
            out.append((pis @ gm @ qis).to(g.dtype).reshape(v.shape))
        return out


class fisher_unwhiten(Transform):
    """Transform: ``ΔW = P^{-1/2} · polar(M) · Q^{-1/2}`` with the roots computed by :class:`fisher_whiten`.

    Example:
        >>> c = _FactorCache(); c.roots[0] = (2 * torch.eye(2)[None], torch.eye(3)[None])
        >>> fisher_unwhiten(c).update([torch.ones(2, 3)], [{}], [torch.zeros(2, 3)], {})[0][0, 0].item()
        2.0
    """

    name = "fisher_unwhiten"

    def __init__(self, cache: _FactorCache) -> None:
        self.cache = cache

    def update(
        self, updates: list[Tensor], states: list[dict[str, Any]], params: list[Tensor], group: dict[str, Any]
    ) -> list[Tensor]:
        out = []
        for i, (u, p) in enumerate(zip(updates, params)):
            v = self._view(p)
            pis, qis = self.cache.roots.pop(i)
            o = pis @ v.as_matrices(u).to(pis.dtype) @ qis
            out.append(o.to(u.dtype).reshape(v.shape))
        return out


@register_optimizer(
    "fismo",
    default_lr=0.02,
    state_keys=("fismo_p", "fismo_q", "momentum_buffer"),
    supports_batched=True,
    supports_distributed=False,
    paper="Xu, Yan, Zhang 2026, arXiv:2601.21750",
)
class FISMO(OrthogonalOptimizer):
    """FISMO: Muon in a Kronecker-factored Fisher metric (whiten → momentum → polar → unwhiten).

    Chain: ``fisher_whiten → momentum(ema, no Nesterov) → orthogonalize → fisher_unwhiten → scale_by_shape →
    decoupled_weight_decay`` (module docstring for the equations and the source caveat).

    Args:
        params: parameters / ``(name, param)`` pairs / param groups.
        lr: learning rate (Muon-like; the factors have mean eigenvalue 1).
        momentum: β for ``M ← βM + (1−β)G̃`` (0.95).
        fisher_beta: γ, EMA coefficient of the Kronecker factors (0.95).
        damping: δ, relative Tikhonov damping of the factors (0.1).
        weight_decay, ns_method, ns_steps, ns_dtype, scale, skip_nonfinite, batched: as in Muon.

    Example:
        >>> model = torch.nn.Linear(16, 32, bias=False)
        >>> opt = FISMO(model.parameters(), lr=0.02)
        >>> model(torch.randn(4, 16)).square().mean().backward(); opt.step()

    Ref: Xu, Yan, Zhang 2026, arXiv:2601.21750.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | torch.Tensor = 0.02,
        momentum: float = 0.95,
        fisher_beta: float = 0.95,
        damping: float = 0.1,
        weight_decay: float = 0.0,
        ns_method: str = "polar_express",
        ns_steps: int | None = None,
        ns_dtype: torch.dtype | str | None = "auto",
        scale: str = "keller",
        skip_nonfinite: bool = False,
        batched: bool = True,
    ) -> None:
        defaults = dict(
            lr=lr,
            momentum=momentum,
            fisher_beta=fisher_beta,
            damping=damping,
            nesterov=False,
            momentum_convention="ema",
            weight_decay=weight_decay,
            ns_method=ns_method,
            ns_steps=ns_steps,
            ns_dtype=ns_dtype,
            scale=scale,
            batched=batched,
        )
        super().__init__(params, defaults, skip_nonfinite=skip_nonfinite)

    def validate_group(self, group: dict[str, Any]) -> None:
        """Muon's checks plus ``fisher_beta`` ∈ [0, 1] and ``damping`` > 0."""
        super().validate_group(group)
        if group["algorithm"] == "ortho":
            validate_muon_kwargs(group)
            check_unit_interval("fisher_beta", group["fisher_beta"], closed_right=True)
            check_positive("damping", group["damping"])

    def transforms(self, group: dict[str, Any]) -> Sequence[Transform]:
        """``fisher_whiten → momentum → orthogonalize → fisher_unwhiten → scale_by_shape → weight decay``."""
        cache = _FactorCache()
        return [
            fisher_whiten(cache),
            momentum(group["momentum"], False, "ema"),
            orthogonalize(group["ns_method"], group["ns_steps"], group["ns_dtype"], group["batched"]),
            fisher_unwhiten(cache),
            scale_by_shape(group["scale"]),
            decoupled_weight_decay(),
        ]
