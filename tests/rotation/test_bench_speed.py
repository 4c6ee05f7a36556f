"""Smoke and correctness tests of the Hadamard speed benchmark (orthokit/bench/rotation_speed.py), tiny sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from orthokit.bench import rotation_speed as rs


def test_time_sizes_rows_and_ratios() -> None:
    rows = rs.time_sizes([256, 768], batch=16, rounds=1, threads=1)
    assert [r["d"] for r in rows] == [256, 768]
    first, paley = rows
    assert first["threads"] == 1 and first["batch"] == 16
    assert {rs.OURS, "orthokit kron", "orthokit fwht", rs.DENSE} <= set(first["ms"])
    assert first["ratio"][rs.OURS] == pytest.approx(1.0)
    assert all(v > 0 for v in first["ms"].values() if v == v)
    assert rs.PKG not in paley["ms"]  # the package has no non-power-of-two orders (no zero-padding)
    assert paley["construction"] == "paley1(q=11) ⊗ sylvester(64)"
    assert first["fastest"] in first["ms"]


def test_correctness_rows_are_small_and_catch_a_wrong_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    corr = rs.correctness([64, 12], rows=4)
    for c in corr:
        assert all(e < 1e-5 for e in c["max_abs_err"].values()), c
    if rs._package()[0] is not None:
        assert rs.PKG in corr[0]["max_abs_err"]
    # a broken transform shows up in the correctness row (the row can fail)
    import orthokit.bench.rotation_speed as mod

    monkeypatch.setattr(mod, "hadamard_transform", lambda x, method="auto": x)
    bad = rs.correctness([64], rows=4)[0]["max_abs_err"]
    assert bad[rs.OURS] > 0.1


def test_main_writes_md_and_json(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(rs, "QUICK_SIZES", (1024,))
    monkeypatch.setattr(rs, "EXTRA_QUICK", (12,))
    monkeypatch.setattr(rs, "QUICK_BATCH", 32)
    monkeypatch.setattr(rs, "QUICK_ROUNDS", 1)
    monkeypatch.setattr(rs, "_package", lambda: (None, "not installed"))
    old = torch.get_num_threads()
    assert rs.main(["--quick", "--out", str(tmp_path)]) == 0
    assert torch.get_num_threads() == old
    md = (tmp_path / "rotation_speed_quick.md").read_text()
    data = json.loads((tmp_path / "rotation_speed_quick.json").read_text())
    assert "not installed" in md and "logical cores" in md
    assert "## Goal" in md and "max abs err" in md
    assert data["quick"] is True and data["package"] == "not installed"
    assert {r["d"] for r in data["rows"]} == {1024} and {r["d"] for r in data["extra_rows"]} == {12}
    assert data["correctness"][0]["max_abs_err"][rs.OURS] < 1e-5
    assert all(r["auto"] in ("dense", "fwht", "kron") for r in data["rows"])
