"""Measured dispatch (orthokit.linalg.dispatch): probing picks the faster candidate, caches, obeys overrides.

No test asserts real speed: timings are injected (fake clock) or one candidate is made artificially slow by a
large sleep.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from _dispatch_helpers import _fresh  # noqa: F401  (autouse fixture)
from _dispatch_helpers import fake_clock as _fake_clock

import orthokit
from orthokit.linalg import dispatch

P = importlib.import_module("orthokit.linalg.polar")
CPU = torch.device("cpu")


def test_dtype_probe_picks_faster_candidate(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_clock(monkeypatch, {"fp32": 1.0, "bf16": 0.4})
    assert dispatch.choose_dtype(CPU, (768, 3072)) == torch.bfloat16
    dispatch.clear_cache()
    _fake_clock(monkeypatch, {"fp32": 1.0, "bf16": 9.0})
    assert dispatch.choose_dtype(CPU, (768, 3072)) == torch.float32


def test_near_tie_keeps_fixed_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_clock(monkeypatch, {"fp32": 1.0, "bf16": 0.97})  # 3 % faster: below MIN_GAIN
    assert dispatch.choose_dtype(CPU, (512, 512)) == torch.float32
    assert "kept" in dispatch.dispatch_decisions()[-1].reason


def test_second_call_does_not_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_clock(monkeypatch, {"fp32": 1.0, "bf16": 0.5})
    dispatch.choose_dtype(CPU, (768, 768))
    n = len(calls)
    assert n > 0
    dispatch.choose_dtype(CPU, (768, 768))
    dispatch.choose_dtype(CPU, (700, 1000))  # same bucket (1024, 1024): cached
    assert len(calls) == n
    dispatch.choose_dtype(CPU, (256, 256))  # another shape class: probes again
    assert len(calls) > n


def test_probe_is_short(monkeypatch: pytest.MonkeyPatch) -> None:
    """A losing candidate is dropped after its warm-up; nothing runs more than warm-up + PROBE_RUNS times."""
    calls = _fake_clock(monkeypatch, {"fp32": 1.0, "bf16": 20.0})
    dispatch.choose_dtype(CPU, (768, 768))
    assert calls.count("bf16") == 1
    assert calls.count("fp32") == 1 + dispatch.PROBE_RUNS


class _FakeClock:
    """A clock that only advances when a (patched) kernel says so: deterministic on a loaded machine."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _slow(monkeypatch: pytest.MonkeyPatch, kernel: str, cost: float) -> _FakeClock:
    clock = _FakeClock()
    monkeypatch.setattr(dispatch, "_clock", clock)
    real = getattr(P, kernel)

    def slow(*a, **k):  # noqa: ANN002, ANN003
        clock.now += cost
        return real(*a, **k)

    monkeypatch.setattr(P, kernel, slow)
    return clock


