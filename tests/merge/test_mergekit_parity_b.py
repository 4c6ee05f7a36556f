"""model_stock, breadcrumbs(_ties), della(_linear), sce against mergekit 0.1.5's ``merge_tensors``.

Deterministic methods must be bit-equal in float32 and bfloat16; DELLA must be bit-equal under the same seed
(mergekit draws from the global generator after ``torch.manual_seed``, orthokit from a ``torch.Generator`` seeded
the same), and its keep rate and expectation are checked against the closed form p(r). Bad parameters raise
one-line errors.
"""

from __future__ import annotations

import math

import pytest
import torch

from orthokit.merge import breadcrumbs, breadcrumbs_ties, della, della_linear, merge, model_stock, sce
from orthokit.merge.breadcrumbs import outlier_trim
from orthokit.merge.della import magprune, magprune_probabilities

mk = pytest.importorskip("mergekit.merge_methods")

DTYPES = [torch.float32, torch.bfloat16]


def _models(t: int, shape: tuple[int, ...], dtype: torch.dtype, seed: int, scale: float = 0.05):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(*shape, generator=g)
    fts = [base + scale * torch.randn(*shape, generator=g) for _ in range(t)]
    return base.to(dtype), [f.to(dtype) for f in fts]


def _mk(base, fts, method: str, **params):
    return mk.merge_tensors([base, *fts], method, base_index=0, parameters=params)


def _assert_bit_equal(ours: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    assert ours.dtype == ref.dtype and ours.shape == ref.shape, what
    diff = float((ours.double() - ref.double()).abs().max())
    assert torch.equal(ours, ref), f"{what}: max |diff| {diff:.3g}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_model_stock_bit_equal_to_mergekit(dtype: torch.dtype) -> None:
    for t, shape in ((2, (67, 129)), (3, (40, 31)), (5, (17, 9)), (3, (300,)), (2, (4, 3, 5))):
        base, fts = _models(t, shape, dtype, seed=t)
        for fw in (False, True):
            _assert_bit_equal(
                model_stock(base, fts, filter_wise=fw),
                _mk(base, fts, "model_stock", filter_wise=fw),
                f"model_stock t={t} {shape} filter_wise={fw} {dtype}",
            )
    # opposing task vectors (c = -1 for two models): the singular case keeps the base, as mergekit does
    base = torch.zeros(6, dtype=dtype)
    d = torch.arange(1, 7, dtype=dtype)
    out = model_stock(base, [base + d, base - d])
    _assert_bit_equal(out, _mk(base, [base + d, base - d], "model_stock"), "model_stock opposing")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ["breadcrumbs", "breadcrumbs_ties"])
def test_breadcrumbs_bit_equal_to_mergekit(method: str, dtype: torch.dtype) -> None:
    fn = {"breadcrumbs": breadcrumbs, "breadcrumbs_ties": breadcrumbs_ties}[method]
    for t in (1, 3, 5):
        base, fts = _models(t, (67, 129), dtype, seed=10 + t)
        w = [0.3 + 0.2 * i for i in range(t)]
        dens = [0.2 + 0.15 * i for i in range(t)]
        gam = [0.05, 0.0, 0.2, 0.01, 0.1][:t]
        for normalize in (False, True):
            for rescale in (False, True):
                params = dict(normalize=normalize, rescale=rescale)
                ours = fn(base, fts, weights=w, density=dens, gamma=gam, lambda_=0.7, **params)
                ref = _mk(base, fts, method, weight=w, density=dens, gamma=gam, **{"lambda": 0.7}, **params)
                _assert_bit_equal(ours, ref, f"{method} t={t} {params} {dtype}")
    # mergekit's defaults (density 1, gamma 0.01): plain task arithmetic / TIES
    base, fts = _models(2, (33, 7), dtype, seed=1)
    _assert_bit_equal(fn(base, fts), _mk(base, fts, method, weight=1.0), f"{method} defaults {dtype}")


