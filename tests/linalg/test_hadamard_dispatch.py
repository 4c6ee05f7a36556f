"""hadamard_transform(method="auto") follows the measured dense-vs-butterfly decision of orthokit.linalg.dispatch.

No test asserts real speed: timings are injected by a fake ``_time_once``; the path taken is observed by spying the
kernel dispatcher ``_apply_kernel``.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from _dispatch_helpers import _fresh  # noqa: F401  (autouse fixture)
from _dispatch_helpers import fake_clock as _fake_times

from orthokit.linalg import dispatch, hadamard_matrix, hadamard_transform

Hm = importlib.import_module("orthokit.linalg.hadamard")
CPU = torch.device("cpu")


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record which kernel hadamard_transform runs ("fwht", "dense" or "kron")."""
    taken: list[str] = []
    kernel = Hm._apply_kernel

    def spy(y: torch.Tensor, method: str, transpose: bool) -> torch.Tensor:
        taken.append(method)
        return kernel(y, method, transpose)

    monkeypatch.setattr(Hm, "_apply_kernel", spy)
    return taken


def _reference(x: torch.Tensor) -> torch.Tensor:
    return x.double() @ hadamard_matrix(x.shape[-1], dtype=torch.float64)


@pytest.mark.parametrize(
    ("n", "times", "expected"),
    [
        (128, {"dense": 1.0, "fwht": 0.5, "kron": 2.0}, "fwht"),  # fixed rule says dense; fwht wins
        (128, {"dense": 1.0, "fwht": 3.0, "kron": 2.0}, "dense"),
        (1024, {"dense": 0.5, "fwht": 1.0, "kron": 1.0}, "dense"),  # fixed rule says kron; dense wins
        (1024, {"dense": 2.0, "fwht": 1.0, "kron": 1.5}, "fwht"),
        (1024, {"dense": 2.0, "fwht": 1.0, "kron": 0.5}, "kron"),
        (768, {"dense": 2.0, "fwht": 1.0, "kron": 0.5}, "kron"),  # Paley order 12·64
        (768, {"dense": 0.2, "fwht": 1.0, "kron": 0.5}, "dense"),
    ],
)
def test_auto_follows_measured_decision(
    monkeypatch: pytest.MonkeyPatch, n: int, times: dict[str, float], expected: str
) -> None:
    _fake_times(monkeypatch, times)
    taken = _spy(monkeypatch)
    x = torch.randn(256, n)
    y = hadamard_transform(x)
    assert taken == [expected], dispatch.dispatch_report()
    assert (y.double() - _reference(x)).abs().max() < 1e-5
    d = dispatch.dispatch_decisions()[-1]
    assert (
        d.kind == "hadamard"
        and d.choice == expected
        and d.key == ("hadamard", "cpu", n, 256, torch.float32, torch.get_num_threads())
    )
    assert set(d.times_ms) == {"dense", "fwht", "kron"}


def test_single_factor_orders_have_no_kron_candidate(monkeypatch: pytest.MonkeyPatch) -> None:
    """n = 64 (one Sylvester factor) and n = 44·... have kron == dense: only dense and fwht are timed."""
    calls = _fake_times(monkeypatch, {"dense": 1.0, "fwht": 0.5})
    assert dispatch.choose_hadamard_method(CPU, 64, 4096, torch.float32) == "fwht"
    assert dispatch.choose_hadamard_method(CPU, 44, 4096, torch.float32) == "fwht"  # Paley I core, b = 0
    assert set(calls) == {"dense", "fwht"}


def test_near_tie_keeps_fixed_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_times(monkeypatch, {"dense": 1.0, "fwht": 0.97, "kron": 1.2})  # 3 % faster: below MIN_GAIN
    assert dispatch.choose_hadamard_method(CPU, 128, 256, torch.float32) == "dense"
    assert "kept" in dispatch.dispatch_decisions()[-1].reason


