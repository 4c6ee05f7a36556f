"""Model Breadcrumbs (Davari & Belilovsky, 2024): drop the outliers and the small entries of each task vector.

Per tensor and model, with n entries, δ_t = θ_t − θ₀ sorted by |δ| ascending:

    target = ⌊ρ_t n⌋,  n_top = ⌊γ_t n⌋,  n_bot = max(0, n − target − n_top),

keep the entries at ascending positions [n_bot, n_bot + target) — i.e. the ``target`` largest after removing
the ``n_top`` largest outliers (fewer outliers when ρ + γ > 1, so that ``target`` entries always survive) —
zero the rest, optionally L1-rescale (``rescale``). Then

* ``breadcrumbs``: task arithmetic θ₀ + λ Σ_t w_t δ̃_t (÷ Σ_t w_t when ``normalize``);
* ``breadcrumbs_ties``: TIES sign election and disjoint sum (mean when ``normalize``) on w_t δ̃_t.

Defaults and semantics are mergekit 0.1.5's (``sparsify.magnitude_outliers``; ``density`` 1.0 = no
sparsification, ``gamma`` 0.01, ``normalize``/``rescale`` false): results are bit-equal to
``mergekit.merge_methods.merge_tensors`` (fp32 and bf16, ``tests/merge/test_mergekit_parity_b.py``).

The empty-mask bug: mergekit's git snapshot (before 0.1.5) kept ``indices[n_bot:-n_top]``, which is empty when
``n_top == 0`` (``gamma: 0``, or any tensor with fewer than 1/γ entries — 64-entry norms and biases at
γ = 0.01), silently dropping the whole task vector of such tensors. 0.1.5 keeps ``indices[n_bot:n_bot+target]``
and so does orthokit (the default, and the only behaviour: an option restoring a bug is not offered).
Another 0.1.5 behaviour kept: ρ < 1/n gives ``target = 0``, an empty mask (unlike TIES' "keep at least one").

Selection: one ``torch.sort`` of |δ| per tensor and model, as mergekit does; entries tied at a boundary are then
chosen exactly as mergekit chooses them, which keeps results bit-equal.

Reference: M. Davari, E. Belilovsky, "Model Breadcrumbs: Scaling Multi-Task Model Merging with Sparse Masks",
ECCV 2024, arXiv:2312.06795.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from orthokit.merge.registry import check_merge_inputs, per_model, register_merge_method
from orthokit.merge.task_arithmetic import generalized_task_arithmetic

__all__ = ["breadcrumbs", "breadcrumbs_ties", "outlier_trim"]


def _keep_mask(mag: Tensor, n_bot: int, target: int) -> Tensor:
    """Boolean mask of the entries at ascending positions [n_bot, n_bot + target) of the flat ``mag``.

    One ``torch.sort`` as mergekit 0.1.5: entries tied at a boundary are chosen by the sort's tie order, and real
    task vectors tie often (δ is quantized to the ulp of θ₀), so a selection shortcut would rarely apply.
    """
    keep = torch.zeros(mag.numel(), dtype=torch.bool, device=mag.device)
    if target > 0:
        keep[torch.sort(mag, descending=False).indices[n_bot : n_bot + target]] = True
    return keep


def outlier_trim(
    delta: Tensor, density: float, gamma: float = 0.01, rescale: bool = False, *, inplace: bool = False
) -> Tensor:
    """Breadcrumbs mask: drop the ⌊γ n⌋ largest |δ| and the smallest, keeping ⌊ρ n⌋ entries (mergekit 0.1.5).

    ``density ≥ 1`` returns ``delta`` unchanged. The magnitudes are compared in float32 on CPU (as mergekit).
    With ``rescale`` the kept entries are scaled to preserve ‖δ‖₁ (unless a norm is below 1e-7).

    Args:
        delta: a task vector (any shape). density: ρ, fraction kept. gamma: γ, fraction of top outliers
            removed. rescale: L1 rescale. inplace: overwrite ``delta``.

    Example:
        >>> outlier_trim(torch.tensor([0.1, -5.0, 0.5, 3.0, -1.0]), 0.4, gamma=0.2)
        tensor([ 0.,  0.,  0.,  3., -1.])

    Reference: Davari & Belilovsky, arXiv:2312.06795; mergekit 0.1.5 ``sparsify.magnitude_outliers``.
    """
    if density >= 1:
        return delta
    n = delta.numel()
    target = int(density * n)
    n_top = int(gamma * n)
    n_bot = max(0, n - target - n_top)
    mag = delta.abs().reshape(-1)
    if mag.device.type == "cpu":
        mag = mag.float()
    keep = _keep_mask(mag, n_bot, target).reshape(delta.shape)
    del mag
    before = delta.abs().sum() if rescale else None
    out = delta.mul_(keep) if inplace else delta * keep
    del keep
    if before is not None:
        after = out.abs().sum()
        if not (bool(before < 1e-7) or bool(after < 1e-7)):
            out = out.mul_(before / after)
    return out


def _breadcrumbs(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    weights: Sequence[float] | None,
    density: Sequence[float] | float,
    gamma: Sequence[float] | float,
    lambda_: float,
    normalize: bool,
    rescale: bool,
    consensus: bool,
) -> Tensor:
    w = check_merge_inputs(base, tensors, weights, needs_base=True)
    assert base is not None
    dens = per_model(density, len(tensors), "density", 1.0)
    gam = per_model(gamma, len(tensors), "gamma", 0.01)
    for i, (d, g) in enumerate(zip(dens, gam)):
        if d < 1 and not 0 <= g <= 1:
            raise ValueError(f"breadcrumbs: gamma must be in [0, 1], got {g} for model {i}")
    return generalized_task_arithmetic(
        base,
        tensors,
        w,
        sparsify=lambda d, i: outlier_trim(d, dens[i], gam[i], rescale, inplace=True),
        consensus=consensus,
        normalize=normalize,
        lambda_=float(lambda_),
    )


@register_merge_method(
    "breadcrumbs",
    inputs="full",
    needs_base=True,
    per_model_params=("weights", "density", "gamma"),
    order_invariant=True,
    stochastic=False,
    reference="arXiv:2312.06795",
    one_model_exact={},
    idempotent={"normalize": True},
    base_fixed_point={"density": 0.5},
)
def breadcrumbs(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weights: Sequence[float] | None = None,
    density: Sequence[float] | float = 1.0,
    gamma: Sequence[float] | float = 0.01,
    lambda_: float = 1.0,
    normalize: bool = False,
    rescale: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Model Breadcrumbs: θ = θ₀ + λ Σ_t w_t B_{ρt,γt}(θ_t − θ₀) (÷ Σ_t w_t if ``normalize``).

    Args:
        base: θ₀ (required). tensors: fine-tuned θ_t. weights: per-model w_t (default 1.0).
        density: per-model fraction ρ_t kept (default 1.0 = no masking, as mergekit; the paper uses ~0.9).
        gamma: per-model fraction γ_t of the largest-|δ| outliers removed (default 0.01).
        lambda_: global scale (config ``lambda``). normalize: divide by Σ w_t (default false).
        rescale: L1-rescale each masked delta (default false). generator: unused (deterministic).

    Returns:
        The merged tensor, base's shape and dtype.

    Example:
        >>> import torch
        >>> b = torch.zeros(5); ft = [torch.tensor([0.1, -5.0, 0.5, 3.0, -1.0])]
        >>> breadcrumbs(b, ft, density=0.4, gamma=0.2)
        tensor([ 0.,  0.,  0.,  3., -1.])

    Reference: Davari & Belilovsky, "Model Breadcrumbs", ECCV 2024, arXiv:2312.06795; mergekit 0.1.5.
    """
    return _breadcrumbs(base, tensors, weights, density, gamma, lambda_, normalize, rescale, consensus=False)


