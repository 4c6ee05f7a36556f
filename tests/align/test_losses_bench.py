"""The align-losses benchmark code: its metric and one tiny end-to-end run that writes its three files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import orthokit.bench.align_losses as B
from orthokit.bench.align_losses import Config, class_mean_abs_cos, run

from .test_conformance_losses import _one_thread  # noqa: F401  (autouse fixture)


def test_class_mean_abs_cos_closed_form() -> None:
    f = torch.tensor([[1.0, 0.0], [3.0, 0.0], [1.0, 1.0], [1.0, 1.0]])
    y = torch.tensor([0, 0, 1, 1])
    assert class_mean_abs_cos(f, y) == pytest.approx(2**-0.5)
    assert class_mean_abs_cos(-f, y) == pytest.approx(2**-0.5)


def _toy(
    dataset: str, cfg: Config
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Ten Gaussian blobs in R^64 standing in for digits (sklearn's import alone takes seconds)."""
    g = torch.Generator().manual_seed(0)
    centers = torch.rand(10, 64, generator=g)
    y = torch.arange(10).repeat(40)
    x = centers[y] + 0.15 * torch.randn(400, 64, generator=g)
    return (x[:300], y[:300]), (x[300:], y[300:])


def test_tiny_run_writes_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(B, "load", _toy)
    cfg = Config(epochs_digits=6)
    res = run(
        tmp_path,
        quick=True,
        seeds=(0,),
        datasets=("digits",),
        methods=("ce", "gcr"),
        log=lambda s: None,
        cfg=cfg,
    )
    names = sorted(Path(p).name for p in res["files"])
    assert names == ["align_losses_quick.json", "align_losses_quick.md", "align_losses_quick.png"]
    data = json.loads((tmp_path / "align_losses_quick.json").read_text())
    accs = {r["method"]: r["acc"] for r in data["runs"]}
    assert set(accs) == {"ce", "gcr"} and all(0.0 <= a <= 1.0 for a in accs.values())
    assert accs["ce"] > 0.5  # six epochs separate the blobs
    assert data["runs"][1]["gcr_orthonormality_error"] < 1e-5
    md = (tmp_path / "align_losses_quick.md").read_text()
    assert "Machine:" in md and "| cross-entropy (linear head) |" in md


def test_demo_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(B, "load", _toy)
    sec = B.demo(tmp_path)
    assert sec.family == "align (losses)" and sec.anchor.startswith("CE ")
    assert sec.figures == ("align_losses_quick.png",) and (tmp_path / "align_losses_quick.png").is_file()
    assert "## mnist" in sec.body and "## digits" in sec.body
