"""Registry of the ``orthokit.dictionary`` family: orthogonal dictionary learners.

:data:`DICT_LEARNERS` maps a learner name to its class. Capabilities: ``online`` (learns from a stream with
memory independent of the number of samples seen), ``exact_orthogonal`` (the dictionary is orthogonal to
machine precision after every step — a tested invariant).

Example:
    >>> from orthokit.dictionary.registry import DICT_LEARNERS
    >>> DICT_LEARNERS.kind
    'orthogonal dictionary learner'
"""

from __future__ import annotations

from typing import Any

from orthokit._registry import Registry

__all__ = ["DICT_LEARNERS"]

#: orthogonal dictionary learners: name -> class
DICT_LEARNERS: Registry[Any] = Registry("orthogonal dictionary learner")