@register_merge_method(
    "breadcrumbs_ties",
    inputs="full",
    needs_base=True,
    per_model_params=("weights", "density", "gamma"),
    order_invariant=True,
    stochastic=False,
    reference="arXiv:2312.06795",
    one_model_exact={},
    idempotent={"normalize": True},
    base_fixed_point={"density": 0.5},
)
def breadcrumbs_ties(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weights: Sequence[float] | None = None,
    density: Sequence[float] | float = 1.0,
    gamma: Sequence[float] | float = 0.01,
    lambda_: float = 1.0,
    normalize: bool = False,
    rescale: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Breadcrumbs masks + TIES sign election: θ = θ₀ + λ Σ_t m_t w_t δ̃_t (÷ Σ_t m_t w_t if ``normalize``).

    δ̃_t is the Breadcrumbs-masked task vector (:func:`breadcrumbs`), m_t = [sign(w_t δ̃_t) = sign⁺(Σ_s w_s δ̃_s)].

    Args:
        base, tensors, weights, density, gamma, lambda_, rescale, generator: as in :func:`breadcrumbs`.
        normalize: disjoint mean instead of disjoint sum (mergekit default false).

    Returns:
        The merged tensor, base's shape and dtype.

    Example:
        >>> import torch
        >>> b = torch.zeros(3); ft = [torch.tensor([1.0, -2.0, 4.0]), torch.tensor([-3.0, -1.0, 2.0])]
        >>> breadcrumbs_ties(b, ft, gamma=0.0)  # density 1: plain TIES disjoint sum
        tensor([-3., -3.,  6.])

    Reference: Davari & Belilovsky, arXiv:2312.06795; TIES (Yadav et al., arXiv:2306.01708); mergekit 0.1.5.
    """
    return _breadcrumbs(base, tensors, weights, density, gamma, lambda_, normalize, rescale, consensus=True)
