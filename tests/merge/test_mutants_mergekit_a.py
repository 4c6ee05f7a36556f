"""Mutants of linear, slerp, nuslerp, multislerp, nearswap, karcher and passthrough must FAIL their closed forms.

Each mutant keeps the method's signature and breaks one defining step; a closed-form check
(tests/merge/conformance_mergekit_a.py) that still passed on it would not be testing the method's purpose. The
unmodified methods pass the same checks in tests/merge/test_registry.py::test_closed_form.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch
from torch import Tensor

from orthokit.linalg._sphere import karcher_mean
from orthokit.merge.karcher import karcher
from orthokit.merge.linear import linear
from orthokit.merge.multislerp import multislerp
from orthokit.merge.nuslerp import nuslerp

from . import conformance_mergekit_a as A


def linear_never_normalizes(base: Tensor | None, tensors: Sequence[Tensor], **kw: object) -> Tensor:
    """'linear' that always returns the weighted sum (ignores ``normalize``)."""
    kw["normalize"] = False
    return linear(base, tensors, **kw)  # type: ignore[arg-type]


def slerp_as_lerp(base: Tensor | None, tensors: Sequence[Tensor], *, t: float = 0.5, **kw: object) -> Tensor:
    """'slerp' done as straight linear interpolation (1 − t) θ₀ + t θ₁."""
    assert base is not None
    return (1 - t) * base + t * tensors[0]


def nuslerp_t_swapped(base: Tensor | None, tensors: Sequence[Tensor], **kw: object) -> Tensor:
    """'nuslerp' with t = w₁/(w₁ + w₂) (the weights applied to the wrong endpoints)."""
    w = list(kw.pop("weights") or [1.0, 1.0])  # type: ignore[call-overload]
    return nuslerp(base, tensors, weights=w[::-1], **kw)  # type: ignore[arg-type]


def multislerp_without_tangent_step(base: Tensor | None, tensors: Sequence[Tensor], **kw: object) -> Tensor:
    """'multislerp' that stops at the tangent point: normalized weighted mean of the directions × mean norm."""
    w = torch.tensor(kw.get("weights") or [1.0] * len(tensors), dtype=tensors[0].dtype)  # type: ignore[arg-type]
    if kw.get("normalize_weights", True):
        w = w / w.sum()
    xs = [t - base if base is not None else t for t in tensors]
    if len(xs) == 1:
        return multislerp(base, tensors, **kw)  # type: ignore[arg-type]
    m = sum(wi * x / x.norm() for wi, x in zip(w, xs))
    out = m / m.norm() * sum(wi * x.norm() for wi, x in zip(w, xs))
    return out if base is None else out + base


def nearswap_roles_swapped(
    base: Tensor | None, tensors: Sequence[Tensor], *, t: float = 1e-4, **kw: object
) -> Tensor:
    """'nearswap' that moves the fine-tune toward the base instead (w θ₀ + (1 − w) θ₁)."""
    assert base is not None
    other = tensors[0]
    w = (t / (base - other).abs().clamp(min=1e-6)).clamp(0, 1)
    return w * base + (1 - w) * other


def karcher_euclidean(base: Tensor | None, tensors: Sequence[Tensor], **kw: object) -> Tensor:
    """'karcher' that never iterates: the normalized Euclidean mean of the directions (max_iter = 0)."""
    kw["max_iter"] = 0
    return karcher(base, tensors, **kw)  # type: ignore[arg-type]


def karcher_unweighted_scale(base: Tensor | None, tensors: Sequence[Tensor], **kw: object) -> Tensor:
    """'karcher' whose direction is right but whose norm is the plain (unweighted) mean norm."""
    w = list(kw.get("weights") or [1.0] * len(tensors))  # type: ignore[arg-type]
    units = [t / t.norm() for t in tensors]
    m, _ = karcher_mean(units, w, max_iter=int(kw.get("max_iter", 10)), tol=float(kw.get("tol", 1e-5)))  # type: ignore[arg-type]
    return m * (sum(t.norm() for t in tensors) / len(tensors))


def passthrough_ignores_scale(base: Tensor | None, tensors: Sequence[Tensor], **kw: object) -> Tensor:
    """'passthrough' that drops the ``scale`` parameter."""
    return tensors[0]


MUTANTS: list[tuple[Callable[..., Tensor], Callable[..., None]]] = [
    (linear_never_normalizes, A.check_linear),
    (slerp_as_lerp, A.check_slerp),
    (nuslerp_t_swapped, A.check_nuslerp),
    (multislerp_without_tangent_step, A.check_multislerp),
    (nearswap_roles_swapped, A.check_nearswap),
    (karcher_euclidean, A.check_karcher),
    (karcher_unweighted_scale, A.check_karcher),
    (passthrough_ignores_scale, A.check_passthrough),
]


@pytest.mark.parametrize(("mutant", "check"), MUTANTS, ids=[m[0].__name__ for m in MUTANTS])
def test_mutant_fails_its_closed_form(mutant: Callable[..., Tensor], check: Callable[..., None]) -> None:
    with pytest.raises(AssertionError):
        check(mutant)


def test_the_karcher_check_needs_the_iteration() -> None:
    """How far the Euclidean start is from the Karcher mean on the check's data (what the mutant is caught by)."""
    with pytest.raises(AssertionError, match=r"karcher weights=\[1.0, 1.0, 1.0\]: max error"):
        A.check_karcher(karcher_euclidean)
