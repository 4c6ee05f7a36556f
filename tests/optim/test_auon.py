"""AuON cosh-RMS normalization (arXiv:2509.24320): closed form, asymptotics, direction."""

from __future__ import annotations

import math

import pytest
import torch

from orthokit.optim.auon import auon_normalize, cosh_rms


def test_cosh_rms_matches_float64_formula() -> None:
    x = torch.randn(5, 7, dtype=torch.float64)
    g = 1.5
    xh = x / (x.norm() + 1e-7)
    ref = math.sqrt(float(torch.cosh(g * xh).pow(2).mean()))
    assert cosh_rms(x, g).item() == pytest.approx(ref, rel=1e-13)


@pytest.mark.parametrize(("m", "n"), [(8, 8), (64, 64), (768, 768)])
def test_cosh_rms_is_one_plus_gamma2_over_2N(m: int, n: int) -> None:
    # mean cosh(γx)² = 1 + γ²/N + O(γ⁴ Σx⁴/N) with Σx² = 1  ⇒  r − 1 ≈ γ²/(2N)
    x = torch.randn(m, n, dtype=torch.float64)
    r = cosh_rms(x, gamma=1.5).item()
    assert r - 1 == pytest.approx(1.5**2 / (2 * m * n), rel=0.05)


def test_cosh_factor_768_is_within_2e_6_of_one() -> None:
    r = cosh_rms(torch.randn(768, 768), gamma=1.5).item()
    assert 0 < r - 1 < 2.5e-6


def test_auon_direction_paper_and_code_forms() -> None:
    u = torch.randn(16, 8, dtype=torch.float64) * 3
    r = cosh_rms(u, 1.0)
    y = auon_normalize(u, 1.0, normalize=True)
    torch.testing.assert_close(y, u / (u.norm() + 1e-7) / (r + 1e-8))
    assert y.norm().item() < 1.0
    z = auon_normalize(u, 1.5, normalize=False)
    torch.testing.assert_close(z, u / (cosh_rms(u, 1.5) + 1e-8))
    assert auon_normalize(u.float()).dtype == torch.float32


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="m, n"):
        cosh_rms(torch.randn(5))
