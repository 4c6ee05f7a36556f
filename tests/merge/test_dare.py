"""DARE: keep rate, L1 rescale, seeding, what holds under model permutation, mergekit equality."""

from __future__ import annotations

import pytest
import torch

from orthokit.merge.dare import dare_linear, dare_ties, random_drop
from orthokit.merge.task_arithmetic import task_arithmetic
from orthokit.merge.ties import ties


def _models(t: int, shape=(64, 48), dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(*shape, generator=g, dtype=torch.float64)
    fts = [base + 0.05 * torch.randn(*shape, generator=g, dtype=torch.float64) for _ in range(t)]
    return base.to(dtype), [f.to(dtype) for f in fts]


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_random_drop_rate_and_l1() -> None:
    d = torch.randn(200_000, dtype=torch.float64)
    out = random_drop(d, 0.1, rescale=True, generator=_g(123))  # not the seed that drew d (same stream!)
    frac = float((out != 0).double().mean())
    assert abs(frac - 0.1) < 5 * (0.1 * 0.9 / 200_000) ** 0.5
    torch.testing.assert_close(out.abs().sum(), d.abs().sum())
    kept = out != 0
    # kept entries are scaled by one common factor ≈ 1/density
    ratio = out[kept] / d[kept]
    torch.testing.assert_close(ratio, torch.full_like(ratio, float(ratio[0])))
    assert abs(float(ratio[0]) - 10.0) < 0.5
    raw = random_drop(d, 0.1, rescale=False, generator=_g(123))
    assert torch.equal(raw[kept], d[kept]) and torch.equal(raw != 0, kept)


def test_seeded_determinism() -> None:
    base, fts = _models(3)
    a = dare_ties(base, fts, density=0.3, generator=_g(5))
    b = dare_ties(base, fts, density=0.3, generator=_g(5))
    c = dare_ties(base, fts, density=0.3, generator=_g(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_density_one_reduces_to_ties_and_task_arithmetic() -> None:
    base, fts = _models(3)
    w = [0.5, 1.0, 2.0]
    torch.testing.assert_close(
        dare_ties(base, fts, weights=w, generator=_g(0)), ties(base, fts, weights=w, normalize=False)
    )
    torch.testing.assert_close(
        dare_linear(base, fts, weights=w, generator=_g(0)), task_arithmetic(base, fts, weights=w)
    )


def test_permutation_what_holds() -> None:
    """order_invariant=False: the t-th model gets the t-th draw. Permuting models changes the result for
    density < 1, but (a) density 1 is invariant, (b) the result is a deterministic function of (seed, order)."""
    base, fts = _models(3)
    perm = [2, 0, 1]
    a = dare_linear(base, fts, density=0.5, generator=_g(1))
    b = dare_linear(base, [fts[i] for i in perm], density=0.5, generator=_g(1))
    assert not torch.equal(a, b)
    a1 = dare_ties(base, fts, density=1.0, generator=_g(1))
    b1 = dare_ties(base, [fts[i] for i in perm], density=1.0, generator=_g(1))
    torch.testing.assert_close(a1, b1, rtol=1e-12, atol=1e-12)


def test_one_model_in_expectation() -> None:
    """One model, dare_linear: E[θ] = θ₀ + τ; the L1 rescale makes the total |Δ| exact."""
    base, fts = _models(1, shape=(200, 200))
    out = dare_linear(base, fts, density=0.5, generator=_g(3))
    torch.testing.assert_close((out - base).abs().sum(), (fts[0] - base).abs().sum())
    assert abs(float((out - base).sum() - (fts[0] - base).sum())) < 0.05 * float((fts[0] - base).abs().sum())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("method", ["dare_ties", "dare_linear"])
def test_bit_equal_to_mergekit(method: str, dtype: torch.dtype) -> None:
    merge_tensors = pytest.importorskip("mergekit.merge_methods").merge_tensors
    fn = {"dare_ties": dare_ties, "dare_linear": dare_linear}[method]
    for t in (1, 3):
        base, fts = _models(t, shape=(65, 33), dtype=dtype, seed=t)
        w = [0.3 + 0.2 * i for i in range(t)]
        d = [0.2 + 0.3 * i for i in range(t)]
        for normalize in (False, True):
            ours = fn(base, fts, weights=w, density=d, lambda_=0.7, normalize=normalize, generator=_g(11))
            torch.manual_seed(11)
            ref = merge_tensors(
                [base, *fts],
                method,
                base_index=0,
                parameters={"weight": w, "density": d, "lambda": 0.7, "normalize": normalize},
            )
            assert torch.equal(ours, ref), (t, normalize, (ours.float() - ref.float()).abs().max())


def test_errors() -> None:
    base, fts = _models(2)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        dare_ties(base, fts, density=0.5, generator=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shape mismatch"):
        dare_linear(base, [fts[0], fts[1][1:]])


def test_dare_by_name_equals_the_variants():
    from orthokit.merge import dare, dare_linear, dare_ties

    g = torch.Generator().manual_seed(0)
    base = torch.randn(40, 30, generator=g)
    fts = [base + torch.randn(40, 30, generator=g) for _ in range(3)]
    for cons, fn in (("ties", dare_ties), ("linear", dare_linear)):
        a = dare(base, fts, consensus=cons, density=0.3, generator=torch.Generator().manual_seed(5))
        b = fn(base, fts, density=0.3, generator=torch.Generator().manual_seed(5))
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="consensus"):
        dare(base, fts, consensus="mean")
