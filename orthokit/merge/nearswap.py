"""NearSwap: take the other model's value wherever it is close to the base, mergekit's ``nearswap``.

For the base θ₀ and one other model θ₁, entry by entry:

    w = clamp(t / max(|θ₀ − θ₁|, 1e-6), 0, 1),     θ = w θ₁ + (1 − w) θ₀

Entries that differ by at most t are replaced by θ₁'s value; larger differences are moved toward θ₁ by t/|Δ|
(so each entry moves by at most t). t ≤ 0 returns the base (mergekit gives NaN there in float16 wherever
θ₀ = θ₁: it computes t · (1/1e-6) and 1/1e-6 overflows to inf; otherwise the same tensor). All arithmetic is in the tensors' dtype in mergekit
0.1.5's order (``mergekit/merge_methods/nearswap.py``), so results are bit-equal to
``merge_tensors(..., "nearswap")`` (tests/merge/test_mergekit_parity_a.py).

Reference: alchemonaut, "QuartetAnemoi-70B-t0.0001" model card (huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001,
2024), the NearSwap algorithm; mergekit 0.1.5 ``nearswap``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from orthokit.merge.registry import check_merge_inputs, register_merge_method

__all__ = ["nearswap"]


@register_merge_method(
    "nearswap",
    inputs="full",
    needs_base=True,
    per_model_params=("weights",),
    order_invariant=False,  # one model besides the base: the registry's 4-model permutation check cannot run
    stochastic=False,
    base_policy="required",
    models="exactly 1 besides the base",
    reference="huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001",
    one_model_exact={"t": 1e9},
    idempotent=False,
    base_fixed_point=False,
)
def nearswap(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weights: Sequence[float] | None = None,
    t: float = 1e-4,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per-entry interpolation from θ₀ to θ₁ with weight clamp(t / |θ₀ − θ₁|, 0, 1).

    Args:
        base: θ₀ (required). tensors: exactly one tensor θ₁.
        weights: not used by NearSwap; must be 1.0.
        t: the similarity threshold (default 1e-4, the value in the method's reference model name; mergekit
            requires it). Entries closer than t are swapped to θ₁'s value; a very large t returns θ₁.
        generator: unused (deterministic).

    Returns:
        The merged tensor (θ₀'s shape and dtype).

    Raises:
        ValueError: not exactly one model besides the base, a weight other than 1, or a NaN ``t``.

    Example:
        >>> import torch
        >>> nearswap(torch.tensor([0.0, 0.0, 0.0]), [torch.tensor([0.05, 0.5, -2.0])], t=0.1)
        tensor([ 0.0500,  0.1000, -0.1000])

    Reference: alchemonaut, QuartetAnemoi-70B-t0.0001 (2024); mergekit 0.1.5 ``nearswap``.
    """
    w = check_merge_inputs(base, tensors, weights, needs_base=True)
    assert base is not None
    if len(tensors) != 1:
        raise ValueError(f"nearswap needs exactly one model besides the base, got {len(tensors)}")
    if w != [1.0]:
        raise ValueError(f"nearswap takes no weight (got {w[0]}); use t to set the threshold")
    if math.isnan(float(t)):
        raise ValueError("nearswap: t must be a number, got nan")
    if float(t) <= 0:
        # w = 0 everywhere. mergekit computes t · (1/|Δ|), which is 0 · inf = NaN in float16 where θ₀ = θ₁.
        return base.clone()
    other = tensors[0]
    mix = (float(t) / torch.abs(base - other).clamp(min=1e-6)).clamp(min=0, max=1)
    return mix * other + (1 - mix) * base
