"""Multi-SLERP: barycentric interpolation of any number of models on the hypersphere, mergekit's ``multislerp``.

Each input (or, with a base, each task vector θ_t − θ₀) is flattened to x_t; with weights w_t (divided by Σ w_t
when ``normalize_weights``):

    u_t = x_t / (‖x_t‖ + ε)                         project onto the unit sphere
    m   = Σ w_t u_t / ‖Σ w_t u_t‖                   tangent point: the normalized weighted Euclidean mean
    v   = Σ w_t (u_t − ⟨u_t, m⟩ m)                  weighted mean of the projections onto the tangent space at m
    r   = cos(‖v‖ + ε) m + sin(‖v‖ + ε)/(‖v‖ + ε) · v    back to the sphere (exponential map at m)
    θ   = (Σ w_t ‖x_t‖) · r   (+ θ₀)                 rescaled by the weighted mean norm

One model is returned unchanged. If ‖Σ w_t u_t‖ < ε (e.g. two antipodal inputs with equal weights), two models
fall back to the weighted sum Σ w_t x_t (+ θ₀) and more raise an error. The tangent vectors are the orthogonal
projections u_t − ⟨u_t, m⟩m (not the log map), so this is a one-step approximation of the weighted Karcher mean
(see ``karcher``), exact for two points symmetric about m. All arithmetic is in the tensors' dtype, in mergekit
0.1.5's order (``mergekit/merge_methods/multislerp.py``, including the ``[T, …]`` stack and its ``sum(0)``), so
results are bit-equal to ``merge_tensors(..., "multislerp")`` (tests/merge/test_mergekit_parity_a.py).

Reference: C. Goddard, "Multi-SLERP" (goddard.blog/posts/multislerp-wow-what-a-cool-idea, 2025); mergekit 0.1.5.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from orthokit.merge.registry import check_merge_inputs, register_merge_method

__all__ = ["multislerp"]


@register_merge_method(
    "multislerp",
    inputs="full",
    needs_base=False,
    per_model_params=("weights",),
    order_invariant=True,
    stochastic=False,
    base_policy="optional",
    reference="goddard.blog/posts/multislerp-wow-what-a-cool-idea",
    one_model_exact={},
    idempotent={},
    base_fixed_point={},
)
def multislerp(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weights: Sequence[float] | None = None,
    normalize_weights: bool = True,
    eps: float = 1e-8,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Barycentric SLERP of T ≥ 1 models (of their task vectors when ``base`` is given) through the tangent space.

    Args:
        base: optional θ₀; with it the task vectors are interpolated and θ₀ added back.
        tensors: θ₁…θ_T, same shape and dtype.
        weights: w_t (default 1.0 each; mergekit requires them).
        normalize_weights: divide the weights by their sum (mergekit default true).
        eps: ε of the sphere projection and of the exp map (mergekit default 1e-8).
        generator: unused (deterministic).

    Returns:
        The merged tensor (same shape and dtype as the inputs).

    Raises:
        ValueError: three or more inputs whose weighted unit mean vanishes; ``normalize_weights`` with weights
            summing to zero.

    Example:
        >>> import torch
        >>> multislerp(None, [torch.tensor([2.0, 0.0]), torch.tensor([0.0, 2.0])])
        tensor([1.4142, 1.4142])

    Reference: Goddard, "Multi-SLERP" (2025); mergekit 0.1.5 ``multislerp``.
    """
    w = check_merge_inputs(base, tensors, weights, needs_base=False)
    if len(tensors) == 1:
        return tensors[0].clone()
    if normalize_weights and sum(w) == 0.0:
        raise ValueError(f"multislerp: weights {w} sum to zero; set normalize_weights: false or change them")
    shape = tensors[0].shape
    stacked = torch.stack(list(tensors), dim=0)
    if base is not None:
        stacked -= base
    flat = stacked.view(len(tensors), -1)
    wt = torch.tensor(w, dtype=stacked.dtype, device=stacked.device)
    if normalize_weights:
        wt = wt / wt.sum()
    norms = torch.norm(flat, dim=-1, keepdim=True)
    units = flat / (norms + eps)
    mean = (units * wt.view(-1, 1)).sum(0)
    mean_norm = torch.norm(mean)
    if mean_norm < eps:
        if len(tensors) != 2:
            raise ValueError(
                "multislerp: the weighted mean of the input directions is zero (antipodal inputs with "
                "balancing weights); change the weights"
            )
        out = (stacked[0] * wt[0] + stacked[1] * wt[1]).view(shape)
        return out if base is None else out + base
    mean = mean / mean_norm
    tangents = units - (units * mean).sum(-1, keepdim=True) * mean
    step = (tangents * wt.view(-1, 1)).sum(0)
    length = torch.norm(step) + eps
    out = mean * torch.cos(length) + step * (torch.sin(length) / length)
    out = (out * (norms.squeeze(-1) * wt).sum()).view(shape)
    return out if base is None else out + base
