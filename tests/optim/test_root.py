"""ROOT (arXiv:2511.20626): proximal outlier split, shape-table safety, constant-coefficient Newton–Schulz."""

from __future__ import annotations

import pytest
import torch

from orthokit.optim._normalizers import abs_quantile, soft_threshold
from orthokit.optim.root import (
    ROOT_DEFAULT_COEFFICIENTS,
    ROOT_SHAPE_COEFFICIENTS,
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
    coeffs, reason = root_coefficients((2048, 2048), return_reason=True)
    assert coeffs == ROOT_DEFAULT_COEFFICIENTS and reason == "unsafe table entry"
    with pytest.warns(UserWarning, match="safety"):
        root_coefficients((2048, 2048), warn=True)


def test_safe_table_entries_are_used_and_unknown_shapes_fall_back() -> None:
    assert root_coefficients((3072, 2048)) == ROOT_SHAPE_COEFFICIENTS[(2048, 3072)]
    assert root_coefficients((64, 32), return_reason=True) == (ROOT_DEFAULT_COEFFICIENTS, "unknown shape")


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
    opt = ROOT([w], lr=lr, momentum=mu, weight_decay=wd, ns_dtype=None)
    m, ref = torch.zeros_like(w0), w0.clone()
    for g in grads:
        w.grad = g.clone()
        opt.step()
        m = mu * m + g  # sum convention (reference code)
        b, _ = root_split(g + mu * m, 0.9)
        o = newton_schulz_constant(b, ROOT_DEFAULT_COEFFICIENTS, steps=5)
        ref = ref * (1 - lr * wd) - lr * 0.2 * 14**0.5 * o
    torch.testing.assert_close(w.detach(), ref, rtol=1e-10, atol=1e-10)


def test_optimizer_rejects_bad_hyperparameters() -> None:
    from orthokit.optim.root import ROOT

    p = [torch.nn.Parameter(torch.randn(4, 3))]
    with pytest.raises(ValueError, match="quantile"):
        ROOT(p, quantile=0.0)
    with pytest.raises(TypeError, match="shape_table"):
        ROOT(p, shape_table=1)
