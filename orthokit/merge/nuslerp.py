"""NuSLERP: SLERP between two models set by per-model weights, optionally of task vectors and row-wise.

With two models θ₁, θ₂ of weights w₁, w₂ the factor is t = w₂ / (w₁ + w₂) (0.5 when |w₁ + w₂| < 1e-6).
Without a base the two tensors are interpolated; with a base θ₀ their task vectors are, and θ₀ is added back:

    θ = θ₀ + slerp(τ₁, τ₂; t),    τ_i = θ_i − θ₀

``slerp(a, b; t) = (sin((1 − t)Ω) a + sin(tΩ) b) / sin Ω`` with cos Ω = ⟨a/‖a‖, b/‖b‖⟩ (norms clamped below at
1e-7), falling back to (1 − t) a + t b where 1 − cos²Ω ≤ 1e-16. The vectors are the whole flattened tensor
(``nuslerp_flatten: true``, the default), else the rows along the last axis (each row its own Ω), or with
``nuslerp_row_wise: true`` the slices along the first axis (columns of a matrix). All arithmetic is in the
tensors' dtype, in the order of mergekit 0.1.5 (``mergekit/merge_methods/nuslerp.py``), so results are bit-equal
to ``merge_tensors(..., "nuslerp")`` (tests/merge/test_mergekit_parity_a.py).

Reference: mergekit 0.1.5 ``nuslerp`` (Goddard et al., "Arcee's MergeKit", EMNLP 2024 industry track); SLERP:
K. Shoemake, SIGGRAPH 1985.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from orthokit.merge.registry import check_merge_inputs, register_merge_method

__all__ = ["nuslerp", "nuslerp_tensors"]


def nuslerp_tensors(
    t: float, v0: Tensor, v1: Tensor, *, row_wise: bool = False, flatten: bool = True, eps: float = 1e-8
) -> Tensor:
    """Batched SLERP of the vectors of ``v0`` and ``v1`` (whole tensor, last-axis rows or first-axis slices).

    Args:
        t: interpolation factor. v0, v1: same shape and dtype.
        row_wise: interpolate the slices along axis 0 (ignored with ``flatten``).
        flatten: interpolate the whole flattened tensor as one vector.
        eps: colinear when 1 − cos²Ω ≤ eps².

    Returns:
        The interpolated tensor (``v0``'s shape and dtype).

    Example:
        >>> import torch
        >>> nuslerp_tensors(0.5, torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[0.0, 1.0], [2.0, 0.0]]),
        ...                 flatten=False)
        tensor([[0.7071, 0.7071],
                [1.5000, 0.0000]])
    """
    shape = v0.shape
    if flatten:
        a, b = v0.reshape(-1), v1.reshape(-1)
    elif row_wise:
        a, b = v0.transpose(0, -1), v1.transpose(0, -1)
    else:
        a, b = v0, v1

    def unit(x: Tensor) -> Tensor:
        return x / torch.norm(x, dim=-1, keepdim=True).clamp(min=1e-7)

    cos = torch.sum(unit(a) * unit(b), dim=-1, keepdim=True).clamp(-1, 1)
    colinear = (1 - cos.square()) <= eps**2
    theta = torch.acos(torch.where(colinear, 0, cos))
    sin_theta = torch.sin(theta)
    out = (torch.sin((1 - t) * theta) * a + torch.sin(t * theta) * b) / sin_theta
    out = torch.where(colinear, (1 - t) * a + t * b, out)
    if row_wise and not flatten:
        out = out.transpose(0, -1)
    return out.reshape(shape)


@register_merge_method(
    "nuslerp",
    inputs="full",
    needs_base=False,
    per_model_params=("weights",),
    # exactly two models, so the registry's 4-model permutation check cannot run; swapping the two models with
    # their weights is tested in tests/merge/test_mergekit_parity_a.py (t ↔ 1 − t gives the same point)
    order_invariant=False,
    stochastic=False,
    base_policy="optional",
    models="exactly 2 besides the base",
    reference="mergekit 0.1.5 nuslerp",
    one_model_exact=False,
    idempotent=False,
    base_fixed_point=False,
)
def nuslerp(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weights: Sequence[float] | None = None,
    nuslerp_flatten: bool = True,
    nuslerp_row_wise: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """SLERP of two models (or of their task vectors when ``base`` is given) at t = w₂ / (w₁ + w₂).

    Args:
        base: optional θ₀; with it the task vectors θ_i − θ₀ are interpolated and θ₀ added back.
        tensors: exactly two tensors θ₁, θ₂.
        weights: w₁, w₂ (default 1.0 each → t = 0.5; mergekit requires them). A weight sum below 1e-6 in
            magnitude gives t = 0.5.
        nuslerp_flatten: one vector per tensor (mergekit default true).
        nuslerp_row_wise: when not flattened, interpolate slices along axis 0 instead of rows along the last axis.
        generator: unused (deterministic).

    Returns:
        The merged tensor (same shape and dtype as the inputs).

    Raises:
        ValueError: not exactly two models.

    Example:
        >>> import torch
        >>> nuslerp(None, [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])], weights=[1.0, 1.0])
        tensor([0.7071, 0.7071])

    Reference: mergekit 0.1.5 ``nuslerp``; Shoemake, SIGGRAPH 1985.
    """
    w = check_merge_inputs(base, tensors, weights, needs_base=False)
    if len(tensors) != 2:
        raise ValueError(f"nuslerp needs exactly two models besides the base, got {len(tensors)}")
    total = w[0] + w[1]
    t = 0.5 if abs(total) < 1e-6 else w[1] / total
    if base is None:
        return nuslerp_tensors(t, tensors[0], tensors[1], row_wise=nuslerp_row_wise, flatten=nuslerp_flatten)
    return base + nuslerp_tensors(
        t, tensors[0] - base, tensors[1] - base, row_wise=nuslerp_row_wise, flatten=nuslerp_flatten
    )
