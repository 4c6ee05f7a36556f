"""Alignment maps against independent references: float64 SVD Procrustes/Umeyama written here, numpy lstsq,
the ridge normal equations, scipy SLSQP for λ-orthogonality, and the λ → 0 / λ → ∞ limits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from orthokit.align.affine import fit_affine
from orthokit.align.api import fit
from orthokit.align.lambda_orthogonal import fit_lambda_orthogonal, lambda_orthogonality_gap
from orthokit.align.orthogonal import fit_orthogonal
from orthokit.align.orthogonal_scaled import fit_orthogonal_scaled

F64 = torch.float64


def _data(n: int, ds: int, dt: int, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, ds, generator=g, dtype=F64) * torch.linspace(0.5, 2, ds, dtype=F64) + 1.5
    Y = X @ torch.randn(ds, dt, generator=g, dtype=F64) + torch.randn(n, dt, generator=g, dtype=F64) - 0.7
    return X, Y


def _procrustes_reference(X: np.ndarray, Y: np.ndarray, center: bool) -> tuple[np.ndarray, np.ndarray]:
    """Schönemann's solution from numpy's SVD: (Q, bias)."""
    mx = X.mean(0) if center else np.zeros(X.shape[1])
    my = Y.mean(0) if center else np.zeros(Y.shape[1])
    U, _, Vt = np.linalg.svd((X - mx).T @ (Y - my), full_matrices=False)
    Q = U @ Vt
    return Q, my - mx @ Q


@pytest.mark.parametrize("shape", [(6, 6), (4, 7)])
@pytest.mark.parametrize("center", [True, False])
def test_orthogonal_matches_numpy_svd_reference(shape: tuple[int, int], center: bool) -> None:
    X, Y = _data(80, *shape, seed=0)
    a = fit_orthogonal(X, Y, center=center)
    Q, b = _procrustes_reference(X.numpy(), Y.numpy(), center)
    np.testing.assert_allclose(a.W.numpy(), Q, atol=1e-10)
    np.testing.assert_allclose(a.bias.numpy(), b, atol=1e-10)
    np.testing.assert_allclose(a.transform(X).numpy(), X.numpy() @ Q + b, atol=1e-10)
    assert a.is_isometry


def test_orthogonal_rotation_only_has_det_plus_one_and_is_optimal_among_rotations() -> None:
    g = torch.Generator().manual_seed(3)
    X = torch.randn(50, 3, generator=g, dtype=F64)
    R = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=F64))  # a reflection: best rotation differs
    Y = X @ R + 0.01 * torch.randn(50, 3, generator=g, dtype=F64)
    a = fit_orthogonal(X, Y, rotation_only=True)
    assert float(torch.linalg.det(a.W)) == pytest.approx(1.0, abs=1e-12)
    err = a.residuals(X, Y)["relative"]
    for _ in range(50):  # no random rotation does better
        Qr = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=F64))[0]
        Qr = Qr if torch.linalg.det(Qr) > 0 else -Qr
        Xc, Yc = X - X.mean(0), Y - Y.mean(0)
        assert float(torch.linalg.norm(Xc @ Qr - Yc) / torch.linalg.norm(Yc)) >= err - 1e-12


def test_orthogonal_scaled_matches_umeyama_formula() -> None:
    X, Y = _data(60, 5, 5, seed=1)
    a = fit_orthogonal_scaled(X, Y)
    Xc, Yc = X.numpy() - X.numpy().mean(0), Y.numpy() - Y.numpy().mean(0)
    U, S, Vt = np.linalg.svd(Xc.T @ Yc)
    s_ref = S.sum() / (Xc**2).sum()
    assert a.scale == pytest.approx(s_ref, rel=1e-12)
    np.testing.assert_allclose(a.W.numpy(), U @ Vt, atol=1e-10)


@pytest.mark.parametrize("center", [True, False])
def test_affine_matches_numpy_lstsq(center: bool) -> None:
    X, Y = _data(40, 6, 3, seed=2)
    a = fit_affine(X, Y, center=center)
    Xn, Yn = X.numpy(), Y.numpy()
    A = np.hstack([Xn, np.ones((40, 1))]) if center else Xn
    sol = np.linalg.lstsq(A, Yn, rcond=None)[0]
    np.testing.assert_allclose(a.W.numpy(), sol[:6], atol=1e-10)
    np.testing.assert_allclose(a.bias.numpy(), sol[6] if center else np.zeros(3), atol=1e-10)


def test_affine_ridge_matches_normal_equations_and_underdetermined_is_min_norm() -> None:
    X, Y = _data(30, 5, 4, seed=3)
    a = fit_affine(X, Y, alpha=2.5)
    Xc, Yc = X.numpy() - X.numpy().mean(0), Y.numpy() - Y.numpy().mean(0)
    W = np.linalg.solve(Xc.T @ Xc + 2.5 * np.eye(5), Xc.T @ Yc)
    np.testing.assert_allclose(a.W.numpy(), W, atol=1e-10)
    Xs, Ys = _data(4, 9, 3, seed=4)  # n < d: minimum-norm solution
    b = fit_affine(Xs, Ys, center=False)
    np.testing.assert_allclose(b.W.numpy(), np.linalg.pinv(Xs.numpy()) @ Ys.numpy(), atol=1e-10)


# ------------------------------------------------------------------------------------------- λ-orthogonal
def test_lambda_zero_is_procrustes_and_large_lambda_is_affine() -> None:
    X, Y = _data(100, 5, 5, seed=5)
    proc, aff = fit_orthogonal(X, Y), fit_affine(X, Y)
    a0 = fit_lambda_orthogonal(X, Y, lam=0.0)
    torch.testing.assert_close(a0.W, proc.W, atol=1e-12, rtol=0)
    big = float(lambda_orthogonality_gap(aff.W)) + 1.0
    ainf = fit_lambda_orthogonal(X, Y, lam=big)
    torch.testing.assert_close(ainf.W, aff.W, atol=1e-12, rtol=0)
    assert ainf.info is not None and ainf.info["active"] is False
    # small λ: feasible, never worse than Procrustes, and close to it (the solver converges slowly in the thin
    # shell, so closeness is checked at 1e-2 — the affine solution is 3.7 away)
    a_small = fit_lambda_orthogonal(X, Y, lam=1e-4)
    assert float(lambda_orthogonality_gap(a_small.W)) <= 1e-4 + 1e-15
    assert a_small.residuals(X, Y)["relative"] <= proc.residuals(X, Y)["relative"]
    assert float(torch.linalg.norm(a_small.W - proc.W)) < 1e-2 < float(torch.linalg.norm(aff.W - proc.W))


def test_lambda_orthogonal_matches_scipy_slsqp_and_is_feasible() -> None:
    from scipy.optimize import minimize

    X, Y = _data(50, 4, 4, seed=6)
    Xc, Yc = X.numpy() - X.numpy().mean(0), Y.numpy() - Y.numpy().mean(0)
    proc = fit_orthogonal(X, Y).W.numpy()

    def obj(w: np.ndarray) -> float:
        return float(((Xc @ w.reshape(4, 4) - Yc) ** 2).sum())

    fits = []
    for lam in (0.2, 1.0):
        a = fit_lambda_orthogonal(X, Y, lam=lam)
        assert float(lambda_orthogonality_gap(a.W)) <= lam + 1e-12
        con = {
            "type": "ineq",
            "fun": lambda w, lam=lam: lam**2 - ((w.reshape(4, 4).T @ w.reshape(4, 4) - np.eye(4)) ** 2).sum(),
        }
        ref = minimize(
            obj, proc.ravel(), constraints=[con], method="SLSQP", options={"ftol": 1e-15, "maxiter": 2000}
        )
        ours = obj(a.W.numpy().ravel())
        assert ours <= ref.fun * (1 + 1e-6), f"λ={lam}: ours {ours} vs SLSQP {ref.fun}"
        assert ours >= obj(fit_affine(X, Y).W.numpy().ravel()) - 1e-9  # never better than unconstrained
        fits.append(ours)
    assert fits[0] >= fits[1]  # a looser tolerance fits at least as well
    assert obj(proc.ravel()) >= fits[0]


def test_lambda_orthogonal_needs_lam_through_fit() -> None:
    X, Y = _data(20, 3, 3, seed=7)
    with pytest.raises(ValueError, match="lam=") as e:
        fit(X, Y, "lambda_orthogonal")
    assert "\n" not in str(e.value)
    a = fit(X, Y, "lambda_orthogonal", lam=0.2)
    assert a.lam == 0.2 and a.kind == "near_isometry"
    with pytest.raises(ValueError, match="lam must be"):
        fit(X, Y, "lambda_orthogonal", lam=-1.0)


# ------------------------------------------------------------------------------------------- D10 on synthetic data
def test_uncentered_procrustes_loses_to_centered_on_a_shifted_anisotropic_cone() -> None:
    """The D10 phenomenon: a large common mean whose direction differs between the spaces (and lies along
    high-variance axes) forces uncentered Procrustes to rotate the cloud to align the means."""
    import math

    from orthokit.align.api import knn_overlap, top1_cross_retrieval

    g = torch.Generator().manual_seed(8)
    n, d, m, theta = 1200, 32, 6.0, 0.6
    Z = torch.randn(n, d, generator=g, dtype=F64) * torch.logspace(0, -1, d, dtype=F64)
    e1, e2 = torch.eye(d, dtype=F64)[0], torch.eye(d, dtype=F64)[1]
    X = Z + m * e1
    Y = (
        Z
        + 0.7 * m * (math.cos(theta) * e1 + math.sin(theta) * e2)
        + 0.2 * torch.randn(n, d, generator=g, dtype=F64)
    )
    tr, te = slice(0, 600), slice(600, n)
    unc = fit(X[tr], Y[tr], "orthogonal", center=False)
    cen = fit(X[tr], Y[tr], "orthogonal")
    aff = fit(X[tr], Y[tr], "affine")
    none = top1_cross_retrieval(X[te], Y[te])
    t_unc = top1_cross_retrieval(unc.transform(X[te]), Y[te])
    t_cen = top1_cross_retrieval(cen.transform(X[te]), Y[te])
    assert none < t_cen and t_unc + 0.1 < t_cen, (none, t_unc, t_cen)
    assert cen.residuals(X[te], Y[te])["relative"] < 0.5 * unc.residuals(X[te], Y[te])["relative"]
    assert knn_overlap(cen.transform(X[te]), X[te]) == 1.0  # the isometry keeps every neighbourhood
    assert knn_overlap(aff.transform(X[te]), X[te]) < 1.0  # least squares does not


# ------------------------------------------------------------------------------------------- fit API
def test_fit_dispatch_and_errors() -> None:
    X, Y = _data(20, 3, 3, seed=9)
    assert fit(X, Y).method == "orthogonal"
    assert fit(X, Y, "umeyama").method == "orthogonal_scaled"
    with pytest.raises(ValueError, match="Did you mean 'orthogonal'"):
        fit(X, Y, "orthogonl")
    with pytest.raises(ValueError, match="lam is only used"):
        fit(X, Y, "affine", lam=0.1)
    with pytest.raises(TypeError, match="center"):
        fit(X, Y, center="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unexpected keyword"):
        fit(X, Y, "orthogonal", alpha=1.0)
    with pytest.raises(ValueError, match="rotation_only"):
        fit(X[:, :2], Y, rotation_only=True)
    with pytest.raises(ValueError, match="alpha"):
        fit(X, Y, "affine", alpha=-1.0)


def test_float32_inputs_are_fitted_in_float64_and_returned_in_float32() -> None:
    X, Y = _data(50, 4, 4, seed=10)
    a32 = fit(X.float(), Y.float())
    assert a32.W.dtype == F64
    out = a32.transform(X.float())
    assert out.dtype == torch.float32
    a64 = fit(X.float().double(), Y.float().double())
    torch.testing.assert_close(a32.W, a64.W, atol=1e-12, rtol=0)
    a_lo = fit(X, Y, dtype=torch.float32)
    assert a_lo.W.dtype == torch.float32
