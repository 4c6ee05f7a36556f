"""The conformance check must be able to fail: methods that store a *wrong* basis of the right size fail it.

A GPM / SGP subclass whose ``after_task`` replaces every new basis by a random orthonormal basis of the same
size (same ``k``, same importances) is indistinguishable from the real method by shape, finiteness, ``k/n`` or
"the update is orthogonal to the memory" — only the purpose check (old outputs unchanged) catches it.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from orthokit.projection import GPM, SGP

from .test_conformance import check_conformance


def _randomise(method: Any) -> None:
    g = torch.Generator().manual_seed(123)
    mem = method.memory
    for name in mem.layer_names:
        lay = mem.layer(name)
        if lay.k == 0:
            continue
        q = torch.linalg.qr(torch.randn(lay.basis.shape[0], lay.k, generator=g, dtype=torch.float64))[0]
        lay.basis = q.to(lay.basis.dtype)


class RandomBasisGPM(GPM):
    def after_task(self, batches: Any, **kwargs: Any) -> dict[str, int]:
        added = super().after_task(batches, **kwargs)
        _randomise(self)
        return added


class RandomBasisSGP(SGP):
    def after_task(self, batches: Any, **kwargs: Any) -> dict[str, int]:
        added = super().after_task(batches, **kwargs)
        _randomise(self)
        return added


@pytest.mark.parametrize(("name", "cls"), [("gpm", RandomBasisGPM), ("sgp", RandomBasisSGP)])
def test_random_basis_mutant_fails_conformance(name: str, cls: type) -> None:
    with pytest.raises(AssertionError, match="protected quantity changed"):
        check_conformance(name, cls)


@pytest.mark.parametrize("name", ["gpm", "sgp"])
def test_real_method_passes_the_same_check(name: str) -> None:
    check_conformance(name)


class OneFewerGPM(GPM):
    """The reference code's first-task count as the default would keep one direction too few."""

    def __init__(self, model: Any, layers: Any = None, **kw: Any) -> None:
        super().__init__(model, layers, criterion="gpm_code", **kw)


def test_gpm_code_criterion_is_not_exact_on_flat_spectrum() -> None:
    # flat spectrum over 4 (bias-augmented) dims: the strict first-task rule keeps 3 of 4 at ε = 0.97
    with pytest.raises(AssertionError, match="protected quantity changed"):
        check_conformance("gpm", OneFewerGPM)
