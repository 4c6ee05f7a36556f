"""Batch baselines against float64 numpy re-derivations: MSP (Zhai et al.) and HT + Procrustes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from orthokit.dictionary.batch_msp import BatchMSP
from orthokit.dictionary.batch_procrustes import BatchProcrustesDL
from orthokit.dictionary.metrics import atom_recovery, planted_data


def _np_polar(G: np.ndarray) -> np.ndarray:
    U, _, Vt = np.linalg.svd(G)
    return U @ Vt


def test_msp_step_matches_numpy_and_objective_never_decreases() -> None:
    Y, D0 = planted_data(8, 4000, theta=0.2, seed=0)
    msp = BatchMSP(8, seed=1)
    A = msp.dictionary.numpy()
    msp.step(Y)
    Yn = Y.numpy()
    ref = _np_polar(Yn @ ((A.T @ Yn) ** 3).T)  # Zhai et al. Alg. 1 in the D = Aᵀ convention (scale-free)
    np.testing.assert_allclose(msp.dictionary.numpy(), ref, atol=1e-10)
    msp.fit(Y, n_iter=40)
    h = msp.objective_history
    assert all(b >= a - 1e-9 * abs(a) for a, b in zip(h, h[1:])), "MSP must increase the convex objective"
    assert atom_recovery(msp.dictionary, D0)["max_angle_deg"] < 3


def test_procrustes_step_matches_numpy_and_error_never_increases() -> None:
    Y, _ = planted_data(8, 800, theta=0.3, seed=1)
    dl = BatchProcrustesDL(8, sparsity=2, seed=2)
    D = dl.dictionary.numpy()
    dl.step(Y)
    C = D.T @ Y.numpy()
    X = np.where(np.abs(C) >= -np.sort(-np.abs(C), axis=0)[1:2], C, 0.0)  # top-2 per column
    np.testing.assert_allclose(dl.dictionary.numpy(), _np_polar(Y.numpy() @ X.T), atol=1e-10)
    dl.fit(Y, n_iter=30)
    e = dl.error_history
    assert all(b <= a + 1e-9 * a for a, b in zip(e, e[1:]))


def test_procrustes_pca_init_and_options() -> None:
    Y = torch.randn(6, 300, dtype=torch.float64) * torch.arange(1, 7, dtype=torch.float64)[:, None]
    dl = BatchProcrustesDL(6, threshold=0.5, init="pca").fit(Y, n_iter=1)
    assert dl.n_iter_ == 1 and dl.threshold == 0.5
    with pytest.raises(ValueError, match="init"):
        BatchProcrustesDL(6, init="random")
    with pytest.raises(ValueError, match="exactly one"):
        BatchProcrustesDL(6, sparsity=2, threshold=0.1)
    with pytest.raises(ValueError, match="n_iter"):
        dl.fit(Y, n_iter=0)
    with pytest.raises(ValueError, match="power"):
        BatchMSP(6, power=1.0)


@pytest.mark.parametrize(
    "make",
    [
        lambda: BatchMSP(16, seed=0),
        lambda: BatchProcrustesDL(16, sparsity=3, seed=0),
        lambda: BatchProcrustesDL(16, sparsity=3, init="pca"),
    ],
)
def test_fit_is_scale_safe(make) -> None:  # type: ignore[no-untyped-def]
    """fit at |Y| ~ 1e-100 / 1e-300 / 1e200 gives the scale-1 dictionary (a raw objective underflows to 0 or
    overflows to inf there: fit stopped after 1 iteration / ran all n_iter; PCA's eigh(YYᵀ) raised)."""
    Y, D0 = planted_data(16, 1500, theta=0.2, seed=3)
    ref = make().fit(Y, n_iter=60)
    hist_ref = getattr(ref, "objective_history", None) or ref.error_history
    assert 3 < ref.n_iter_ < 60, "the reference run must converge by the tolerance"
    for s in (1e-100, 1e-300, 1e200):
        m = make().fit(Y * s, n_iter=60)
        hist = getattr(m, "objective_history", None) or m.error_history
        assert all(np.isfinite(hist)) and min(hist) > 0, (s, hist[:3])
        assert m.n_iter_ == ref.n_iter_, (s, m.n_iter_, ref.n_iter_)
        torch.testing.assert_close(m.dictionary, ref.dictionary, atol=1e-10, rtol=0)
        # the recorded history is that of Y·2^{-e}: scale-free, the scale-1 history up to one constant factor
        np.testing.assert_allclose(np.array(hist) / hist[0], np.array(hist_ref) / hist_ref[0], rtol=1e-9)
