"""In-memory merge() and the streaming run_merge(): results, errors, atomic output under crashes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from orthokit._fs import UnsafeOutputError
from orthokit.io.safetensors_io import open_checkpoint
from orthokit.merge import MERGE_METHODS, merge
from orthokit.merge.api import run_merge, tensor_seed
from orthokit.merge.config import parse_config

from ._ckpt import state, write_hf


def test_merge_state_dicts_matches_methods() -> None:
    b = state(0)
    fts = [state(i + 1, b) for i in range(3)]
    out = merge(b, fts, "ties", density=[0.2, 0.5, 0.9], weight=[1.0, 0.5, 2.0], **{"lambda": 0.8})
    fn = MERGE_METHODS.get("ties")
    for k, v in b.items():
        if v.is_floating_point():
            exp = fn(v, [f[k] for f in fts], weights=[1.0, 0.5, 2.0], density=[0.2, 0.5, 0.9], lambda_=0.8)
            assert torch.equal(out[k], exp)
        else:
            assert torch.equal(out[k], v)


def test_lambda_zero_one_model_identical_models() -> None:
    b = state(0)
    fts = [state(i + 1, b) for i in range(2)]
    out = merge(b, fts, "task_arithmetic", lambda_=0.0)
    assert all(torch.equal(out[k], b[k]) for k in b)
    out = merge(b, fts[:1], "task_arithmetic")
    for k in b:
        torch.testing.assert_close(out[k], fts[0][k], rtol=0, atol=1e-6)
    out = merge(b, [fts[0], fts[0], fts[0]], "ties", density=1.0)
    for k in b:
        torch.testing.assert_close(out[k], fts[0][k], rtol=0, atol=1e-6)


def test_modules() -> None:
    torch.manual_seed(0)
    m0, m1, m2 = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    merged = merge(m0, [m1, m2], "task_arithmetic", weights=[0.5, 0.5])
    assert isinstance(merged, torch.nn.Linear) and merged is not m0
    exp = m0.weight + 0.5 * (m1.weight - m0.weight) + 0.5 * (m2.weight - m0.weight)
    torch.testing.assert_close(merged.weight, exp)
    assert not merged.weight.requires_grad or merged.weight.grad_fn is None


def test_dare_ties_equals_mergekit_with_same_per_tensor_stream() -> None:
    merge_tensors = pytest.importorskip("mergekit.merge_methods").merge_tensors
    b = state(0)
    fts = [state(i + 1, b) for i in range(3)]
    out = merge(b, fts, "dare_ties", density=0.3, weight=[1.0, 0.7, 0.4], seed=5)
    for k, v in b.items():
        if not v.is_floating_point():
            continue
        torch.manual_seed(tensor_seed(5, k))
        ref = merge_tensors(
            [v] + [f[k] for f in fts],
            "dare_ties",
            base_index=0,
            parameters={"weight": [1.0, 0.7, 0.4], "density": 0.3},
        )
        assert torch.equal(out[k], ref), k


def test_merge_errors() -> None:
    b = state(0)
    ft = state(1, b)
    with pytest.raises(ValueError, match="missing tensor 'lm_head.weight'"):
        merge(b, [{k: v for k, v in ft.items() if k != "lm_head.weight"}], "task_arithmetic")
    with pytest.raises(ValueError, match="has tensor 'extra'"):
        merge(b, [{**ft, "extra": torch.ones(1)}], "task_arithmetic")
    with pytest.raises(ValueError, match="tensor 'model.norm.weight': models\\[0\\] has shape"):
        merge(b, [{**ft, "model.norm.weight": torch.ones(3)}], "task_arithmetic")
    with pytest.raises(TypeError, match="models\\[0\\] is torch.float64, base is torch.float32"):
        merge(
            b, [{k: (v.double() if v.is_floating_point() else v) for k, v in ft.items()}], "task_arithmetic"
        )
    with pytest.raises(ValueError, match="non-floating tensor 'model.rotary.inv_freq_steps' differs"):
        merge(b, [{**ft, "model.rotary.inv_freq_steps": torch.arange(4) + 1}], "task_arithmetic")
    with pytest.raises(ValueError, match="unknown parameter 'lam'"):
        merge(b, [ft], "task_arithmetic", lam=1.0)
    with pytest.raises(ValueError, match="unknown merge method"):
        merge(b, [ft], "average_please")
    with pytest.raises(ValueError, match="needs a base"):
        merge(None, [ft], "ties")
    # dtype= casts mixed inputs to one compute dtype
    out = merge(
        b,
        [{k: (v.double() if v.is_floating_point() else v) for k, v in ft.items()}],
        "task_arithmetic",
        dtype="float64",
    )
    assert out["lm_head.weight"].dtype == torch.float64  # like mergekit: output dtype = compute dtype


def _setup(tmp_path: Path, method: str = "ties") -> dict:
    b = state(0)
    write_hf(tmp_path / "base", b)
    for i in range(2):
        write_hf(tmp_path / f"ft{i}", state(i + 1, b), shard=500)
    return {
        "merge_method": method,
        "base_model": str(tmp_path / "base"),
        "models": [
            {"model": str(tmp_path / f"ft{i}"), "parameters": {"weight": 1.0, "density": 0.4}}
            for i in range(2)
        ],
        "parameters": {"lambda": 0.9},
    }


def test_run_merge_matches_in_memory(tmp_path: Path) -> None:
    d = _setup(tmp_path)
    res = run_merge(parse_config(d), tmp_path / "out", max_shard_bytes=700, progress=False)
    assert res.out_dir == (tmp_path / "out").absolute() and "config.json" in res.files
    got = open_checkpoint(tmp_path / "out")
    b = state(0)
    exp = merge(b, [state(i + 1, b) for i in range(2)], "ties", density=0.4, lambda_=0.9)
    assert sorted(got.keys()) == sorted(exp)
    for k, v in exp.items():
        assert torch.equal(got.get(k), v), k
    assert (tmp_path / "out" / "merge_config.yml").is_file()


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_crash_mid_merge_leaves_no_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: type) -> None:
    d = _setup(tmp_path)
    from orthokit.io import safetensors_io

    calls = {"n": 0}
    real = safetensors_io.StreamingShardWriter.write

    def flaky(self, name, tensor):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 4:
            raise exc("simulated crash")
        return real(self, name, tensor)

    monkeypatch.setattr(safetensors_io.StreamingShardWriter, "write", flaky)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(exc, match="simulated crash"):
        run_merge(parse_config(d), tmp_path / "out", max_shard_bytes=300, progress=False)
    assert calls["n"] == 4
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temporary folder left behind


def test_existing_output_and_overwrite(tmp_path: Path) -> None:
    d = _setup(tmp_path, "task_arithmetic")
    for m in d["models"]:
        m["parameters"].pop("density")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    with pytest.raises(FileExistsError, match="already exists"):
        run_merge(parse_config(d), tmp_path / "out", progress=False)
    # a folder orthokit did not write is never deleted, even with overwrite
    with pytest.raises(UnsafeOutputError, match="not written by orthokit"):
        run_merge(parse_config(d), tmp_path / "out", overwrite=True, progress=False)
    assert (tmp_path / "out" / "old.txt").read_text() == "old"
    (tmp_path / "out" / "old.txt").unlink()  # an empty folder may be replaced
    run_merge(parse_config(d), tmp_path / "out", overwrite=True, progress=False)
    assert (tmp_path / "out" / "model.safetensors").is_file()
    run_merge(parse_config(d), tmp_path / "out", overwrite=True, progress=False)  # our own output: replaced
    assert (tmp_path / "out" / "model.safetensors").is_file()
