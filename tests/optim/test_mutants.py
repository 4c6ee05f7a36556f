"""Mutants that the optimizer conformance suite must reject: each one fails ``check_polar_direction``.

A suite that passes a Muon whose polar step is replaced by plain normalization (issue 9, item 3) cannot guard the
method's purpose. These tests build such broken optimizers and assert that the purpose check fails on them —
with the failure it is designed to report (σ out of range / cosine with U Vᵀ too low), not some other error.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from orthokit.optim import Muon, NorMuon
from orthokit.optim.transforms import decoupled_weight_decay, momentum, orthogonalize, scale_by_shape


def _conformance():
    spec = importlib.util.spec_from_file_location(
        "_optim_conformance_for_mutants", Path(__file__).with_name("test_conformance.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


check_polar_direction = _conformance().check_polar_direction


class _frobenius_normalize(orthogonalize):
    """Mutant orthogonalizer: X / ‖X‖_F (keeps the transform's name, so taps still see an 'orthogonalize')."""

    def _polar(self, X: torch.Tensor) -> torch.Tensor:
        return X / torch.linalg.vector_norm(X, dim=(-2, -1), keepdim=True).clamp_min(1e-30)


class NormalizedMuon(Muon):
    def transforms(self, group):  # noqa: ANN001, ANN201
        return [
            momentum(group["momentum"], group["nesterov"], group["momentum_convention"]),
            _frobenius_normalize(group["ns_method"], group["ns_steps"], group["ns_dtype"], group["batched"]),
            scale_by_shape(group["scale"]),
            decoupled_weight_decay(),
        ]


class NoPolarMuon(Muon):
    def transforms(self, group):  # noqa: ANN001, ANN201
        return [
            momentum(group["momentum"], group["nesterov"], group["momentum_convention"]),
            scale_by_shape(group["scale"]),
            decoupled_weight_decay(),
        ]


class NormalizedNorMuon(NorMuon):
    def transforms(self, group):  # noqa: ANN001, ANN201
        chain = list(super().transforms(group))
        o = chain[1]
        chain[1] = _frobenius_normalize(o.method, o.steps, o.dtype, o.batched)
        return chain


class OneStepMuon(Muon):
    """Claims Polar Express (group ns_method) but runs a single Newton–Schulz step."""

    def transforms(self, group):  # noqa: ANN001, ANN201
        chain = list(super().transforms(group))
        chain[1] = orthogonalize("keller", 1, group["ns_dtype"], group["batched"])
        return chain


def test_real_muon_passes_the_check():
    res = check_polar_direction(lambda ps: Muon(ps, lr=0.02), where="update")
    assert all(cos > 0.99 for _, _, cos in res.values())


@pytest.mark.parametrize(
    "mutant, where",
    [
        (NormalizedMuon, "update"),
        (NoPolarMuon, "update"),
        (OneStepMuon, "update"),
        (NormalizedNorMuon, "orthogonalize"),
    ],
)
def test_mutant_fails_the_purpose_check(mutant, where):
    with pytest.raises(AssertionError, match="σ of the direction|cosine with the float64 polar factor"):
        check_polar_direction(lambda ps: mutant(ps, lr=0.02), where=where)


def test_mutant_without_orthogonalize_fails_the_tapped_check():
    with pytest.raises(AssertionError, match="no 'orthogonalize' transform"):
        check_polar_direction(lambda ps: NoPolarMuon(ps, lr=0.02), where="orthogonalize")
