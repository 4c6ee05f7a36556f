"""SLERP: spherical linear interpolation between the base and one other model, mergekit's ``slerp``.

Each tensor is flattened to one vector; with Ω the angle between the directions of θ₀ and θ₁
(cos Ω = ⟨θ₀/‖θ₀‖, θ₁/‖θ₁‖⟩, clamped to [−1, 1]):

    θ = sin((1 − t)Ω)/sin Ω · θ₀ + sin(tΩ)/sin Ω · θ₁            (|cos Ω| ≤ 0.9995)
    θ = (1 − t) θ₀ + t θ₁                                        (|cos Ω| > 0.9995: nearly colinear/antipodal)

The un-normalized tensors are interpolated (the norms are not separately interpolated). Following mergekit 0.1.5
(``mergekit/merge_methods/slerp.py``): t is rounded to float32 (float64 for float64 tensors) and all arithmetic
is in that dtype; norms and the dot product are accumulated over chunks of 2²⁰ entries (a norm of the chunk
norms, a sum of the chunk dots of the normalized chunks), so memory stays bounded and the result is bit-equal
to ``merge_tensors(..., "slerp")`` for any tensor size (tests/merge/test_mergekit_parity_a.py). Norms at or
below 1e-8 count as 1; a zero-size tensor is linearly interpolated.

Reference: K. Shoemake, "Animating rotation with quaternion curves", SIGGRAPH 1985; mergekit 0.1.5 ``slerp``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from orthokit.merge.registry import check_merge_inputs, register_merge_method

__all__ = ["slerp", "slerp_tensors"]

#: Entries per chunk of the norm / dot / output passes (mergekit 0.1.5's bound on float32 scratch).
CHUNK = 1 << 20
#: |cos Ω| above which the two directions count as colinear and t interpolates linearly.
DOT_THRESHOLD = 0.9995


def slerp_tensors(t: float, v0: Tensor, v1: Tensor, *, eps: float = 1e-8) -> Tensor:
    """Spherical interpolation of two tensors of the same shape/dtype (flattened), with the linear fallback.

    Args:
        t: interpolation factor (0 → ``v0``, 1 → ``v1``; values outside [0, 1] extrapolate).
        v0, v1: the endpoints. eps: norms ≤ eps count as 1.

    Returns:
        The interpolated tensor in ``v0``'s dtype and shape.

    Example:
        >>> import torch
        >>> slerp_tensors(0.5, torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))
        tensor([0.7071, 0.7071])
    """
    acc = torch.float64 if v0.dtype == torch.float64 else torch.float32
    a = v0.reshape(-1)
    b = v1.reshape(-1)
    tt = torch.tensor(float(t), dtype=acc, device=v0.device)
    n = a.numel()
    if n == 0:
        return ((1 - tt) * a + tt * b).reshape(v0.shape).to(v0.dtype)
    spans = [(s, min(s + CHUNK, n)) for s in range(0, n, CHUNK)]

    def part(x: Tensor, s: int, e: int) -> Tensor:
        return x[s:e].to(acc)

    norm_a = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(part(a, s, e)) for s, e in spans])
    )
    norm_b = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(part(b, s, e)) for s, e in spans])
    )
    one = torch.ones((), dtype=acc, device=v0.device)
    norm_a = torch.where(norm_a > eps, norm_a, one)
    norm_b = torch.where(norm_b > eps, norm_b, one)
    dot = (
        torch.stack([((part(a, s, e) / norm_a) * (part(b, s, e) / norm_b)).sum() for s, e in spans])
        .sum()
        .clamp(-1, 1)
    )
    if float(dot.abs()) > DOT_THRESHOLD:
        ca, cb = 1 - tt, tt
    else:
        theta = torch.acos(dot)
        sin_theta = torch.sin(theta)
        ca = torch.sin((1 - tt) * theta) / sin_theta
        cb = torch.sin(tt * theta) / sin_theta
    out = torch.empty_like(a)
    for s, e in spans:
        out[s:e] = ca * part(a, s, e) + cb * part(b, s, e)
    return out.reshape(v0.shape)


@register_merge_method(
    "slerp",
    inputs="full",
    needs_base=True,
    per_model_params=("weights",),
    order_invariant=False,  # one model besides the base: the registry's 4-model permutation check cannot run
    stochastic=False,
    base_policy="required",
    models="exactly 1 besides the base",
    reference="Shoemake, SIGGRAPH 1985",
    one_model_exact={"t": 1.0},
    idempotent=False,
    base_fixed_point=False,
)
def slerp(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weights: Sequence[float] | None = None,
    t: float = 0.5,
    generator: torch.Generator | None = None,
) -> Tensor:
    """SLERP from the base θ₀ (t = 0) to the one other model θ₁ (t = 1) along the great circle of their directions.

    Args:
        base: θ₀ (required). tensors: exactly one tensor θ₁.
        weights: not used by SLERP (mergekit has no per-model weight here); must be 1.0.
        t: interpolation factor (default 0.5, the midpoint; mergekit requires it). A per-layer gradient in the
            config gives one t per layer; values outside [0, 1] extrapolate, as in mergekit.
        generator: unused (deterministic).

    Returns:
        The interpolated tensor (θ₀'s shape and dtype).

    Raises:
        ValueError: not exactly one model besides the base, a weight other than 1, or a non-finite ``t``.

    Example:
        >>> import torch
        >>> slerp(torch.tensor([2.0, 0.0]), [torch.tensor([0.0, 2.0])], t=0.5)
        tensor([1.4142, 1.4142])

    Reference: Shoemake, SIGGRAPH 1985; mergekit 0.1.5 ``slerp`` (colinear fallback |cos Ω| > 0.9995).
    """
    w = check_merge_inputs(base, tensors, weights, needs_base=True)
    assert base is not None
    if len(tensors) != 1:
        raise ValueError(f"slerp needs exactly one model besides the base, got {len(tensors)}")
    if w != [1.0]:
        raise ValueError(f"slerp takes no weight (got {w[0]}); use t to set the mix")
    if not math.isfinite(float(t)):
        raise ValueError(f"slerp: t must be finite, got {t!r}")
    return slerp_tensors(float(t), base, tensors[0])
