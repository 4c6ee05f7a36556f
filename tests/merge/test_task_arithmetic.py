"""Task arithmetic: closed form, λ = 0, one model, and bit-equality with mergekit 0.1.5."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from orthokit.merge.task_arithmetic import generalized_task_arithmetic, task_arithmetic


def _models(t: int, shape=(33, 17), dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)
    fts = [
        (base.double() + 0.05 * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype)
        for _ in range(t)
    ]
    return base, fts


@given(
    t=st.integers(1, 5),
    lam=st.floats(-2, 2),
    normalize=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_closed_form_float64(t: int, lam: float, normalize: bool, seed: int) -> None:
    base, fts = _models(t, seed=seed)
    w = [0.25 + 0.5 * i for i in range(t)]
    out = task_arithmetic(base, fts, weights=w, lambda_=lam, normalize=normalize)
    ref = sum(wi * (f - base) for wi, f in zip(w, fts))
    if normalize:
        ref = ref / sum(w)
    torch.testing.assert_close(out, base + lam * ref, rtol=1e-12, atol=1e-12)


def test_lambda_zero_returns_base() -> None:
    base, fts = _models(3)
    assert torch.equal(task_arithmetic(base, fts, lambda_=0.0), base)


def test_one_model_returns_it() -> None:
    base, fts = _models(1, dtype=torch.float32)
    torch.testing.assert_close(task_arithmetic(base, fts), fts[0], rtol=0, atol=1e-6)


def test_normalize_zero_weight_sum_counts_as_one() -> None:
    base, fts = _models(2)
    out = task_arithmetic(base, fts, weights=[1.0, -1.0], normalize=True)
    torch.testing.assert_close(out, base + (fts[0] - fts[1]), rtol=1e-12, atol=1e-12)


def test_inputs_not_modified() -> None:
    base, fts = _models(3, dtype=torch.float32)
    copies = [base.clone()] + [f.clone() for f in fts]
    generalized_task_arithmetic(base, fts, [1.0, 2.0, 3.0], consensus=True, normalize=True)
    task_arithmetic(base, fts, weights=[1.0, 2.0, 3.0])
    for a, b in zip([base, *fts], copies):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("normalize", [False, True])
def test_bit_equal_to_mergekit(dtype: torch.dtype, normalize: bool) -> None:
    merge_tensors = pytest.importorskip("mergekit.merge_methods").merge_tensors
    for t in (1, 3, 5):
        base, fts = _models(t, shape=(65, 31), dtype=dtype, seed=t)
        w = [0.3 + 0.2 * i for i in range(t)]
        for lam in (1.0, 0.4):
            ours = task_arithmetic(base, fts, weights=w, lambda_=lam, normalize=normalize)
            ref = merge_tensors(
                [base, *fts],
                "task_arithmetic",
                base_index=0,
                parameters={"weight": w, "lambda": lam, "normalize": normalize},
            )
            assert ours.dtype == ref.dtype == dtype
            assert torch.equal(ours, ref), (dtype, t, lam, (ours.float() - ref.float()).abs().max())


def test_errors() -> None:
    base, fts = _models(2)
    with pytest.raises(ValueError, match="needs a base"):
        task_arithmetic(None, fts)
    with pytest.raises(ValueError, match="shape mismatch"):
        task_arithmetic(base, [fts[0], fts[1].T])
    with pytest.raises(TypeError, match="dtype mismatch"):
        task_arithmetic(base, [fts[0], fts[1].float()])
