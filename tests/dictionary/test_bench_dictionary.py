"""The dictionary benchmark's run/markdown/files on a tiny configuration (real MNIST patches, < 15 s)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orthokit.bench.data import data_dir
from orthokit.bench.dictionary import Config, markdown, mnist_patches, run

TINY = Config(
    planted_dims=(8,),
    planted_n={8: 2000},
    checkpoints=(1000, 2000),
    seeds=(0,),
    msp_iter=10,
    mnist_train=2000,
    mnist_test=300,
    proc_iter=3,
    rounds=1,
)


def test_tiny_run_writes_files_and_sane_numbers(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    data_dir()  # fails clearly without ../shared/data
    res = run(tmp_path, quick=True, cfg=TINY, log=lambda s: None)
    for ext in ("md", "json", "png"):
        assert (tmp_path / f"dictionary_quick.{ext}").stat().st_size > 0
    js = json.loads((tmp_path / "dictionary_quick.json").read_text())
    rows = {(r["method"], r["s"]): r["rel_err"] for r in js["mnist"]["rows"]}
    for m in ("online_fw", "batch_msp_l4", "batch_procrustes", "pca", "sklearn_mbdl"):
        assert 0.05 < rows[(m, 16)] < rows[(m, 8)] < rows[(m, 4)] < 1.0, m
    # the online learner's memory is a few d×d matrices plus one batch; the batch ones hold all patches
    peak = js["mnist"]["peak_bytes"]
    assert peak["online_fw"] <= 4 * 64 * 64 * 8 + TINY.fw_batch * 64 * 8
    assert peak["batch_msp_l4"] >= js["mnist"]["n_train"] * 64 * 8
    assert res["goals"]["err_gap_vs_batch_procrustes"][8] < 0.25
    last = [r for r in js["planted_summary"] if r["method"] == "batch_msp_l3" and r["n"] == 2000]
    assert last[0]["max_angle_mean"] < 5.0
    assert "Goals of the issue" in markdown(js)  # re-renders from the JSON round trip (str keys)


def test_patches_are_mean_removed_and_non_blank() -> None:
    import torch

    imgs = torch.zeros(3, 1, 28, 28)
    imgs[:, :, 10:18, 10:18] = torch.rand(3, 1, 8, 8)
    P = mnist_patches(imgs, 50, seed=0)
    assert P.shape == (64, 50)
    assert float(P.mean(0).abs().max()) < 1e-12 and bool((P.norm(dim=0) > 0).all())
    with pytest.raises(ValueError, match="non-blank"):
        mnist_patches(torch.zeros(2, 1, 28, 28), 10, seed=0)
