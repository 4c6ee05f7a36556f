"""Task arithmetic (Ilharco et al., 2023) and the generalized task-arithmetic core shared by TIES and DARE.

Task arithmetic adds a scaled sum of task vectors τ_t = θ_t − θ₀ to the base:

    θ = θ₀ + λ · Σ_t w_t τ_t                       (normalize=False, the default)
    θ = θ₀ + λ · Σ_t w_t τ_t / Σ_t w_t             (normalize=True; a weight sum |Σw| < 1e-8 counts as 1)

The operation order and rounding follow mergekit 0.1.5's ``task_arithmetic`` exactly (weights are rounded to the
tensor dtype and the weighted deltas are reduced with the same ``sum(0)`` over a [T, ...] buffer), so outputs are
bit-equal to ``mergekit.merge_methods.merge_tensors(..., "task_arithmetic")`` — checked in
``tests/merge/test_task_arithmetic.py``.

Reference: G. Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023, arXiv:2212.04089.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from orthokit.merge.registry import check_merge_inputs, register_merge_method

__all__ = ["task_arithmetic", "generalized_task_arithmetic"]

Sparsifier = Callable[[Tensor, int], Tensor]


def generalized_task_arithmetic(
    base: Tensor,
    tensors: Sequence[Tensor],
    weights: Sequence[float],
    *,
    sparsify: Sparsifier | None = None,
    consensus: bool = False,
    normalize: bool = False,
    lambda_: float = 1.0,
) -> Tensor:
    """The shared streaming core of task arithmetic, TIES and DARE (one output tensor).

    For each model t: δ_t = sparsify(θ_t − θ₀, t); d_t = w_t δ_t. Without consensus the merged delta is
    Σ d_t with divisor Σ w_t. With TIES sign consensus (``consensus=True``) the elected sign is
    s = sign⁺(Σ_t d_t) (zero sums count as +), the mask m_t = [sign(d_t) = s] (so trimmed zeros never count),
    the merged delta Σ m_t d_t and the divisor Σ m_t w_t (0 → 1). With ``normalize`` the merged delta is divided
    by the divisor; finally θ = θ₀ + λ · delta, in the base's dtype.

    Memory (per output tensor of size S, T models): without consensus and T ≤ 4, the running sum plus one delta
    (2S); otherwise a [T, ...] buffer of weighted deltas (TS) plus a boolean mask (TS/4 bytes) and the result.

    ``sparsify(delta, t)`` receives a fresh buffer it may modify in place; it returns the sparsified delta.

    Args:
        base: θ₀. tensors: θ₁…θ_T (validated by the caller). weights: w_t (floats).
        sparsify: ``fn(delta, t) -> delta`` applied before weighting (TIES trim, DARE drop), or ``None``.
        consensus: TIES sign election and disjoint mean. normalize: divide by the (masked) weight sum.
        lambda_: the global scale λ.

    Returns:
        The merged tensor (same shape/dtype/device as ``base``).

    Example:
        >>> b = torch.zeros(3); t = [torch.tensor([1., -2., 0.]), torch.tensor([3., 1., 0.])]
        >>> generalized_task_arithmetic(b, t, [1.0, 1.0], consensus=True, normalize=True)
        tensor([ 2., -2.,  0.])

    Reference: mergekit's generalized task arithmetic (Goddard et al., EMNLP 2024); TIES (Yadav et al., 2023).
    """
    dtype = base.dtype
    n = len(tensors)
    acc_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    # Reductions over the model axis must round exactly like mergekit's ``stacked.sum(dim=0)``. For T ≤ 4 that
    # equals sequential accumulation (in float32 for half types) — verified for random sizes and dtypes — which
    # needs no [T, ...] buffer for the plain sum; for T > 4 torch's reduction order varies with the tensor
    # size, so the stacked buffer and ``sum(0)`` are used.
    sequential = n <= 4
    wt = torch.tensor([float(w) for w in weights], dtype=dtype, device=base.device)
    wt_b = wt.reshape(n, *([1] * base.dim()))

    def weighted_delta(i: int, out: Tensor | None = None) -> Tensor:
        d = torch.sub(tensors[i], base, out=out) if out is not None else tensors[i] - base
        if sparsify is not None:
            r = sparsify(d, i)
            if out is not None and r.data_ptr() != out.data_ptr():
                out.copy_(r)
                r = out
            d = r
        return d if float(weights[i]) == 1.0 else d.mul_(wt[i])  # x·1 is exact: skip the pass

    def seq_sum(parts: Any) -> Tensor:
        acc: Tensor | None = None
        for p in parts:
            if acc is None:
                acc = p.to(acc_dtype, copy=True)
            else:
                acc.add_(p)
        assert acc is not None
        return acc.to(dtype) if acc.dtype != dtype else acc

    if not consensus:
        if sequential:
            mixed = seq_sum(weighted_delta(i) for i in range(n))
        else:
            deltas = torch.empty((n, *base.shape), dtype=dtype, device=base.device)
            for i in range(n):
                weighted_delta(i, out=deltas[i])
            mixed = deltas.sum(dim=0)
            del deltas
        if normalize:
            divisor = wt_b.sum(dim=0)
            divisor[divisor.abs() < 1e-8] = 1
            mixed.div_(divisor)
    else:
        deltas = torch.empty((n, *base.shape), dtype=dtype, device=base.device)
        for i in range(n):
            weighted_delta(i, out=deltas[i])
        sign_sum = seq_sum(deltas[i] for i in range(n)) if sequential else deltas.sum(dim=0)
        positive = sign_sum >= 0
        del sign_sum
        # mergekit: keep_t = [sign(d_t) == (+1 if positive else −1)]; zeros never match.
        keep = deltas > 0
        keep.eq_(positive)
        del positive
        nonzero = deltas != 0
        keep.logical_and_(nonzero)
        del nonzero
        deltas.mul_(keep)
        mixed = seq_sum(deltas[i] for i in range(n)) if sequential else deltas.sum(dim=0)
        del deltas
        if normalize:
            if sequential:
                divisor = seq_sum(keep[i].to(dtype).mul_(wt[i]) for i in range(n))
            else:
                divisor = (wt_b * keep).sum(dim=0)
            divisor[divisor == 0] = 1
            mixed.div_(divisor)
            del divisor
        del keep
    if lambda_ != 1:
        mixed = mixed.mul_(lambda_)
    return (base + mixed).to(dtype)


@register_merge_method(
    "task_arithmetic",
    inputs="full",
    needs_base=True,
    per_model_params=("weights",),
    order_invariant=True,
    stochastic=False,
    reference="arXiv:2212.04089",
    one_model_exact={},
    idempotent={"normalize": True},
    base_fixed_point={},
)
def task_arithmetic(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weights: Sequence[float] | None = None,
    lambda_: float = 1.0,
    normalize: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Task arithmetic: θ = θ₀ + λ · Σ_t w_t (θ_t − θ₀)  (divided by Σ_t w_t when ``normalize``).

    Args:
        base: the pre-trained tensor θ₀ (required).
        tensors: fine-tuned tensors θ_t, each of the base's shape and dtype.
        weights: per-model weights w_t (default 1.0 each; mergekit requires them).
        lambda_: global scale λ (config key ``lambda``), default 1.0.
        normalize: divide the weighted sum by Σ w_t (mergekit default for task_arithmetic: false).
        generator: unused (deterministic method).

    Returns:
        The merged tensor, same shape and dtype as ``base``.

    Example:
        >>> import torch
        >>> b = torch.zeros(2); ft = [torch.tensor([1.0, 2.0]), torch.tensor([3.0, 0.0])]
        >>> task_arithmetic(b, ft, lambda_=0.5)
        tensor([2., 1.])

    Reference: Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023, arXiv:2212.04089.
    """
    w = check_merge_inputs(base, tensors, weights, needs_base=True)
    assert base is not None
    return generalized_task_arithmetic(base, tensors, w, normalize=normalize, lambda_=float(lambda_))
