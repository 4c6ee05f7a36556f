"""``slices:`` (frankenmerges and per-slice merges) against mergekit-yaml 0.1.5 on tiny Llama checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from orthokit.io.config import ConfigError
from orthokit.io.safetensors_io import open_checkpoint
from orthokit.merge.cli import main
from orthokit.merge.config import parse_config
from orthokit.merge.plan import build_plan
from orthokit.merge.slices import registered

MK = Path(sys.executable).with_name("mergekit-yaml")


def _tiny_llama(root: Path, n: int = 3, layers: int = 4) -> list[Path]:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    m = transformers.LlamaForCausalLM(cfg)
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    paths = []
    for i in range(n):
        g = torch.Generator().manual_seed(i + 1)
        m.load_state_dict({k: v + (0.02 * i) * torch.randn(v.shape, generator=g) for k, v in sd.items()})
        m.save_pretrained(root / f"m{i}")
        paths.append(root / f"m{i}")
    return paths


def _mergekit(cfg: Path, out: Path) -> None:
    if not MK.is_file():
        pytest.skip("mergekit-yaml not installed")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [str(MK), str(cfg), str(out), "--no-write-model-card"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]


def _assert_bit_equal(a_dir: Path, b_dir: Path) -> None:
    a, b = open_checkpoint(a_dir), open_checkpoint(b_dir)
    assert sorted(a.keys()) == sorted(b.keys())
    for k in a.keys():
        assert a.info(k).dtype == b.info(k).dtype, k
        assert torch.equal(a.get(k), b.get(k)), k
    ca, cb = (json.loads((d / "config.json").read_text()) for d in (a_dir, b_dir))
    assert ca["num_hidden_layers"] == cb["num_hidden_layers"]


FRANKEN = """merge_method: passthrough
slices:
  - sources:
      - model: {0}
        layer_range: [0, 3]
  - sources:
      - model: {1}
        layer_range: [1, 4]
    parameters: {{scale: [{{filter: o_proj, value: 0.5}}, {{value: 1.0}}]}}
  - sources:
      - model: {0}
        layer_range: [3, 4]
dtype: float32
"""


def test_frankenmerge_renumbers_layers_like_mergekit(tmp_path: Path) -> None:
    p = _tiny_llama(tmp_path, n=2)
    cfg = tmp_path / "franken.yml"
    cfg.write_text(FRANKEN.format(*p))
    assert main([str(cfg), str(tmp_path / "ok"), "--no-progress"]) == 0
    out, m0, m1 = open_checkpoint(tmp_path / "ok"), open_checkpoint(p[0]), open_checkpoint(p[1])
    assert json.loads((tmp_path / "ok" / "config.json").read_text())["num_hidden_layers"] == 7
    # output layers 0-2 = m0 layers 0-2; 3-5 = m1 layers 1-3 (o_proj scaled by 0.5); 6 = m0 layer 3
    for k_out, (src, k_in, slice_scaled) in enumerate(
        [
            (m0, 0, False),
            (m0, 1, False),
            (m0, 2, False),
            (m1, 1, True),
            (m1, 2, True),
            (m1, 3, True),
            (m0, 3, False),
        ]
    ):
        for suffix in ("self_attn.o_proj.weight", "mlp.up_proj.weight", "input_layernorm.weight"):
            want = src.get(f"model.layers.{k_in}.{suffix}")
            if slice_scaled and "o_proj" in suffix:
                want = want * 0.5
            assert torch.equal(out.get(f"model.layers.{k_out}.{suffix}"), want), (k_out, suffix)
    assert not any(k.startswith("model.layers.7.") for k in out.keys())
    assert torch.equal(
        out.get("model.embed_tokens.weight"), m0.get("model.embed_tokens.weight")
    )  # first slice
    assert torch.equal(out.get("model.norm.weight"), m0.get("model.norm.weight"))  # last slice
    card = (tmp_path / "ok" / "README.md").read_text()
    assert "passthrough" in card and "layers [1, 4]" in card


def test_merged_slices_match_float64_reference(tmp_path: Path) -> None:
    """task_arithmetic per slice; the weight gradient runs over each slice's own layers (t = k/(n-1))."""
    p = _tiny_llama(tmp_path, n=3)
    cfg = {
        "merge_method": "task_arithmetic",
        "base_model": str(p[0]),
        "slices": [
            {
                "sources": [
                    {"model": str(p[0]), "layer_range": [a, b]},
                    {"model": str(p[1]), "layer_range": [a, b], "parameters": {"weight": [0.2, 0.9]}},
                    {"model": str(p[2]), "layer_range": [a, b]},
                ]
            }
            for a, b in ((0, 2), (1, 4))
        ],
        "parameters": {"weight": 0.5, "lambda": 0.7},
        "dtype": "float64",
        "out_dtype": "float32",
    }
    from orthokit.merge.api import run_merge

    run_merge(parse_config(cfg), tmp_path / "ok", progress=False)
    out = open_checkpoint(tmp_path / "ok")
    ins = [open_checkpoint(x) for x in p]
    layout = [(0, 0, 0.0), (1, 1, 1.0), (2, 1, 0.0), (3, 2, 0.5), (4, 3, 1.0)]  # (out, in, t)
    for k_out, k_in, t in layout:
        for suffix in ("self_attn.q_proj.weight", "post_attention_layernorm.weight"):
            n_in = f"model.layers.{k_in}.{suffix}"
            b, f1, f2 = (s.get(n_in).double() for s in ins)
            w1 = 0.2 + (0.9 - 0.2) * t
            want = (b + 0.7 * (w1 * (f1 - b) + 0.5 * (f2 - b))).float()
            torch.testing.assert_close(out.get(f"model.layers.{k_out}.{suffix}"), want, rtol=0, atol=1e-6)
    b, f1, f2 = (s.get("lm_head.weight").double() for s in ins)  # last slice, t = 0
    want = (b + 0.7 * (0.2 * (f1 - b) + 0.5 * (f2 - b))).float()
    torch.testing.assert_close(out.get("lm_head.weight"), want, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_frankenmerge_bit_equal_to_mergekit(tmp_path: Path) -> None:
    p = _tiny_llama(tmp_path, n=2)
    cfg = tmp_path / "franken.yml"
    cfg.write_text(FRANKEN.format(*p))
    _mergekit(cfg, tmp_path / "mk")
    assert main([str(cfg), str(tmp_path / "ok"), "--no-progress"]) == 0
    _assert_bit_equal(tmp_path / "ok", tmp_path / "mk")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["task_arithmetic", "slerp"])
