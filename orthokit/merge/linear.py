"""Linear merge (weighted parameter average, "model soups"), registered as mergekit's ``linear``.

    θ = Σ_t w_t θ_t / Σ_t w_t        (``normalize: true``, the default)
    θ = Σ_t w_t θ_t                  (``normalize: false``)

No base model is used: as in mergekit, every listed model is an input (list the base under ``models:`` with a
weight to include it). The sum is accumulated in float32 (float64 for float64 tensors) with one fused
multiply-add per model in model order, the weights rounded to that dtype, then divided by the weight sum and cast
back — the rounding of mergekit 0.1.5's ``linear`` (``mergekit/merge_methods/linear.py``), so results are
bit-equal to ``merge_tensors(..., "linear")`` (tests/merge/test_mergekit_parity_a.py).

Reference: M. Wortsman et al., "Model soups: averaging weights of multiple fine-tuned models improves accuracy
without increasing inference time", ICML 2022, arXiv:2203.05482.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from orthokit.merge.registry import check_merge_inputs, register_merge_method

__all__ = ["linear"]


@register_merge_method(
    "linear",
    inputs="full",
    needs_base=False,
    per_model_params=("weights",),
    order_invariant=True,
    stochastic=False,
    base_policy="ignored",
    reference="arXiv:2203.05482",
    one_model_exact={},
    idempotent={},
    base_fixed_point={},
)
def linear(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weights: Sequence[float] | None = None,
    normalize: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Weighted average θ = Σ_t w_t θ_t / Σ_t w_t (or the weighted sum with ``normalize=False``).

    Args:
        base: ignored (mergekit's ``linear`` has no base; list the base model among the inputs to average it).
        tensors: the models' tensors θ_t, same shape and dtype.
        weights: per-model weights w_t (default 1.0 each; mergekit requires them).
        normalize: divide by Σ_t w_t (mergekit default true).
        generator: unused (deterministic).

    Returns:
        The merged tensor, same shape and dtype as the inputs.

    Raises:
        ValueError: ``normalize`` with weights summing to zero (mergekit would return inf/NaN).

    Example:
        >>> import torch
        >>> linear(None, [torch.tensor([1.0, 2.0]), torch.tensor([3.0, 6.0])], weights=[1.0, 3.0])
        tensor([2.5000, 5.0000])

    Reference: Wortsman et al., "Model soups", ICML 2022, arXiv:2203.05482; mergekit 0.1.5 ``linear``.
    """
    w = check_merge_inputs(None, tensors, weights, needs_base=False)
    first = tensors[0]
    acc = torch.float64 if first.dtype == torch.float64 else torch.float32
    wt = torch.tensor(w, dtype=acc, device=first.device)
    if normalize:
        denominator = wt.sum()
        if float(denominator) == 0.0:
            raise ValueError(f"linear: weights {w} sum to zero; set normalize: false or change the weights")
    out = torch.zeros(first.shape, dtype=acc, device=first.device)
    for t, c in zip(tensors, wt.unbind(0)):
        out.addcmul_(t, c)
    if normalize:
        out.div_(denominator)
    return out.to(first.dtype)
