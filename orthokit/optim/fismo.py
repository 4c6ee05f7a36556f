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

import torch

__all__ = ["fismo_update_factors", "inverse_sqrt_spd"]


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
