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
    assert (
        "Host load (`os.getloadavg()`" in md
        and len(data["loadavg"]["start"]) == 3
        and "end" in data["loadavg"]
    )
    assert "[" in md and isinstance(data["noisy_rows"], list)


def test_rows_report_spread_and_flag_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    """Spread (min–max over rounds) is reported; a row where auto and the method it chose differ > 20 % is noisy."""
    import orthokit.bench.rotation_speed as mod

    def fake(fns: dict, rounds: int, warmup: int, times_out: dict) -> tuple[dict, dict]:
        # auto dispatches to kron (n = 1024 under probing off): same code, but timed 50 % slower → noisy
        table = {rs.OURS: [0.030, 0.015, 0.020], "orthokit kron": [0.010, 0.012, 0.011]}
        times_out.update({k: table.get(k, [0.05, 0.05, 0.05]) for k in fns})
        return {k: sorted(v)[1] for k, v in times_out.items()}, {}

    monkeypatch.setattr(mod, "time_interleaved", fake)
    monkeypatch.setenv("ORTHOKIT_DISPATCH", "fixed")
    row = rs.time_sizes([1024], batch=16, rounds=3, threads=1, with_pkg=False)[0]
    assert row["auto"] == "kron" and row["rounds"] == 3
    assert row["min_ms"][rs.OURS] == pytest.approx(15.0) and row["max_ms"][rs.OURS] == pytest.approx(30.0)
    assert row["ms"][rs.OURS] == pytest.approx(20.0) and row["auto_gap"] == pytest.approx(20.0 / 11.0 - 1)
    assert row["noisy"] is True
    assert "**noisy** (auto vs kron: 82 %)" in rs._table([row], "n/a")
    assert "noisy row, not evidence" in rs._verdict([dict(row, ms={**row["ms"], rs.DENSE: 50.0})])[0]
    # within 20 %: not flagged
    table_ok = {rs.OURS: [0.011] * 3, "orthokit kron": [0.010] * 3}
    monkeypatch.setattr(
        mod,
        "time_interleaved",
        lambda fns, rounds, warmup, times_out: (
            times_out.update({k: table_ok.get(k, [0.05] * 3) for k in fns})
            or {k: v[0] for k, v in times_out.items()},
            {},
        ),
    )
    assert rs.time_sizes([1024], batch=16, rounds=3, threads=1, with_pkg=False)[0]["noisy"] is False
