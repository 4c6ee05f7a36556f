"""DARE (Yu et al., 2024): drop-and-rescale task vectors, then TIES sign consensus or a linear sum.

For each model t: δ_t = θ_t − θ₀; a Bernoulli(ρ_t) keep mask M_t (ρ_t = ``density``, drop rate p = 1 − ρ_t);
with ``rescale`` the kept entries are scaled so that ‖M_t ⊙ δ_t‖₁ = ‖δ_t‖₁ (mergekit's tensor-level L1 match;
the paper scales each kept entry by 1/(1 − p), which is the same in expectation). Then

* ``dare_ties``: TIES sign election and disjoint sum/mean on w_t · δ̃_t (see :mod:`orthokit.merge.ties`);
* ``dare_linear``: θ₀ + λ Σ_t w_t δ̃_t (÷ Σ w_t when ``normalize``).

Randomness comes only from ``generator`` (one stream consumed model by model, the draw sequence of
``torch.bernoulli`` on a full tensor of probabilities). With the same seed the result is bit-equal to
``mergekit.merge_methods.merge_tensors`` after ``torch.manual_seed(seed)``. The CLI seeds one generator per
output tensor from (seed, tensor name), so results do not depend on tensor processing order; they do depend
on model order (the t-th model gets the t-th draw), hence ``order_invariant=False``. What holds under
permutation: with density 1 (no drop) both methods are order invariant; for any seed the merge is a
deterministic function of (seed, models in order).

Reference: L. Yu, B. Yu, H. Yu, F. Huang, Y. Li, "Language Models are Super Mario: Absorbing Abilities from
Homologous Models as a Free Lunch", ICML 2024, arXiv:2311.03099.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from orthokit.merge.registry import _as_generator, check_merge_inputs, per_model, register_merge_method
from orthokit.merge.task_arithmetic import generalized_task_arithmetic
from orthokit.merge.ties import l1_rescale

__all__ = ["dare", "dare_ties", "dare_linear", "random_drop"]


def random_drop(
    delta: Tensor,
    density: float,
    rescale: bool = True,
    generator: torch.Generator | None = None,
    *,
    inplace: bool = False,
) -> Tensor:
    """Keep each entry of ``delta`` independently with probability ``density``; optionally L1-rescale.

    ``density ≥ 1`` returns ``delta`` unchanged. Computed in float32 for float16 CPU tensors (``bernoulli`` has
    no float16 CPU kernel), in the tensor dtype otherwise (mergekit also downcasts float64 to float32 on CPU;
    we keep float64 — identical for float32/bfloat16/float16). ``inplace`` overwrites ``delta``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> out = random_drop(torch.ones(1000), 0.1, generator=g)
        >>> float(out.sum())  # L1 preserved
        1000.0

    Reference: DARE, Yu et al., arXiv:2311.03099.
    """
    if density >= 1:
        return delta
    work = torch.float32 if (delta.device.type == "cpu" and delta.dtype == torch.float16) else delta.dtype
    mask = torch.bernoulli(torch.full_like(delta, density, dtype=work), generator=generator)
    if work != delta.dtype:
        d = delta.to(work)
        res = l1_rescale(d, d * mask) if rescale else d * mask
        return delta.copy_(res) if inplace else res.to(delta.dtype)
    before = delta.abs().sum() if rescale else None
    out = delta.mul_(mask) if inplace else delta * mask
    del mask
    if before is not None:
        after = out.abs().sum()
        if not (bool(before < 1e-7) or bool(after < 1e-7)):
            out = out.mul_(before / after)
    return out


def _dare(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    weights: Sequence[float] | None,
    density: Sequence[float] | float | None,
    lambda_: float,
    normalize: bool,
    rescale: bool,
    generator: torch.Generator | None,
    consensus: bool,
) -> Tensor:
    w = check_merge_inputs(base, tensors, weights, needs_base=True)
    assert base is not None
    gen = _as_generator(generator)
    dens = per_model(density, len(tensors), "density", 1.0)
    return generalized_task_arithmetic(
        base,
        tensors,
        w,
        sparsify=lambda d, i: random_drop(d, dens[i], rescale, gen, inplace=True),
        consensus=consensus,
        normalize=normalize,
        lambda_=float(lambda_),
    )


@register_merge_method(
    "dare_ties",
    inputs="full",
    needs_base=True,
    per_model_params=("weights", "density"),
    order_invariant=False,
    stochastic=True,
    reference="arXiv:2311.03099",
    one_model_exact={},
    idempotent={"normalize": True},
    base_fixed_point={"density": 0.5},
)
def dare_ties(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weights: Sequence[float] | None = None,
    density: Sequence[float] | float = 1.0,
    lambda_: float = 1.0,
    normalize: bool = False,
    rescale: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """DARE + TIES consensus: random drop with L1 rescale, sign election, disjoint sum (mean if ``normalize``).

    θ = θ₀ + λ · Σ_t m_t w_t δ̃_t [/ Σ_t m_t w_t], δ̃_t = rescale(M_t ⊙ (θ_t − θ₀)), M_t ~ Bernoulli(ρ_t).

    Args:
        base: θ₀ (required). tensors: fine-tuned θ_t. weights: per-model w_t (default 1.0).
        density: per-model keep probability ρ_t (default 1.0 = no drop, as in mergekit).
        lambda_: global scale (config ``lambda``). normalize: divide by Σ m_t w_t (mergekit default false).
        rescale: L1-rescale kept entries (default true). generator: the random stream (seed it!).

    Returns:
        The merged tensor, base's shape and dtype.

    Example:
        >>> import torch
        >>> b = torch.zeros(6); ft = [torch.ones(6), 2 * torch.ones(6)]
        >>> out = dare_ties(b, ft, density=0.5, generator=torch.Generator().manual_seed(0))
        >>> out.shape
        torch.Size([6])

    Reference: Yu et al., "Language Models are Super Mario", ICML 2024, arXiv:2311.03099.
    """
    return _dare(base, tensors, weights, density, lambda_, normalize, rescale, generator, consensus=True)


@register_merge_method(
    "dare_linear",
    inputs="full",
    needs_base=True,
    per_model_params=("weights", "density"),
    order_invariant=False,
    stochastic=True,
    reference="arXiv:2311.03099",
    one_model_exact={},
    idempotent={"normalize": True},
    base_fixed_point={"density": 0.5},
)
def dare_linear(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weights: Sequence[float] | None = None,
    density: Sequence[float] | float = 1.0,
    lambda_: float = 1.0,
    normalize: bool = False,
    rescale: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """DARE + task arithmetic: θ = θ₀ + λ Σ_t w_t δ̃_t (÷ Σ_t w_t if ``normalize``), δ̃_t as in ``dare_ties``.

    Args:
        base: θ₀ (required). tensors: fine-tuned θ_t. weights: per-model w_t (default 1.0).
        density: per-model keep probability (default 1.0). lambda_: global scale. normalize: default false.
        rescale: L1-rescale kept entries (default true). generator: the random stream.

    Returns:
        The merged tensor, base's shape and dtype.

    Example:
        >>> import torch
        >>> b = torch.zeros(4); ft = [torch.ones(4)]
        >>> dare_linear(b, ft, density=1.0)
        tensor([1., 1., 1., 1.])

    Reference: Yu et al., "Language Models are Super Mario", ICML 2024, arXiv:2311.03099.
    """
    return _dare(base, tensors, weights, density, lambda_, normalize, rescale, generator, consensus=False)


@register_merge_method(
    "dare",
    inputs="full",
    needs_base=True,
    per_model_params=("weights", "density"),
    order_invariant=False,
    stochastic=True,
    reference="arXiv:2311.03099",
    one_model_exact={},
    idempotent={"normalize": True},
    base_fixed_point={"density": 0.5},
)
def dare(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    consensus: Literal["ties", "linear"] = "ties",
    weights: Sequence[float] | None = None,
    density: Sequence[float] | float = 1.0,
    lambda_: float = 1.0,
    normalize: bool = False,
    rescale: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """DARE with the combination step chosen by name: ``consensus="ties"`` is :func:`dare_ties`,
    ``"linear"`` is :func:`dare_linear` (same random stream, same result as calling them directly).

    Args:
        consensus: ``"ties"`` (sign election + disjoint sum) or ``"linear"`` (weighted sum).
        weights, density, lambda_, normalize, rescale, generator: as in :func:`dare_ties`.

    Returns:
        The merged tensor, base's shape and dtype.

    Example:
        >>> import torch
        >>> b = torch.zeros(4); ft = [torch.ones(4), -torch.ones(4), torch.ones(4)]
        >>> dare(b, ft, consensus="linear", density=1.0)
        tensor([1., 1., 1., 1.])

    Reference: Yu et al., "Language Models are Super Mario", ICML 2024, arXiv:2311.03099.
    """
    if consensus not in ("ties", "linear"):
        raise ValueError(f"dare: consensus must be 'ties' or 'linear', got {consensus!r}")
    return _dare(
        base, tensors, weights, density, lambda_, normalize, rescale, generator, consensus=consensus == "ties"
    )