def test_artificially_slow_batched_kernel_loses(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real kernels run, the batched one is made slow (on a clock that only it advances): loop wins."""
    _slow(monkeypatch, "_ns_3d", 1.0)
    X = torch.randn(3, 128, 160)
    assert P._resolve_batch_mode("auto", X) == "loop", dispatch.dispatch_report()
    assert dispatch.dispatch_decisions()[-1].times_ms["batched"] >= 1000


def test_artificially_slow_loop_loses(monkeypatch: pytest.MonkeyPatch) -> None:
    _slow(monkeypatch, "_ns_2d", 1.0)
    assert P._resolve_batch_mode("auto", torch.randn(3, 128, 160)) == "batched"


def test_artificially_slow_bf16_loses(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _FakeClock()
    monkeypatch.setattr(dispatch, "_clock", clock)
    real = P._ns_2d

    def kernel(X, *a, **k):  # noqa: ANN001, ANN002, ANN003
        clock.now += 5.0 if X.dtype == torch.bfloat16 else 1.0
        return real(X, *a, **k)

    monkeypatch.setattr(P, "_ns_2d", kernel)
    assert dispatch.choose_dtype(CPU, (384, 512)) == torch.float32


def test_gram_only_among_accurate_candidates(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_clock(monkeypatch, {"gram": 0.1, "standard": 1.0})
    coeffs = ((3.0, -3.2, 1.2),) * 5
    # bf16: Gram is not accurate enough → never probed, never chosen, however fast
    assert dispatch.choose_gram(CPU, 256, 2048, 1, torch.bfloat16, coeffs, (2, 4)) is False
    assert calls == []
    # square fp32: aspect ratio < 4 → not a candidate
    assert dispatch.choose_gram(CPU, 512, 512, 1, torch.float32, coeffs, (2, 4)) is False
    # wide fp32: accurate, and faster here
    assert dispatch.choose_gram(CPU, 256, 2048, 1, torch.float32, coeffs, (2, 4)) is True
    dispatch.clear_cache()
    _fake_clock(monkeypatch, {"gram": 2.0, "standard": 1.0})
    assert dispatch.choose_gram(CPU, 256, 2048, 1, torch.float32, coeffs, (2, 4)) is False


def test_overrides_win(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_clock(monkeypatch, {"fp32": 1.0, "bf16": 0.1, "loop": 1.0, "batched": 0.1})
    monkeypatch.setenv("ORTHOKIT_CPU_BF16", "0")
    assert dispatch.choose_dtype(CPU, (768, 768)) == torch.float32
    monkeypatch.setenv("ORTHOKIT_CPU_BF16", "1")
    assert dispatch.choose_dtype(CPU, (768, 768)) == torch.bfloat16
    assert calls == []  # the env override never probes
    # explicit arguments are never second-guessed
    assert P._resolve_batch_mode("loop", torch.zeros(4, 256, 256)) == "loop"
    assert P._resolve_gram(False, 64, 1024, torch.zeros(64, 1024)) is False
    assert calls == []


def test_probing_off_is_the_fixed_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_clock(monkeypatch, {"fp32": 1.0, "bf16": 0.1, "loop": 1.0, "batched": 0.1})
    dispatch.set_probing(False)
    assert not dispatch.probing_enabled()
    assert dispatch.choose_dtype(CPU, (768, 768)) == torch.float32
    assert dispatch.choose_batch_mode(CPU, 768, 768, 12, torch.float32) == "loop"
    assert dispatch.choose_batch_mode(CPU, 32, 64, 12, torch.float32) == "batched"
    assert calls == []
    dispatch.set_probing(None)
    monkeypatch.setenv("ORTHOKIT_DISPATCH", "fixed")
    assert not dispatch.probing_enabled()
    monkeypatch.setenv("ORTHOKIT_DISPATCH", "probe")
    assert dispatch.probing_enabled()


def test_tiny_shapes_skip_probing(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_clock(monkeypatch, {"fp32": 1.0, "bf16": 0.1})
    assert dispatch.choose_dtype(CPU, (64, 128)) == torch.float32
    assert calls == []


def test_accelerators_use_bf16_and_batch_without_probing(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_clock(monkeypatch, {})
    cuda = torch.device("cuda")
    assert dispatch.choose_dtype(cuda, (4096, 4096)) == torch.bfloat16
    assert dispatch.choose_batch_mode(cuda, 4096, 4096, 8, torch.bfloat16) == "batched"
    assert calls == []


def test_report_lists_decisions_with_times_and_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_clock(monkeypatch, {"fp32": 0.002, "bf16": 0.001})
    dispatch.choose_dtype(CPU, (768, 3072))
    rep = dispatch.dispatch_report()
    line = [r for r in rep.splitlines() if r.startswith("| dtype")][0]
    assert "bfloat16" in line and "fp32 2.00" in line and "bf16 1.00" in line and "measured" in line
    assert "1024, 4096" in line  # the bucketed shape class


def test_polar_auto_dtype_uses_dispatch_and_output_is_right(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_clock(monkeypatch, {"fp32": 1.0, "bf16": 9.0})
    G = torch.randn(160, 200, dtype=torch.float64)
    X = orthokit.polar(G.float(), dtype="auto")
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    cos = float((X.double() * (U @ Vh)).sum() / (X.double().norm() * (U @ Vh).norm()))
    assert cos > 0.99
    assert any(d.kind == "dtype" and d.choice == torch.float32 for d in dispatch.dispatch_decisions())


def test_polar_result_does_not_depend_on_dispatch_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the probe picks (batched or loop), the result is the same polar factor (fp32 round-off)."""
    G = torch.randn(3, 128, 160)
    ref = torch.stack([orthokit.polar(g.double()) for g in G])  # float64, one matrix at a time
    for table in ({"loop": 1.0, "batched": 2.0}, {"loop": 2.0, "batched": 1.0}):
        dispatch.clear_cache()
        _fake_clock(monkeypatch, table)
        torch.testing.assert_close(orthokit.polar(G).double(), ref, atol=2e-4, rtol=0)
