r"""Gaussian MBAT binding matrices: the baseline of Gallant & Okaywe (2013), not norm-preserving.

``M_role`` has i.i.d. ``N(0, 1/d)`` entries drawn from a generator seeded by ``(seed, role)``, so
``E[MᵀM] = I`` and ``E‖Mx‖² = ‖x‖²`` — but a single draw changes norms by a factor ``1 ± O(1/√d)`` and
repeated binding (nesting, recurrent sequences) compounds it: after ``n`` bindings ``log‖x‖`` performs a random
walk. This is the instability Gallant (arXiv 2202.04771) fixes with orthogonal matrices; the binder exists as
the measured baseline.

Unbinding rule: **reconstructed** (the papers' bodies could not be read with our tools). ``unbind="transpose"``
(default) multiplies by ``Mᵀ``, the approximate inverse implied by ``E[MᵀM] = I`` — the same operation an
orthogonal binder uses, so the two are compared like for like; ``unbind="inverse"`` solves ``M x = y`` exactly
(``O(d³)`` LU once per role, then ``O(d²)``).

Example:
    >>> import torch
    >>> from orthokit.vsa.gaussian import GaussianBinder
    >>> b = GaussianBinder(256, seed=0)
    >>> x = torch.randn(256, dtype=torch.float64)
    >>> r = float(b.bind("a", x).norm() / x.norm())
    >>> 0.8 < r < 1.2 and abs(r - 1.0) > 1e-6
    True
    >>> bi = GaussianBinder(256, seed=0, unbind="inverse")
    >>> bool(torch.allclose(bi.unbind("a", bi.bind("a", x)), x))
    True
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from orthokit.vsa.binding import Binder, Role, gaussian_std, role_seed
from orthokit.vsa.registry import BINDERS

__all__ = ["GaussianBinder"]

_UNBIND = ("transpose", "inverse")


@BINDERS.register("gaussian", orthogonal=False, cost="d^2")
class GaussianBinder(Binder):
    """I.i.d. ``N(0, 1/d)`` matrix per role; unbind by ``Mᵀ`` (default) or the exact inverse.

    Args:
        d: dimension.
        seed: integer seed.
        unbind: ``"transpose"`` or ``"inverse"``.
    """

    name = "gaussian"
    orthogonal = False

    def __init__(self, d: int, *, seed: int = 0, unbind: str = "transpose") -> None:
        super().__init__(d, seed=seed)
        if unbind not in _UNBIND:
            raise ValueError(f"unbind must be one of {_UNBIND}, got {unbind!r}")
        self.unbind_rule = unbind
        self._cache: dict[tuple[Role, torch.dtype, str], Tensor] = {}

    def _generate(self, role: Role) -> Tensor:
        g = torch.Generator().manual_seed(role_seed(self.seed, "gaussian", role))
        return torch.randn(self.d, self.d, generator=g, dtype=torch.float64) * gaussian_std(self.d)

    def _get(self, role: Role, dtype: torch.dtype, which: str) -> Tensor:
        """``M`` (``which="M"``) or ``(M⁻¹)ᵀ`` (``"Minv_T"``) in ``dtype``; only what is used is cached."""
        key = (role, dtype, which)
        m = self._cache.get(key)
        if m is None:
            base = self._cache.get((role, torch.float64, "M"))
            base = base if base is not None else self._generate(role)
            m = base if which == "M" else torch.linalg.inv(base).T.contiguous()
            m = m.to(dtype)
            self._cache[key] = m
        return m

    def _on(self, role: Role, x: Tensor, which: str) -> Tensor:
        m = self._get(role, x.dtype, which)
        if m.device != x.device:  # generated on the CPU (seeded); one copy per device, cached
            key = (role, x.dtype, which + "@" + str(x.device))
            md = self._cache.get(key)
            if md is None:
                md = m.to(x.device)
                self._cache[key] = md
            m = md
        return m

    def _apply(self, role: Role, x: Tensor, transpose: bool) -> Tensor:
        if not transpose:
            return x @ self._on(role, x, "M").T
        if self.unbind_rule == "transpose":
            return x @ self._on(role, x, "M")
        return x @ self._on(role, x, "Minv_T")

    def matrix(self, role: Role, *, dtype: torch.dtype = torch.float64) -> Tensor:
        """The dense ``M_role`` (a copy, in ``dtype``)."""
        from orthokit.vsa.binding import check_role

        check_role(role)
        return self._get(role, torch.float64, "M").to(dtype).clone()

    def _options(self) -> dict[str, Any]:
        return {"unbind": self.unbind_rule}
