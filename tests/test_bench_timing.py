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


def test_merge_speed_rounds_use_medians_and_a_failed_round_fails_the_row() -> None:
    from orthokit.bench.merge import _median_run

    def run(wall: float, anon: int, rc: int = 0) -> dict:
        return dict(rc=rc, wall_s=wall, peak_anon_bytes=anon, peak_file_bytes=1, peak_rss_bytes=2, cmd="x")

    med = _median_run([run(3.0, 30), run(1.0, 10), run(2.0, 50)])
    assert med["wall_s"] == 2.0 and med["peak_anon_bytes"] == 30 and med["rounds_wall_s"] == [3.0, 1.0, 2.0]
    assert _median_run([run(1.0, 1), run(9.0, 9, rc=1)])["rc"] == 1


@pytest.mark.parametrize(
    "method", ["task_arithmetic", "ties", "dare_ties", "linear", "slerp", "model_stock", "della"]
)
def test_merge_speed_yaml_is_a_valid_mergekit_config(method: str, tmp_path) -> None:
    yaml = pytest.importorskip("yaml")
    mk_config = pytest.importorskip("mergekit.config")
    from orthokit.bench.merge import _yaml

    text = _yaml(method, tmp_path / "base", [tmp_path / f"ft{i}" for i in range(3)])
    cfg = mk_config.MergeConfiguration.model_validate(yaml.safe_load(text))  # mergekit 0.1.5's own validator
    assert cfg.merge_method == method and cfg.dtype == "float32"
