"""Tests for orthokit.linalg.randomized_svd against the exact truncated SVD (float64)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from orthokit.linalg import randomized_svd

D = torch.float64


def _matrix_with_spectrum(m: int, n: int, sig: torch.Tensor, batch: tuple[int, ...] = ()) -> torch.Tensor:
    k = sig.shape[-1]
    U = torch.linalg.qr(torch.randn(*batch, m, k, dtype=D)).Q
    V = torch.linalg.qr(torch.randn(*batch, n, k, dtype=D)).Q
    return U @ torch.diag_embed(sig.expand(*batch, k)) @ V.mT


def _truncation_error(A: torch.Tensor, rank: int) -> torch.Tensor:
    s = torch.linalg.svdvals(A)
    return s[..., rank:].pow(2).sum(-1).sqrt()


def test_exact_recovery_of_low_rank_matrix() -> None:
    A = _matrix_with_spectrum(120, 80, torch.logspace(0, -3, 6, dtype=D))
    g = torch.Generator().manual_seed(1)
    U, S, Vh = randomized_svd(A, rank=6, generator=g)
    assert U.shape == (120, 6) and S.shape == (6,) and Vh.shape == (6, 80)
    torch.testing.assert_close(S, torch.linalg.svdvals(A)[:6], atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(U @ torch.diag(S) @ Vh, A, atol=1e-12, rtol=0)
    torch.testing.assert_close(U.T @ U, torch.eye(6, dtype=D))
    torch.testing.assert_close(Vh @ Vh.T, torch.eye(6, dtype=D))


@pytest.mark.parametrize("decay", [0.5, 0.8, 0.95])
def test_near_optimal_on_decaying_spectrum(decay: float) -> None:
    sig = decay ** torch.arange(60, dtype=D)
    A = _matrix_with_spectrum(150, 100, sig)
    rank = 10
    best = float(_truncation_error(A, rank))
    g = torch.Generator().manual_seed(0)
    U, S, Vh = randomized_svd(A, rank=rank, oversample=10, power_iters=2, generator=g)
    err = float(torch.linalg.norm(A - U @ torch.diag(S) @ Vh))
    # Eckart–Young: err >= best always; with q=2 HMT predict a small constant factor
    assert best * (1 - 1e-9) <= err <= 1.5 * best
    # singular values close to exact ones
    assert (S - sig[:rank]).abs().max() <= 0.05 * sig[rank - 1]


def test_power_iterations_help_on_flat_spectrum() -> None:
    sig = torch.cat([torch.ones(5, dtype=D) * 10, torch.ones(75, dtype=D)])
    A = _matrix_with_spectrum(200, 120, sig)
    errs = []
    for q in (0, 3):
        g = torch.Generator().manual_seed(3)
        U, S, Vh = randomized_svd(A, rank=5, oversample=2, power_iters=q, generator=g)
        errs.append(float(torch.linalg.norm(A - U @ torch.diag(S) @ Vh)))
    best = float(_truncation_error(A, 5))
    assert errs[1] < errs[0]
    assert errs[1] <= 1.01 * best


def test_batched_and_reproducible() -> None:
    A = _matrix_with_spectrum(40, 30, 0.7 ** torch.arange(20, dtype=D), batch=(2, 3))
    out1 = randomized_svd(A, 4, generator=torch.Generator().manual_seed(5))
    out2 = randomized_svd(A, 4, generator=torch.Generator().manual_seed(5))
    for a, b in zip(out1, out2):
        assert torch.equal(a, b)
    U, S, Vh = out1
    assert U.shape == (2, 3, 40, 4) and S.shape == (2, 3, 4) and Vh.shape == (2, 3, 4, 30)
    for i in range(2):
        for j in range(3):
            err = torch.linalg.norm(A[i, j] - U[i, j] @ torch.diag(S[i, j]) @ Vh[i, j])
            assert err <= 1.2 * _truncation_error(A[i, j], 4)


def test_wide_matrix_and_full_rank() -> None:
    A = torch.randn(10, 50, dtype=D)
    U, S, Vh = randomized_svd(A, rank=10, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(U @ torch.diag(S) @ Vh, A, atol=1e-10, rtol=0)


def test_low_precision_dtype() -> None:
    A = _matrix_with_spectrum(64, 48, 0.5 ** torch.arange(10, dtype=D)).to(torch.bfloat16)
    U, S, Vh = randomized_svd(A, rank=3, generator=torch.Generator().manual_seed(0))
    assert U.dtype == S.dtype == Vh.dtype == torch.bfloat16
    ref = torch.linalg.svdvals(A.double())[:3]
    assert (S.double() - ref).abs().max() < 0.02
    assert torch.isfinite(U).all()


def test_errors() -> None:
    A = torch.randn(8, 6)
    with pytest.raises(ValueError, match="rank"):
        randomized_svd(A, 7)
    with pytest.raises(ValueError, match="rank"):
        randomized_svd(A, 0)
    with pytest.raises(TypeError, match="rank"):
        randomized_svd(A, 2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="power_iters"):
        randomized_svd(A, 2, power_iters=-1)
    with pytest.raises(TypeError, match="generator"):
        randomized_svd(A, 2, generator=0)  # type: ignore[arg-type]
    B = A.clone()
    B[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        randomized_svd(B, 2)
    with pytest.raises(ValueError, match="at least 2 dims"):
        randomized_svd(torch.randn(5), 1)


def test_gradcheck_fixed_sketch() -> None:
    A = _matrix_with_spectrum(8, 6, torch.tensor([5.0, 3.0, 2.0, 1.0, 0.5, 0.2], dtype=D)).requires_grad_(
        True
    )

    def f(a: torch.Tensor) -> torch.Tensor:
        U, S, Vh = randomized_svd(a, 2, oversample=4, generator=torch.Generator().manual_seed(0))
        return U @ torch.diag(S) @ Vh  # sign-invariant output

    assert torch.autograd.gradcheck(f, (A,))


@given(
    seed=st.integers(0, 2**31 - 1),
    m=st.integers(2, 40),
    n=st.integers(2, 40),
    data=st.data(),
)
def test_property_bounds(seed: int, m: int, n: int, data: st.DataObject) -> None:
    torch.manual_seed(seed)
    rank = data.draw(st.integers(1, min(m, n)))
    A = torch.randn(m, n, dtype=D)
    U, S, Vh = randomized_svd(A, rank, power_iters=3, generator=torch.Generator().manual_seed(0))
    assert (S[1:] <= S[:-1] + 1e-12).all()
    exact = torch.linalg.svdvals(A)
    # Ritz values never exceed the true singular values (interlacing)
    assert (S <= exact[:rank] * (1 + 1e-10) + 1e-12).all()
    err = torch.linalg.norm(A - U @ torch.diag(S) @ Vh)
    assert err >= _truncation_error(A, rank) * (1 - 1e-9) - 1e-12
    assert torch.isfinite(U).all() and torch.isfinite(Vh).all()
