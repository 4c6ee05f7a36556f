"""Passthrough: copy one model's tensor unchanged (optionally scaled), mergekit's ``passthrough``.

Used for frankenmerges (``slices:`` stacking layer ranges of different models), where each output tensor comes
from exactly one source. With a per-model ``scale`` s the tensor is multiplied by it (θ = s · θ₁, in the
tensor's dtype, as mergekit 0.1.5 does — ``mergekit/merge_methods/passthrough.py``); without one it is returned
as is (the same tensor object, no copy), bit-equal to ``merge_tensors(..., "passthrough")``.

Reference: mergekit 0.1.5 ``passthrough`` (Goddard et al., "Arcee's MergeKit", EMNLP 2024 industry track).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from orthokit.merge.registry import check_merge_inputs, register_merge_method

__all__ = ["passthrough"]


@register_merge_method(
    "passthrough",
    inputs="full",
    needs_base=False,
    per_model_params=("weights", "scale"),
    order_invariant=False,  # exactly one model: the registry's 4-model permutation check cannot run
    stochastic=False,
    base_policy="ignored",
    models="exactly 1",
    reference="mergekit 0.1.5 passthrough",
    one_model_exact={},
    idempotent=False,
    base_fixed_point=False,
)
def passthrough(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weights: Sequence[float] | None = None,
    scale: Sequence[float] | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Return the single input tensor, multiplied by its ``scale`` if one is given.

    Args:
        base: ignored (mergekit's ``passthrough`` takes exactly one input; the base is not an extra one).
        tensors: exactly one tensor.
        weights: not used; must be 1.0 (mergekit has no ``weight`` here — use ``scale``).
        scale: optional per-model factor (mergekit default none = no scaling), e.g. ``scale: 0.0`` to zero a
            projection in a slice.
        generator: unused (deterministic).

    Returns:
        The input tensor (the same object when unscaled) or ``scale · tensor`` in its dtype.

    Raises:
        ValueError: more than one input, a weight other than 1, or a non-finite scale.

    Example:
        >>> import torch
        >>> x = torch.tensor([1.0, -2.0])
        >>> passthrough(None, [x]) is x, passthrough(None, [x], scale=[0.5])
        (True, tensor([ 0.5000, -1.0000]))
    """
    w = check_merge_inputs(None, tensors, weights, needs_base=False)
    if len(tensors) != 1:
        raise ValueError(f"passthrough takes exactly one model per tensor, got {len(tensors)}")
    if w != [1.0]:
        raise ValueError(f"passthrough takes no weight (got {w[0]}); use scale to multiply the tensor")
    s = None if scale is None else scale[0]
    if s is None:
        return tensors[0]
    if not math.isfinite(float(s)):
        raise ValueError(f"passthrough: scale must be finite, got {s!r}")
    return tensors[0] * float(s)
