"""DC-Merge: energy smoothing, shared orthogonal subspace, block-diagonal aggregation."""

from __future__ import annotations

import pytest
import torch

from orthokit.merge.dc_merge import dc_merge, polar_factor, smooth_spectrum
from orthokit.merge.registry import MERGE_METHODS

from .conformance import check_dc_merge

D64 = torch.float64


def orthogonal_tasks(n: int, T: int, r: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    P, _ = torch.linalg.qr(torch.randn(n, n, dtype=D64))
    Q, _ = torch.linalg.qr(torch.randn(n, n, dtype=D64))
    taus = [
        P[:, t * r : (t + 1) * r] @ torch.diag(torch.rand(r, dtype=D64) + 0.5) @ Q[:, t * r : (t + 1) * r].T
        for t in range(T)
    ]
    return torch.randn(n, n, dtype=D64), taus


def test_smooth_spectrum_preserves_energy_and_caps_ratio() -> None:
    s = torch.tensor([10.0, 4.0, 1.0, 0.5], dtype=D64)
    for mode in ("linear", "avg", "none"):
        out = smooth_spectrum(s, mode)
        assert float(out.sum()) == pytest.approx(float(s.sum()), rel=1e-12)
    lin = smooth_spectrum(s, "linear", rho=5.0)
    assert float(lin[0] / lin[-1]) == pytest.approx(5.0, rel=1e-12)
    assert torch.all(lin[:-1] >= lin[1:])
    flat = torch.tensor([2.0, 1.5, 1.0], dtype=D64)  # ratio 2 < ρ: ρ' = 2
    assert float(smooth_spectrum(flat, "linear")[0] / smooth_spectrum(flat, "linear")[-1]) == pytest.approx(
        2.0
    )
    assert torch.allclose(smooth_spectrum(s, "avg"), torch.full_like(s, 15.5 / 4))
    with pytest.raises(ValueError, match="smoothing"):
        smooth_spectrum(s, "cubic")  # type: ignore[arg-type]


def test_polar_factor_is_nearest_orthonormal() -> None:
    X = torch.randn(9, 4, dtype=D64)
    P = polar_factor(X)
    assert torch.allclose(P.T @ P, torch.eye(4, dtype=D64), atol=1e-12)
    for _ in range(10):
        Qr, _ = torch.linalg.qr(P + 0.05 * torch.randn(9, 4, dtype=D64))
        assert torch.linalg.matrix_norm(X - Qr) >= torch.linalg.matrix_norm(X - P) - 1e-12


def test_one_model_returns_it() -> None:
    W0 = torch.randn(10, 7, dtype=D64)
    W1 = W0 + torch.randn(10, 7, dtype=D64)
    assert (dc_merge(W0, [W1], smoothing="none", keep_fraction=1.0) - W1).abs().max() < 1e-12
    # smoothing changes a single task vector's spectrum but keeps its singular vectors and energy
    out = dc_merge(W0, [W1], smoothing="avg", keep_fraction=1.0) - W0
    s_in = torch.linalg.svdvals(W1 - W0)
    s_out = torch.linalg.svdvals(out)
    assert float(s_out.sum()) == pytest.approx(float(s_in.sum()), rel=1e-10)
    assert torch.allclose(s_out, s_out.mean().expand_as(s_out), atol=1e-10)


def test_orthogonal_tasks_reproduce_task_arithmetic() -> None:
    """Tasks with mutually orthogonal row and column spaces and rank r = n/T: nothing interferes, the shared
    subspace is exact and the default top-k filter keeps each task's r own entries ⇒ Σ τ_t exactly."""
    W0, taus = orthogonal_tasks(8, 4, 2)
    out = dc_merge(W0, [W0 + t for t in taus], smoothing="none", lambda_=0.7)
    assert (out - W0 - 0.7 * sum(taus)).abs().max() < 1e-12


def test_matches_float64_rederivation() -> None:
    """Every smoothing, a partial filter, rank and 1-D tensors vs an independent numpy re-derivation.

    (Replaces a check that only asserted "identical models are not returned": that case is ill-posed — the
    stacked bases are rank-deficient — and dc_merge declares ``idempotent=False`` in the registry.)
    """
    check_dc_merge()


def test_order_invariance_and_dtype() -> None:
    W0 = torch.randn(12, 9)
    Ws = [W0 + torch.randn(12, 9) for _ in range(3)]
    a = dc_merge(W0, Ws, weights=[1.0, 0.5, 2.0])
    b = dc_merge(W0, Ws[::-1], weights=[2.0, 0.5, 1.0])
    assert a.dtype == torch.float32 and a.shape == W0.shape
    assert (a - b).abs().max() < 1e-5


def test_non_2d_is_weighted_mean_of_deltas() -> None:
    b = torch.randn(5)
    Ws = [b + 1.0, b + 3.0]
    assert torch.allclose(
        dc_merge(b, Ws, weights=[1.0, 3.0], lambda_=2.0), b + 2.0 * (1.0 + 9.0) / 4, atol=1e-6
    )


def test_rank_and_keep_fraction_reduce_the_merge() -> None:
    W0 = torch.randn(16, 16, dtype=D64)
    Ws = [W0 + torch.randn(16, 16, dtype=D64) for _ in range(2)]
    full = dc_merge(W0, Ws, smoothing="none", keep_fraction=1.0) - W0
    low = dc_merge(W0, Ws, smoothing="none", keep_fraction=1.0, rank=2) - W0
    assert int(torch.linalg.matrix_rank(low)) <= 4 < int(torch.linalg.matrix_rank(full))


def test_bad_inputs() -> None:
    W0 = torch.randn(4, 4)
    with pytest.raises(ValueError, match="shape mismatch"):
        dc_merge(W0, [torch.randn(4, 5)])
    with pytest.raises(TypeError, match="dtype mismatch"):
        dc_merge(W0, [W0.double()])
    with pytest.raises(ValueError, match="keep_fraction"):
        dc_merge(W0, [W0], keep_fraction=0.0)
    with pytest.raises(ValueError, match="rank"):
        dc_merge(W0, [W0], rank=-1)
    with pytest.raises(ValueError, match="NaN"):
        dc_merge(W0, [W0 * float("nan")])
    assert MERGE_METHODS.capabilities("dc_merge")["order_invariant"] is True
