"""Registry of the ``orthokit.diagnostics`` family: geometry diagnostics of representations and updates.

:data:`DIAGNOSTICS` maps a diagnostic name to its function. Capabilities: ``input`` (``"embedding"`` — one
matrix of vectors, ``"labelled_embeddings"`` — vectors with attribute labels, ``"updates"`` — task updates),
``higher_is`` (``"orthogonal"``, ``"deviation"`` — further from orthogonal — or ``"conflict"``: what a larger
value means). The conformance suite checks each
one on planted cases with a known answer.

Example:
    >>> from orthokit.diagnostics.registry import DIAGNOSTICS
    >>> DIAGNOSTICS.kind
    'geometry diagnostic'
"""

from __future__ import annotations

from typing import Any

from orthokit._registry import Registry

__all__ = ["DIAGNOSTICS"]

#: geometry diagnostics: name -> function
DIAGNOSTICS: Registry[Any] = Registry("geometry diagnostic")
