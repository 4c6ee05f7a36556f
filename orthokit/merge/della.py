"""DELLA (Deep et al., 2024): magnitude-ranked stochastic drop ("MagPrune"), rescale, then TIES or a linear sum.

Per tensor and model, δ_t = θ_t − θ₀ is viewed as rows along axis 1 (a 1-D tensor is one row). In each row of n
entries, the entry of ascending-magnitude rank r ∈ {1…n} is kept with probability

    p(r) = (ρ − ε) + 2ε · (r − 1)/(n − 1)          (ρ = ``density``, ε = ``epsilon``),

linearly from ρ − ε (smallest |δ|) to ρ + ε (largest), so the expected kept fraction of every row is ρ. Kept
entries are rescaled (``rescale``) so that the tensor's L1 norm is unchanged (mergekit's rule; the paper divides
each kept entry by its own p, the same in expectation only when |δ| and p are unrelated). Then

* ``della``: TIES sign election and disjoint mean (``normalize`` true) on w_t δ̃_t;
* ``della_linear``: θ₀ + λ Σ_t w_t δ̃_t (÷ Σ w_t when ``normalize``, default false).

Defaults and semantics are mergekit 0.1.5's (``sparsify.della_magprune``): ``density`` 1.0 (no drop),
``epsilon`` 0.15, ``rescale`` true; ρ ± ε must lie in (0, 1) when 0 < ρ < 1. Ranks are computed in the work
dtype (float32 on CPU, the tensor's dtype for bf16 — where ranks above 256 round, as in mergekit) and ties in |δ|
are ordered by ``torch.argsort`` as mergekit does. Randomness comes only from ``generator``: one
``torch.bernoulli`` draw over the tensor's probabilities per model, in model order, so with the same seed the
result is bit-equal to mergekit's ``merge_tensors`` after ``torch.manual_seed`` (fp32 and bf16,
``tests/merge/test_mergekit_parity_b.py``). Deviations: float64 is kept in float64 (mergekit computes in
float32 on CPU); a row of a single entry (mergekit raises inside ``torch.bernoulli`` on its 0/0 rank) is kept
with probability ρ.

Reference: P. T. Deep, R. Bhardwaj, S. Poria, "DELLA-Merging: Reducing Interference in Model Merging through
Magnitude-Based Sampling", arXiv:2406.11617.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from orthokit.merge.registry import _as_generator, check_merge_inputs, per_model, register_merge_method
from orthokit.merge.task_arithmetic import generalized_task_arithmetic

__all__ = ["della", "della_linear", "magprune", "magprune_probabilities"]


def _work_dtype(t: Tensor) -> torch.dtype:
    if t.device.type == "cpu" and t.dtype == torch.float16:
        return torch.float32  # no float16 bernoulli on CPU
    return t.dtype


def magprune_probabilities(delta: Tensor, density: float, epsilon: float) -> Tensor:
    """Keep probabilities p(r) = (ρ − ε) + 2ε (r − 1)/(n − 1) from each row's ascending-|δ| rank r.

    Rows run along axis 1 (a 1-D ``delta`` is one row, returned with a leading axis of 1); a row of one entry
    gets ρ.

    Example:
        >>> magprune_probabilities(torch.tensor([0.3, -2.0, 0.1]), 0.5, 0.2)
        tensor([[0.5000, 0.7000, 0.3000]])
    """
    work = _work_dtype(delta)
    x = delta.reshape(1, -1) if delta.dim() < 2 else delta
    mags = x.abs()
    n = mags.shape[1]
    order = torch.argsort(mags, dim=1, descending=False)
    del mags
    pos = torch.arange(n, device=x.device).reshape(1, n, *([1] * (x.dim() - 2))).expand_as(order)
    ranks = torch.empty_like(order).scatter_(1, order, pos)  # the inverse permutation = argsort(order)
    del order
    ranks = ranks.to(work) + 1
    if n == 1:
        rank_norm = torch.full_like(ranks, 0.5)
    else:
        lo = ranks.min(dim=1, keepdim=True).values
        hi = ranks.max(dim=1, keepdim=True).values
        rank_norm = ((ranks - lo) / (hi - lo)).clamp(0, 1)
    del ranks
    return (density - epsilon) + rank_norm * 2 * epsilon


def magprune(
    delta: Tensor,
    density: float,
    epsilon: float = 0.15,
    rescale: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """DELLA's MagPrune: Bernoulli keep mask with rank-based probabilities, then optional L1 rescale.

    ``density ≥ 1`` returns ``delta``; ``density ≤ 0`` returns zeros (mergekit's conventions).

    Args:
        delta: a task vector (any shape). density: mean keep probability ρ. epsilon: half-width ε of the
            probability range. rescale: L1-rescale the kept entries. generator: the random stream.

    Raises:
        ValueError: ρ − ε ≤ 0 or ρ + ε ≥ 1 (for 0 < ρ < 1).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.linspace(-1, 1, 1000)
        >>> out = magprune(x, 0.4, 0.1, generator=g)
        >>> bool(torch.isclose(out.abs().sum(), x.abs().sum()))  # L1 preserved
        True
        >>> round(float((out != 0).float().mean()), 2)  # about density kept
        0.4

    Reference: Deep et al., arXiv:2406.11617 (MagPrune); mergekit 0.1.5 ``sparsify.della_magprune``.
    """
    if density >= 1:
        return delta
    if density <= 0:
        return torch.zeros_like(delta)
    _check_epsilon(density, epsilon, "")
    work = _work_dtype(delta)
    probs = magprune_probabilities(delta, density, epsilon)
    mask = torch.bernoulli(probs, generator=generator).to(work)
    del probs
    d = (delta.reshape(1, -1) if delta.dim() < 2 else delta).to(work)
    masked = d * mask
    del mask
    if rescale:
        before = d.abs().sum()
        after = masked.abs().sum()
        if not (bool(before < 1e-7) or bool(after < 1e-7)):
            masked = masked * (before / after)
    return masked.to(delta.dtype).reshape(delta.shape)


def _check_epsilon(density: float, epsilon: float, where: str) -> None:
    if 0 < density < 1 and (density + epsilon >= 1 or density - epsilon <= 0):
        raise ValueError(
            f"della: density ± epsilon must lie in (0, 1){where}, got density {density} and epsilon {epsilon}"
        )


def _della(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    weights: Sequence[float] | None,
    density: Sequence[float] | float,
    epsilon: Sequence[float] | float,
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
    eps = per_model(epsilon, len(tensors), "epsilon", 0.15)
    for i, (d, e) in enumerate(zip(dens, eps)):
        _check_epsilon(d, e, f" (model {i})")
    return generalized_task_arithmetic(
        base,
        tensors,
        w,
        sparsify=lambda d, i: magprune(d, dens[i], eps[i], rescale, gen),
        consensus=consensus,
        normalize=normalize,
        lambda_=float(lambda_),
    )


@register_merge_method(
    "della",
    inputs="full",
    needs_base=True,
    per_model_params=("weights", "density", "epsilon"),
    order_invariant=False,
    stochastic=True,
    reference="arXiv:2406.11617",
    one_model_exact={},
    idempotent={},
    base_fixed_point={"density": 0.5},
)
def della(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weights: Sequence[float] | None = None,
    density: Sequence[float] | float = 1.0,
    epsilon: Sequence[float] | float = 0.15,
    lambda_: float = 1.0,
    normalize: bool = True,
    rescale: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """DELLA: MagPrune each task vector, TIES sign election, disjoint mean (sum if not ``normalize``).

    θ = θ₀ + λ Σ_t m_t w_t δ̃_t / Σ_t m_t w_t, δ̃_t = rescale(M_t ⊙ δ_t), M_t ~ Bernoulli(p_t(rank |δ_t|)).

    Args:
        base: θ₀ (required). tensors: fine-tuned θ_t. weights: per-model w_t (default 1.0).
        density: per-model mean keep probability ρ_t (default 1.0 = no drop, as mergekit; the paper tunes it).
        epsilon: per-model half-width ε_t of the keep probabilities (default 0.15).
        lambda_: global scale (config ``lambda``). normalize: disjoint mean (default true).
        rescale: L1-rescale kept entries (default true). generator: the random stream (seed it!).

    Returns:
        The merged tensor, base's shape and dtype.

    Raises:
        ValueError: a model's density ± epsilon outside (0, 1).

    Example:
        >>> import torch
        >>> b = torch.zeros(4, 8); ft = [torch.randn(4, 8, generator=torch.Generator().manual_seed(1))]
        >>> out = della(b, ft, density=0.5, epsilon=0.2, generator=torch.Generator().manual_seed(0))
        >>> out.shape, bool(torch.isclose(out.abs().sum(), ft[0].abs().sum()))
        (torch.Size([4, 8]), True)

    Reference: Deep et al., "DELLA-Merging", arXiv:2406.11617; mergekit 0.1.5.
    """
    return _della(base, tensors, weights, density, epsilon, lambda_, normalize, rescale, generator, True)


@register_merge_method(
    "della_linear",
    inputs="full",
    needs_base=True,
    per_model_params=("weights", "density", "epsilon"),
    order_invariant=False,
    stochastic=True,
    reference="arXiv:2406.11617",
    one_model_exact={},
    idempotent={"normalize": True},
    base_fixed_point={"density": 0.5},
)
def della_linear(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weights: Sequence[float] | None = None,
    density: Sequence[float] | float = 1.0,
    epsilon: Sequence[float] | float = 0.15,
    lambda_: float = 1.0,
    normalize: bool = False,
    rescale: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """DELLA with a linear combination: θ = θ₀ + λ Σ_t w_t δ̃_t (÷ Σ_t w_t if ``normalize``).

    Args:
        base, tensors, weights, density, epsilon, lambda_, rescale, generator: as in :func:`della`.
        normalize: divide by Σ w_t (mergekit default false).

    Returns:
        The merged tensor, base's shape and dtype.

    Example:
        >>> import torch
        >>> b = torch.zeros(3); ft = [torch.ones(3), 3 * torch.ones(3)]
        >>> della_linear(b, ft, normalize=True)  # density 1: no drop, weighted mean of the deltas
        tensor([2., 2., 2.])

    Reference: Deep et al., "DELLA-Merging", arXiv:2406.11617; mergekit 0.1.5.
    """
    return _della(base, tensors, weights, density, epsilon, lambda_, normalize, rescale, generator, False)
