"""orthokit.bench.report.time_interleaved: rotated order, medians, per-round ratios (fake clock, no sleeping)."""

from __future__ import annotations

import pytest

import orthokit.bench.report as R


def test_time_interleaved_rotates_and_uses_per_round_ratios(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]
    order: list[str] = []
    cost = {"a": 1.0, "b": 2.0, "c": 3.0}

    def make(name: str):
        def fn() -> None:
            order.append(name)
            slow = 10.0 if len(order) > 9 else 1.0  # the machine gets 10x slower in the last round
            clock[0] += cost[name] * slow

        return fn

    monkeypatch.setattr(R.time, "perf_counter", lambda: clock[0])
    raw: dict[str, list[float]] = {}
    med, ratios = R.time_interleaved(
        {k: make(k) for k in cost}, rounds=3, warmup=1, anchor="a", times_out=raw
    )
    assert order[:3] == ["a", "b", "c"]  # warm-up
    assert order[3:6] == ["a", "b", "c"] and order[6:9] == ["b", "c", "a"] and order[9:] == ["c", "a", "b"]
    assert raw["a"] == [1.0, 1.0, 10.0] and raw["c"] == [3.0, 3.0, 30.0]
    assert med == {"a": 1.0, "b": 2.0, "c": 3.0}
    assert ratios == {"a": 1.0, "b": 2.0, "c": 3.0}  # per-round ratios are immune to the slow round
    assert R.time_interleaved({"x": lambda: None}, rounds=2, warmup=0)[1] == {}  # no anchor → no ratios
