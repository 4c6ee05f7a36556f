"""Activation addition — the baseline steering method: ``h ↦ h + α r̂``.

Adds a fixed vector along the unit steering direction ``r̂ = r/‖r‖`` to every edited residual-stream state. It is
*not* norm preserving: ``‖h + α r̂‖² = ‖h‖² + 2α h·r̂ + α²``, which is what the norm-preserving rotations of
``angular``/``selective``/``cylindrical`` avoid.

Sources: Turner et al., "Steering Language Models With Activation Engineering" (ActAdd, arXiv 2308.10248);
Rimsky et al., "Steering Llama 2 via Contrastive Activation Addition" (CAA, arXiv 2312.06681: a mean-difference
vector added at every position); Arditi et al., "Refusal in Language Models Is Mediated by a Single Direction"
(arXiv 2406.11717, code github.com/andyrdt/refusal_direction: ``activation += coeff * r`` on the input of one block,
every position, with the *raw* mean-difference ``r`` and ``coeff = ±1``).

Fidelity: the contract of this family scales the *unit* direction, so ``alpha`` is in units of the
residual-stream norm; ``ActivationAddition(r, alpha=float(r.norm()))`` is Arditi et al.'s ``coeff = 1`` addition
and CAA's multiplier-1 addition. A hook on block ``ℓ``'s output is the input of block ``ℓ + 1`` (their
"layer ℓ + 1" pre-hook). ActAdd's original form (the difference of two prompts' activations added at the first
positions only) is the mean difference of one pair with ``positions`` restricted; this class adds at every
edited position (``steer(..., positions="all"|"last")``).

Example:
    >>> import torch
    >>> from orthokit.steer.addition import ActivationAddition
    >>> s = ActivationAddition(torch.tensor([3.0, 4.0]), alpha=5.0)
    >>> s.edit(torch.zeros(2, 2))
    tensor([[3., 4.],
            [3., 4.]])
"""

from __future__ import annotations

import math

from torch import Tensor

from ._hooks import Steerer, as_direction
from .registry import STEERERS

__all__ = ["ActivationAddition"]


@STEERERS.register("addition", aliases=("actadd",), norm_preserving=False, kind="additive", needs_plane=False)
class ActivationAddition(Steerer):
    """Activation addition ``h + α r̂`` (``r̂ = direction / ‖direction‖``); ``alpha = 0`` is the identity.

    Args:
        direction: the steering direction ``[d]`` (any nonzero finite real vector; normalized in float64).
        alpha: strength, in the units of the residual stream (negative steers away).
    """

    name = "addition"
    norm_preserving = False

    def __init__(self, direction: Tensor, alpha: float = 1.0) -> None:
        if isinstance(alpha, bool) or not isinstance(alpha, int | float):
            raise TypeError(f"alpha must be a real number, got {type(alpha).__name__}")
        if not math.isfinite(alpha):
            raise ValueError(f"alpha must be finite, got {alpha}")
        self.direction = as_direction(direction)
        self.alpha = float(alpha)

    def edit(self, h: Tensor) -> Tensor:
        """``h + α r̂`` in ``h``'s dtype (``h`` is ``[..., d]``)."""
        self._check_h(h, self.direction.shape[0])
        if self.alpha == 0.0:
            return h
        return h + self._cast("v", self.alpha * self.direction, h)
