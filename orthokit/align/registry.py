"""Registries of the ``orthokit.align`` family (one per kind of method; conformance suites read them).

* :data:`ALIGNERS` — alignment maps fitted in closed form or by a short solve
  (``fit(source, target, method=...)``). Capability ``kind``: ``"isometry"`` (distances preserved exactly),
  ``"similarity"`` (preserved up to one global scale), ``"near_isometry"`` (within a stated tolerance) or
  ``"affine"`` (no geometric guarantee).
* :data:`COMPAT_METHODS` — backward-compatible training methods (BCT, OCA, BT², λ-orthogonality, and
  independent training as the baseline). Capabilities: ``extra_dims`` (the new feature is wider than the old
  one), ``needs_old_classifier``.
* :data:`ALIGN_LOSSES` — orthogonality losses and heads (OPL, equiangular basis vectors, Grassmann class
  representation, DOLG fusion). Capability ``kind``: ``"loss"``, ``"head"`` or ``"module"``.

Example:
    >>> from orthokit.align.registry import ALIGNERS, ALIGN_LOSSES, COMPAT_METHODS
    >>> ALIGNERS.kind, COMPAT_METHODS.kind, ALIGN_LOSSES.kind
    ('alignment map', 'compatible-training method', 'orthogonal loss or head')
"""

from __future__ import annotations

from typing import Any

from orthokit._registry import Registry

__all__ = ["ALIGNERS", "COMPAT_METHODS", "ALIGN_LOSSES"]

#: alignment maps: name -> fit function ``(source, target, *, center=True, **kw) -> Aligner``
ALIGNERS: Registry[Any] = Registry("alignment map")
#: backward-compatible training methods: name -> method class
COMPAT_METHODS: Registry[Any] = Registry("compatible-training method")
#: orthogonality losses and heads: name -> nn.Module class
ALIGN_LOSSES: Registry[Any] = Registry("orthogonal loss or head")
