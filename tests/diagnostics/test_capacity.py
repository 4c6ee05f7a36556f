"""Closed-form and reference checks of orthokit.diagnostics.capacity (ε, histogram, capacity formulas)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from orthokit.diagnostics.capacity import (
    ADJUSTED_CONSTANTS,
    JL_C,
    RATIO_C,
    capacity,
    cosine_histogram,
    cosine_moments,
    estimate_epsilon,
    jl_capacity,
    log_capacity,
    null_abs_cos_quantile,
    required_epsilon,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _pair_cosines_f64(E: torch.Tensor) -> np.ndarray:
    """Reference: every i<j cosine, dense float64 numpy."""
    X = E.double().numpy()
    X = X / np.linalg.norm(X, axis=1, keepdims=True)
    G = X @ X.T
    iu = np.triu_indices(len(X), 1)
    return G[iu]


def _equiangular(k: int, s: float) -> torch.Tensor:
    """k vectors e_i + s·1 in R^k: all pairwise cosines equal (2s + k s²) / (1 + 2s + k s²)."""
    return torch.eye(k, dtype=torch.float64) + s


def test_orthonormal_rows_eps_zero_and_capacity_at_least_k():
    Q = torch.linalg.qr(torch.randn(48, 48, generator=_gen(), dtype=torch.float64))[0]
    est = estimate_epsilon(Q[:40])  # 40 orthonormal rows in R^48
    assert abs(est.eps) < 1e-7 and abs(est.mean) < 1e-12 and est.std < 1e-7  # closed-form σ: ~1e-9 floor
    assert est.capacity >= 40 and est.estimatable and est.n_pairs == 40 * 39 // 2


def test_equiangular_set_known_cosine():
    k, s = 30, 0.05
    c = (2 * s + k * s * s) / (1 + 2 * s + k * s * s)
    E = _equiangular(k, s)
    mean, std, pairs = cosine_moments(E)
    assert mean == pytest.approx(c, abs=1e-12) and std < 1e-6 and pairs == k * (k - 1) // 2
    assert estimate_epsilon(E).eps == pytest.approx(c, abs=1e-6)
    assert estimate_epsilon(E, "quantile", bins=20000).eps == pytest.approx(c, abs=2e-4)
    h = cosine_histogram(E, bins=200)
    assert h.counts.sum() == pairs and h.counts.max() == pairs  # every pair in the one bin holding c
    assert float(h.centers[h.counts.argmax()]) == pytest.approx(c, abs=0.01)


def test_regular_simplex_cosine_minus_one_over_d():
    d = 12  # d+1 simplex vertices in R^d: cos = -1/d for every pair; mu + 2 sigma < 0 clamps to 0
    V = torch.eye(d + 1, dtype=torch.float64) - 1.0 / (d + 1)
    V = V @ torch.linalg.svd(V, full_matrices=False)[2][:d].T  # coordinates in the d-dim span
    mean, std, _ = cosine_moments(V)
    assert mean == pytest.approx(-1.0 / d, abs=1e-12) and std < 1e-6
    assert estimate_epsilon(V).eps == 0.0
    assert estimate_epsilon(V, "quantile").eps == pytest.approx(1.0 / d, abs=2e-4)


def test_gaussian_vectors_match_the_normal_null():
    d = 128
    E = torch.randn(3000, d, generator=_gen(1), dtype=torch.float64)
    est = estimate_epsilon(E)
    assert abs(est.mean) < 2e-3 and est.std == pytest.approx(1 / math.sqrt(d), rel=0.02)
    assert est.eps == pytest.approx(2 / math.sqrt(d), rel=0.03)
    q95 = estimate_epsilon(E, "quantile", q=0.95).eps
    exact_null = null_abs_cos_quantile(d, 0.95)  # Beta(1/2, (d-1)/2) quantile of cos²
    assert q95 == pytest.approx(exact_null, rel=0.02)
    assert exact_null == pytest.approx(1.959964 / math.sqrt(d), rel=0.02)  # ≈ normal N(0, 1/d)
    assert estimate_epsilon(E, "null_quantile", q=0.95).eps == pytest.approx(exact_null, rel=1e-9)


def test_histogram_chunked_matches_dense_float64_reference():
    E = torch.randn(301, 24, generator=_gen(2))
    ref = _pair_cosines_f64(E)
    h = cosine_histogram(E, bins=50, chunk=37)
    want, _ = np.histogram(ref, bins=50, range=(-1, 1))
    assert int(h.counts.sum()) == len(ref) == h.n_pairs
    assert np.abs(h.counts.numpy() - want).sum() <= 4  # float32 products may move a boundary value
    mean, std, _ = cosine_moments(E)
    assert mean == pytest.approx(ref.mean(), abs=1e-12) and std == pytest.approx(ref.std(), abs=1e-12)


def test_histogram_row_subsample_is_seeded():
    E = torch.randn(500, 16, generator=_gen(3))
    a, b = cosine_histogram(E, sample=100, seed=5), cosine_histogram(E, sample=100, seed=5)
    c = cosine_histogram(E, sample=100, seed=6)
    assert a.n_pairs == 100 * 99 // 2 and a.sampled == 100 and torch.equal(a.counts, b.counts)
    assert not torch.equal(a.counts, c.counts)
    assert a.mean == cosine_histogram(E).mean  # moments stay exact over all pairs


def test_adjusted_capacity_matches_the_official_closed_form():
    C, a, b, c = ADJUSTED_CONSTANTS
    for d, eps in [(64, 0.2), (384, 0.06), (4096, 0.03), (768, 0.09)]:
        ref = math.ceil((d * math.exp((eps**2 * d**c / C) ** (1 / b))) ** (1 / a))
        assert capacity(d, eps, floor_d=False) == ref
        assert capacity(d, eps) == max(ref, d)
        k = int(capacity(d, eps, floor_d=False))
        assert required_epsilon(k, d) == pytest.approx(eps, rel=2e-3)  # inverse of the ceiling


def test_adjusted_formula_reproduces_the_papers_optimized_packings():
    # (k, d, measured max |cos| of optimized packings) from the authors' optimized_packing.json
    for k, d, eps in [
        (32000, 4096, 0.02500),
        (16000, 1024, 0.05587),
        (8000, 256, 0.12179),
        (20000, 64, 0.34836),
    ]:
        assert required_epsilon(k, d) == pytest.approx(eps, rel=0.12)
    for k, d, eps in [
        (32000, 4096, 0.02500),
        (16000, 1024, 0.05587),
        (8000, 256, 0.12179),
        (20000, 64, 0.34836),
    ]:
        assert required_epsilon(k, d, formula="ratio") == pytest.approx(eps, rel=0.2)
        assert required_epsilon(k, d, formula="jl") > 1.5 * eps  # JL is far off for optimized packings
    # and the JL refit reproduces their random packings (k, d, best max |cos| of random draws)
    for k, d, eps in [(32000, 4096, 0.08978), (2000, 256, 0.28345), (16000, 1024, 0.17114)]:
        assert required_epsilon(k, d, formula="jl") == pytest.approx(eps, rel=0.08)


def test_jl_count_against_its_formula_in_float64():
    for d, eps in [(64, 0.3), (384, 0.1), (1024, 0.05), (256, 0.3), (4096, 0.08)]:
        assert jl_capacity(d, eps) == pytest.approx(math.exp(d * eps * eps / JL_C), rel=1e-15)
        assert capacity(d, eps, formula="jl", floor_d=False) == pytest.approx(math.exp(d * eps * eps / JL_C))
    for d, eps in [(256, 0.3), (4096, 0.08)]:  # k in the thousands: rounding k barely moves eps
        assert required_epsilon(round(jl_capacity(d, eps)), d, formula="jl") == pytest.approx(eps, rel=1e-4)
    assert jl_capacity(10_000, 1.0) == math.inf and math.isfinite(log_capacity(10_000, 1.0, formula="jl"))
    # the adjusted count exceeds JL (trained packings beat random ones)
    assert capacity(384, 0.08) > jl_capacity(384, 0.08)


def test_ratio_law_closed_form():
    for d, eps in [(64, 0.3), (384, 0.1)]:
        assert capacity(d, eps, formula="ratio") == pytest.approx(
            d * math.exp(d * eps * eps / RATIO_C), rel=1e-12
        )
        k = capacity(d, eps, formula="ratio")
        assert required_epsilon(round(k), d, formula="ratio") == pytest.approx(eps, rel=1e-3)


def test_capacity_is_increasing_in_eps():
    caps = [capacity(256, e) for e in (0.02, 0.05, 0.1, 0.2, 0.3)]
    assert caps == sorted(caps) and caps[-1] > caps[0]


def test_bad_inputs_are_one_line_errors_and_leave_input_untouched():
    E = torch.randn(10, 4, generator=_gen())
    E0 = E.clone()
    with pytest.raises(ValueError, match="2-D"):
        estimate_epsilon(E[0])
    bad = E.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite.*rows \[3\]"):
        cosine_histogram(bad)
    z = E.clone()
    z[[2, 7]] = 0
    with pytest.raises(ValueError, match=r"zero row\(s\) \(rows \[2, 7\]\)"):
        estimate_epsilon(z)
    with pytest.raises(ValueError, match="method"):
        estimate_epsilon(E, "knee")
    with pytest.raises(TypeError, match="floating"):
        estimate_epsilon(torch.ones(3, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="eps"):
        capacity(64, 1.5)
    with pytest.raises(ValueError, match="formula"):
        capacity(64, 0.1, formula="xx")
    with pytest.raises(ValueError, match="sample"):
        cosine_histogram(E, sample=1)
    assert torch.equal(E, E0)


def test_eps_invariant_to_row_scaling_and_rotation():
    g = _gen(7)
    E = torch.randn(200, 20, generator=g, dtype=torch.float64) + 0.3  # non-zero mean cosine
    Q = torch.linalg.qr(torch.randn(20, 20, generator=g, dtype=torch.float64))[0]
    s = torch.rand(200, 1, generator=g, dtype=torch.float64) * 10 + 0.1
    base = estimate_epsilon(E)
    for F in (E @ Q, s * E):
        est = estimate_epsilon(F)
        assert est.eps == pytest.approx(base.eps, abs=1e-12) and est.mean == pytest.approx(
            base.mean, abs=1e-12
        )
    assert estimate_epsilon(-E).eps == pytest.approx(
        base.eps, abs=1e-12
    )  # all signs flipped: cosines unchanged


@pytest.mark.parametrize("c", [1e200, 1e-170, 1e-200])
def test_eps_at_extreme_magnitudes(c):
    E = torch.randn(50, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ref = estimate_epsilon(E)
    est = estimate_epsilon(E * c)
    assert est.eps == pytest.approx(ref.eps, abs=1e-12) and est.mean == pytest.approx(ref.mean, abs=1e-12)
    assert cosine_histogram(E * c, bins=40).counts.tolist() == cosine_histogram(E, bins=40).counts.tolist()


def test_abs_quantile_folds_exactly_and_needs_a_symmetric_range():
    E = torch.randn(300, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    U = E / E.norm(dim=1, keepdim=True)
    i, j = torch.triu_indices(300, 300, 1)
    absc = (U[i] * U[j]).sum(1).abs()  # float64 reference over every pair
    for bins in (400, 401):  # even: mirror bins; odd: the middle bin straddles 0
        h = cosine_histogram(E, bins=bins)
        for q in (0.5, 0.95):
            assert h.abs_quantile(q) == pytest.approx(float(absc.quantile(q)), abs=2.0 / bins)
    with pytest.raises(ValueError, match="symmetric range"):
        cosine_histogram(E, bins=10, range=(0.0, 1.0)).abs_quantile(0.5)
    with pytest.raises(ValueError, match="q must be in"):
        cosine_histogram(E, bins=10).abs_quantile(1.0)