def test_breadcrumbs_ties_at_boundaries_use_the_sort_and_stay_bit_equal() -> None:
    """Quantized deltas tie both boundaries: the selection path must fall back to mergekit's sort."""
    g = torch.Generator().manual_seed(4)
    base = torch.zeros(50, 40)
    fts = [base + torch.randint(-6, 7, (50, 40), generator=g).float() * 0.25 for _ in range(2)]
    for d, gam in ((0.5, 0.1), (0.9, 0.0), (0.3, 0.3)):
        for method, fn in (("breadcrumbs", breadcrumbs), ("breadcrumbs_ties", breadcrumbs_ties)):
            _assert_bit_equal(
                fn(base, fts, density=d, gamma=gam),
                _mk(base, fts, method, weight=1.0, density=d, gamma=gam),
                f"{method} quantized density={d} gamma={gam}",
            )


def test_breadcrumbs_n_top_zero_keeps_target() -> None:
    """The snapshot bug (indices[n_bot:-n_top] empty when n_top == 0) is not reproduced; 0.1.5's rule is."""
    base, fts = _models(1, (64,), torch.float32, seed=5, scale=1.0)
    out = breadcrumbs(base, fts, density=0.9, gamma=0.01)  # n_top = ⌊0.64⌋ = 0
    assert int((out != base).sum()) == 57
    _assert_bit_equal(out, _mk(base, fts, "breadcrumbs", weight=1.0, density=0.9, gamma=0.01), "64 entries")
    d = fts[0] - base
    kept = outlier_trim(d, 0.5, gamma=0.0)
    assert torch.equal(kept != 0, d.abs() >= d.abs().kthvalue(33).values)  # plain top-32 at gamma 0
    assert int((outlier_trim(d, 0.01, gamma=0.0) != 0).sum()) == 0  # ⌊0.64⌋ = 0 kept, as 0.1.5


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ["della", "della_linear"])
def test_della_bit_equal_to_mergekit_same_seed(method: str, dtype: torch.dtype) -> None:
    fn = {"della": della, "della_linear": della_linear}[method]
    # (24, 300): bf16 rows longer than 256 round their ranks, which must be reproduced too
    for t, shape in ((1, (40, 70)), (3, (24, 300)), (5, (129,)), (2, (6, 5, 7))):
        base, fts = _models(t, shape, dtype, seed=20 + t)
        w = [0.5 + 0.25 * i for i in range(t)]
        dens = [0.3 + 0.1 * i for i in range(t)]
        eps = [0.1, 0.2, 0.05, 0.15, 0.25][:t]
        for normalize in (False, True):
            for rescale in (False, True):
                params = dict(normalize=normalize, rescale=rescale)
                seed = 7 + t
                ours = fn(
                    base,
                    fts,
                    weights=w,
                    density=dens,
                    epsilon=eps,
                    lambda_=0.9,
                    generator=torch.Generator().manual_seed(seed),
                    **params,
                )
                torch.manual_seed(seed)
                ref = _mk(base, fts, method, weight=w, density=dens, epsilon=eps, **{"lambda": 0.9}, **params)
                _assert_bit_equal(ours, ref, f"{method} t={t} {shape} {params} {dtype}")


def test_della_keep_rate_and_expectation() -> None:
    """Keep frequency by rank decile vs p(r), overall keep rate vs ρ, E[δ̃] vs p(r) δ (no rescale), over seeds."""
    rows, n, rho, eps, seeds = 64, 200, 0.3, 0.15, 100
    g = torch.Generator().manual_seed(0)
    delta = torch.randn(rows, n, generator=g)
    rank = delta.abs().argsort(dim=1).argsort(dim=1).double()  # 0-based ascending rank
    p = (rho - eps) + 2 * eps * rank / (n - 1)
    torch.testing.assert_close(magprune_probabilities(delta, rho, eps).double(), p, rtol=0, atol=1e-6)
    kept = torch.zeros(rows, n, dtype=torch.float64)
    total = torch.zeros(rows, n, dtype=torch.float64)
    for s in range(seeds):
        out = magprune(delta, rho, eps, rescale=False, generator=torch.Generator().manual_seed(s))
        kept += (out != 0).double()
        total += out.double()
    freq = kept / seeds
    overall = float(freq.mean())
    assert abs(overall - rho) < 4 * math.sqrt(rho * (1 - rho) / (rows * n * seeds)), overall
    decile = (rank * 10 / n).long()
    for k in range(10):
        sel = decile == k
        f, q = float(freq[sel].mean()), float(p[sel].mean())
        assert abs(f - q) < 5 * math.sqrt(q * (1 - q) / (int(sel.sum()) * seeds)), (k, f, q)
    sigma = (p * (1 - p) / seeds).sqrt() * delta.double().abs()
    z = ((total / seeds - p * delta.double()).abs() / sigma).max()
    assert float(z) < 6, float(z)


