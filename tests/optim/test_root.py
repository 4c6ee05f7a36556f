"""ROOT (arXiv:2511.20626): proximal outlier split, shape-table safety, constant-coefficient Newton–Schulz."""

from __future__ import annotations

import pytest
import torch

from orthokit.optim._normalizers import abs_quantile, soft_threshold
from orthokit.optim.root import (
    ROOT_DEFAULT_COEFFICIENTS,
    ROOT_SHAPE_COEFFICIENTS,
    fit_root_coefficients,
    newton_schulz_constant,
    root_coefficients,
    root_schedule_is_safe,
    root_split,
)


def _p(coeffs: tuple[float, float, float], x: torch.Tensor, steps: int) -> torch.Tensor:
    a, b, c = coeffs
    for _ in range(steps):
        x = a * x + b * x**3 + c * x**5
    return x


def test_split_is_exact_and_threshold_is_the_quantile() -> None:
    u = torch.randn(40, 25, dtype=torch.float64)
    b, tau = root_split(u, 0.9)
    flat = u.abs().flatten().sort().values
    assert tau.item() == flat[int(0.9 * 1000) - 1].item()  # k = ceil(0.9·N)-th smallest
    torch.testing.assert_close(b + soft_threshold(u, tau), u)
    assert b.abs().max().item() == pytest.approx(tau.item())
    assert int((u.abs() > tau).sum()) == 100  # the 10% outliers are clipped
    b1, t1 = root_split(u, 1.0)
    torch.testing.assert_close(b1, u)
    assert t1.item() == u.abs().max().item()


