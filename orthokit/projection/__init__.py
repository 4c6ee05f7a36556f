"""orthokit.projection — keep updates out of (or scaled down inside) protected subspaces.

Core pieces:

* :class:`SubspaceMemory` — per-layer orthonormal bases of input activations (GPM family), gradients (OGD) or the
  weight's top singular directions (OSFT), with GPM's energy criterion, per-layer threshold schedules,
  ``state_dict`` and ``summary()``;
* :class:`Projected` — wraps any ``torch.optim.Optimizer`` so the **applied update** is projected;
* :data:`PROJECTIONS` — registry of methods (``@register_projection``), each one file: GPM, SGP, OGD, ...;
  OGPSA, GU (:class:`GeometricUnlearning`) and OSFT (:class:`OSFTOptimizer`, :func:`apply_osft`) are optimizer
  wrappers / parameterisations of their own.

Every wrapper follows one protocol (:class:`WrappedOptimizer`, ``orthokit/projection/_wrapper.py``): the inner
optimizer first, keyword-only options, ``where="update"|"gradient"``, ``mode="hard"|"scaled"``, ``check_finite``,
an ``Optimizer`` LR schedulers accept, picklable, ``state_dict()`` = the inner one + ``"projection"``.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from orthokit.projection import GPM
    >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    >>> gpm = GPM(model, threshold=[0.95, 0.99])
    >>> added = gpm.after_task([torch.randn(32, 8)])
    >>> opt = gpm.wrap(torch.optim.AdamW(model.parameters(), lr=1e-3))
    >>> isinstance(opt, torch.optim.Optimizer)
    True
"""

from __future__ import annotations

from orthokit.projection import fot, gpm, gu, hlop, ogd, ogpsa, osft, sgp  # noqa: F401  (import registers the methods)
from orthokit.projection._wrapper import WrappedOptimizer
from orthokit.projection.fot import FOT
from orthokit.projection.gpm import GPM
from orthokit.projection.gu import GeometricUnlearning, GUProjection
from orthokit.projection.hlop import HLOP
from orthokit.projection.memory import LayerSummary, SubspaceMemory, energy_rank, sgp_importance
from orthokit.projection.ogd import OGD
from orthokit.projection.ogpsa import OGPSA, OGPSAProjection
from orthokit.projection.osft import OSFTLinear, OSFTOptimizer, OSFTProjection, apply_osft
from orthokit.projection.projected import Projected
from orthokit.projection.registry import PROJECTIONS, ProjectionMethod, register_projection
from orthokit.projection.sgp import SGP

__all__ = [
    "PROJECTIONS",
    "register_projection",
    "ProjectionMethod",
    "SubspaceMemory",
    "LayerSummary",
    "Projected",
    "WrappedOptimizer",
    "GPM",
    "SGP",
    "OGD",
    "OGPSA",
    "GeometricUnlearning",
    "GUProjection",
    "OGPSAProjection",
    "OSFTProjection",
    "HLOP",
    "FOT",
    "OSFTLinear",
    "OSFTOptimizer",
    "apply_osft",
    "energy_rank",
    "sgp_importance",
]
