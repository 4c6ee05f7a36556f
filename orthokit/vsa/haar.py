r"""Dense Haar-random orthogonal binding matrices (Gallant, arXiv 2202.04771, §"orthogonal matrices").

``M_role`` is drawn from the Haar (uniform) measure on ``O(d)``: a ``d × d`` matrix of i.i.d. ``N(0, 1)``
entries from a generator seeded by ``(seed, role)``, then the ``Q`` factor of its QR decomposition with the
sign convention ``diag(R) > 0`` (:func:`orthokit.linalg.qr_basis`), which is exactly what makes ``Q``
Haar-distributed (Mezzadri, "How to generate random matrices from the classical compact groups", Notices AMS
2007). Bind is ``M x`` (``O(d²)``), unbind ``Mᵀ y`` — the exact inverse, so ``unbind ∘ bind = id`` and
``‖bind(x)‖ = ‖x‖`` up to rounding. Matrices are generated in float64 and cached per role in the dtypes that
are bound (``d² · 4`` bytes per role for float32 inputs; the QR is an ``O(d³)`` one-off per role: 1.2 s at
``d = 2048`` on one core).

Example:
    >>> import torch
    >>> from orthokit.vsa.haar import HaarBinder
    >>> b = HaarBinder(16, seed=3)
    >>> M = b.matrix("name")
    >>> bool(torch.allclose(M.T @ M, torch.eye(16, dtype=torch.float64)))
    True
    >>> x = torch.randn(16, dtype=torch.float64)
    >>> round(float(b.bind("name", x).norm() / x.norm()), 12)
    1.0
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from orthokit.linalg.qr import qr_basis
from orthokit.vsa.binding import Binder, Role, role_seed
from orthokit.vsa.registry import BINDERS

__all__ = ["HaarBinder"]


@BINDERS.register("haar", orthogonal=True, cost="d^2")
class HaarBinder(Binder):
    """Dense Haar-random orthogonal ``M_role`` per role (QR of a seeded Gaussian matrix, ``diag(R) > 0``)."""

    name = "haar"
    orthogonal = True

    def __init__(self, d: int, *, seed: int = 0) -> None:
        super().__init__(d, seed=seed)
        self._cache: dict[tuple[Role, torch.dtype], Tensor] = {}
        self._dev_cache: dict[tuple[Role, torch.dtype, str], Tensor] = {}

    def _generate(self, role: Role) -> Tensor:
        g = torch.Generator().manual_seed(role_seed(self.seed, "haar", role))
        return qr_basis(torch.randn(self.d, self.d, generator=g, dtype=torch.float64))

    def _matrix64(self, role: Role) -> Tensor:
        key = (role, torch.float64)
        m = self._cache.get(key)
        if m is None:
            m = self._generate(role)
            self._cache[key] = m
        return m

    def _matrix_as(self, role: Role, dtype: torch.dtype) -> Tensor:
        """The matrix in ``dtype``; only the dtypes actually bound are cached (a float32 user keeps ``d²·4``
        bytes per role — the float64 original is regenerated if float64 inputs come later)."""
        if dtype == torch.float64:
            return self._matrix64(role)
        key = (role, dtype)
        m = self._cache.get(key)
        if m is None:
            m64 = self._cache.get((role, torch.float64))
            m = (m64 if m64 is not None else self._generate(role)).to(dtype)
            self._cache[key] = m
        return m

    def _apply(self, role: Role, x: Tensor, transpose: bool) -> Tensor:
        m = self._matrix_as(role, x.dtype)
        if m.device != x.device:  # generated on the CPU (seeded); one copy per device, cached
            key = (role, x.dtype, str(x.device))
            md = self._dev_cache.get(key)
            if md is None:
                md = m.to(x.device)
                self._dev_cache[key] = md
            m = md
        # row vectors: bind y = M x  <=>  y_row = x_row @ Mᵀ ; unbind x = Mᵀ y  <=>  x_row = y_row @ M
        return x @ m if transpose else x @ m.T

    def matrix(self, role: Role, *, dtype: torch.dtype = torch.float64) -> Tensor:
        """The cached dense ``M_role`` (a copy, in ``dtype``)."""
        from orthokit.vsa.binding import check_role

        check_role(role)
        m64 = self._cache.get((role, torch.float64))
        return (m64.clone() if m64 is not None else self._generate(role)).to(dtype)

    def _options(self) -> dict[str, Any]:
        return {}
