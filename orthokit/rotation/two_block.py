r"""Structured "two-block" Hadamard rotation ``T(u) = (1/d)·H D₁ H D₂ u`` (Zilca & Mendelson, arXiv 2604.23418).

``H`` is the unnormalized Hadamard matrix of order ``d`` and ``D₁, D₂`` i.i.d. Rademacher sign diagonals, so
``T = Ĥ D₁ Ĥ D₂`` with ``Ĥ = H/√d`` orthonormal. The paper shows every fixed coordinate of ``T(u)`` is uniformly
close (Kolmogorov distance ``O(d^{-1/5})``, uniformly over unit ``u``) to the corresponding coordinate of a
Haar-rotated ``u``, while the *joint* law of ``T(u)`` stays provably far from Haar (a Wasserstein lower bound,
tight for extremal inputs). One block (``Ĥ D u``, a randomized Hadamard) has neither property: ``T(e₁)`` has
entries ``±1/√d``.

orthokit's row-vector convention: with the column map ``M = Ĥ D₁ Ĥ D₂ ⋯ Ĥ D_k`` (``k = blocks``, default 2 =
the paper), the rotation is ``x ↦ x Mᵀ``, i.e. ``Q = Mᵀ = D_k Ĥᵀ ⋯ D₁ Ĥᵀ`` and ``apply(u) = T(u)`` for a row
``u``. ``d`` must be a supported Hadamard order (:func:`orthokit.linalg.hadamard_construction`; the paper takes
``d = 2^m``, the same statement holds for the Paley orders but is not proven there). ``blocks=k ≥ 3`` is the
"more blocks" option nn.md §C6 suggests for uses that need the joint law closer to Haar. Signs are stored as a
``(k, d)`` int8 tensor (row ``i`` = ``D_{i+1}``), drawn from ``torch.Generator().manual_seed(seed)``.

Example:
    >>> import torch
    >>> from orthokit.linalg import hadamard_matrix
    >>> from orthokit.rotation.two_block import TwoBlockHadamard
    >>> r = TwoBlockHadamard(16, seed=0)
    >>> H = hadamard_matrix(16, dtype=torch.float64) * 4                       # unnormalized
    >>> D1, D2 = (torch.diag(s.double()) for s in r.signs)
    >>> u = torch.randn(16, dtype=torch.float64)
    >>> bool(torch.allclose(r.apply(u), (H @ D1 @ H @ D2 @ u) / 16))          # T(u) of the paper
    True
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from orthokit.rotation.base import Rotation
from orthokit.rotation.hadamard import check_signs, is_hadamard_order, rademacher_signs, right_hadamard
from orthokit.rotation.registry import ROTATIONS

__all__ = ["TwoBlockHadamard"]


@ROTATIONS.register(
    "two_block_hadamard",
    aliases=("two_block", "hdhd"),
    structured=True,
    cost="n log n",
    haar_marginals="per-coordinate",
    seeded=True,
    randomized=True,
    any_n=False,
)
class TwoBlockHadamard(Rotation):
    """``T = Ĥ D₁ Ĥ D₂ ⋯ Ĥ D_k`` as a row-vector rotation ``Q = Tᵀ`` (``k = blocks``, default 2).

    Args:
        n: size ``d``, a supported Hadamard order.
        seed: seed of the signs.
        blocks: number ``k ≥ 1`` of ``Ĥ D`` factors.
        signs: explicit ``(k, n)`` ``±1`` signs (default: drawn from ``seed``).
    """

    name = "two_block_hadamard"

    def __init__(self, n: int, *, seed: int | None = 0, blocks: int = 2, signs: Tensor | None = None) -> None:
        super().__init__(n, seed=seed)
        if not is_hadamard_order(self.n):
            raise ValueError(
                f"two_block_hadamard needs n to be a supported Hadamard order, got {self.n} "
                f"(use rotation='hadamard' for its block-diagonal fallback)"
            )
        if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1:
            raise ValueError(f"blocks must be an int >= 1, got {blocks!r}")
        self.blocks = blocks
        if signs is None:
            if self.seed is None:
                raise ValueError("two_block_hadamard needs a seed or explicit signs")
            self.signs = rademacher_signs((blocks, self.n), self.seed)
        else:
            self.signs = check_signs(signs, (blocks, self.n), "signs")

    def _forward(self, x: Tensor, transpose: bool) -> Tensor:
        s = self._cast_like("signs", self.signs, x)
        if not transpose:  # x Mᵀ = x D_k Ĥᵀ ⋯ D_1 Ĥᵀ
            for i in reversed(range(self.blocks)):
                x = right_hadamard(x * s[i], self.n, transpose=True)
        else:  # x M = x Ĥ D_1 ⋯ Ĥ D_k
            for i in range(self.blocks):
                x = right_hadamard(x, self.n) * s[i]
        return x

    def _dense64(self) -> Tensor:
        return self._forward(torch.eye(self.n, dtype=torch.float64), False)

    def _state(self) -> dict[str, Any]:
        return {"signs": self.signs.clone(), "blocks": self.blocks}

    @classmethod
    def _from_state(cls, n: int, seed: int | None, d: dict[str, Any]) -> Rotation:
        k = d.get("blocks")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"two_block_hadamard state 'blocks' must be an int >= 1, got {k!r}")
        if "signs" not in d:
            raise ValueError("two_block_hadamard state needs 'signs'")
        signs = check_signs(d["signs"], (k, n), "two_block_hadamard state 'signs'")
        return cls(n, seed=seed, blocks=k, signs=signs)

    def __repr__(self) -> str:
        t = ", transposed" if self.transposed else ""
        return f"TwoBlockHadamard(n={self.n}, seed={self.seed}, blocks={self.blocks}{t})"