def test_merged_slices_bit_equal_to_mergekit(tmp_path: Path, method: str) -> None:
    if not registered(method):
        pytest.skip(f"{method} is not registered yet")
    p = _tiny_llama(tmp_path, n=3)
    if method == "slerp":  # two sources, the base listed among them, t a gradient over the slice's layers
        srcs = [(p[0], ""), (p[1], "")]
        params = "parameters: {t: [{filter: self_attn, value: [0, 0.5, 1]}, {value: 0.3}]}"
    else:
        srcs = [(p[0], ""), (p[1], "\n        parameters: {weight: [0.2, 0.9]}"), (p[2], "")]
        params = "parameters: {weight: 0.5, lambda: 0.7}"
    lines = [f"merge_method: {method}", f"base_model: {p[0]}", "slices:"]
    for rng in ("[0, 2]", "[1, 4]"):
        lines.append("  - sources:")
        for path, extra in srcs:
            lines += [f"      - model: {path}", f"        layer_range: {rng}{extra}"]
    lines += [params, "dtype: float32"]
    cfg = tmp_path / "c.yml"
    cfg.write_text("\n".join(lines) + "\n")
    _mergekit(cfg, tmp_path / "mk")
    assert main([str(cfg), str(tmp_path / "ok"), "--no-progress"]) == 0
    _assert_bit_equal(tmp_path / "ok", tmp_path / "mk")
    assert json.loads((tmp_path / "ok" / "config.json").read_text())["num_hidden_layers"] == 5


def test_slice_errors_are_named(tmp_path: Path) -> None:
    p = _tiny_llama(tmp_path, n=2, layers=2)

    def cfg(**kw):
        d = {
            "merge_method": "passthrough",
            "slices": [{"sources": [{"model": str(p[0]), "layer_range": [0, 2]}]}],
        }
        d.update(kw)
        return d

    with pytest.raises(ConfigError, match=r"slices\[0\].sources\[0\].layer_range: .*two integers"):
        parse_config(cfg(slices=[{"sources": [{"model": str(p[0]), "layer_range": [0]}]}]))
    two = [{"model": str(p[0]), "layer_range": [0, 1]}, {"model": str(p[1]), "layer_range": [0, 2]}]
    with pytest.raises(ConfigError, match="same number of layers"):
        parse_config(
            {"merge_method": "task_arithmetic", "base_model": str(p[0]), "slices": [{"sources": two}]}
        )
    with pytest.raises(ConfigError, match="passthrough takes exactly one source"):
        parse_config(cfg(slices=[{"sources": [two[0], {**two[1], "layer_range": [1, 2]}]}]))
    with pytest.raises(ConfigError, match=r"must be listed among the slice's sources"):
        parse_config(
            {
                "merge_method": "task_arithmetic",
                "base_model": str(p[0]),
                "slices": [{"sources": [{"model": str(p[1]), "layer_range": [0, 2]}]}],
            }
        )
    with pytest.raises(ConfigError, match=r"unknown key 'layer_rang'"):
        parse_config(cfg(slices=[{"sources": [{"model": str(p[0]), "layer_rang": [0, 2]}]}]))
    c = parse_config(cfg(slices=[{"sources": [{"model": str(p[0]), "layer_range": [0, 3]}]}]))
    with pytest.raises(ConfigError, match=r"layer_range \[0, 3\] of .* goes beyond its 2 layers"):
        build_plan(c)


def test_slices_dry_run_lists_the_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = _tiny_llama(tmp_path, n=1, layers=2)
    cfg = tmp_path / "c.yml"
    cfg.write_text(
        f"merge_method: passthrough\nslices:\n  - sources:\n      - model: {p[0]}\n        layer_range: [0, 2]\n"
        f"  - sources:\n      - model: {p[0]}\n        layer_range: [0, 1]\n"
    )
    assert main([str(cfg), str(tmp_path / "out"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "output layers: 3" in out and "slice[1]:" in out and not (tmp_path / "out").exists()
