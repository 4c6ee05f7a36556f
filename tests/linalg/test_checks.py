"""check_finite: the fast (finite-sum) path never hides a NaN/inf, and handles overflow and float8."""

from __future__ import annotations

import pytest
import torch

from orthokit.linalg._checks import check_finite


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_single_bad_entry_is_found(dtype, bad):
    x = torch.randn(37, 11).to(dtype)
    x[5, 7] = bad
    with pytest.raises(ValueError, match="1 non-finite"):
        check_finite(x, "x")


def test_opposite_infinities_and_overflowing_finite_values():
    with pytest.raises(ValueError, match="2 non-finite"):
        check_finite(torch.tensor([float("inf"), -float("inf"), 1.0]))
    # the sum overflows to inf, but every entry is finite: the exact re-check must accept it
    check_finite(torch.full((8,), 3.0e38))
    check_finite(torch.full((8,), 6.0e4, dtype=torch.float16))


def test_float8_and_empty():
    x = torch.randn(16).to(torch.float8_e4m3fn)
    check_finite(x)
    x[3] = float("nan")
    with pytest.raises(ValueError):
        check_finite(x)
    check_finite(torch.empty(0, 3))
