"""Fake quantizers against closed-form pure-Python references (float64), plus mutants that must be caught."""

from __future__ import annotations

import math

import pytest
import torch

from orthokit.rotation import quant
from orthokit.rotation.quant import (
    check_bits,
    find_qparams,
    quantize_activation,
    quantize_kv,
    quantize_weight,
    ste,
)


def _ref_row(row: list[float], bits: int, sym: bool, shrink: float = 1.0) -> list[float]:
    """Closed-form grid of one row, element by element in Python floats (round() = half to even, like torch)."""
    lo = min(min(row), 0.0) * shrink
    hi = max(max(row), 0.0) * shrink
    if sym:
        maxq = 2 ** (bits - 1) - 1
        amax = max(abs(lo), hi)
        s = amax / maxq if amax > 0 else 1.0
        return [s * min(max(round(x / s), -maxq - 1), maxq) for x in row]
    maxq = 2**bits - 1
    if lo == 0.0 and hi == 0.0:
        lo, hi = -1.0, 1.0
    s = (hi - lo) / maxq
    z = round(-lo / s)
    return [s * (min(max(round(x / s) + z, 0), maxq) - z) for x in row]


def _ref_weight(
    w: torch.Tensor, bits: int, group: int | None, sym: bool, shrink: float = 1.0
) -> torch.Tensor:
    out = []
    for r in w.tolist():
        g = group or len(r)
        q: list[float] = []
        for j in range(0, len(r), g):
            q += _ref_row(r[j : j + g], bits, sym, shrink)
        out.append(q)
    return torch.tensor(out, dtype=torch.float64)


def _matches_reference(fn, bits: int, sym: bool, group: int | None) -> bool:
    g = torch.Generator().manual_seed(bits * 10 + sym)
    w = torch.randn(7, 24, generator=g, dtype=torch.float64) * torch.rand(
        7, 1, generator=g, dtype=torch.float64
    )
    return torch.allclose(
        fn(w, bits, group_size=group, sym=sym), _ref_weight(w, bits, group, sym), rtol=0, atol=1e-12
    )


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("group", [None, 8])
def test_weight_matches_closed_form(bits: int, sym: bool, group: int | None) -> None:
    assert _matches_reference(quantize_weight, bits, sym, group)


def test_mutant_quantizer_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    # Mutant 1: symmetric maxq = 2^b - 1 (the asymmetric range) -> a scale twice too fine.
    monkeypatch.setattr(quant, "_maxq", lambda bits, sym: 2**bits - 1)
    assert not _matches_reference(quantize_weight, 4, True, None)
    monkeypatch.undo()
    # Mutant 2: the zero point is not rounded (a non-integer zero is not a valid integer grid).
    orig = quant._params_from_range

    def bad(xmin, xmax, bits, sym):
        s, z = orig(xmin, xmax, bits, sym)
        return s, (-xmin / s if not sym else z)

    monkeypatch.setattr(quant, "_params_from_range", bad)
    assert not _matches_reference(quantize_weight, 3, False, 8)


def test_grid_size_and_error_bound() -> None:
    w = torch.randn(16, 64, dtype=torch.float64)
    for bits in (2, 3, 4):
        q = quantize_weight(w, bits)
        for r in range(16):
            assert q[r].unique().numel() <= 2**bits
        scale = w.abs().amax(1, keepdim=True) / (2 ** (bits - 1) - 1)
        assert bool(((q - w).abs() <= scale / 2 + 1e-12).all())


def test_zero_rows_and_dtype() -> None:
    w = torch.randn(4, 8)
    w[1] = 0
    for sym in (True, False):
        q = quantize_weight(w, 4, sym=sym)
        assert q.dtype == torch.float32 and bool((q[1] == 0).all())
    b = torch.randn(4, 8).to(torch.bfloat16)
    assert quantize_weight(b, 4).dtype == torch.bfloat16
    assert quantize_activation(b, 4).dtype == torch.bfloat16
    x = torch.zeros(2, 5)
    assert bool((quantize_activation(x, 4, sym=False) == 0).all())


def test_bits16_identity() -> None:
    w = torch.randn(3, 4)
    q = quantize_weight(w, 16)
    assert q is not w and torch.equal(q, w)
    assert quantize_activation(w, 16) is w


def test_fixed_clip_ratio_matches_reference() -> None:
    w = torch.randn(5, 16, dtype=torch.float64)
    for sym in (True, False):
        ref = _ref_weight(w, 4, None, sym, shrink=0.8)
        assert torch.allclose(quantize_weight(w, 4, sym=sym, clip=0.8), ref, rtol=0, atol=1e-12)


