r"""Structured orthogonal binding matrices ``(H·D)^k``: ``O(d log d)`` per bind, ``O(k·d)`` bits of state.

``M_role = H D_k ⋯ H D_2 · H D_1`` where ``H`` is the orthonormal Walsh–Hadamard matrix
(:func:`orthokit.linalg.hadamard_transform`, symmetric and involutive) and ``D_i`` are diagonal matrices of
Rademacher signs drawn from a generator seeded by ``(seed, role)``. Each factor is orthogonal, so ``M`` is,
and ``Mᵀ = D_1 H · D_2 H ⋯ D_k H`` is applied by the reverse sequence of sign flips and transforms. Gallant's
paper uses dense random orthogonal matrices; this structured family is our named option (the construction of
SORF, Yu et al., "Orthogonal Random Features", NeurIPS 2016, and of the cross-polytope LSH rotations, Andoni
et al., NeurIPS 2015). **Default ``k = 3``**: with ``k = 1`` every output coordinate is ``±(1/√d)·Σ ±x_j``, i.e.
``M`` maps the standard basis onto the (signed) Hadamard basis — far from Haar; ``k = 3`` is where those two
papers measured the structured product to be statistically indistinguishable from a dense Haar rotation for
their purposes. ``d`` must be a power of two.

Example:
    >>> import torch
    >>> from orthokit.vsa.hadamard import HadamardBinder
    >>> b = HadamardBinder(64, seed=0)
    >>> x = torch.randn(5, 64, dtype=torch.float64)
    >>> y = b.bind("k", x)
    >>> bool(torch.allclose(y.norm(dim=-1), x.norm(dim=-1))), bool(torch.allclose(b.unbind("k", y), x))
    (True, True)
    >>> bool(torch.allclose(y, x @ b.matrix("k").T))
    True
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from orthokit.linalg.hadamard import hadamard_transform
from orthokit.vsa.binding import Binder, Role, role_seed
from orthokit.vsa.registry import BINDERS

__all__ = ["HadamardBinder"]


@BINDERS.register("hadamard", orthogonal=True, cost="d log d")
class HadamardBinder(Binder):
    """``M_role = (H D_k)⋯(H D_1)``: Walsh–Hadamard transforms interleaved with seeded Rademacher diagonals.

    Args:
        d: dimension, a power of two.
        seed: integer seed.
        k: number of ``H·D`` factors (default 3, see the module docstring).
    """

    name = "hadamard"
    orthogonal = True

    def __init__(self, d: int, *, seed: int = 0, k: int = 3) -> None:
        super().__init__(d, seed=seed)
        if d & (d - 1):
            raise ValueError(f"hadamard binder needs d to be a power of two, got d={d}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        self.k = k
        self._signs: dict[Role, Tensor] = {}

    def signs(self, role: Role) -> Tensor:
        """The ``[k, d]`` Rademacher signs (``±1``, int8) of ``D_1 … D_k`` for ``role`` (a copy)."""
        from orthokit.vsa.binding import check_role

        check_role(role)
        return self._signs_of(role).clone()

    def _signs_of(self, role: Role) -> Tensor:
        s = self._signs.get(role)
        if s is None:
            g = torch.Generator().manual_seed(role_seed(self.seed, "hadamard", role))
            bits = torch.randint(0, 2, (self.k, self.d), generator=g, dtype=torch.int8)
            s = (2 * bits - 1).to(torch.int8)
            self._signs[role] = s
        return s

    def _apply(self, role: Role, x: Tensor, transpose: bool) -> Tensor:
        s = self._signs_of(role).to(device=x.device, dtype=x.dtype)
        if not transpose:
            for i in range(self.k):
                x = hadamard_transform(x * s[i])
        else:
            for i in reversed(range(self.k)):
                x = hadamard_transform(x) * s[i]
        return x

    def _options(self) -> dict[str, Any]:
        return {"k": self.k}
