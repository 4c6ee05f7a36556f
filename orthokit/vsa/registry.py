"""Registry of the ``orthokit.vsa`` family: binding matrices for MBAT vector-symbolic architectures.

:data:`BINDERS` maps a binder name to its class. Capabilities: ``orthogonal`` (bind preserves norms and unbind is
the exact transpose — a tested invariant), ``cost`` (``"d^2"`` dense or ``"d log d"`` structured).

Example:
    >>> from orthokit.vsa.registry import BINDERS
    >>> BINDERS.kind
    'binding matrix family'
"""

from __future__ import annotations

from typing import Any

from orthokit._registry import Registry

__all__ = ["BINDERS"]

#: binding-matrix families: name -> class
BINDERS: Registry[Any] = Registry("binding matrix family")
