"""Distributed Muon: 2-process torchrun (gloo, CPU) equals the single-process result.

Launches ``tests/optim/_dist_worker.py`` with ``python -m torch.distributed.run --standalone --nproc_per_node=2``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("_dist_worker.py")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(WORKER),
        str(out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.distributed
def test_sharded_orthogonalization_is_bit_identical_to_single_process(results):
    for res in results:
        assert res["world_size"] == 2
        for mode, r in res["exact"].items():
            assert r["bit_equal"], (mode, r)
            assert r["max_abs_diff"] == 0.0
            assert r["ranks_identical"]


@pytest.mark.distributed
def test_ddp_hybrid_matches_single_process(results):
    for res in results:
        assert res["ddp"]["ranks_identical"]
        # the DDP all-reduce sums half-batch gradients in a different order → fp32 round-off only
        assert res["ddp"]["max_abs_diff"] < 1e-5, res["ddp"]


@pytest.mark.distributed
def test_fsdp2_fully_shard_matches_single_process(results):
    for res in results:
        f = res["fsdp2"]
        assert f["ok"], f.get("traceback", f)
        assert f["param_type"] == "DTensor"
        assert f["max_abs_diff"] < 1e-5, f
