"""Registry of the ``orthokit.steer`` family: activation-steering methods (the conformance suite reads it).

:data:`STEERERS` maps a method name to its class. Capabilities: ``norm_preserving`` (the edited hidden state has
exactly the norm of the original one — a tested invariant), ``needs_plane`` (the method acts in a 2-D plane and
needs a second direction or builds one), ``kind`` (``"additive"``, ``"projection"`` or ``"rotation"``).

Example:
    >>> from orthokit.steer.registry import STEERERS
    >>> STEERERS.kind
    'steering method'
"""

from __future__ import annotations

from typing import Any

from orthokit._registry import Registry

__all__ = ["STEERERS"]

#: steering methods: name -> class with ``edit(h: Tensor) -> Tensor`` acting on residual-stream states [..., d]
STEERERS: Registry[Any] = Registry("steering method")
