r"""Registry of rotation families (:data:`ROTATIONS`) and :func:`make_rotation`, the one constructor everyone uses.

Each entry is a :class:`~orthokit.rotation.base.Rotation` subclass constructible as ``cls(n, seed=seed)``, with
capabilities:

* ``structured`` — ``apply`` avoids a dense ``n × n`` matmul (where a fast transform exists for ``n``);
* ``cost`` — ``"n"`` (identity), ``"n log n"`` (Hadamard-based) or ``"n^2"`` (dense) per vector;
* ``haar_marginals`` — how the law of one output coordinate ``(uQ)_j`` over the seed compares with that of a
  Haar-random rotation, for any fixed unit input ``u``: ``"exact"`` (Haar itself), ``"per-coordinate"``
  (uniformly close in Kolmogorov distance, Zilca & Mendelson arXiv 2604.23418; the joint law still differs),
  ``"none"`` (no such guarantee: one randomized Hadamard maps ``e_1`` to ``±1/√n`` entries).
* ``seeded`` — the matrix is a deterministic function of ``(n, seed)``;
* ``randomized`` — different seeds give different matrices (``False`` for ``identity``);
* ``any_n`` — every size ``n ≥ 1`` is accepted (``two_block_hadamard`` needs a Hadamard order).

The conformance suite (``tests/rotation/test_rotations.py``) runs over ``ROTATIONS.names()``.

Example:
    >>> import torch
    >>> from orthokit.rotation.registry import ROTATIONS, make_rotation
    >>> ROTATIONS.names()
    ['haar', 'hadamard', 'identity', 'two_block_hadamard']
    >>> r = make_rotation("hadamard", 12, seed=3)
    >>> x = torch.randn(2, 12, dtype=torch.float64)
    >>> bool(torch.allclose(r.apply(x), x @ r.matrix()))
    True
    >>> make_rotation(torch.eye(12), 12).name
    'dense'
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from torch import Tensor

from orthokit._registry import Registry
from orthokit.rotation.base import DenseRotation, IdentityRotation, Rotation, _check_n, _check_seed

__all__ = ["ROTATIONS", "make_rotation", "RotationSpec"]

_BUILTINS = ("hadamard", "haar", "two_block")


class _FamilyRegistry(Registry[type[Rotation]]):
    """A :class:`~orthokit._registry.Registry` that imports the built-in family modules on first lookup.

    The family modules import this one to register themselves, so importing them here at module load would be
    circular; every read (names, get, ``in``, ``len``) first makes sure they are loaded.
    """

    _loaded = False
    _loading = False

    def _ensure(self) -> None:
        if self._loaded or self._loading:
            return
        self._loading = True
        try:
            for mod in _BUILTINS:
                importlib.import_module(f"orthokit.rotation.{mod}")
            self._loaded = True
        finally:
            self._loading = False

    def _resolve(self, name: str) -> str:
        self._ensure()
        return super()._resolve(name)

    def names(self, **where: Any) -> list[str]:
        self._ensure()
        return super().names(**where)

    def __contains__(self, name: object) -> bool:
        self._ensure()
        return super().__contains__(name)

    def __len__(self) -> int:
        self._ensure()
        return super().__len__()


#: rotation families: name -> Rotation subclass (constructed as ``cls(n, seed=seed)``)
ROTATIONS: Registry[type[Rotation]] = _FamilyRegistry("rotation")
ROTATIONS.add(
    "identity",
    IdentityRotation,
    aliases=("none",),
    structured=True,
    cost="n",
    haar_marginals="none",
    seeded=True,
    randomized=False,
    any_n=True,
)

RotationSpec = str | Tensor | Callable[[int, int], Tensor] | Rotation


def make_rotation(spec: RotationSpec, n: int, *, seed: int = 0) -> Rotation:
    """Build an ``n × n`` :class:`Rotation` from a name, a matrix, a factory or an existing rotation.

    Args:
        spec: a :data:`ROTATIONS` name (``"hadamard"``, ``"haar"``, ``"two_block_hadamard"``, ``"identity"``);
            an ``(n, n)`` orthogonal tensor (checked in float64 to ``1e-6`` if float64, else ``1e-4``; wrapped in
            a :class:`~orthokit.rotation.base.DenseRotation`); a callable ``(n, seed) -> Tensor`` validated the same
            way; or a :class:`Rotation` (its size must be ``n``; returned as is).
        n: size.
        seed: seed for registry families and factories.

    Raises:
        TypeError: ``spec`` of another type, ``n``/``seed`` not ints, a factory returning a non-tensor.
        ValueError: unknown name (valid names listed), wrong size, not orthogonal.
    """
    n = _check_n(n)
    seed_ = _check_seed(seed)
    if isinstance(spec, Rotation):
        if spec.n != n:
            raise ValueError(f"rotation spec has size {spec.n}, expected n={n}")
        return spec
    if isinstance(spec, str):
        return ROTATIONS.get(spec)(n, seed=seed_)
    if isinstance(spec, Tensor):
        if spec.dim() != 2 or tuple(spec.shape) != (n, n):
            raise ValueError(f"rotation spec tensor must have shape ({n}, {n}), got {tuple(spec.shape)}")
        return DenseRotation(spec, seed=None)
    if callable(spec):
        q = spec(n, seed_ if seed_ is not None else 0)
        if not isinstance(q, Tensor):
            raise TypeError(f"rotation factory {spec!r} must return a torch.Tensor, got {type(q).__name__}")
        if q.dim() != 2 or tuple(q.shape) != (n, n):
            raise ValueError(
                f"rotation factory {spec!r} returned shape {tuple(q.shape)}, expected ({n}, {n})"
            )
        return DenseRotation(q, seed=seed_)
    raise TypeError(
        f"rotation spec must be a name, a Tensor, a callable (n, seed) -> Tensor or a Rotation, got {type(spec).__name__}"
    )
