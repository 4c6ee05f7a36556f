"""ActivationAddition: closed form in float64, registry entry, argument errors."""

from __future__ import annotations

import pytest
import torch

from orthokit.steer.addition import ActivationAddition
from orthokit.steer.registry import STEERERS


def test_closed_form_float64() -> None:
    g = torch.Generator().manual_seed(0)
    r = torch.randn(16, generator=g, dtype=torch.float64)
    h = torch.randn(3, 5, 16, generator=g, dtype=torch.float64)
    out = ActivationAddition(r * 7.0, alpha=-1.5).edit(h)
    unit = r / torch.sqrt((r * r).sum())
    torch.testing.assert_close(out, h - 1.5 * unit, rtol=0, atol=1e-15)
    # the component along r̂ moves by exactly α, the orthogonal part is untouched
    torch.testing.assert_close(
        (out - h) @ unit, torch.full((3, 5), -1.5, dtype=torch.float64), rtol=0, atol=1e-14
    )


def test_dtype_and_identity() -> None:
    r = torch.randn(8)
    h = torch.randn(4, 8, dtype=torch.bfloat16)
    assert ActivationAddition(r, 2.0).edit(h).dtype == torch.bfloat16
    assert torch.equal(ActivationAddition(r, 0.0).edit(h), h)


def test_registry_entry() -> None:
    assert STEERERS.get("addition") is ActivationAddition
    assert STEERERS.get("actadd") is ActivationAddition
    caps = STEERERS.capabilities("addition")
    assert caps["norm_preserving"] is False and caps["kind"] == "additive" and caps["needs_plane"] is False
    assert ActivationAddition.name == "addition" and ActivationAddition.norm_preserving is False


def test_errors() -> None:
    with pytest.raises(TypeError, match="alpha must be a real number"):
        ActivationAddition(torch.ones(3), alpha="2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="alpha must be finite"):
        ActivationAddition(torch.ones(3), alpha=float("nan"))
    with pytest.raises(ValueError, match="zero vector"):
        ActivationAddition(torch.zeros(3))
    s = ActivationAddition(torch.ones(3))
    with pytest.raises(ValueError, match=r"addition: h must have shape \[\.\.\., 3\]"):
        s.edit(torch.ones(2, 4))
    with pytest.raises(TypeError, match="floating point"):
        s.edit(torch.ones(2, 3, dtype=torch.int64))
