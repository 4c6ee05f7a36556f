"""orthokit.linalg — pure, batched, dtype-aware primitives shared by every orthokit family.

Polar factor engine (Newton–Schulz schedules as data, Polar Express, SVD/eigh references),
QR bases, Procrustes, Cayley, Householder, exp/log on SO(n), Hadamard transform, randomized SVD,
subspace bases/projectors and principal angles. Each primitive has a float64 reference in the tests.

Names are resolved lazily (``orthokit.linalg.polar`` imports ``orthokit.linalg.polar`` on first use).
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> submodule that defines it
_EXPORTS: dict[str, str] = {
    # polar-factor engine
    "polar": "polar",
    "POLAR_METHODS": "polar",
    "polar_svd": "polar",
    "polar_eigh": "polar",
    "newton_schulz": "polar",
    "SCHEDULES": "schedules",
    "Schedule": "schedules",
    "get_schedule": "schedules",
    "scalar_map": "schedules",
    "validate_schedule": "schedules",
    "polar_express_coefficients": "coefficients",
    "optimal_quintic": "coefficients",
    "orthogonality_report": "report",
    "OrthogonalityReport": "report",
    # other primitives
    "qr_basis": "qr",
    "cholesky_qr2": "qr",
    "procrustes": "procrustes",
    "ProcrustesResult": "procrustes",
    "cayley": "cayley",
    "inverse_cayley": "cayley",
    "householder_product": "householder",
    "householder_apply": "householder",
    "expm_skew": "lie",
    "logm_orthogonal": "lie",
    "hadamard_transform": "hadamard",
    "hadamard_matrix": "hadamard",
    "randomized_svd": "rsvd",
    "principal_angles": "subspace",
    "Subspace": "subspace",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'orthokit.linalg' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
