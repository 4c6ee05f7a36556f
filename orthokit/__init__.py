"""orthokit — orthogonality as a first-class tool for deep learning.

Places to apply an orthogonal map or a projection, one family each:

* ``orthokit.optim``      — orthogonalized optimizers (Muon, NorMuon, AdaMuon, ROOT, Dion, ...)
* ``orthokit.projection`` — gradient projection away from protected subspaces (GPM, SGP, OGD, ...)
* ``orthokit.merge``      — model merging in orthogonal/subspace geometry (TIES, OrthoMerge, DC-Merge, ...)
* ``orthokit.align``      — alignment and backward-compatible representations (Procrustes, BCT, OCA, BT², OPL, ...)
* ``orthokit.steer``      — activation steering on transformers models (addition, ablation, norm-preserving rotations)
* ``orthokit.diagnostics`` — representation geometry: ε-capacity, factor orthogonality, geometry conflict
* ``orthokit.vsa``        — MBAT vector-symbolic encoding with orthogonal binding matrices (JSON codec)
* ``orthokit.dictionary`` — orthogonal dictionary learning (online Frank–Wolfe, batch baselines)
* ``orthokit.rotation``   — rotations that make quantization easy (rotate_model, learned rotations, quantizers)
* ``orthokit.linalg``     — the shared primitives: polar factor, Procrustes, Cayley, SO(n) exp/log, ...

plus ``orthokit.io`` (safetensors/YAML I/O), ``orthokit.integrations`` (Hugging Face ``Trainer`` glue) and
``orthokit.bench`` (bundled-data loaders and benchmark code). Subpackages are imported on first attribute access.

Example:
    >>> import torch, orthokit
    >>> G = torch.randn(64, 256)
    >>> X = orthokit.polar(G)                    # Polar Express, 5 steps, ≈ U Vᵀ of G
    >>> r = orthokit.linalg.orthogonality_report(X, G)
    >>> bool(0.8 < r.sigma_min and r.sigma_max < 1.2 and r.rel_error < 0.15)   # σ(X) within PE-5's band
    True
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# Subpackages reachable as ``orthokit.<name>`` (lazily imported). Only packages that exist belong here:
# tests/test_namespace.py imports every one of them.
_SUBPACKAGES: tuple[str, ...] = (
    "linalg",
    "optim",
    "projection",
    "merge",
    "align",
    "steer",
    "diagnostics",
    "vsa",
    "dictionary",
    "rotation",
    "io",
    "integrations",
    "bench",
)

__all__ = ["polar", "linalg", "__version__"]


def __getattr__(name: str) -> Any:
    import importlib

    if name == "polar":
        from orthokit.linalg import polar

        return polar
    if name in _SUBPACKAGES:
        return importlib.import_module(f"orthokit.{name}")
    raise AttributeError(f"module 'orthokit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SUBPACKAGES) | {"polar"})
