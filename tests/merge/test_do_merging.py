"""DO-Merging: orthogonalization of LoRA factors, magnitude/direction decoupling, (A, B) input convention."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from orthokit.merge.do_merging import do_merging, lora_overlap, orthogonalize_factors
from orthokit.merge.registry import MERGE_METHODS

from .conformance import check_do_merging, ref_do_merging

D64 = torch.float64


def adapters(
    T: int = 3, r: int = 2, out: int = 6, inp: int = 9, dtype=D64
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.randn(r, inp, dtype=dtype), torch.randn(out, r, dtype=dtype)) for _ in range(T)]


def test_one_adapter_returns_its_delta() -> None:
    ((A, B),) = adapters(1)
    W0 = torch.randn(6, 9, dtype=D64)
    assert (do_merging(W0, [(A, B)]) - (W0 + B @ A)).abs().max() < 1e-12
    assert (do_merging(None, [(A, B)], lambda_=0.5) - 0.5 * B @ A).abs().max() < 1e-12


def test_identical_adapters_without_orthogonalization() -> None:
    ((A, B),) = adapters(1)
    out = do_merging(None, [(A, B)] * 3, orthogonalize=False)
    assert (out - B @ A).abs().max() < 1e-12


def test_decoupled_merge_formula() -> None:
    """Without orthogonalization: ΔW = mean magnitudes ⊙ unit(Σ w_t directions), column-wise."""
    ad = adapters(3)
    w = [1.0, 2.0, 0.5]
    Ws = [wi * B @ A for wi, (A, B) in zip(w, ad)]
    m = sum(W.norm(dim=0) for W in Ws) / sum(w)
    D = sum(wi * W / W.norm(dim=0) for wi, W in zip(w, Ws))
    ref = m * D / D.norm(dim=0)
    got = do_merging(None, ad, weights=w, orthogonalize=False)
    assert (got - ref).abs().max() < 1e-12
    # column magnitudes are the weighted means — not the sum (task arithmetic would add them up)
    assert torch.allclose(got.norm(dim=0), m, atol=1e-12)


def test_orthogonalization_reduces_overlap_and_stays_close() -> None:
    As = [torch.randn(2, 12, dtype=D64) for _ in range(3)]
    before = lora_overlap(As)
    after = orthogonalize_factors(As, steps=200)
    assert lora_overlap(after) < 0.5 * before
    for a, b in zip(As, after):
        assert float((a - b).norm() / a.norm()) < 0.5
    strong = orthogonalize_factors(As, steps=200, gamma=100.0)  # γ large ⇒ barely moves
    assert max(float((a - b).norm() / a.norm()) for a, b in zip(As, strong)) < 0.05
    Bs = [torch.randn(10, 2, dtype=D64) for _ in range(3)]
    assert lora_overlap(orthogonalize_factors(Bs, rows=False, steps=200), rows=False) < lora_overlap(
        Bs, rows=False
    )


def test_already_orthogonal_adapters_are_unchanged_and_sum_like() -> None:
    e = torch.eye(8, dtype=D64)
    ad = [(e[0:2] * 3.0, torch.randn(5, 2, dtype=D64)), (e[2:4], torch.randn(5, 2, dtype=D64))]
    B0 = [ad[0][1].clone(), ad[1][1].clone()]
    out_o = do_merging(None, ad, orthogonalize=True, steps=50)
    out_n = do_merging(None, ad, orthogonalize=False)
    assert torch.allclose(ad[1][1], B0[1])  # inputs are not modified in place
    # A's are orthogonal (zero gradient on the overlap of A); B's move slightly; result stays close
    assert float((out_o - out_n).norm() / out_n.norm()) < 0.2


def test_order_invariance_and_dtype() -> None:
    ad = adapters(3, dtype=torch.float32)
    a = do_merging(None, ad, weights=[1.0, 2.0, 3.0])
    b = do_merging(None, ad[::-1], weights=[3.0, 2.0, 1.0])
    assert a.dtype == torch.float32 and (a - b).abs().max() < 1e-5
    t = do_merging(torch.zeros(6, 9), ad, direction_merge="ties", density=0.5, steps=20)
    want = ref_do_merging(
        np.zeros((6, 9)),
        [(A.double().numpy(), B.double().numpy()) for A, B in ad],
        [1.0, 1.0, 1.0],
        1.0,
        True,
        1.0,
        20,
        1e-2,
        "ties",
        0.5,
    )
    assert t.dtype == torch.float32 and np.abs(t.double().numpy() - want).max() < 1e-4


def test_different_ranks_allowed() -> None:
    ad = [
        (torch.randn(2, 9, dtype=D64), torch.randn(6, 2, dtype=D64)),
        (torch.randn(4, 9, dtype=D64), torch.randn(6, 4, dtype=D64)),
    ]
    want = ref_do_merging(
        None, [(A.numpy(), B.numpy()) for A, B in ad], [1.0, 1.0], 1.0, True, 1.0, 100, 1e-2, "sum", 0.2
    )
    assert np.abs(do_merging(None, ad).numpy() - want).max() < 1e-9


def test_matches_float64_rederivation() -> None:
    """Orthogonalization (Adam by hand), decoupling and both direction rules vs an independent numpy version."""
    check_do_merging()


def test_bad_inputs() -> None:
    A, B = torch.randn(2, 9), torch.randn(6, 2)
    with pytest.raises(TypeError, match=r"\(A, B\) pair"):
        do_merging(None, [A])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="rank mismatch"):
        do_merging(None, [(A, torch.randn(6, 3))])
    with pytest.raises(ValueError, match="shape mismatch"):
        do_merging(None, [(A, B), (torch.randn(2, 8), B)])
    with pytest.raises(TypeError, match="dtype mismatch"):
        do_merging(None, [(A, B), (A.double(), B.double())])
    with pytest.raises(ValueError, match="shape mismatch: base"):
        do_merging(torch.zeros(5, 9), [(A, B)])
    with pytest.raises(TypeError, match="dtype mismatch: base"):
        do_merging(torch.zeros(6, 9, dtype=D64), [(A, B)])
    with pytest.raises(ValueError, match="non-empty"):
        do_merging(None, [])
    with pytest.raises(ValueError, match="non-negative"):
        do_merging(None, [(A, B), (A, B)], weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="gamma"):
        orthogonalize_factors([A, A], gamma=0.0)
    assert MERGE_METHODS.capabilities("do_merging")["inputs"] == "lora"
