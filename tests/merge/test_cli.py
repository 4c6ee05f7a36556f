"""``orthokit merge`` end to end on tiny generated checkpoints; mergekit / PEFT equality in slow tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from orthokit.cli import main as orthokit_main
from orthokit.io.safetensors_io import INDEX_NAME, open_checkpoint
from orthokit.merge import merge
from orthokit.merge.cli import main

from ._ckpt import SHAPES, state, write_hf, write_lora


@pytest.fixture()
def ckpts(tmp_path: Path) -> dict:
    b = state(0)
    fts = [state(i + 1, b) for i in range(2)]
    write_hf(tmp_path / "base", b)  # HF folder, one file
    write_hf(tmp_path / "ft_sharded", fts[0], shard=400)  # sharded with index
    from orthokit.io.safetensors_io import save_sharded

    save_sharded(fts[1], tmp_path / "tmpbare")
    os.replace(tmp_path / "tmpbare" / "model.safetensors", tmp_path / "ft_bare.safetensors")  # bare file
    targets = {n: SHAPES[n] for n in SHAPES if "q_proj" in n}
    deltas = write_lora(tmp_path / "lora", targets)
    applied = open_checkpoint(
        tmp_path / "lora", base=tmp_path / "base"
    )  # checked against W + s·BA in test_io
    lora_full = {k: applied.get(k).clone() for k in applied.keys()}
    for k, d in deltas.items():
        torch.testing.assert_close(lora_full[k].double(), b[k].double() + d, rtol=1e-5, atol=1e-5)
    return {"root": tmp_path, "base": b, "fts": [fts[0], fts[1], lora_full]}


def _write_cfg(root: Path, method: str = "ties", extra: str = "") -> Path:
    cfg = root / "merge.yml"
    cfg.write_text(
        f"""merge_method: {method}
base_model: base
models:
  - model: ft_sharded
    parameters: {{weight: 1.0, density: 0.5}}
  - model: ft_bare.safetensors
    parameters: {{weight: 0.5, density: [0.3, 0.9]}}
  - model: lora
    parameters: {{weight: [{{filter: mlp, value: 0.25}}, {{value: 1.0}}], density: 0.7}}
