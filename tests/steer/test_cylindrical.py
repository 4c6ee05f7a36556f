"""Cylindrical (CRH) steering: the steering vector against the reference's closed form in float64, the exact
cylindrical-coordinate invariants it promises (axial shift L cosθ, normal shift (1 − p) L sinθ n̂), the limit
cases (no diff / penalty 1 = activation addition along the axis), hooks on tiny HF models — with mutants."""

from __future__ import annotations

import math

import pytest
import torch

from orthokit.steer._hooks import steer
from orthokit.steer.addition import ActivationAddition
from orthokit.steer.cylindrical import CylindricalSteering, cylindrical_coordinates
from orthokit.steer.registry import STEERERS

from ._models import tiny_ids, tiny_model

D = 16


def _vectors(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(D, generator=g, dtype=torch.float64) * 3, torch.randn(
        D, generator=g, dtype=torch.float64
    )


def _states(n: int = 100, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=g, dtype=torch.float64) * 4


def _reference_vector(axis: torch.Tensor, diff: torch.Tensor, length: float, penalty: float) -> torch.Tensor:
    """The reference's recipe, written out: θ from acos of the cosine, n̂ from the orthogonal residual."""
    a = axis / axis.norm()
    cos_t = float(diff @ axis) / (float(diff.norm()) * float(axis.norm()))
    theta = math.acos(cos_t)
    orth = diff - float(diff @ a) * a
    return length * math.cos(theta) * a + length * math.sin(theta) * (1 - penalty) * orth / orth.norm()


# ---- checks and mutants ---------------------------------------------------------------------------------------------


def check_cylinder_moves(s: CylindricalSteering, h: torch.Tensor) -> None:
    out = s.edit(h)
    z0, n0, _ = cylindrical_coordinates(h, s.axis)
    z1, n1, _ = cylindrical_coordinates(out, s.axis)
    assert torch.allclose(z1 - z0, torch.full_like(z0, s.length * s.cos_theta), atol=1e-10), (
        "axial shift wrong"
    )
    want = (1 - s.penalty) * s.length * s.sin_theta * s.normal
    assert torch.allclose(n1 - n0, want.expand_as(n0), atol=1e-10), "normal-plane shift wrong"


class RescalesToOldNorm(CylindricalSteering):
    """Mutant: 'norm-preserving' variant that rescales the steered state back to the original norm."""

    def edit(self, h: torch.Tensor) -> torch.Tensor:
        out = super().edit(h)
        return out * (h.norm(dim=-1, keepdim=True) / out.norm(dim=-1, keepdim=True))


class PenalizesAxis(CylindricalSteering):
    """Mutant: applies the penalty to the whole vector (shrinks the axial move too)."""

    def edit(self, h: torch.Tensor) -> torch.Tensor:
        return h + (1 - self.penalty) * (
            self.length * self.cos_theta * self.axis + self.length * self.sin_theta * self.normal
        )


# ---- tests ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("length", "penalty"), [(1.0, 0.0), (2.5, 0.3), (4.0, 1.0), (0.0, 0.5)])
def test_vector_matches_reference_closed_form(length: float, penalty: float) -> None:
    axis, diff = _vectors()
    s = CylindricalSteering(axis, diff, length=length, penalty=penalty)
    assert torch.allclose(s.vector, _reference_vector(axis, diff, length, penalty), atol=1e-12)
    h = _states()
    assert torch.allclose(s.edit(h), h + _reference_vector(axis, diff, length, penalty), atol=1e-12)


def test_cylinder_invariants_and_mutants() -> None:
    axis, diff = _vectors()
    h = _states()
    for penalty in (0.0, 0.4, 1.0):
        check_cylinder_moves(CylindricalSteering(axis, diff, length=3.0, penalty=penalty), h)
    with pytest.raises(AssertionError, match="axial"):
        check_cylinder_moves(RescalesToOldNorm(axis, diff, length=3.0, penalty=0.4), h)
    with pytest.raises(AssertionError, match="axial"):
        check_cylinder_moves(PenalizesAxis(axis, diff, length=3.0, penalty=0.4), h)


def test_not_norm_preserving_by_design() -> None:
    axis, diff = _vectors()
    h = _states()
    out = CylindricalSteering(axis, diff, length=3.0).edit(h)
    assert float((out.norm(dim=-1) - h.norm(dim=-1)).abs().max()) > 0.1
    caps = STEERERS.capabilities("cylindrical")
    assert (
        caps["norm_preserving"] is False
        and caps["kind"] == "additive"
        and not CylindricalSteering.norm_preserving
    )


def test_axis_only_limits_equal_activation_addition() -> None:
    axis, diff = _vectors()
    h = _states()
    add = ActivationAddition(axis, alpha=2.0).edit(h)
    assert torch.allclose(CylindricalSteering(axis, length=2.0).edit(h), add, atol=1e-12)
    # penalty 1 keeps only the axial move L cosθ
    s = CylindricalSteering(axis, diff, length=2.0, penalty=1.0)
    assert torch.allclose(s.edit(h), ActivationAddition(axis, alpha=2.0 * s.cos_theta).edit(h), atol=1e-12)
    # diff parallel to the axis: θ = 0 and no normal part
    s = CylindricalSteering(axis, 5 * axis, length=2.0, penalty=0.0)
    assert s.theta_deg == pytest.approx(0.0, abs=1e-6) and torch.count_nonzero(s.normal) == 0


def test_cylindrical_coordinates_pythagoras() -> None:
    axis, _ = _vectors()
    h = _states()
    z, n, r = cylindrical_coordinates(h, axis)
    assert torch.allclose(z**2 + r**2, (h**2).sum(-1), atol=1e-9)
    assert float((n @ (axis / axis.norm())).abs().max()) < 1e-12


@torch.no_grad()
def test_hook_changes_outputs_and_removal_restores() -> None:
    model = tiny_model("qwen2", dtype=torch.float64)
    ids = tiny_ids(2, 5)
    before = model(ids).logits
    axis, diff = torch.randn(64, dtype=torch.float64), torch.randn(64, dtype=torch.float64)
    with steer(model, "cylindrical", axis=axis, diff=diff, length=3.0, penalty=0.5, layers=[0]):
        steered = model(ids).logits
    assert float((steered - before).abs().max()) > 1e-3
    assert torch.equal(model(ids).logits, before)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"penalty": 1.5}, ValueError, "penalty"),
        ({"penalty": -0.1}, ValueError, "penalty"),
        ({"length": -1.0}, ValueError, "length"),
        ({"length": float("nan")}, ValueError, "length"),
        ({"length": "2"}, TypeError, "length"),
        ({"diff": torch.ones(3)}, ValueError, "shape"),
        ({"diff": torch.zeros(D)}, ValueError, "non-zero"),
    ],
)
def test_bad_arguments(kwargs: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        CylindricalSteering(torch.ones(D), **kwargs)


def test_bad_axis_and_states() -> None:
    with pytest.raises(ValueError, match="axis"):
        CylindricalSteering(torch.tensor([float("inf"), 1.0]))
    with pytest.raises(TypeError, match="axis"):
        CylindricalSteering([1.0, 2.0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\[\.\.\., 16\]"):
        CylindricalSteering(torch.ones(D)).edit(torch.zeros(3, 4))
