"""The vsa benchmark's quick path on tiny sizes: files written, sanity numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orthokit.bench.vsa import Config, bag_of_keys, generate_records, run

TINY = Config(
    depth_d=64,
    depth_max=6,
    depth_seeds=2,
    acc_dims=(128, 512),
    acc_records=3,
    knn_d=256,
    knn_families=4,
    time_dims=(128,),
    time_batch=8,
    time_rounds=2,
)


def test_quick_run_writes_files_and_sane_numbers(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    res = run(tmp_path, quick=True, cfg=TINY, log=lambda s: None)
    for ext in ("md", "json", "png"):
        assert (tmp_path / f"vsa_quick.{ext}").stat().st_size > 0
    data = json.loads((tmp_path / "vsa_quick.json").read_text())
    dep = data["depth"]
    for b in ("haar", "hadamard"):
        assert (
            max(abs(n - 1) for n in dep[b]["norm_mean"]) < 1e-9 and dep[b]["unbind_cos_mean"][-1] > 1 - 1e-9
        )
    assert max(abs(n - 1) for n in dep["gaussian"]["norm_mean"]) > 1e-3
    assert dep["gaussian"]["unbind_cos_mean"][-1] < 0.9
    acc = {(r["d"], r["binder"]): r["accuracy"] for r in res["accuracy"]}
    assert acc[(512, "hadamard")] > acc[(128, "hadamard")] and acc[(512, "haar")] > 0.7
    assert {r["method"] for r in res["knn"]} == {"haar", "hadamard", "gaussian", "bag_of_keys"}
    assert all(r["ratio_to_haar"] > 0 for r in res["timing"])
    assert "Machine:" in (tmp_path / "vsa_quick.md").read_text()


def test_generator_is_deterministic_and_bag_of_keys_is_order_blind() -> None:
    a, b = generate_records(5, seed=3), generate_records(5, seed=3)
    assert a == b and a != generate_records(5, seed=4)
    r = a[0]
    swapped = {**r, "shipping": r["billing"], "billing": r["shipping"]}
    assert bag_of_keys(r, 128).equal(bag_of_keys(swapped, 128))  # the baseline's blind spot, by construction
