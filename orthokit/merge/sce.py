"""SCE merging (FuseChat 2.0): Select by variance, Calculate matrix-level weights, Erase minority signs.

Per tensor, with task vectors τ_t = θ_t − θ₀ (t = 1…T) stacked as [T, ...]:

1. **Select** (only when ``select_topk`` < 1): v = Var_t(τ_t) (population variance over models); keep the
   k = ⌊select_topk · nnz(v)⌋ positions of largest v in every τ_t, zero the rest (k = 0 → all zero).
2. **Calculate**: η_t = mean(τ_t²) / Σ_s mean(τ_s²) (uniform 1/T when Σ_s mean(τ_s²) < 1e-6).
3. **Erase**: the TIES sign election on the (unweighted) τ_t: m_t = [sign τ_t = sign⁺(Σ_s τ_s)].
4. θ = θ₀ + Σ_t m_t η_t τ_t / max(Σ_t m_t η_t, 1e-6).

Defaults and the operation order follow mergekit 0.1.5 (``merge_methods/sce.py``; ``select_topk`` 1.0 = no
selection), so results are bit-equal to ``mergekit.merge_methods.merge_tensors(..., "sce")`` in fp32 and bf16
(``tests/merge/test_mergekit_parity_b.py``). Ties in v at the selection boundary are resolved by ``torch.topk``,
as in mergekit.

``weight`` (an orthokit extension, needed by the registry convention): mergekit's ``sce`` has no weight (it
rejects one). With all weights 1 (the default) the result is mergekit's; other positive weights scale the
matrix-level weights, η_t → w_t η_t (the election stays unweighted).

Reference: Z. Wan, Y. Shi, F. Huang, X. Quan et al., "FuseChat: Knowledge Fusion of Chat Models" (v2,
FuseChat-2.0, SCE merging), arXiv:2408.07990.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from orthokit.merge.registry import check_merge_inputs, register_merge_method

__all__ = ["sce", "sce_select_mask", "sce_weights"]


def sce_select_mask(task_vectors: Tensor, select_topk: float, dtype: torch.dtype) -> Tensor:
    """The SCE selection mask over positions: 1 at the ⌊select_topk · nnz(v)⌋ largest variances v across models.

    Example:
        >>> tv = torch.tensor([[1.0, 0.0, 2.0], [-1.0, 0.0, 2.5]])  # variances [1, 0, 0.0625]
        >>> sce_select_mask(tv, 0.5, torch.float32)
        tensor([1., 0., 0.])
    """
    if select_topk <= 0:
        return torch.zeros_like(task_vectors[0], dtype=dtype)
    if select_topk >= 1:
        return torch.ones_like(task_vectors[0], dtype=dtype)
    var = torch.var(task_vectors, dim=0, unbiased=False)
    k = int(torch.count_nonzero(var) * select_topk)
    mask = torch.zeros_like(var, dtype=dtype)
    if k == 0:
        return mask
    idx = torch.topk(var.abs().view(-1), k=k, largest=True).indices
    mask.view(-1)[idx] = 1
    return mask


def sce_weights(task_vectors: Tensor) -> Tensor:
    """Matrix-level weights η_t = mean(τ_t²) / Σ_s mean(τ_s²) (uniform when the sum is below 1e-6).

    Example:
        >>> sce_weights(torch.tensor([[1.0, 1.0], [2.0, 0.0]]))
        tensor([0.3333, 0.6667])
    """
    ms = task_vectors.square().reshape(task_vectors.shape[0], -1).mean(dim=1)
    total = torch.sum(ms).item()
    if abs(total) < 1e-6:
        return torch.ones_like(ms) / ms.shape[0]
    return ms / total


@register_merge_method(
    "sce",
    inputs="full",
    needs_base=True,
    per_model_params=("weights",),
    order_invariant=True,
    stochastic=False,
    reference="arXiv:2408.07990",
    one_model_exact={},
    idempotent={},
    base_fixed_point={},
)
def sce(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weights: Sequence[float] | None = None,
    select_topk: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """SCE: variance-based selection, mean-square matrix weights, TIES sign erase; θ₀ + Σ m η τ / Σ m η.

    Args:
        base: θ₀ (required). tensors: fine-tuned θ_t.
        weights: per-model multipliers of η_t (orthokit extension; default 1.0 = mergekit; must be positive).
        select_topk: fraction of the nonzero-variance positions kept (default 1.0 = all, as mergekit; the
            FuseChat-2.0 paper uses 0.1); must lie in [0, 1].
        generator: unused (deterministic).

    Returns:
        The merged tensor, base's shape and dtype.

    Raises:
        ValueError: ``select_topk`` outside [0, 1], or a non-positive weight.

    Example:
        >>> import torch
        >>> b = torch.zeros(2); ft = [torch.tensor([1.0, 1.0]), torch.tensor([-3.0, 1.0])]
        >>> sce(b, ft)  # η = [1, 5]/6; entry 0 elects −: only τ₂ survives there
        tensor([-3.,  1.])

    Reference: FuseChat-2.0 (SCE), arXiv:2408.07990; mergekit 0.1.5 ``sce``.
    """
    w = check_merge_inputs(base, tensors, weights, needs_base=True)
    assert base is not None
    if not 0 <= float(select_topk) <= 1:
        raise ValueError(f"sce: select_topk must lie in [0, 1], got {select_topk}")
    if any(x <= 0 for x in w):
        raise ValueError(f"sce: weights must be positive, got {w}")
    dtype = base.dtype
    tv = torch.stack([t - base for t in tensors], dim=0)
    if select_topk < 1:
        tv = tv * sce_select_mask(tv, float(select_topk), dtype).unsqueeze(0)
    positive = tv.sum(dim=0) >= 0
    keep = tv.sign() == (positive.to(dtype) * 2 - 1)
    del positive
    eta = sce_weights(tv)
    if any(x != 1.0 for x in w):
        eta = eta * torch.tensor(w, dtype=eta.dtype, device=eta.device)
    eta = eta.reshape(-1, *([1] * base.dim()))
    erased = eta * keep
    del keep
    merged = (tv * erased).sum(dim=0)
    del tv
    return base + merged / torch.sum(erased, dim=0).clamp(min=1e-6)
