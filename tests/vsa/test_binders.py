"""Conformance of every registered binder (read from BINDERS) plus per-binder properties."""

from __future__ import annotations

import math

import pytest
import torch

from orthokit.vsa.binding import Binder, ensure_registered, make_binder
from orthokit.vsa.gaussian import GaussianBinder
from orthokit.vsa.hadamard import HadamardBinder
from orthokit.vsa.registry import BINDERS

from . import conformance as C

ensure_registered()
NAMES = BINDERS.names()


def test_registry_lists_the_three_binders() -> None:
    assert {"haar", "hadamard", "gaussian"} <= set(NAMES)
    assert BINDERS.names(orthogonal=True) == ["haar", "hadamard"]
    assert BINDERS.capabilities("hadamard")["cost"] == "d log d"


@pytest.mark.parametrize("name", NAMES)
def test_conformance(name: str) -> None:
    b = BINDERS.get(name)(C.D, seed=5)
    assert b.orthogonal == BINDERS.capabilities(name)["orthogonal"]
    C.check_binder(b, BINDERS.capabilities(name)["orthogonal"])


@pytest.mark.parametrize("name", BINDERS.names(orthogonal=True))
def test_orthogonal_matrix_float64_reference(name: str) -> None:
    m = BINDERS.get(name)(C.D, seed=1).matrix("r")
    assert float((m.T @ m - torch.eye(C.D, dtype=torch.float64)).abs().max()) < 1e-12


@pytest.mark.parametrize("name", NAMES)
def test_float32_and_half_inputs(name: str) -> None:
    b = BINDERS.get(name)(C.D, seed=2)
    x64 = C._x(d=C.D)
    y32 = b.bind("r", x64.float())
    assert y32.dtype == torch.float32 and torch.allclose(y32.double(), b.bind("r", x64), atol=1e-4)
    assert b.bind("r", x64.bfloat16()).dtype == torch.bfloat16


def test_gaussian_does_not_preserve_norms_and_drifts_with_depth() -> None:
    """The paper's motivation, measured: Gaussian MBAT norms move per bind and wander over nesting depth."""
    b = GaussianBinder(256, seed=0)
    x = C._x(n=200, d=256)
    r1 = b.bind("a", x).norm(dim=-1) / x.norm(dim=-1)
    assert float((r1 - 1).abs().max()) > 0.05  # single bind: off by O(1/√d) per vector, some far more
    y = x
    for depth in range(20):
        y = b.bind(f"k{depth}", y)
    r20 = y.norm(dim=-1) / x.norm(dim=-1)
    assert float(r20.log().abs().mean()) > 2 * float(r1.log().abs().mean())
    with pytest.raises(AssertionError, match="changes norms"):
        C.check_norm_preservation(b)
    with pytest.raises(AssertionError, match="not the identity"):
        C.check_exact_inverse(b)  # transpose is only an approximate inverse


def test_gaussian_exact_inverse_option() -> None:
    b = GaussianBinder(C.D, seed=0, unbind="inverse")
    x = C._x()
    assert torch.allclose(b.unbind("r", b.bind("r", x)), x, atol=1e-9)
    assert Binder.from_state_dict(b.state_dict()).unbind_rule == "inverse"


def test_hadamard_k_and_cost_scaling() -> None:
    b1, b3 = HadamardBinder(C.D, seed=0, k=1), HadamardBinder(C.D, seed=0, k=3)
    C.check_binder(b1, True)
    # k = 1 maps basis vectors to ±1/√d vectors (flat); k = 3 does not keep that structure
    assert torch.allclose(
        b1.matrix("r").abs(), torch.full((C.D, C.D), 1 / math.sqrt(C.D), dtype=torch.float64)
    )
    assert not torch.allclose(
        b3.matrix("r").abs(), torch.full((C.D, C.D), 1 / math.sqrt(C.D), dtype=torch.float64)
    )
    assert b3.signs("r").shape == (3, C.D) and set(b3.signs("r").unique().tolist()) == {-1, 1}


def test_bad_inputs() -> None:
    b = BINDERS.get("haar")(8)
    with pytest.raises(ValueError, match="power of two"):
        HadamardBinder(48)
    with pytest.raises(ValueError, match="k must"):
        HadamardBinder(16, k=0)
    with pytest.raises(ValueError, match="d must"):
        BINDERS.get("haar")(0)
    with pytest.raises(ValueError, match="last dimension d=8"):
        b.bind("r", torch.zeros(3, 7))
    with pytest.raises(ValueError, match="NaN or inf"):
        b.bind("r", torch.full((8,), float("nan")))
    with pytest.raises(ValueError, match="floating"):
        b.bind("r", torch.zeros(8, dtype=torch.int64))
    with pytest.raises(TypeError, match="role"):
        b.bind(1.5, torch.zeros(8))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="role"):
        b.bind(True, torch.zeros(8))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="power"):
        b.bind("r", torch.zeros(8), power=-1)
    with pytest.raises(ValueError, match="unbind must"):
        GaussianBinder(8, unbind="pinv")
    with pytest.raises(ValueError, match="unknown binding matrix family"):
        make_binder("householder", 8)
    with pytest.raises(ValueError, match="d=16 was requested"):
        make_binder(b, 16)
    with pytest.raises(ValueError, match="'name'"):
        Binder.from_state_dict({"d": 8})
