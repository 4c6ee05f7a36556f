"""Tests for orthokit.linalg.householder: product of reflections (WY form) and matrix-free apply."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from orthokit.linalg import householder_product
from orthokit.linalg.householder import householder_apply

D = torch.float64


def _reference(V: torch.Tensor) -> torch.Tensor:
    """Explicit product of the r reflections in float64."""
    n = V.shape[-1]
    H = torch.eye(n, dtype=D)
    for v in V.double():
        H = H @ (torch.eye(n, dtype=D) - 2 * torch.outer(v, v) / (v @ v))
    return H


@pytest.mark.parametrize("r,n", [(1, 5), (3, 8), (8, 8), (12, 6), (30, 64)])
def test_matches_explicit_product(r: int, n: int) -> None:
    V = torch.randn(r, n, dtype=D) * torch.rand(r, 1, dtype=D).add(0.1)  # arbitrary row scales
    H = householder_product(V)
    torch.testing.assert_close(H, _reference(V))
    torch.testing.assert_close(H.T @ H, torch.eye(n, dtype=D))
    torch.testing.assert_close(torch.linalg.det(H), torch.tensor((-1.0) ** r, dtype=D))


def test_single_reflection_properties() -> None:
    v = torch.randn(1, 6, dtype=D)
    H = householder_product(v)
    torch.testing.assert_close(H, H.T)
    torch.testing.assert_close(H @ H, torch.eye(6, dtype=D))
    torch.testing.assert_close(H @ v[0], -v[0])  # reflects v, fixes v⟂
    w = torch.randn(6, dtype=D)
    w = w - (w @ v[0]) / (v[0] @ v[0]) * v[0]
    torch.testing.assert_close(H @ w, w)


def test_hra_paired_init_is_identity() -> None:
    # HRA initializes reflections in identical pairs so that H_1 H_2 ... = I
    u = torch.randn(4, 16, dtype=D)
    V = u.repeat_interleave(2, dim=0)
    torch.testing.assert_close(householder_product(V), torch.eye(16, dtype=D))


def test_apply_matches_matrix_and_transpose() -> None:
    V = torch.randn(5, 12, dtype=D)
    H = householder_product(V)
    X = torch.randn(2, 7, 12, dtype=D)
    torch.testing.assert_close(householder_apply(V, X), X @ H)
    torch.testing.assert_close(householder_apply(V, X, transpose=True), X @ H.T)
    torch.testing.assert_close(householder_apply(V, householder_apply(V, X), transpose=True), X)
    x1 = torch.randn(12, dtype=D)
    torch.testing.assert_close(householder_apply(V, x1), x1 @ H)


def test_batched_v() -> None:
    V = torch.randn(3, 4, 10, dtype=D)
    H = householder_product(V)
    assert H.shape == (3, 10, 10)
    for i in range(3):
        torch.testing.assert_close(H[i], _reference(V[i]))
    X = torch.randn(3, 5, 10, dtype=D)
    torch.testing.assert_close(householder_apply(V, X), X @ H)
    with pytest.raises(ValueError, match=r"\[\.\.\., m, n\]"):
        householder_apply(V, torch.randn(10, dtype=D))


def test_dtypes() -> None:
    V = torch.randn(6, 32)
    Hb = householder_product(V.to(torch.bfloat16))
    assert Hb.dtype == torch.bfloat16
    assert (Hb.double() - _reference(V.to(torch.bfloat16))).abs().max() < 0.02
    X = torch.randn(4, 32).to(torch.bfloat16)
    out = householder_apply(V, X)
    assert out.dtype == torch.bfloat16
    assert (out.double() - X.double() @ _reference(V)).abs().max() < 0.05


def test_errors() -> None:
    V = torch.randn(3, 5, dtype=D)
    V[1] = 0
    with pytest.raises(ValueError, match=r"zero Householder vector.*\[1\]"):
        householder_product(V)
    bad = torch.randn(2, 4)
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        householder_product(bad)
    with pytest.raises(ValueError, match="at least 2 dims"):
        householder_product(torch.randn(4))
    with pytest.raises(ValueError, match="last dimension"):
        householder_apply(torch.randn(2, 4), torch.randn(3, 5))
    with pytest.raises(ValueError, match="floating"):
        householder_apply(torch.randn(2, 4), torch.ones(3, 4, dtype=torch.int64))
    Xbad = torch.randn(3, 4)
    Xbad[2, 3] = float("nan")
    with pytest.raises(ValueError, match="X contains 1 non-finite"):
        householder_apply(torch.randn(2, 4), Xbad)


def test_gradcheck() -> None:
    V = torch.randn(3, 5, dtype=D, requires_grad=True)
    X = torch.randn(2, 5, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(householder_product, (V,))
    assert torch.autograd.gradcheck(lambda v, x: householder_apply(v, x, transpose=True), (V, X))


@given(
    seed=st.integers(0, 2**31 - 1),
    r=st.integers(1, 10),
    n=st.integers(1, 12),
    tiny=st.booleans(),
    dtype=st.sampled_from([torch.float32, D]),
)
def test_property_orthogonal(seed: int, r: int, n: int, tiny: bool, dtype: torch.dtype) -> None:
    torch.manual_seed(seed)
    V = torch.randn(r, n, dtype=dtype) * (1e-30 if tiny else 1.0)  # scale-invariant, no underflow
    if bool((V.norm(dim=-1) == 0).any()):
        return
    H = householder_product(V)
    tol = 1e-12 if dtype == D else 1e-5
    assert torch.isfinite(H).all()
    assert (H.mT @ H - torch.eye(n, dtype=dtype)).abs().max() < tol
    assert (
        H.double() - _reference(V.double() / V.double().norm(dim=-1, keepdim=True))
    ).abs().max() < tol * 10