def test_explicit_method_is_never_second_guessed(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_times(monkeypatch, {"dense": 1.0, "fwht": 0.1, "kron": 0.1})
    taken = _spy(monkeypatch)
    x = torch.randn(64, 256)
    hadamard_transform(x, method="dense")
    assert taken == ["dense"] and calls == [] and dispatch.dispatch_decisions() == []


def test_probing_off_is_the_fixed_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_times(monkeypatch, {"dense": 9.0, "fwht": 0.1, "kron": 5.0})
    dispatch.set_probing(False)
    taken = _spy(monkeypatch)
    hadamard_transform(torch.randn(256, 128))
    hadamard_transform(torch.randn(256, 256))
    hadamard_transform(torch.randn(256, 768))
    assert taken == ["dense", "kron", "kron"] and calls == []
    assert all("probing off" in d.reason for d in dispatch.dispatch_decisions())
    monkeypatch.setenv("ORTHOKIT_DISPATCH", "fixed")
    dispatch.set_probing(None)
    assert dispatch.choose_hadamard_method(CPU, 128, 4096, torch.float32) == "dense" and calls == []


def test_tiny_large_and_accelerator_use_fixed_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_times(monkeypatch, {"dense": 9.0, "fwht": 0.1, "kron": 1.0})
    assert dispatch.choose_hadamard_method(CPU, 64, 4, torch.float32) == "dense"  # 256 entries: tiny
    assert dispatch.choose_hadamard_method(torch.device("cuda"), 256, 4096, torch.float32) == "kron"
    assert calls == []
    assert dispatch.choose_hadamard_method(CPU, 16384, 64, torch.float32) == "fwht"  # n > 8192: never dense
    assert set(calls) == {"fwht", "kron"}
    with pytest.raises(ValueError, match="n must be"):
        dispatch.choose_hadamard_method(CPU, 0, 4, torch.float32)
    with pytest.raises(ValueError, match="rows must be"):
        dispatch.choose_hadamard_method(CPU, 64, -1, torch.float32)


def test_decision_is_cached_per_key(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_times(monkeypatch, {"dense": 1.0, "fwht": 0.5, "kron": 0.7})
    hadamard_transform(torch.randn(100, 256))
    n = len(calls)
    assert n > 0
    hadamard_transform(torch.randn(2, 64, 256))  # 128 rows: same bucket as 100
    hadamard_transform(torch.randn(256, 100), dim=0)  # same n and rows bucket, other dim
    assert len(calls) == n
    hadamard_transform(torch.randn(100, 256, dtype=torch.float64))  # another dtype: probes again
    assert len(calls) == 2 * n
    hadamard_transform(torch.randn(5000, 256))  # rows bucket capped at 4096
    hadamard_transform(torch.randn(9000, 256))
    assert len(calls) == 3 * n
    keys = [d.key for d in dispatch.dispatch_decisions()]
    assert ("hadamard", "cpu", 256, 4096, torch.float32, torch.get_num_threads()) in keys
    assert "| hadamard |" in dispatch.dispatch_report()


def test_real_probe_runs_all_and_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Real timing (no fake): every candidate runs on a bounded input, the result is right either way."""
    monkeypatch.setattr(Hm, "_dense_matrix", Hm._dense_matrix)  # restored afterwards
    Hm._dense_matrix.cache_clear()
    x = torch.randn(4096, 1024)
    y = hadamard_transform(x)
    d = dispatch.dispatch_decisions()[-1]
    assert d.choice in ("dense", "fwht", "kron") and set(d.times_ms) <= {"dense", "fwht", "kron"}
    assert d.probe_shape == (256, 1024)  # 2^18 entries, not 4096 rows
    assert (y.double() - _reference(x)).abs().max() < 1e-5
    if d.choice != "dense":  # the probe's dense matrix was not left in the cache
        assert Hm._dense_matrix.cache_info().currsize == 0


# Max error vs float64, scaled by max(1, max|ref|). The butterfly adds log2(n) times per entry, so float32 stays
# under 1e-6 up to n = 4096; a float32 BLAS dot product of length n accumulates more (measured here up to 8.4e-6
# absolute, 2.4e-6 relative, at n = 4096 with 3 rows), hence 1e-5 for float32 dense.
TOL = {
    (torch.float32, "fwht"): 1e-6,
    (torch.float32, "dense"): 1e-5,
    (torch.float32, "kron"): 1e-5,
    (torch.float64, "fwht"): 1e-12,
    (torch.float64, "dense"): 1e-12,
    (torch.float64, "kron"): 1e-12,
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dense_and_fwht_agree_with_reference(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    for k in range(1, 13):
        n = 2**k
        x = torch.randn(3, n, generator=g, dtype=torch.float64).to(dtype)
        ref = _reference(x)
        out = {m: hadamard_transform(x, method=m).double() for m in ("dense", "fwht", "kron")}
        scale = max(1.0, ref.abs().max().item())
        for method, y in out.items():
            err = (y - ref).abs().max().item()
            assert err < TOL[dtype, method] * scale, (n, method, err)
        assert (out["dense"] - out["fwht"]).abs().max().item() < TOL[dtype, "dense"] * scale


def test_decision_is_per_thread_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process that changes torch's thread count gets a fresh decision, not the other count's stale one."""
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        _fake_times(monkeypatch, {"dense": 1.0, "fwht": 0.5, "kron": 0.7})
        hadamard_transform(torch.randn(100, 256))
        torch.set_num_threads(2)
        _fake_times(monkeypatch, {"dense": 0.2, "fwht": 0.5, "kron": 0.7})
        taken = _spy(monkeypatch)
        hadamard_transform(torch.randn(100, 256))
        assert taken == ["dense"], dispatch.dispatch_report()  # the stale 1-thread choice was fwht
        keys = {d.key[-1]: d.choice for d in dispatch.dispatch_decisions() if d.kind == "hadamard"}
        assert keys == {1: "fwht", 2: "dense"}
    finally:
        torch.set_num_threads(old)