def test_soft_threshold_and_quantile_errors() -> None:
    x = torch.tensor([-3.0, -0.5, 0.2, 2.0])
    torch.testing.assert_close(soft_threshold(x, 1.0), torch.tensor([-2.0, 0.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="tau"):
        soft_threshold(x, -1.0)
    with pytest.raises(ValueError, match="quantile"):
        abs_quantile(torch.randn(3, 3), 0.0)


def test_published_square_table_is_unsafe_and_blows_up_near_056() -> None:
    sq = ROOT_SHAPE_COEFFICIENTS[(2048, 2048)]
    x = torch.linspace(0.50, 0.60, 1001, dtype=torch.float64)
    assert _p(sq, x, 5).max().item() == pytest.approx(3.31, abs=0.01)
    assert _p(ROOT_DEFAULT_COEFFICIENTS, x, 5).max().item() < 1.2
    assert not root_schedule_is_safe(sq)
    assert root_schedule_is_safe(ROOT_DEFAULT_COEFFICIENTS)
    coeffs, reason = root_coefficients((2048, 2048), fit=False, return_reason=True)
    assert coeffs == ROOT_DEFAULT_COEFFICIENTS and reason == "unsafe table entry"
    coeffs, reason = root_coefficients((2048, 2048), return_reason=True)
    assert reason == "unsafe table entry, fitted" and root_schedule_is_safe(coeffs)
    assert _p(coeffs, x, 5).max().item() < 1.2
    with pytest.warns(UserWarning, match="safety"):
        root_coefficients((2048, 2048), warn=True)


def test_safe_table_entries_are_used_and_unknown_shapes_fall_back() -> None:
    assert root_coefficients((3072, 2048)) == ROOT_SHAPE_COEFFICIENTS[(2048, 3072)]
    assert root_coefficients((64, 32), fit=False, return_reason=True) == (
        ROOT_DEFAULT_COEFFICIENTS,
        "unknown shape",
    )
    c, reason = root_coefficients((64, 32), return_reason=True)
    assert reason == "fitted" and c != ROOT_DEFAULT_COEFFICIENTS


@pytest.mark.parametrize("shape", [(24, 40), (40, 24), (2, 16, 16)])
def test_constant_newton_schulz_maps_singular_values_by_the_polynomial(shape: tuple[int, ...]) -> None:
    x = torch.randn(*shape, dtype=torch.float64)
    coeffs = ROOT_DEFAULT_COEFFICIENTS
    y = newton_schulz_constant(x, coeffs, steps=5)
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    fro = x.pow(2).sum(dim=(-2, -1), keepdim=True).sqrt()[..., 0] + 1e-7
    ref = u @ torch.diag_embed(_p(coeffs, s / fro, 5)) @ vh
    torch.testing.assert_close(y, ref, rtol=1e-9, atol=1e-9)
    assert newton_schulz_constant(x.float(), coeffs).dtype == torch.float32


def test_optimizer_step_equals_manual_float64() -> None:
    from orthokit.optim.root import ROOT

    w0 = torch.randn(14, 9, dtype=torch.float64)
    grads = [torch.randn(14, 9, dtype=torch.float64) for _ in range(2)]
    lr, mu, wd = 0.01, 0.95, 0.1
    w = torch.nn.Parameter(w0.clone())
    coeffs = fit_root_coefficients((14, 9))
    assert coeffs != ROOT_DEFAULT_COEFFICIENTS
    for fit, triple in ((True, coeffs), (False, ROOT_DEFAULT_COEFFICIENTS)):
        w = torch.nn.Parameter(w0.clone())
        opt = ROOT([w], lr=lr, momentum=mu, weight_decay=wd, ns_dtype=None, fit_shapes=fit)
        m, ref = torch.zeros_like(w0), w0.clone()
        for g in grads:
            w.grad = g.clone()
            opt.step()
            m = mu * m + g  # sum convention (reference code)
            b, _ = root_split(g + mu * m, 0.9)
            o = newton_schulz_constant(b, triple, steps=5)
            ref = ref * (1 - lr * wd) - lr * 0.2 * 14**0.5 * o
        torch.testing.assert_close(w.detach(), ref, rtol=1e-10, atol=1e-10)


def test_optimizer_rejects_bad_hyperparameters() -> None:
    from orthokit.optim.root import ROOT

    p = [torch.nn.Parameter(torch.randn(4, 3))]
    with pytest.raises(ValueError, match="quantile"):
        ROOT(p, quantile=0.0)
    with pytest.raises(TypeError, match="shape_table"):
        ROOT(p, shape_table=1)
    with pytest.raises(TypeError, match="fit_shapes"):
        ROOT(p, fit_shapes="yes")


# ---- per-shape coefficients for every shape (issue 15) ------------------------------------------------------

#: the published table (ROOT/examples/example_train.py @ aea3c60), typed in here independently of the module
_PUBLISHED = {
    (2048, 3072): (3.4509, -4.5790, 1.9325),
    (2048, 8192): (2.9794, -3.6674, 1.6207),
    (2048, 16384): (3.1943, -3.8221, 1.5322),
}


def test_published_safe_shapes_use_the_published_table(monkeypatch: pytest.MonkeyPatch) -> None:
    import orthokit.optim.root as root_mod

    for (p, q), triple in _PUBLISHED.items():
        for shape in ((p, q), (q, p)):
            got = root_coefficients(shape, return_reason=True)
            assert got[1] == "table"
            assert all(round(x, 4) == y for x, y in zip(got[0], triple))  # to the table's 4 decimals
    # and the optimizer hands exactly those to Newton–Schulz (NS stubbed: a 3072×2048 NS is too slow here)
    seen = []

    def fake_ns(x, coeffs, steps=5, dtype=None):
        seen.append(tuple(coeffs))
        return torch.zeros_like(x)

    monkeypatch.setattr(root_mod, "newton_schulz_constant", fake_ns)
    w = torch.nn.Parameter(torch.zeros(3072, 2048))
    w.grad = torch.randn(3072, 2048)
    root_mod.ROOT([w], ns_dtype=None).step()
    assert seen == [_PUBLISHED[(2048, 3072)]]


def _polar_error(x: torch.Tensor, coeffs: tuple[float, float, float]) -> float:
    u, _, vh = torch.linalg.svd(x, full_matrices=False)
    polar = u @ vh
    y = newton_schulz_constant(x, coeffs, steps=5, dtype=torch.float64)
    return ((y - polar).norm() / polar.norm()).item()


@pytest.mark.parametrize("shape", [(64, 256), (96, 40), (48, 48)])
def test_fitted_coefficients_beat_keller_on_the_exact_polar_factor(shape: tuple[int, int]) -> None:
    """Independent check of the fit: float64 SVD polar factor of Gaussian matrices of that shape."""
    c = fit_root_coefficients(shape)
    assert root_schedule_is_safe(c)
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(*shape, generator=g, dtype=torch.float64) for _ in range(3)]
    fit_err = sum(_polar_error(x, c) for x in xs) / 3
    keller_err = sum(_polar_error(x, ROOT_DEFAULT_COEFFICIENTS) for x in xs) / 3
    assert fit_err < (0.5 if min(shape) < max(shape) else 0.95) * keller_err, (fit_err, keller_err)
    # a singular value anywhere from the bulk's lower edge up to 1 (signal above the noise) stays near 1
    p, q = min(shape), max(shape)
    ell = max((1 - (p / q) ** 0.5) / p**0.5, 1e-3)
    xg = torch.logspace(torch.log10(torch.tensor(ell)).item(), 0, 200, dtype=torch.float64)
    y = _p(c, xg, 5)
    assert y.min().item() > 0.4 and y.max().item() < 1.3
    assert abs(y[-1].item() - 1) < 0.2  # σ = 1 (a rank-1 momentum) keeps its full step


def test_fit_is_deterministic_cached_and_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    import orthokit.optim.root as root_mod

    a = fit_root_coefficients((33, 70))
    assert fit_root_coefficients((70, 33)) == a and fit_root_coefficients((1, 70, 33)) == a
    assert root_mod._fit.cache_info().hits >= 2
    with pytest.raises(ValueError, match="shape"):
        fit_root_coefficients((5,))
    with pytest.raises(ValueError, match="steps"):
        fit_root_coefficients((5, 4), steps=0)
    # a fit that is unsafe falls back to Keller's triple with ONE warning per shape
    monkeypatch.setattr(root_mod, "_fit", lambda p, q, s: (ROOT_SHAPE_COEFFICIENTS[(2048, 2048)], 0.1, 0.2))
    monkeypatch.setattr(root_mod, "_FIT_WARNED", set())
    with pytest.warns(UserWarning, match="no safe per-shape"):
        assert fit_root_coefficients((11, 13)) == ROOT_DEFAULT_COEFFICIENTS
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fit_root_coefficients((11, 13)) == ROOT_DEFAULT_COEFFICIENTS


def test_default_is_the_reference_fallback_with_a_warning() -> None:
    """Issue 15: shapes outside the table use Keller's triple by default (as the reference) and say so once."""
    torch.manual_seed(0)
    from orthokit.optim import ROOT

    g = torch.randn(7, 11)
    outs = {}
    for fit in (None, False, True):
        w = torch.nn.Parameter(torch.zeros(7, 11))
        opt = ROOT([w], lr=0.1) if fit is None else ROOT([w], lr=0.1, fit_shapes=fit)
        w.grad = g.clone()
        if fit is None:
            with pytest.warns(UserWarning, match="not in the published coefficient table"):
                opt.step()
        else:
            opt.step()
        outs[fit] = w.detach().clone()
    assert torch.equal(outs[None], outs[False])
    assert not torch.allclose(outs[None], outs[True])
