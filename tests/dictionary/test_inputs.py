"""Extreme magnitudes and bad arguments: scale-safe results where the math is scale-invariant, otherwise a one-line
error naming the argument, and never a state change on a failed step."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from orthokit.dictionary._common import haar_orthogonal, pow2_scale
from orthokit.dictionary.batch_msp import BatchMSP
from orthokit.dictionary.batch_procrustes import BatchProcrustesDL
from orthokit.dictionary.metrics import atom_recovery, planted_data
from orthokit.dictionary.online_fw import OnlineFrankWolfeODL
from orthokit.dictionary.sparse import reconstruct, sparse_code

D64 = torch.float64
Y, D0 = planted_data(8, 300, theta=0.3, seed=0)


def _state(learner: Any) -> dict[str, Any]:
    return {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in vars(learner).items()}


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(
        torch.equal(v, b[k]) if isinstance(v, torch.Tensor) else v == b[k] for k, v in a.items()
    )


def test_pow2_scale_is_exact() -> None:
    for s in (1.0, 1e200, 1e-200, 1e-310):
        Ys, e = pow2_scale(Y * s)
        assert 0.5 <= float(Ys.abs().max()) < 1.0
        assert torch.equal(Ys * 2.0**e, Y * s) if abs(e) < 1000 else bool(torch.isfinite(Ys).all())
    assert pow2_scale(torch.zeros(2, 2, dtype=D64))[1] == 0


@pytest.mark.parametrize("scale", [1e200, 1e-200, 1e-310])
def test_relative_error_is_scale_free(scale: float) -> None:
    odl = OnlineFrankWolfeODL(8, seed=0).fit(Y)
    ref = odl.relative_error(Y, sparsity=3)
    assert 0.1 < ref < 1
    assert math.isclose(odl.relative_error(Y * scale, sparsity=3), ref, rel_tol=1e-12)


@pytest.mark.parametrize("cls", [BatchProcrustesDL, BatchMSP])
@pytest.mark.parametrize("scale", [1e200, 1e-200])
def test_scale_invariant_batch_steps_at_extreme_magnitudes(cls: type, scale: float) -> None:
    """Both batch steps are polar factors of a positively homogeneous matrix: the same dictionary at any scale."""
    a, b = cls(8, seed=1), cls(8, seed=1)
    for _ in range(3):
        a.step(Y)
        b.step(Y * scale)
    torch.testing.assert_close(b.dictionary, a.dictionary, atol=1e-12, rtol=0)


def test_procrustes_step_is_bit_identical_on_ordinary_data() -> None:
    """The exact power-of-two rescaling leaves ordinary data's result unchanged to the last bit."""
    dl = BatchProcrustesDL(8, sparsity=2, seed=3)
    D = dl.dictionary
    C = D.T @ Y
    X = torch.where(C.abs() >= C.abs().topk(2, dim=0).values[1:2], C, torch.zeros_like(C))
    U, _, Vh = torch.linalg.svd(Y @ X.T)
    torch.testing.assert_close(dl.step(Y).dictionary, U @ Vh, atol=1e-12, rtol=0)


@pytest.mark.parametrize("cls", [BatchProcrustesDL, BatchMSP, OnlineFrankWolfeODL])
def test_overflowing_batch_names_y_and_leaves_state_untouched(cls: type) -> None:
    learner = cls(8, seed=2)
    feed = learner.partial_fit if cls is OnlineFrankWolfeODL else learner.step
    feed(Y)
    before = _state(learner)
    huge = torch.full((8, 5), 1.7e308, dtype=D64)  # DᵀY overflows float64
    if cls is BatchMSP:  # MSP rescales before its first product: any finite Y is fine
        D = feed(huge).dictionary
        assert float((D.T @ D - torch.eye(8, dtype=D64)).abs().max()) < 1e-12
        learner = cls(8, seed=2).step(Y)
        before = _state(learner)
    else:
        with pytest.raises(ValueError, match="^Y is too large"):
            feed(huge)
        assert _same(before, _state(learner))
    if cls is OnlineFrankWolfeODL:  # the ℓ3 gradient overflows long before: not scale-invariant, so rejected
        with pytest.raises(ValueError, match="^Y is too large"):
            feed(Y * 1e150)
        assert _same(before, _state(learner))
    with pytest.raises(ValueError, match="^Y is too large"):
        learner.transform(huge, sparsity=2)


def test_all_zero_batch_keeps_the_batch_dictionaries() -> None:
    for cls in (BatchProcrustesDL, BatchMSP):
        learner = cls(8, seed=4).step(Y)
        D = learner.dictionary
        assert torch.equal(learner.step(torch.zeros(8, 5, dtype=D64)).dictionary, D)


@pytest.mark.parametrize(
    ("call", "exc", "msg"),
    [
        (lambda: OnlineFrankWolfeODL(8, seed="a"), TypeError, "^seed"),
        (lambda: OnlineFrankWolfeODL(8, seed=1.5), TypeError, "^seed"),
        (lambda: OnlineFrankWolfeODL(8).fit(Y, seed="a"), TypeError, "^seed"),
        (lambda: BatchMSP(8, seed="a"), TypeError, "^seed"),
        (lambda: BatchMSP(8).fit(Y, tol=float("nan")), ValueError, "^tol"),
        (lambda: BatchProcrustesDL(8).fit(Y, tol=-1.0), ValueError, "^tol"),
        (lambda: planted_data(4, 10, seed=None), TypeError, "^seed"),
        (lambda: planted_data(4, 10, theta="a"), TypeError, "^theta"),
        (lambda: haar_orthogonal(4, seed="0"), TypeError, "^seed"),
        (lambda: reconstruct([[1.0]], torch.eye(1)), TypeError, "^D must be a torch.Tensor"),
        (lambda: reconstruct(torch.eye(2), [[1.0]]), TypeError, "^X must be a torch.Tensor"),
        (lambda: reconstruct(torch.eye(2, dtype=torch.int64), torch.eye(2)), TypeError, "^D .*int64"),
        (lambda: reconstruct(torch.eye(2), torch.full((2, 1), float("nan"))), ValueError, "^X contains NaN"),
        (lambda: atom_recovery([[1.0]], D0), TypeError, "^D_hat must be a torch.Tensor"),
        (lambda: atom_recovery(D0, "D0"), TypeError, "^D_true must be a torch.Tensor"),
        (lambda: atom_recovery(torch.full((8, 8), float("nan")), D0), ValueError, "^D_hat contains NaN"),
        (lambda: atom_recovery(D0, D0.to(torch.complex128)), TypeError, "^D_true .*complex128"),
        (lambda: sparse_code(torch.eye(8, dtype=torch.int64), Y, sparsity=2), TypeError, "^D .*torch.int64"),
        (lambda: sparse_code(torch.full((8, 8), float("nan")), Y, sparsity=2), ValueError, "^D contains NaN"),
        (lambda: sparse_code(D0, Y.tolist(), sparsity=2), TypeError, "^Y must be a torch.Tensor"),
        (lambda: sparse_code(D0, Y * float("inf"), sparsity=2), ValueError, "^Y contains NaN"),
    ],
)
def test_bad_arguments_are_named(call: Any, exc: type, msg: str) -> None:
    with pytest.raises(exc, match=msg):
        call()


def test_reconstruct_promotes_mixed_dtypes() -> None:
    D = haar_orthogonal(4, seed=5, dtype=torch.float32)
    X = torch.randn(4, 3, dtype=D64)
    R = reconstruct(D, X)
    assert R.dtype == D64
    torch.testing.assert_close(R, D.to(D64) @ X, atol=0, rtol=0)