def test_mse_clip_is_the_grid_optimum() -> None:
    g = torch.Generator().manual_seed(3)
    w = torch.randn(6, 32, generator=g, dtype=torch.float64)
    w[0, 0] = 9.0  # an outlier makes shrinking worthwhile
    for sym in (True, False):
        q = quantize_weight(w, 3, sym=sym, clip=True)
        for r in range(6):
            row = w[r].tolist()
            errs = []
            for i in range(80):
                qr = _ref_row(row, 3, sym, 1 - i / 100)
                errs.append(sum(abs(a - b) ** 2.4 for a, b in zip(qr, row)))
            best = min(range(80), key=lambda i: errs[i])  # first minimum, like the strict "<" update
            ref = torch.tensor(_ref_row(row, 3, sym, 1 - best / 100), dtype=torch.float64)
            assert torch.allclose(q[r], ref, rtol=0, atol=1e-12)
        assert (q - w).abs().pow(2.4).sum() < (quantize_weight(w, 3, sym=sym) - w).abs().pow(2.4).sum()


def test_activation_per_token_reference() -> None:
    x = torch.randn(2, 3, 10, dtype=torch.float64)
    for sym in (True, False):
        got = quantize_activation(x, 4, sym=sym, clip_ratio=0.9)
        ref = _ref_weight(x.reshape(-1, 10), 4, None, sym, shrink=0.9).reshape(x.shape)
        assert torch.allclose(got, ref, rtol=0, atol=1e-12)


def test_kv_per_head_per_token_reference() -> None:
    k = torch.randn(1, 2, 3, 8, dtype=torch.float64)
    v = torch.randn(1, 2, 3, 8, dtype=torch.float64) * 3
    kq, vq = quantize_kv(k, v, 3, group_size=4)
    assert torch.allclose(kq, _ref_weight(k.reshape(-1, 8), 3, 4, False).reshape(k.shape), rtol=0, atol=1e-12)
    assert torch.allclose(vq, _ref_weight(v.reshape(-1, 8), 3, 4, False).reshape(v.shape), rtol=0, atol=1e-12)
    kq, _ = quantize_kv(k, v, 4, sym=True)
    assert torch.allclose(
        kq, _ref_weight(k.reshape(-1, 8), 4, None, True).reshape(k.shape), rtol=0, atol=1e-12
    )


def test_find_qparams_asym_zero_is_integer() -> None:
    s, z = find_qparams(torch.randn(9, 12, dtype=torch.float64), 4, sym=False)
    assert torch.equal(z, z.round()) and bool((z >= 0).all() and (z <= 15).all()) and bool((s > 0).all())


def test_ste_gradient() -> None:
    x = torch.randn(4, 6, requires_grad=True)
    y = ste(x, quantize_activation(x, 3))
    assert torch.equal(y.detach(), quantize_activation(x.detach(), 3))
    (y * torch.arange(6.0)).sum().backward()
    assert torch.equal(x.grad, torch.arange(6.0).expand(4, 6))


@pytest.mark.parametrize(
    ("call", "exc", "msg"),
    [
        (lambda: quantize_weight(torch.randn(2, 4), 1), ValueError, "bits"),
        (lambda: quantize_weight(torch.randn(2, 4), 9), ValueError, "bits"),
        (lambda: quantize_weight(torch.randn(2, 4), 4.0), TypeError, "bits"),
        (lambda: quantize_weight(torch.randn(2, 4), True), TypeError, "bits"),
        (lambda: quantize_weight(torch.randn(2, 6), 4, group_size=4), ValueError, "group_size"),
        (lambda: quantize_weight(torch.randn(2, 6), 4, group_size=0), ValueError, "group_size"),
        (lambda: quantize_weight(torch.tensor([[1.0, math.nan]]), 4), ValueError, "non-finite"),
        (lambda: quantize_weight(torch.randn(2, 4), 4, clip=1.5), ValueError, "clip"),
        (lambda: quantize_weight(torch.randn(4), 4), ValueError, "2-D"),
        (lambda: quantize_weight(torch.ones(2, 2, dtype=torch.int64), 4), TypeError, "floating"),
        (lambda: quantize_activation(torch.randn(2, 4), 4, clip_ratio=0.0), ValueError, "clip_ratio"),
        (lambda: quantize_kv(torch.randn(2, 6), torch.randn(2, 6), 4, group_size=4), ValueError, "head_dim"),
        (lambda: check_bits(None, "kv_bits"), TypeError, "kv_bits"),
        (lambda: ste(torch.randn(2), torch.randn(3)), ValueError, "shape"),
    ],
)
def test_errors(call, exc, msg) -> None:
    with pytest.raises(exc, match=msg):
        call()
