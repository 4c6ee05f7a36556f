"""Lloyd–Max designs against closed forms, Max (1960) tables and an independent scipy quadrature."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from orthokit.rotation.lloyd_max import (
    LloydMaxQuantizer,
    fit_lloyd_max,
    lloyd_max_gaussian,
    lloyd_max_sphere,
)

# Max (1960), Table I: positive levels of the MSE-optimal quantizer of N(0, 1)
MAX_TABLE = {
    1: [0.7979],
    2: [0.4528, 1.5104],
    3: [0.2451, 0.7560, 1.3440, 2.1520],
}


def test_gaussian_one_bit_is_closed_form() -> None:
    lv = lloyd_max_gaussian(1).levels
    assert torch.allclose(
        lv, torch.tensor([-1.0, 1.0], dtype=torch.float64) * math.sqrt(2 / math.pi), atol=1e-12
    )


@pytest.mark.parametrize("bits", [1, 2, 3])
def test_gaussian_matches_max_table(bits: int) -> None:
    lv = lloyd_max_gaussian(bits).levels
    pos = lv[lv > 0].tolist()
    assert pos == pytest.approx(MAX_TABLE[bits], abs=2e-4)
    assert torch.allclose(lv, -lv.flip(0), atol=1e-12)  # symmetric


def _sphere_reference(bits: int, d: int) -> np.ndarray:
    """Lloyd's method with scipy.integrate.quad on the Beta-marginal density (independent of the grid code)."""
    from scipy import integrate

    r = math.sqrt(d)
    a = 0.5 * (d - 3)

    def f(t: float) -> float:
        return (1 - (t / r) ** 2) ** a

    lv = np.linspace(-1.5, 1.5, 1 << bits)
    for _ in range(300):
        edges = np.concatenate([[-r], 0.5 * (lv[1:] + lv[:-1]), [r]])
        m0 = [integrate.quad(f, lo, hi)[0] for lo, hi in zip(edges[:-1], edges[1:])]
        m1 = [integrate.quad(lambda t: t * f(t), lo, hi)[0] for lo, hi in zip(edges[:-1], edges[1:])]
        new = np.array(m1) / np.array(m0)
        if np.abs(new - lv).max() < 1e-12:
            break
        lv = new
    return new


@pytest.mark.parametrize(("bits", "d"), [(2, 8), (3, 8), (3, 5)])
def test_sphere_matches_scipy_quadrature(bits: int, d: int) -> None:
    pytest.importorskip("scipy")
    ref = _sphere_reference(bits, d)
    got = lloyd_max_sphere(bits, d).levels.numpy()
    np.testing.assert_allclose(got, ref, atol=1e-6)


def test_sphere_tends_to_gaussian() -> None:
    g = lloyd_max_gaussian(3).levels
    assert torch.allclose(lloyd_max_sphere(3, 4096).levels, g, atol=2e-3)
    assert not torch.allclose(lloyd_max_sphere(3, 8).levels, g, atol=2e-2)  # small d is visibly different


def test_fit_on_sample_is_stationary_and_near_gaussian_design() -> None:
    x = torch.randn(200_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    q = fit_lloyd_max(x, 2)
    assert torch.allclose(q.levels, lloyd_max_gaussian(2).levels, atol=2e-2)
    # stationarity checked directly: every level is the mean of the sample points nearest to it
    xs = x.numpy()
    lv = q.levels.numpy()
    nearest = np.abs(xs[:, None] - lv[None, :]).argmin(1)
    for i, c in enumerate(lv):
        assert xs[nearest == i].mean() == pytest.approx(c, abs=1e-9)


def test_fit_separates_two_atoms_and_handles_few_distinct_values() -> None:
    x = torch.tensor([-2.0] * 5 + [3.0] * 7)
    assert fit_lloyd_max(x, 1).levels.tolist() == [-2.0, 3.0]
    q = fit_lloyd_max(
        x, 3
    )  # 8 levels, 2 distinct values: still strictly increasing, atoms reproduced exactly
    assert bool((q.levels[1:] > q.levels[:-1]).all())
    assert torch.equal(q.quantize(x.double()), x.double())


def test_encode_is_nearest_level_and_decode_inverts() -> None:
    q = lloyd_max_gaussian(3)
    x = torch.randn(5000, generator=torch.Generator().manual_seed(1))
    codes = q.encode(x)
    assert codes.dtype == torch.uint8
    brute = (x[:, None].double() - q.levels[None, :]).abs().argmin(1)
    assert torch.equal(codes.long(), brute)
    assert torch.equal(q.decode(codes, dtype=torch.float64), q.levels[brute])
    # the sample's mean |x - Q(x)| equals the residual scale
    assert q.residual_scale(x) == pytest.approx(float((x.double() - q.levels[brute]).abs().mean()), rel=1e-12)


def test_state_dict_round_trip() -> None:
    q = lloyd_max_sphere(2, 16)
    q2 = LloydMaxQuantizer.from_state_dict(q.state_dict())
    assert torch.equal(q.levels, q2.levels) and q2.bits == 2


@pytest.mark.parametrize("bits", [0, 9, True, 2.0])
def test_bad_bits(bits: object) -> None:
    with pytest.raises((ValueError, TypeError), match="bits"):
        lloyd_max_gaussian(bits)  # type: ignore[arg-type]
    with pytest.raises((ValueError, TypeError), match="bits"):
        fit_lloyd_max(torch.randn(10), bits)  # type: ignore[arg-type]


def test_bad_inputs() -> None:
    with pytest.raises(TypeError, match="sample"):
        fit_lloyd_max(torch.arange(10), 2)
    with pytest.raises(ValueError, match="non-finite"):
        fit_lloyd_max(torch.tensor([0.0, float("nan"), 1.0]), 1)
    with pytest.raises(ValueError, match="at least 2"):
        fit_lloyd_max(torch.tensor([1.0]), 1)
    with pytest.raises(ValueError, match="dim"):
        lloyd_max_sphere(2, 2)
    with pytest.raises(ValueError, match="increasing"):
        LloydMaxQuantizer(torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="2\\^bits"):
        LloydMaxQuantizer(torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(TypeError, match="codes"):
        lloyd_max_gaussian(1).decode(torch.tensor([0.0]))
