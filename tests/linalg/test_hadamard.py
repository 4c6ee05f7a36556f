"""Tests for orthokit.linalg.hadamard_transform against the Kronecker-built Sylvester matrix (float64)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from orthokit.linalg import hadamard_transform
from orthokit.linalg.hadamard import hadamard_matrix

D = torch.float64


def _sylvester_reference(n: int) -> torch.Tensor:
    H = torch.ones(1, 1, dtype=D)
    H2 = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=D)
    for _ in range(int(math.log2(n))):
        H = torch.kron(H2, H)
    return H / math.sqrt(n)


def _walsh_entry(i: int, j: int) -> int:
    """Closed form of the Sylvester matrix: H[i, j] = (-1)^{popcount(i & j)}."""
    return -1 if bin(i & j).count("1") % 2 else 1


@pytest.mark.parametrize("method", ["fwht", "dense", "kron", "auto"])
@pytest.mark.parametrize("n", [1, 2, 4, 16, 128, 2048])
def test_matches_sylvester_matrix(n: int, method: str) -> None:
    x = torch.randn(3, n, dtype=D)
    ref = x @ _sylvester_reference(n)
    torch.testing.assert_close(hadamard_transform(x, method=method), ref)


def test_closed_form_entries_and_matrix_helper() -> None:
    H = hadamard_matrix(8, dtype=D) * math.sqrt(8)
    for i in range(8):
        for j in range(8):
            assert H[i, j] == _walsh_entry(i, j)
    torch.testing.assert_close(
        hadamard_transform(torch.eye(16, dtype=D), method="fwht"), _sylvester_reference(16)
    )
    with pytest.raises(ValueError, match="order 172"):  # 12 is Paley I (tests/linalg/test_hadamard_orders.py)
        hadamard_matrix(172)


@pytest.mark.parametrize("method", ["fwht", "dense", "kron"])
def test_involutive_and_norm_preserving(method: str) -> None:
    x = torch.randn(5, 256, dtype=D)
    y = hadamard_transform(x, method=method)
    torch.testing.assert_close(hadamard_transform(y, method=method), x)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))


def test_dim_argument_and_batching() -> None:
    x = torch.randn(2, 8, 3, 5, dtype=D)
    y = hadamard_transform(x, dim=1)
    ref = torch.einsum("bicd,ij->bjcd", x, _sylvester_reference(8))
    torch.testing.assert_close(y, ref)
    torch.testing.assert_close(hadamard_transform(x, dim=-3, method="fwht"), ref)
    assert y.shape == x.shape


def test_dtypes() -> None:
    x = torch.randn(4, 64)
    for dt in (torch.float32, torch.bfloat16, torch.float16):
        y = hadamard_transform(x.to(dt))
        assert y.dtype == dt
        ref = x.to(dt).double() @ _sylvester_reference(64)
        assert (y.double() - ref).abs().max() < (1e-5 if dt == torch.float32 else 0.05)


def test_errors() -> None:
    with pytest.raises(ValueError, match="size 172 along dim -1: no Hadamard construction.*168 and 176"):
        hadamard_transform(torch.randn(3, 172))
    with pytest.raises(ValueError, match="positive size along dim -1"):
        hadamard_transform(torch.randn(3, 0))
    with pytest.raises(TypeError, match="transpose must be a bool"):
        hadamard_transform(torch.randn(3, 4), transpose=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fast_hadamard_transform.*needs a CUDA tensor"):
        hadamard_transform(torch.randn(3, 4), method="fast_hadamard_transform")
    with pytest.raises(ValueError, match="out of range"):
        hadamard_transform(torch.randn(3, 4), dim=2)
    with pytest.raises(ValueError, match="method"):
        hadamard_transform(torch.randn(4), method="fast")
    with pytest.raises(ValueError, match="non-finite"):
        hadamard_transform(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="floating"):
        hadamard_transform(torch.ones(4, dtype=torch.int64))
    with pytest.raises(TypeError):
        hadamard_transform([1.0, 2.0])  # type: ignore[arg-type]


def test_fast_finite_check_paths() -> None:
    from orthokit.linalg._checks import check_finite

    check_finite(torch.full((4,), 3e38), "x")  # finite, sum overflows: exact check passes
    for bad in (float("inf"), float("-inf"), float("nan")):
        x = torch.randn(3, 8)
        x[1, 2] = bad
        with pytest.raises(ValueError, match="1 non-finite"):
            hadamard_transform(x)
    y = torch.full((2, 4), 3e38)
    y[0, 0] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        check_finite(y, "y")


def test_input_not_modified_and_gradcheck() -> None:
    x = torch.randn(2, 8, dtype=D)
    x0 = x.clone()
    hadamard_transform(x, method="fwht")
    assert torch.equal(x, x0)
    xg = x.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: hadamard_transform(t, method="fwht"), (xg,))
    assert torch.autograd.gradcheck(lambda t: hadamard_transform(t, method="dense"), (xg,))
    assert torch.autograd.gradcheck(lambda t: hadamard_transform(t, method="kron"), (xg,))


@given(seed=st.integers(0, 2**31 - 1), k=st.integers(0, 10), b=st.integers(1, 4))
def test_property_fwht_equals_dense(seed: int, k: int, b: int) -> None:
    torch.manual_seed(seed)
    x = torch.randn(b, 2**k, dtype=D)
    a = hadamard_transform(x, method="fwht")
    d = hadamard_transform(x, method="dense")
    torch.testing.assert_close(a, d)
    torch.testing.assert_close(hadamard_transform(x, method="kron"), d)
    torch.testing.assert_close(a.norm(), x.norm())