parameters: {{lambda: 0.8}}
dtype: float32
{extra}"""
    )
    return cfg


def test_end_to_end_hf_sharded_bare_and_lora(ckpts: dict, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    root = ckpts["root"]
    monkeypatch.chdir(root)
    cfg = _write_cfg(root)
    assert main([str(cfg), "out", "--out-shard-size", "600", "--no-progress"]) == 0
    assert "wrote" in capsys.readouterr().out
    out = root / "out"
    idx = json.loads((out / INDEX_NAME).read_text())
    assert len(set(idx["weight_map"].values())) > 1
    assert (out / "config.json").is_file() and (out / "tokenizer_config.json").is_file()
    got = open_checkpoint(out)
    b, fts = ckpts["base"], ckpts["fts"]
    for k, v in b.items():
        if not v.is_floating_point():
            assert torch.equal(got.get(k), v)
            continue
        w3 = 0.25 if "mlp" in k else 1.0
        L = 2
        t = int(k.split(".")[2]) / (L - 1) if ".layers." in k else 0.0
        d2 = 0.3 + (0.9 - 0.3) * t
        exp = merge(
            {k: v},
            [{k: f[k]} for f in fts],
            "ties",
            weight=[1.0, 0.5, w3],
            density=[0.5, d2, 0.7],
            lambda_=0.8,
        )[k]
        assert torch.equal(got.get(k), exp), k


def test_dry_run_writes_nothing(ckpts: dict, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    root = ckpts["root"]
    monkeypatch.chdir(root)
    cfg = _write_cfg(root)
    before = sorted(p.name for p in root.iterdir())
    assert main([str(cfg), "out", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "merge_method: ties" in text and "shard" in text and "dry run: nothing written" in text
    assert "+ LoRA" in text and "estimated peak anonymous memory" in text
    assert sorted(p.name for p in root.iterdir()) == before


def test_errors_name_the_problem(ckpts: dict, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    root = ckpts["root"]
    monkeypatch.chdir(root)
    assert main([str(_write_cfg(root, extra="tokenizer: {source: union}\n")), "out"]) == 1
    assert "config key 'tokenizer'" in capsys.readouterr().err
    # a fine-tune missing a tensor
    sd = dict(ckpts["fts"][0])
    del sd["model.layers.1.mlp.up_proj.weight"]
    write_hf(root / "ft_missing", sd)
    cfg = root / "m.yml"
    cfg.write_text("merge_method: task_arithmetic\nbase_model: base\nmodels:\n  - model: ft_missing\n")
    assert main([str(cfg), "out"]) == 1
    err = capsys.readouterr().err
    assert "missing tensor 'model.layers.1.mlp.up_proj.weight'" in err and "ft_missing" in err
    # shape mismatch
    sd = dict(ckpts["fts"][0])
    sd["model.norm.weight"] = torch.ones(5)
    write_hf(root / "ft_shape", sd)
    cfg.write_text("merge_method: task_arithmetic\nbase_model: base\nmodels:\n  - model: ft_shape\n")
    assert main([str(cfg), "out"]) == 1
    assert "tensor 'model.norm.weight'" in capsys.readouterr().err
    # corrupt input file
    (root / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    cfg.write_text(
        "merge_method: task_arithmetic\nbase_model: base\nmodels:\n  - model: corrupt.safetensors\n"
    )
    assert main([str(cfg), "out"]) == 1
    assert "corrupt.safetensors" in capsys.readouterr().err
    # existing output without --overwrite
    (root / "exists").mkdir()
    cfg.write_text("merge_method: task_arithmetic\nbase_model: base\nmodels:\n  - model: ft_sharded\n")
    assert main([str(cfg), "exists"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main([str(cfg), "exists", "--overwrite", "--no-progress"]) == 0
    assert not (root / "out").exists()


def test_list_methods_and_top_level_cli(capsys) -> None:
    assert main(["--list-methods"]) == 0
    text = capsys.readouterr().out
    for name in ("task_arithmetic", "ties", "dare_ties", "dare_linear"):
        assert name in text
    assert "density (per-model float, default 1.0)" in text
    assert orthokit_main(["merge", "--list-methods"]) == 0


# ------------------------------------------------------------------------------------------------ slow


def _tiny_llama(root: Path) -> list[Path]:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    m = transformers.LlamaForCausalLM(cfg)
    m.save_pretrained(root / "base")
    sd = m.state_dict()
    paths = [root / "base"]
    for i in range(3):
        g = torch.Generator().manual_seed(i + 1)
        m.load_state_dict({k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in sd.items()})
        m.save_pretrained(root / f"ft{i}", max_shard_size="40KB" if i == 1 else "5GB")
        m.load_state_dict(sd)
        paths.append(root / f"ft{i}")
    return paths


@pytest.mark.slow
@pytest.mark.parametrize("method", ["task_arithmetic", "ties"])
def test_bit_equal_to_mergekit_yaml(tmp_path: Path, method: str) -> None:
    mk = Path(sys.executable).with_name("mergekit-yaml")
    if not mk.is_file():
        pytest.skip("mergekit-yaml not installed")
    paths = _tiny_llama(tmp_path)
    dens = "" if method == "task_arithmetic" else ", density: 0.3"
    lines = [f"merge_method: {method}", f"base_model: {paths[0]}", "models:"]
    for p, w in zip(paths[1:], ["1.0", "[{filter: mlp, value: 0.5}, {value: 1.0}]", "[0.2, 0.9]"]):
        lines += [f"  - model: {p}", f"    parameters: {{weight: {w}{dens}}}"]
    lines += ["parameters: {lambda: 0.7}", "dtype: float32"]
    cfg = tmp_path / "c.yml"
    cfg.write_text("\n".join(lines) + "\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [str(mk), str(cfg), str(tmp_path / "mk")], env=env, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert main([str(cfg), str(tmp_path / "ok"), "--no-progress"]) == 0
    a, b = open_checkpoint(tmp_path / "ok"), open_checkpoint(tmp_path / "mk")
    assert sorted(a.keys()) == sorted(b.keys())
    for k in a.keys():
        assert torch.equal(a.get(k), b.get(k)), k


@pytest.mark.slow
@pytest.mark.parametrize("method", ["slerp", "linear"])
def test_base_listed_in_models_bit_equal_to_mergekit_yaml(tmp_path: Path, method: str) -> None:
    """mergekit's own config shapes: slerp lists the base and the other model (t a filtered gradient);
    linear averages the base when it is listed with a weight."""
    mk = Path(sys.executable).with_name("mergekit-yaml")
    if not mk.is_file():
        pytest.skip("mergekit-yaml not installed")
    paths = _tiny_llama(tmp_path)
    lines = [f"merge_method: {method}", f"base_model: {paths[0]}", "models:"]
    if method == "slerp":
        lines += [f"  - model: {paths[0]}", f"  - model: {paths[1]}", "parameters:", "  t:"]
        lines += [
            "    - {filter: self_attn, value: [0, 0.5, 0.3, 0.7, 1]}",
            "    - {filter: mlp, value: [1, 0.5, 0]}",
        ]
        lines += ["    - value: 0.5"]
    else:
        for p, w in zip(paths[:3], ["0.3", "[0.7, 0.1]", "0.5"]):
            lines += [f"  - model: {p}", f"    parameters: {{weight: {w}}}"]
    lines += ["dtype: float32"]
    cfg = tmp_path / "c.yml"
    cfg.write_text("\n".join(lines) + "\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [str(mk), str(cfg), str(tmp_path / "mk")], env=env, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert main([str(cfg), str(tmp_path / "ok"), "--no-progress"]) == 0
    a, b = open_checkpoint(tmp_path / "ok"), open_checkpoint(tmp_path / "mk")
    assert sorted(a.keys()) == sorted(b.keys())
    for k in a.keys():
        assert torch.equal(a.get(k), b.get(k)), k


@pytest.mark.slow
def test_lora_matches_peft_merge_and_unload(tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    paths = _tiny_llama(tmp_path)
    model = transformers.LlamaForCausalLM.from_pretrained(paths[0])
    lcfg = peft.LoraConfig(
        r=4, lora_alpha=12, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False
    )
    pm = peft.get_peft_model(model, lcfg)
    pm.save_pretrained(tmp_path / "adapter")
    merged = pm.merge_and_unload().state_dict()
    ck = open_checkpoint(tmp_path / "adapter", base=paths[0])
    for k in ck.keys():
        torch.testing.assert_close(ck.get(k), merged[k], rtol=1e-5, atol=1e-6)


def test_dtype_and_out_dtype(ckpts: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    root = ckpts["root"]
    monkeypatch.chdir(root)
    cfg = root / "d.yml"
    cfg.write_text(
        "merge_method: task_arithmetic\nbase_model: base\nmodels:\n  - model: ft_sharded\n"
        "parameters: {lambda: 0.5}\ndtype: float64\nout_dtype: bfloat16\n"
    )
    assert main([str(cfg), "out", "--no-progress", "--device", "auto"]) == 0
    got = open_checkpoint(root / "out")
    b, ft = ckpts["base"], ckpts["fts"][0]
    for k, v in b.items():
        if v.is_floating_point():
            exp = (v.double() + 0.5 * (ft[k].double() - v.double())).to(torch.bfloat16)
            assert got.info(k).dtype == torch.bfloat16 and torch.equal(got.get(k), exp), k
        else:
            assert got.info(k).dtype == v.dtype
