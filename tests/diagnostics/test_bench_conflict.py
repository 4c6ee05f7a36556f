"""The Geometry-Conflict forgetting benchmark (``orthokit.bench.diag_conflict``): a tiny end-to-end ``--quick`` run, the
correlation statistics against scipy / a hand-computed partial correlation, and one-line errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import orthokit.bench.diag_conflict as C
from orthokit.bench.data import data_dir


def test_quick_run_writes_files_and_sane_numbers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data_dir()  # clear error when the shared data are missing
    pytest.importorskip("scipy")
    out = tmp_path / "res"
    assert C.main(["--quick", "--streams", "pmnist", "--out", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["diag_conflict_quick.json", "diag_conflict_quick.md", "diag_conflict_quick.png"]
    res = json.loads((out / "diag_conflict_quick.json").read_text())
    q = C.QUICK
    n_cls = len(q.seeds) * len(q.cls_lrs) * (q.pmnist_tasks - 1)
    assert len(res["pairs"]) == n_cls and all(p["stream"] == "pmnist" for p in res["pairs"])
    for p in res["pairs"]:
        _check_pair(p)
        assert p["forgetting"] == pytest.approx(p["acc_before"] - p["acc_after"])
        assert 0.0 <= p["acc_after"] <= 100.0
    md = (out / "diag_conflict_quick.md").read_text()
    assert "Permuted MNIST" in md and "state_conflict" in md and "diag_conflict_quick.png" in md
    assert "passed explicitly with `keys=`" in md  # the models lack the authors' projection names: say so
    assert "results written to" in capsys.readouterr().out


def _check_pair(p: dict) -> None:
    assert 0.0 <= p["state_conflict"] <= 1.0 and 0.0 <= p["pair_conflict"] <= 1.0
    assert p["update_norm"] > 0 and -1.0 <= p["cosine"] <= 1.0
    assert 0.0 <= p["subspace_overlap"] <= 1.0 + 1e-9 and p["sar"] >= 0.0


@pytest.mark.slow
def test_lm_stream_tiny() -> None:
    """Char-LM stream (slow: corpus encoding dominates): alternating phases, forgetting = held-out loss change."""
    data_dir()
    q = C.QUICK
    pairs = C.lm_pairs(q, log=lambda s: None)
    assert len(pairs) == len(q.lm_seeds) * len(q.lm_lrs) * (q.lm_phases - 1)
    for p in pairs:
        _check_pair(p)
        assert p["forgetting"] == pytest.approx(p["loss_after"] - p["loss_before"])
        assert math.isfinite(p["loss_after"])
    assert [p["corpus"] for p in pairs[: q.lm_phases - 1]] == ["wikitext", "shakespeare"][: q.lm_phases - 1]


def _pairs(f: list[float], score: list[float], norm: list[float]) -> list[dict[str, float | str]]:
    rows: list[dict[str, float | str]] = []
    for i in range(len(f)):
        row: dict[str, float | str] = {"stream": "pmnist", "forgetting": f[i], "update_norm": norm[i]}
        row.update({k: score[i] for k in C.SCORES if k != "update_norm"})
        rows.append(row)
    return rows


def test_correlations_against_scipy_and_hand_partial() -> None:
    stats = pytest.importorskip("scipy.stats")
    f = [0.5, 2.0, 1.0, 3.5, 2.5, 0.2, 4.0, 1.5]
    x = [0.1, 0.5, 0.35, 0.6, 0.4, 0.2, 0.9, 0.3]
    nrm = [1.0, 3.0, 2.0, 2.5, 4.0, 0.5, 3.5, 1.5]
    rows = {r["score"]: r for r in C.correlations(_pairs(f, x, nrm))}
    rho, p = stats.spearmanr(x, f)
    assert rows["state_conflict"]["rho"] == pytest.approx(rho) and rows["state_conflict"][
        "p"
    ] == pytest.approx(p)
    assert rows["update_norm"]["rho"] == pytest.approx(stats.spearmanr(nrm, f)[0])
    # partial Spearman from the closed form on rank correlations: (r_xf − r_xn r_fn) / √((1 − r_xn²)(1 − r_fn²))
    r_xf, r_xn, r_fn = stats.spearmanr(x, f)[0], stats.spearmanr(x, nrm)[0], stats.spearmanr(f, nrm)[0]
    ref = (r_xf - r_xn * r_fn) / math.sqrt((1 - r_xn**2) * (1 - r_fn**2))
    assert rows["state_conflict"]["partial_rho"] == pytest.approx(ref, rel=1e-9)
    assert 0.0 <= rows["state_conflict"]["partial_p"] <= 1.0
    assert "partial_rho" not in rows["update_norm"]
    assert C.correlations(_pairs(f[:3], x[:3], nrm[:3])) == []  # too few pairs: no row


def test_bad_stream_is_one_line_error(tmp_path: Path) -> None:
    from dataclasses import replace

    with pytest.raises(ValueError, match="unknown streams") as ei:
        C.run(tmp_path, cfg=replace(C.QUICK, streams=("cifar",)))
    assert "\n" not in str(ei.value)
    with pytest.raises(SystemExit):
        C.main(["--streams", "cifar"])


def test_demo_verdict_reads_significance() -> None:
    gc = {"rho": 0.4, "p": 0.01, "n": 30}
    assert C._verdict(gc, {"rho": 0.1, "p": 0.6}) == "GC tracks forgetting better"
    assert C._verdict({**gc, "rho": -0.5}, {"rho": 0.1, "p": 0.6}).endswith("less forgetting)")
    assert C._verdict({**gc, "p": 0.2}, {"rho": 0.1, "p": 0.6}) == "neither significant at n = 30 (p ≥ 0.05)"
    assert (
        C._verdict({**gc, "rho": 0.1, "p": 0.5}, {"rho": 0.5, "p": 0.001})
        == "update norm tracks forgetting better"
    )