def test_della_distribution_matches_mergekit_over_seeds() -> None:
    """Same seeds, same tensors: the two keep masks agree entry by entry for every seed."""
    base, fts = _models(2, (16, 48), torch.float32, seed=3)
    for s in range(5):
        ours = della(base, fts, density=0.4, epsilon=0.2, generator=torch.Generator().manual_seed(s))
        torch.manual_seed(s)
        ref = _mk(base, fts, "della", weight=1.0, density=0.4, epsilon=0.2)
        _assert_bit_equal(ours, ref, f"della seed {s}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_sce_bit_equal_to_mergekit(dtype: torch.dtype) -> None:
    for t, shape in ((1, (20, 9)), (2, (67, 129)), (3, (40, 31)), (5, (300,))):
        base, fts = _models(t, shape, dtype, seed=30 + t)
        fts = [base + (0.5 + i) * (f - base) for i, f in enumerate(fts)]
        for k in (1.0, 0.3, 0.0):
            _assert_bit_equal(
                sce(base, fts, select_topk=k),
                _mk(base, fts, "sce", select_topk=k),
                f"sce t={t} topk={k} {dtype}",
            )


def test_by_name_through_merge_api() -> None:
    """The registered names run through ``orthokit.merge.merge`` with mergekit's config spellings."""
    base, fts = _models(3, (12, 10), torch.float32, seed=40)
    sd = [{"w": f} for f in fts]
    out = merge({"w": base}, sd, "model_stock", filter_wise=True)["w"]
    _assert_bit_equal(out, _mk(base, fts, "model_stock", filter_wise=True), "merge(model_stock)")
    out = merge({"w": base}, sd, "breadcrumbs_ties", density=0.5, gamma=0.1, weight=[1.0, 0.5, 2.0])["w"]
    ref = _mk(base, fts, "breadcrumbs_ties", density=0.5, gamma=0.1, weight=[1.0, 0.5, 2.0])
    _assert_bit_equal(out, ref, "merge(breadcrumbs_ties)")
    out = merge({"w": base}, sd, "sce", select_topk=0.5)["w"]
    _assert_bit_equal(out, _mk(base, fts, "sce", select_topk=0.5), "merge(sce)")


def test_bad_parameters_raise_one_line_errors() -> None:
    base, fts = _models(2, (5, 4), torch.float32, seed=0)
    with pytest.raises(ValueError, match="at least 2 fine-tuned models, got 1"):
        model_stock(base, fts[:1])
    with pytest.raises(ValueError, match="weights must be positive"):
        model_stock(base, fts, weights=[1.0, -1.0])
    with pytest.raises(ValueError, match=r"density ± epsilon must lie in \(0, 1\) \(model 1\)"):
        della(base, fts, density=[0.5, 0.9], epsilon=0.15)
    with pytest.raises(ValueError, match=r"density ± epsilon"):
        della_linear(base, fts, density=0.1, epsilon=0.1)
    with pytest.raises(ValueError, match=r"gamma must be in \[0, 1\]"):
        breadcrumbs(base, fts, density=0.5, gamma=1.5)
    with pytest.raises(ValueError, match=r"select_topk must lie in \[0, 1\]"):
        sce(base, fts, select_topk=1.5)
    with pytest.raises(ValueError, match="weights must be positive"):
        sce(base, fts, weights=[0.0, 1.0])
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        della(base, fts, density=0.5, generator=3)  # type: ignore[arg-type]


def test_della_single_entry_rows_and_density_edges() -> None:
    """A row of one entry (mergekit raises) is kept with probability ρ; ρ ≥ 1 / ρ ≤ 0 keep all / none."""
    d = torch.ones(4000, 1)
    out = magprune(d, 0.3, 0.1, rescale=False, generator=torch.Generator().manual_seed(0))
    assert abs(float((out != 0).double().mean()) - 0.3) < 0.04
    assert torch.equal(magprune(d, 1.0, 0.1), d)
    assert torch.equal(magprune(d, 0.0, 0.1), torch.zeros_like(d))
    f64 = torch.randn(30, 20, dtype=torch.float64)
    assert magprune(f64, 0.5, 0.1, generator=torch.Generator().manual_seed(0)).dtype == torch.float64
