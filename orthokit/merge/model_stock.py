"""Model Stock (Jang et al., 2024): interpolate between the base and the fine-tunes' average by their geometry.

For fine-tunes θ₁…θ_N (N ≥ 2) of one base θ₀, task vectors τ_t = θ_t − θ₀ and their mean pairwise cosine

    c = mean_{s<t} clamp(⟨τ_s, τ_t⟩ / max(‖τ_s‖ ‖τ_t‖, 1e-6), −1, 1),

the paper's ratio (eq. 5 generalized to N models) is t = N c / (1 + (N − 1) c) and the merge is

    θ = t · mean_t θ_t + (1 − t) · θ₀.

``filter_wise=False`` (mergekit's default) computes one c per tensor over the flattened tensor;
``filter_wise=True`` one c per row of the last axis (1-D tensors: one row), as the paper's per-layer weights.
Where the denominator 1 + (N − 1) c is within 1e-6 of zero (opposing updates) the base is kept (t = 0), as
mergekit 0.1.5 does. The operation order follows mergekit 0.1.5 (``merge_methods/model_stock.py``), so results
are bit-equal to ``mergekit.merge_methods.merge_tensors(..., "model_stock")`` in float32 and bfloat16 —
checked in ``tests/merge/test_mergekit_parity_b.py``.

``weight`` (an orthokit extension, needed by the registry convention): mergekit's ``model_stock`` has no weight
(it rejects one). With all weights 1 (the default) the average is mergekit's plain mean; other positive weights
make it the weighted mean Σ w_t θ_t / Σ w_t (the cosine ratio t is unweighted).

Reference: D.-H. Jang, S. Yun, D. Han, "Model Stock: All we need is just a few fine-tuned models", ECCV 2024,
arXiv:2403.19522.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from orthokit.merge.registry import check_merge_inputs, register_merge_method

__all__ = ["model_stock", "model_stock_ratio"]


def model_stock_ratio(offsets: Sequence[Tensor]) -> Tensor:
    """The interpolation ratio t = N c / (1 + (N − 1) c) from task vectors (rows along the last axis).

    ``offsets`` are N ≥ 2 task vectors of one shape; cosines are taken along the last axis, so a flat vector
    gives one ratio and a matrix one ratio per row (shape ``[..., 1]``). A singular denominator gives t = 0.

    Example:
        >>> a, b = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])
        >>> model_stock_ratio([a, b])  # c = 1/√2, t = 2c / (1 + c)
        tensor([0.8284])
    """
    n = len(offsets)
    if n < 2:
        raise ValueError(f"model_stock needs at least 2 fine-tuned tensors, got {n}")
    norms = [torch.norm(o, dim=-1) for o in offsets]
    cos = []
    buf = torch.empty_like(offsets[0])
    for i in range(n):
        for j in range(i + 1, n):
            denom = (norms[i] * norms[j]).clamp(min=1e-6)
            dot = torch.mul(offsets[i], offsets[j], out=buf).sum(dim=-1)
            cos.append((dot / denom).clamp(-1, 1))
    del buf
    c = torch.stack(cos).mean(dim=0).unsqueeze(-1)
    denominator = 1 + (n - 1) * c
    singular = denominator.abs() < 1e-6
    safe = torch.where(singular, torch.ones_like(denominator), denominator)
    return torch.where(singular, torch.zeros_like(c), (n * c) / safe)


@register_merge_method(
    "model_stock",
    inputs="full",
    needs_base=True,
    per_model_params=("weights",),
    order_invariant=True,
    stochastic=False,
    reference="arXiv:2403.19522",
    min_models=2,
    one_model_exact=False,
    idempotent={},
    base_fixed_point={},
)
def model_stock(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weights: Sequence[float] | None = None,
    filter_wise: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Model Stock: θ = t · mean_t θ_t + (1 − t) θ₀, t = N c / (1 + (N − 1) c) from the mean pairwise cosine c.

    Args:
        base: the pre-trained tensor θ₀ (required).
        tensors: N ≥ 2 fine-tuned tensors (mergekit: base plus at least two models).
        weights: per-model weights of the average (orthokit extension; default 1.0 = mergekit's plain mean;
            must be positive).
        filter_wise: one ratio per row of the last axis instead of one per tensor (mergekit default false).
        generator: unused (deterministic).

    Returns:
        The merged tensor, same shape and dtype as ``base``.

    Raises:
        ValueError: fewer than two fine-tunes, or a non-positive weight.

    Example:
        >>> import torch
        >>> b = torch.zeros(2)
        >>> model_stock(b, [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])])  # c = 0 ⇒ t = 0: the base
        tensor([0., 0.])
        >>> model_stock(b, [torch.tensor([2.0, 0.0]), torch.tensor([2.0, 0.0])])  # c = 1 ⇒ t = 1: the mean
        tensor([2., 0.])

    Reference: Jang et al., "Model Stock", ECCV 2024, arXiv:2403.19522 (eq. 5); mergekit 0.1.5.
    """
    w = check_merge_inputs(base, tensors, weights, needs_base=True)
    assert base is not None
    if len(tensors) < 2:
        raise ValueError(
            f"model_stock needs a base and at least 2 fine-tuned models, got {len(tensors)} fine-tuned"
        )
    if any(x <= 0 for x in w):
        raise ValueError(f"model_stock: weights must be positive, got {w}")
    out_shape = base.shape
    if filter_wise:
        w0 = base.unsqueeze(0) if base.dim() == 1 else base
        ws = [t.unsqueeze(0) if base.dim() == 1 else t for t in tensors]
    else:
        w0 = base.reshape(-1)
        ws = [t.reshape(-1) for t in tensors]
    ratio = model_stock_ratio([x - w0 for x in ws])
    n = len(ws)
    # in place where it rounds the same as mergekit's out-of-place expression
    if all(x == 1.0 for x in w):
        average = ws[0] + ws[1]  # mergekit's sum(ws) / N (0 + θ₁ is exact)
        for x in ws[2:]:
            average.add_(x)
        average.div_(n)
    else:
        average = torch.mul(ws[0], w[0])
        for wi, x in zip(w[1:], ws[1:]):
            average.add_(x * wi)
        average.div_(sum(w))
    out = average.mul_(ratio) if ratio.dtype == average.dtype else ratio * average
    out.add_((1 - ratio) * w0)
    return out.reshape(out_shape)
