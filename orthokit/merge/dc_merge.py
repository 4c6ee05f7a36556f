"""DC-Merge — directional-consistency merging in a shared orthogonal subspace (Zhang et al., CVPR 2026,
arXiv 2603.06242; code github.com/Tobeginwith/DC-Merge @3c443e4).

Per 2-D weight (m × n, k = min(m, n)) with task vectors ``τ_t = w_t (W_t − W_0)``, ``r = ⌊k/T⌋`` (or ``rank``):

1. **Energy smoothing.** ``τ_t = U_t Σ_t V_tᵀ``; keep the top-r triplets and replace ``σ = Σ_t[:r]`` by a
   smoother spectrum of the same energy ``E = Σ σ``: ``"avg"`` ``σ' = E/r`` (isotropic), ``"linear"``
   ``σ' = E · normalize(linspace(ρ', 1, r))`` with ``ρ' = min(ρ, σ_1/σ_r)`` (ρ = 5), or ``"none"``.
   ``τ̃_t = U_t[:, :r] diag(σ') V_t[:, :r]ᵀ``. Dominant singular directions no longer drown the weaker ones.
2. **Shared orthogonal subspace.** ``P = polar([U_1,r … U_T,r])``, ``Q = polar([V_1,r … V_T,r])`` — the nearest
   matrices with orthonormal columns to the stacked bases (as in TSV-M, Gargiulo et al., CVPR 2025).
3. **Aggregation there.** ``M_t = Pᵀ τ̃_t Q`` (Tr × Tr); keep each ``M_t``'s largest ``keep_fraction`` entries
   by magnitude (authors: 0.1 %); TIES-style sign election of ``Σ_t M_t`` and disjoint mean over the tasks
   that agree; keep only the block-diagonal ``r × r`` blocks (each task its own directions).
4. **Back-projection.** ``τ = P M Qᵀ``, ``W = W_0 + λ τ`` (λ swept on validation by the authors, 0.1…3.0).

Tensors that are not 2-D get ``W_0 + λ · Σ w_t τ_t / Σ w_t``.

Deviations/quirks: the authors smooth only in their LoRA path (full fine-tunes use ``σ' = σ``) — here
``smoothing`` is a parameter for both (default ``"linear"``); pass ``smoothing="none"`` for the authors'
full-fine-tune behaviour, which also scored higher on our full-fine-tune testbed (normalized accuracy 0.921 vs
0.912 for ``"linear"``, 3 seeds; docs/merge/dc_merge.md, "Trivial regime"). Their 0.1 % filter keeps ~16 of 16 384 entries
for T = 8, r = 16; for small layers that can delete a task's own diagonal, so we keep at least ``r`` entries
per task (``max(⌈keep_fraction·(Tr)²⌉, r)``). Not idempotent: each task contributes only ``r`` directions and
(with smoothing) a reshaped spectrum, so merging identical models does not return them (unlike task
arithmetic); merging one model with ``smoothing="none"``, ``keep_fraction=1`` does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from orthokit.merge.registry import check_merge_inputs, register_merge_method

__all__ = ["dc_merge", "smooth_spectrum", "polar_factor"]


def polar_factor(X: Tensor) -> Tensor:
    """Orthogonal polar factor ``U Vᵀ`` of ``X = U Σ Vᵀ`` (thin SVD): the nearest matrix with orthonormal columns
    (rows if wide) in Frobenius norm.

    Example:
        >>> P = polar_factor(torch.randn(6, 3, dtype=torch.float64))
        >>> torch.allclose(P.T @ P, torch.eye(3, dtype=torch.float64))
        True

    Reference: Higham, "Computing the polar decomposition", SIAM J. Sci. Stat. Comput. 7 (1986).
    """
    U, _, Vh = torch.linalg.svd(X, full_matrices=False)
    return U @ Vh


def smooth_spectrum(
    sigma: Tensor, mode: Literal["linear", "avg", "none"] = "linear", rho: float = 5.0
) -> Tensor:
    """DC-Merge energy smoothing of a descending spectrum ``σ`` (length r), preserving the energy ``E = Σ σ``.

    Math: ``avg``: ``σ' = (E/r)·1``; ``linear``: ``ρ' = min(ρ, σ_1/σ_r)`` (``ρ`` if ``σ_r = 0``),
    ``σ' = E·ℓ/Σℓ`` with ``ℓ = linspace(ρ', 1, r)`` — the largest-to-smallest ratio is capped at ρ; ``none``: σ.

    Example:
        >>> smooth_spectrum(torch.tensor([9.0, 1.0, 0.0]), "avg").tolist()
        [3.3333332538604736, 3.3333332538604736, 3.3333332538604736]

    Reference: Zhang et al., DC-Merge, CVPR 2026, arXiv 2603.06242 (energy smoothing, ρ = 5).
    """
    r = sigma.numel()
    E = sigma.sum()
    if mode == "none" or r <= 1:
        return sigma.clone()
    if mode == "avg":
        return torch.full_like(sigma, float(E) / r)
    if mode == "linear":
        if rho < 1.0:
            raise ValueError(f"rho must be >= 1, got {rho}")
        ratio = float(sigma[0] / sigma[-1]) if float(sigma[-1]) > 0 else rho
        rho_eff = min(rho, ratio)
        ell = torch.linspace(rho_eff, 1.0, r, dtype=sigma.dtype, device=sigma.device)
        return E * ell / ell.sum()
    raise ValueError(f"smoothing must be 'linear', 'avg' or 'none', got {mode!r}")


def _keep_top(M: Tensor, k: int) -> Tensor:
    flat = M.reshape(-1)
    if k >= flat.numel():
        return M
    idx = flat.abs().topk(k).indices
    out = torch.zeros_like(flat)
    out[idx] = flat[idx]
    return out.reshape(M.shape)


@register_merge_method(
    "dc_merge",
    inputs="full",
    needs_base=True,
    order_invariant=True,
    reference="arXiv:2603.06242",
    one_model_exact={"smoothing": "none", "keep_fraction": 1.0},
    idempotent=False,  # each task contributes only r = k/T directions (see the module docstring)
    base_fixed_point={},
)
def dc_merge(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weights: Sequence[float] | None = None,
    lambda_: float = 1.0,
    rank: int = 0,
    smoothing: Literal["linear", "avg", "none"] = "linear",
    rho: float = 5.0,
    keep_fraction: float = 1e-3,
    generator: torch.Generator | None = None,
) -> Tensor:
    """DC-Merge: smooth each task vector's spectrum, merge in a shared orthogonal subspace, project back.

    Math: see the module docstring — ``τ = P · blockdiag(TIES(topk(Pᵀ τ̃_t Q))) · Qᵀ``, ``W = W_0 + λ τ`` with
    ``P = polar([U_t,r])``, ``Q = polar([V_t,r])`` and ``τ̃_t`` the energy-smoothed rank-r truncation of
    ``w_t τ_t``.

    Args:
        base: pre-trained tensor ``W_0``.
        tensors: fine-tuned tensors, base's shape/dtype.
        weights: per-model weights scaling each task vector before the SVD (default 1).
        lambda_: global scale α of the merged task vector (authors sweep 0.1…3.0 on validation).
        rank: directions per task r; ``0`` = ``⌊min(m, n)/T⌋`` (authors: that for full fine-tunes, the LoRA rank
            for LoRA inputs). Clamped to ``⌊min(m, n)/T⌋`` (at least 1) so the stacked bases fit.
        smoothing: ``"linear"`` (default), ``"avg"`` or ``"none"``; see :func:`smooth_spectrum`.
        rho: max largest/smallest ratio of the ``"linear"`` spectrum.
        keep_fraction: fraction of each ``M_t``'s entries kept (≥ r entries are kept; 1 = keep all).
        generator: unused (deterministic).

    Returns:
        The merged tensor (computed in float64, returned in the base dtype).

    Raises:
        ValueError/TypeError: mismatched shapes/dtypes, non-finite inputs, bad options.

    Example:
        >>> W0 = torch.randn(8, 8)
        >>> W1 = W0 + torch.randn(8, 8)
        >>> torch.allclose(dc_merge(W0, [W1], smoothing="none", keep_fraction=1.0), W1, atol=1e-5)
        True

    Reference: Zhang et al., "DC-Merge: Improving Model Merging with Directional Consistency", CVPR 2026,
    arXiv 2603.06242.
    """
    del generator
    w = check_merge_inputs(base, tensors, weights, needs_base=True)
    assert base is not None
    if smoothing not in ("linear", "avg", "none"):
        raise ValueError(f"smoothing must be 'linear', 'avg' or 'none', got {smoothing!r}")
    if not 0.0 < keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    if rank < 0:
        raise ValueError(f"rank must be >= 0 (0 = automatic), got {rank}")
    for what, t in [("base", base)] + [(f"tensors[{i}]", t) for i, t in enumerate(tensors)]:
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{what} contains NaN or inf")
    W0 = base.to(torch.float64)
    taus = [wi * (t.to(torch.float64) - W0) for wi, t in zip(w, tensors)]
    T = len(taus)
    if W0.dim() != 2:
        tot = sum(w)
        if tot == 0:
            raise ValueError("weights sum to zero; cannot average the non-2-D tensors")
        return (W0 + lambda_ * sum(taus) / tot).to(base.dtype)
    m, n = W0.shape
    k = min(m, n)
    r_max = max(1, k // T)
    r = r_max if rank == 0 else min(rank, r_max)
    Us, Vs, sig = [], [], []
    for tau in taus:
        U, S, Vh = torch.linalg.svd(tau, full_matrices=False)
        Us.append(U[:, :r])
        Vs.append(Vh[:r].T)
        sig.append(smooth_spectrum(S[:r], smoothing, rho))
    P = polar_factor(torch.cat(Us, dim=1))
    Q = polar_factor(torch.cat(Vs, dim=1))
    n_keep = max(int(math.ceil(keep_fraction * (T * r) ** 2)), r)
    Ms = [_keep_top(P.T @ ((U * s) @ V.T) @ Q, n_keep) for U, V, s in zip(Us, Vs, sig)]
    total = sum(Ms)
    sign = torch.sign(total)
    num = torch.zeros_like(total)
    cnt = torch.zeros_like(total)
    for M in Ms:
        agree = (torch.sign(M) == sign) & (M != 0)
        num = num + torch.where(agree, M, torch.zeros_like(M))
        cnt = cnt + agree.to(M.dtype)
    merged = torch.where(cnt > 0, num / cnt.clamp_min(1.0), torch.zeros_like(num))
    mask = torch.block_diag(*[torch.ones(r, r, dtype=torch.float64, device=W0.device)] * T)
    tau = P @ (merged * mask[: merged.shape[0], : merged.shape[1]]) @ Q.T
    return (W0 + lambda_ * tau).to(base.dtype)
