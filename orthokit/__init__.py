"""orthokit — orthogonality as a first-class tool for deep learning.

Four places to apply an orthogonal map or a projection, four families:

* ``orthokit.optim``      — orthogonalized optimizers (Muon, NorMuon, AdaMuon, ROOT, Dion, ...)
* ``orthokit.projection`` — gradient projection away from protected subspaces (GPM, SGP, OGD, ...)
* ``orthokit.merge``      — model merging in orthogonal/subspace geometry (TIES, OrthoMerge, DC-Merge, ...)
* ``orthokit.linalg``     — the shared primitives: polar factor, Procrustes, Cayley, SO(n) exp/log, ...

Example:
    >>> import torch, orthokit
    >>> G = torch.randn(768, 3072)
    >>> X = orthokit.polar(G)                    # Polar Express, 5 steps, ≈ U Vᵀ of G
    >>> orthokit.linalg.orthogonality_report(X, G).rel_error
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["polar", "linalg", "__version__"]


def __getattr__(name: str) -> Any:
    import importlib

    if name == "polar":
        from orthokit.linalg.polar import polar

        return polar
    if name in {"linalg", "optim", "projection", "merge", "nn", "rotation", "align", "bench", "integrations"}:
        return importlib.import_module(f"orthokit.{name}")
    raise AttributeError(f"module 'orthokit' has no attribute {name!r}")
