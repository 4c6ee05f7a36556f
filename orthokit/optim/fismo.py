"""FISMO — Fisher-Structured Momentum-Orthogonalized optimizer (Xu, Yan, Zhang; arXiv:2601.21750).

FISMO generalizes Muon's isotropic step ``polar(M)`` to a trust region in a Kronecker-factored Fisher metric
``P ⊗ Q`` (``P ∈ R^{m×m}`` left/output factor, ``Q ∈ R^{n×n}`` right/input factor). Each factor is an EMA of a
Fisher estimate at its natural scale, with damping relative to that scale, and is used trace-normalized::

    L  = (1/n)·G Q⁻¹ Gᵀ + δ·tr(P̃)/m·I ;   P̃ ← γP̃ + (1−γ)L ;    P = m·P̃/tr(P̃)      (left, m×m)
    Rf = (1/m)·Gᵀ P⁻¹ G + δ·tr(Q̃)/n·I ;   Q̃ ← γQ̃ + (1−γ)Rf ;   Q = n·Q̃/tr(Q̃)      (right, n×n)
    G̃ = P^{-1/2} G Q^{-1/2};   M ← βM + (1−β)G̃;   ΔW = P^{-1/2} · polar(M) · Q^{-1/2}
    W ← W(1 − ηλ) − η·sqrt(max(1, m/n))·ΔW

``P̃`` starts as ``ℓ₁·I`` with ``ℓ₁ = tr(L₁)/m`` of the first gradient (an identity prior in the Fisher's own
units; same for ``Q̃``). ``L`` uses the previous ``Q`` and ``Rf`` the freshly updated ``P``. With ``γ = 1`` the
factors stay ``I`` and FISMO is Muon on ``M`` without Nesterov.

**Scale invariance.** Multiplying every gradient by ``c`` (loss scaling, sum vs mean reduction) multiplies
``P̃, Q̃`` by ``c²``, leaves ``P, Q`` unchanged, multiplies ``M`` by ``c`` and leaves ``ΔW`` unchanged. The
transcription this follows (junaidaliop.github.io/zij/math/fismo) stores the trace-normalized ``P`` and mixes it
with the unnormalized ``L`` — there ``δ·tr(P)/m`` is an absolute ``δ`` and the mixing weight depends on ``‖G‖²``:
P stayed ≈ I for gradient RMS ≤ 1e-2 (Muon without Nesterov) and reached condition number 46 at RMS 1 and 5e4
at RMS 10. Here both factors are stored as ``(P̂ = m·P̃/tr P̃, sqrt(tr P̃/m))`` — the normalized matrix and an
RMS scalar — so the state is in range whatever the gradient scale.

Source caveat: the abstract (arXiv:2601.21750) fixes the idea (Kronecker-factored Fisher trust region,
``O(1/√T)`` rate with mini-batch variance reduction); the primary text and code were not available to us.
Defaults ``γ = 0.95``, ``δ = 0.1`` are ours. Cost: two ``eigh`` of ``m×m`` and ``n×n`` per step plus the polar
factor (Shampoo-like state).

Robustness: the gradient is divided by its largest entry before any product is formed (scalars in float64);
``eigh`` runs on a symmetrized, damped matrix and is retried in float64 if it fails; all state writes are staged
and committed only when the whole update is finite, otherwise :class:`~orthokit.optim._normalizers.StepComputationError`
is raised with parameters and state untouched.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from orthokit.optim._normalizers import (
    StepComputationError,
    StepStage,
    check_positive,
    check_unit_interval,
    commit_stage,
    max_abs,
    prescale,
    staged_momentum,
    state_dtype,
)
from orthokit.optim.base import OrthogonalOptimizer
from orthokit.optim.muon import validate_muon_kwargs
from orthokit.optim.registry import register_optimizer
from orthokit.optim.transforms import Transform, decoupled_weight_decay, orthogonalize, scale_by_shape

__all__ = ["FISMO", "fismo_update_factors", "inverse_sqrt_spd", "fisher_whiten", "fisher_unwhiten"]


def inverse_sqrt_spd(a: torch.Tensor, floor: float = 1e-12) -> torch.Tensor:
    """``A^{-1/2}`` of a symmetric positive-definite matrix via ``eigh`` (eigenvalues floored at ``floor·λ_max``).

    The input is symmetrized first; if ``eigh`` fails to converge (or returns non-finite values) it is retried
    in float64 with a ``1e-10·tr(A)/n`` jitter, and a :class:`StepComputationError` is raised if that fails too.

    Example:
        >>> a = torch.tensor([[4.0, 0.0], [0.0, 9.0]], dtype=torch.float64)
        >>> inverse_sqrt_spd(a).diagonal()
        tensor([0.5000, 0.3333], dtype=torch.float64)
    """
    sym = 0.5 * (a + a.mT)

    def _root(x: torch.Tensor) -> torch.Tensor:
        w, v = torch.linalg.eigh(x)
        w = w.clamp(min=floor * w.amax(dim=-1, keepdim=True).clamp(min=torch.finfo(w.dtype).tiny))
        return (v * w.rsqrt().unsqueeze(-2)) @ v.mT

    if bool(torch.isfinite(sym).all()):
        try:
            out = _root(sym)
            if bool(torch.isfinite(out).all()):
                return out
        except torch.linalg.LinAlgError:
            pass
        x64 = sym.to(torch.float64)
        k = x64.shape[-1]
        jitter = 1e-10 * x64.diagonal(dim1=-2, dim2=-1).sum(-1)[..., None, None] / k
        try:
            out = _root(x64 + jitter * torch.eye(k, dtype=torch.float64, device=x64.device))
            if bool(torch.isfinite(out).all()):
                return out.to(a.dtype)
        except torch.linalg.LinAlgError:
            pass
    raise StepComputationError(
        f"inverse square root of a {tuple(a.shape)} FISMO factor failed (eigh did not converge or the factor is "
        "not finite); no parameter or state was modified"
    )


def _ema_factor(
    core: torch.Tensor, a2: torch.Tensor, p_hat: torch.Tensor, rms: torch.Tensor, gamma: float, damping: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """One EMA step of a trace-normalized factor, in the ``(normalized matrix, RMS scale)`` representation.

    ``core`` is the Fisher estimate of the max-abs-scaled gradient, ``a2`` the squared scale (float64); the
    unnormalized estimate is ``a2·core``. Returns ``(P̂_new, rms_new)``.
    """
    k = core.shape[-1]
    ell = a2 * core.diagonal(dim1=-2, dim2=-1).sum(-1).to(torch.float64)[..., None, None] / k
    s_old = rms.to(torch.float64).square()
    s_old = torch.where(s_old > 0, s_old, ell)  # first step: identity prior at the gradient's own scale
    s_new = gamma * s_old + (1.0 - gamma) * (ell + damping * s_old)
    ok = s_new > 0
    safe = torch.where(ok, s_new, torch.ones_like(s_new))
    c1 = torch.where(ok, gamma * s_old / safe, torch.ones_like(s_new)).to(core.dtype)
    c2 = torch.where(ok, (1.0 - gamma) * damping * s_old / safe, torch.zeros_like(s_new)).to(core.dtype)
    c3 = torch.where(ok, (1.0 - gamma) * a2 / safe, torch.zeros_like(s_new)).to(core.dtype)
    eye = torch.eye(k, dtype=core.dtype, device=core.device)
    new = c1 * p_hat + c2 * eye + c3 * core
    new = 0.5 * (new + new.mT)
    new = new * (k / new.diagonal(dim1=-2, dim2=-1).sum(-1)[..., None, None])  # exact trace k (no drift)
    return new, s_new.sqrt()


def fismo_update_factors(
    g: torch.Tensor,
    p: torch.Tensor,
    q: torch.Tensor,
    p_rms: torch.Tensor,
    q_rms: torch.Tensor,
    gamma: float = 0.95,
    damping: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""FISMO's Kronecker-factor update (pure: nothing is modified), scale-invariant and overflow-free.

    .. math::
        L = \tfrac1n G Q^{-1} G^\top + \delta\tfrac{\mathrm{tr}\tilde P}{m} I,\quad
        \tilde P \leftarrow \gamma\tilde P + (1-\gamma)L,\quad P = m\tilde P/\mathrm{tr}\tilde P

    and the same for ``Q`` with ``R = (1/m) Gᵀ P⁻¹ G`` (fresh ``P``). Factors are passed and returned as
    ``(P, rms_P)`` with ``P`` trace-normalized and ``rms_P = sqrt(tr P̃ / m)`` (0 = not yet initialized).

    Args:
        g: gradient ``[..., m, n]``.
        p, q: normalized factors ``[..., m, m]``, ``[..., n, n]`` (identity at start), float32/float64.
        p_rms, q_rms: scales ``[..., 1, 1]`` (zeros at start).
        gamma: factor EMA coefficient in [0, 1].
        damping: ``δ > 0``, damping relative to the factor's mean eigenvalue.

    Returns:
        ``(P_new, Q_new, p_rms_new, q_rms_new, P_new^{-1/2}, Q_new^{-1/2})`` (matrices in ``p.dtype``).

    Example:
        >>> g = torch.randn(6, 4); z = torch.zeros(1, 1)
        >>> p, q, pr, qr, pi, qi = fismo_update_factors(g, torch.eye(6), torch.eye(4), z, z)
        >>> round(float(p.trace()), 4), round(float(q.trace()), 4)
        (6.0, 4.0)
        >>> p2 = fismo_update_factors(1e3 * g, torch.eye(6), torch.eye(4), z, z)[0]  # scale-invariant
        >>> torch.allclose(p, p2, atol=1e-5)
        True

    Ref: arXiv:2601.21750 (equations per the transcription noted in the module docstring, made scale-invariant).
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
    a = max_abs(g)
    gs = g.to(p.dtype) / a.to(p.dtype)  # entries in [-1, 1]: no product below can overflow
    a2 = a.square()
    try:
        left = gs @ torch.linalg.solve(0.5 * (q + q.mT), gs.mT) / n
        p_new, p_rms_new = _ema_factor(left, a2, p, p_rms, gamma, damping)
        right = gs.mT @ torch.linalg.solve(p_new, gs) / m
        q_new, q_rms_new = _ema_factor(right, a2, q, q_rms, gamma, damping)
    except torch.linalg.LinAlgError as e:
        raise StepComputationError(
            f"FISMO factor update failed ({str(e).splitlines()[0]}); no parameter or state was modified"
        ) from None
    return p_new, q_new, p_rms_new, q_rms_new, inverse_sqrt_spd(p_new), inverse_sqrt_spd(q_new)


class _FactorCache:
    """Per-step hand-over of ``(P^{-1/2}, Q^{-1/2})`` from :class:`fisher_whiten` to :class:`fisher_unwhiten`."""

    def __init__(self) -> None:
        self.roots: dict[int, tuple[Tensor, Tensor]] = {}


class fisher_whiten(Transform):
    """Transform: update FISMO's Kronecker factors from the gradient and return ``P^{-1/2} G Q^{-1/2}``.

    State: ``fismo_p`` ``[mats, m, m]`` and ``fismo_q`` ``[mats, n, n]`` (trace-normalized, identity at start),
    ``fismo_p_rms`` / ``fismo_q_rms`` ``[mats, 1, 1]`` (their RMS scales, 0 at start); float32, float64 for
    float64 params. Reads ``fisher_beta`` (γ) and ``damping`` (δ) from the group. The new factors are staged
    (written by ``commit_stage`` once the whole update is finite).

    Example:
        >>> t = fisher_whiten(_FactorCache(), StepStage())
        >>> st = t.init(torch.zeros(5, 3), {})
        >>> st["fismo_p"].shape, st["fismo_q"].shape, st["fismo_p_rms"].shape
        (torch.Size([1, 5, 5]), torch.Size([1, 3, 3]), torch.Size([1, 1, 1]))
    """

    name = "fisher_whiten"
    state_keys = ("fismo_p", "fismo_q", "fismo_p_rms", "fismo_q_rms")

    def __init__(self, cache: _FactorCache, stage: StepStage) -> None:
        self.cache = cache
        self.stage_ = stage

    def init(self, param: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        v = self._view(param)
        dt = state_dtype(param.dtype)
        eye = lambda k: torch.eye(k, dtype=dt, device=param.device).expand(v.mats, k, k).clone()  # noqa: E731
        zero = lambda: torch.zeros(v.mats, 1, 1, dtype=dt, device=param.device)  # noqa: E731
        return {"fismo_p": eye(v.m), "fismo_q": eye(v.n), "fismo_p_rms": zero(), "fismo_q_rms": zero()}

    def update(
        self, updates: list[Tensor], states: list[dict[str, Any]], params: list[Tensor], group: dict[str, Any]
    ) -> list[Tensor]:
        out = []
        for i, (g, st, p) in enumerate(zip(updates, states, params)):
            v = self._view(p)
            for key in ("fismo_p_rms", "fismo_q_rms"):  # checkpoints written before the RMS scales existed
                if key not in st:
                    st[key] = torch.zeros(v.mats, 1, 1, dtype=st["fismo_p"].dtype, device=p.device)
            gm = v.as_matrices(g)
            pn, qn, pr, qr, pis, qis = fismo_update_factors(
                gm,
                st["fismo_p"],
                st["fismo_q"],
                st["fismo_p_rms"],
                st["fismo_q_rms"],
                group["fisher_beta"],
                group["damping"],
            )
            for key, val in (("fismo_p", pn), ("fismo_q", qn), ("fismo_p_rms", pr), ("fismo_q_rms", qr)):
                self.stage_.stage(st[key], val.to(st[key].dtype))
            self.cache.roots[i] = (pis, qis)
            a = max_abs(gm)
            white = pis @ (gm.to(pis.dtype) / a.to(pis.dtype)) @ qis
            out.append((white.to(torch.float64) * a).to(g.dtype).reshape(v.shape))
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
    state_keys=("fismo_p", "fismo_q", "fismo_p_rms", "fismo_q_rms", "momentum_buffer"),
    supports_batched=True,
    supports_distributed=False,
    paper="Xu, Yan, Zhang 2026, arXiv:2601.21750",
)
class FISMO(OrthogonalOptimizer):
    """FISMO: Muon in a Kronecker-factored Fisher metric (whiten → momentum → polar → unwhiten).

    Chain: ``fisher_whiten → momentum(ema, no Nesterov) → orthogonalize → fisher_unwhiten → scale_by_shape →
    commit → decoupled_weight_decay`` (module docstring for the equations, the scale invariance and the source
    caveat). Invariant to a constant rescaling of the loss.

    Args:
        params: parameters / ``(name, param)`` pairs / param groups.
        lr: learning rate (Muon-like; the factors have mean eigenvalue 1).
        momentum: β for ``M ← βM + (1−β)G̃`` (0.95).
        fisher_beta: γ, EMA coefficient of the Kronecker factors (0.95).
        damping: δ, Tikhonov damping of each factor relative to its mean eigenvalue (0.1).
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
        fallback: str = "adamw",
        fallback_lr: float | torch.Tensor | None = None,
        fallback_betas: tuple[float, float] = (0.9, 0.95),
        fallback_eps: float = 1e-8,
        fallback_weight_decay: float | None = None,
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
        """Muon's checks plus ``fisher_beta`` ∈ [0, 1] and ``damping`` > 0."""
        super().validate_group(group)
        if group["algorithm"] == "ortho":
            validate_muon_kwargs(group)
            check_unit_interval("fisher_beta", group["fisher_beta"], closed_right=True)
            check_positive("damping", group["damping"])

    def transforms(self, group: dict[str, Any]) -> Sequence[Transform]:
        """``fisher_whiten → momentum → orthogonalize → fisher_unwhiten → scale_by_shape → commit → weight decay``."""
        cache = _FactorCache()
        stage = StepStage()
        return [
            fisher_whiten(cache, stage),
            staged_momentum(group["momentum"], False, stage),
            prescale(),  # polar(M) is scale-invariant; this makes the orthogonalizer exactly so
            orthogonalize(group["ns_method"], group["ns_steps"], group["ns_dtype"], group["batched"]),
            fisher_unwhiten(cache),
            scale_by_shape(group["scale"]),
            commit_stage(stage),
            decoupled_weight_decay(),
        ]
