"""orthokit.optim — orthogonalized optimizers built from composable transforms.

* :class:`OrthogonalOptimizer` — the runtime (param groups, AdamW groups, matrix views, gradient checks,
  batched polar calls, DDP sharding); variants implement ``transforms(group)`` and ``@register_optimizer``.
* :mod:`orthokit.optim.transforms` — ``momentum``, ``orthogonalize``, ``scale_by_shape``,
  ``decoupled_weight_decay``, ``adam``.
* :class:`Muon` and the registered variants (``OPTIMIZERS.names()``).
* :func:`hybrid` — ONE optimizer routing hidden matrices to the orthogonalized rule and embeddings, output heads
  (found by structure), 1-D params and the first conv to AdamW; :func:`describe` prints where each parameter went
  and why.
* User defaults live in one place, each class's constructor signature (:func:`constructor_defaults`);
  :func:`create_optimizer` and :func:`hybrid` use them. A registry's ``default_lr`` is the conformance-test lr.

Example:
    >>> import torch
    >>> from orthokit.optim import OPTIMIZERS, Muon
    >>> "muon" in OPTIMIZERS
    True
"""

from __future__ import annotations

from orthokit.optim import transforms
from orthokit.optim.base import ALGORITHMS, NonFiniteGradientError, NonFiniteUpdateError, OrthogonalOptimizer
from orthokit.optim.hybrid import describe, hybrid, route_parameters
from orthokit.optim.muon import Muon
from orthokit.optim.registry import (
    OPTIMIZERS,
    constructor_defaults,
    create_optimizer,
    get_optimizer,
    register_optimizer,
)

# Variant modules (one file each); imported here so that they register themselves.
# Plain imports, added as each variant file is committed (list maintained by the framework owner).
from orthokit.optim import adamuon, aro, auon, dion, fismo, namo, normuon, root  # noqa: E402,F401  isort: skip
from orthokit.optim.adamuon import AdaMuon  # noqa: E402
from orthokit.optim.aro import ARO  # noqa: E402
from orthokit.optim.auon import AuON, HybridAuON  # noqa: E402
from orthokit.optim.dion import Dion  # noqa: E402
from orthokit.optim.fismo import FISMO  # noqa: E402
from orthokit.optim.namo import NAMO, NAMOD  # noqa: E402
from orthokit.optim.normuon import NorMuon  # noqa: E402
from orthokit.optim.root import ROOT  # noqa: E402

__all__ = [
    "ALGORITHMS",
    "ARO",
    "AdaMuon",
    "AuON",
    "Dion",
    "FISMO",
    "HybridAuON",
    "Muon",
    "NAMO",
    "NAMOD",
    "NorMuon",
    "ROOT",
    "NonFiniteGradientError",
    "NonFiniteUpdateError",
    "OPTIMIZERS",
    "OrthogonalOptimizer",
    "constructor_defaults",
    "create_optimizer",
    "describe",
    "get_optimizer",
    "hybrid",
    "register_optimizer",
    "route_parameters",
    "transforms",
]
