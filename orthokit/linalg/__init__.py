"""orthokit.linalg — pure, batched, dtype-aware primitives shared by every orthokit family.

Polar factor engine (Newton–Schulz schedules as data, Polar Express, SVD/eigh references),
QR bases, Procrustes, Cayley, Householder, exp/log on SO(n), Hadamard transform, randomized SVD,
subspace bases/projectors and principal angles. Each primitive has a float64 reference in the tests.

Names are resolved lazily: ``orthokit.linalg.cayley`` imports the defining submodule on first use.
Every public name is always the documented function/class, never a submodule of the same name, whatever
was imported before (see ``_Namespace`` below; tests/test_namespace.py checks it).

Example:
    >>> import torch
    >>> from orthokit.linalg import cayley, inverse_cayley
    >>> A = torch.tensor([[0.0, -0.5], [0.5, 0.0]])     # skew-symmetric
    >>> Q = cayley(A)
    >>> torch.allclose(Q @ Q.T, torch.eye(2), atol=1e-6), torch.allclose(inverse_cayley(Q), A, atol=1e-6)
    (True, True)
"""

from __future__ import annotations

import importlib
import sys
import types
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
    "dispatch_report": "dispatch",
    "orthogonality_report": "report",
    "OrthogonalityReport": "report",
    # other primitives
    "qr_basis": "qr",
    "cholesky_qr2": "qr",
    "procrustes": "_procrustes",
    "ProcrustesResult": "_procrustes",
    "cayley": "_cayley",
    "inverse_cayley": "_cayley",
    "householder_product": "householder",
    "householder_apply": "householder",
    "expm_skew": "lie",
    "logm_orthogonal": "lie",
    "hadamard_transform": "hadamard",
    "hadamard_matrix": "hadamard",
    "hadamard_construction": "hadamard",
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


class _Namespace(types.ModuleType):
    """The package module: a public name can never be rebound to a submodule of the same name.

    When Python first imports a submodule ``orthokit.linalg.X`` it runs ``setattr(orthokit.linalg, "X", module)``.
    Where ``X`` is also a public name defined in that submodule (``polar`` in ``polar.py``), this would replace
    the lazily exported function by the module, depending on import order. This hook drops exactly that binding;
    the public name then resolves through :func:`__getattr__` to the function. Submodules stay importable
    (``from orthokit.linalg.polar import POLAR_METHODS``, ``importlib.import_module``) because imports go through
    ``sys.modules``. ``cayley`` and ``procrustes`` live in private modules (``_cayley.py``, ``_procrustes.py``)
    so their module paths never collide with the public names at all.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if (
            isinstance(value, types.ModuleType)
            and name in _EXPORTS
            and value.__name__ == f"{__name__}.{name}"
        ):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Namespace
