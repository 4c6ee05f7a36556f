"""Config parsing: mergekit shape, named errors, gradients/filters, paths, YAML pitfalls."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from orthokit.io.config import ConfigError, load_yaml
from orthokit.merge.config import evaluate_setting, layer_position, load_config, parse_config, parse_dtype

from ._ckpt import state, write_hf


@pytest.fixture()
def models(tmp_path: Path) -> Path:
    b = state(0)
    write_hf(tmp_path / "base", b)
    for i in range(2):
        write_hf(tmp_path / f"ft{i}", state(i + 1, b))
    return tmp_path


def _cfg(root: Path, **over) -> dict:
    d = {
        "merge_method": "ties",
        "base_model": str(root / "base"),
        "models": [
            {"model": str(root / "ft0"), "parameters": {"weight": 1.0, "density": 0.5}},
            {"model": str(root / "ft1"), "parameters": {"weight": 0.5, "density": [0.2, 0.8]}},
        ],
        "parameters": {"lambda": 0.7, "normalize": True, "int8_mask": True},
        "dtype": "float32",
    }
    d.update(over)
    return d


def test_parse_and_resolve(models: Path) -> None:
    cfg = parse_config(_cfg(models))
    assert cfg.merge_method == "ties" and len(cfg.models) == 2 and cfg.dtype == torch.float32
    cfg.num_layers = 3
    kw = cfg.resolve("model.layers.1.mlp.up_proj.weight")
    assert kw == {"weights": [1.0, 0.5], "density": [0.5, 0.5], "lambda_": 0.7, "normalize": True}
    assert cfg.resolve("model.layers.2.mlp.up_proj.weight")["density"] == [0.5, 0.8]
    assert cfg.resolve("lm_head.weight")["density"] == [0.5, 0.2]  # outside layers: t = 0, like mergekit


def test_unknown_and_unsupported_keys_are_named(models: Path) -> None:
    with pytest.raises(ConfigError, match="unknown config key 'merge_methd'"):
        parse_config({**_cfg(models), "merge_methd": "ties"})
    with pytest.raises(ConfigError, match="either 'models' or 'slices', not both"):
        parse_config({**_cfg(models), "slices": []})
    with pytest.raises(ConfigError, match="'modules'.*not supported"):
        parse_config({**_cfg(models), "modules": {}})
    bad = _cfg(models)
    bad["parameters"]["densty"] = 0.3
    with pytest.raises(ConfigError, match="unknown parameter 'densty' for merge method 'ties'"):
        parse_config(bad)
    bad = _cfg(models)
    bad["models"][0]["parameters"]["lambda"] = 2.0
    with pytest.raises(ConfigError, match=r"models\[0\].parameters: 'lambda' is a global parameter"):
        parse_config(bad)
    bad = _cfg(models)
    bad["models"][1]["revision"] = "main"
    with pytest.raises(ConfigError, match=r"models\[1\]: unknown key 'revision'"):
        parse_config(bad)
    with pytest.raises(ConfigError, match="unknown merge method 'tie'"):
        parse_config(_cfg(models, merge_method="tie"))
    with pytest.raises(ConfigError, match="needs 'base_model'"):
        parse_config(_cfg(models, base_model=None))
    with pytest.raises(ConfigError, match="unknown dtype 'float8'"):
        parse_config(_cfg(models, dtype="float8"))
    bad = _cfg(models)
    bad["parameters"]["normalize"] = "yes please"
    with pytest.raises(ConfigError, match="'normalize' must be a boolean"):
        parse_config(bad)


def test_paths(models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="model path 'org/missing-model' does not exist.*offline"):
        parse_config(_cfg(models, base_model="org/missing-model"))
    # a relative path that looks like a hub id works (mergekit 0.1.5 crashes on those when offline)
    hub_like = models / "org" / "base"
    hub_like.parent.mkdir()
    os.rename(models / "base", hub_like)
    monkeypatch.chdir(models)
    cfg = parse_config(_cfg(models, base_model="org/base"))
    assert cfg.base is not None and cfg.base.path == hub_like
    # relative to the config file's folder when not found from the CWD
    sub = tmp_path / "elsewhere"
    sub.mkdir()
    monkeypatch.chdir(sub)
    yml = models / "m.yml"
    yml.write_text(
        "merge_method: task_arithmetic\nbase_model: org/base\nmodels:\n  - model: ft0\n  - model: ft1\n"
    )
    cfg = load_config(yml)
    assert [m.path for m in cfg.models] == [models / "ft0", models / "ft1"]


def test_base_listed_among_models_is_skipped(models: Path) -> None:
    d = _cfg(models)
    d["models"].insert(0, {"model": str(models / "base")})
    assert len(parse_config(d).models) == 2


def test_evaluate_setting_semantics() -> None:
    assert evaluate_setting(0.3, "x", 0.9) == 0.3
    assert evaluate_setting([0.0, 1.0], "x", 0.25) == pytest.approx(0.25)
    assert evaluate_setting([0.0, 1.0, 0.0], "x", 0.75) == pytest.approx(0.5)
    cond = [{"filter": "mlp", "value": 0.5}, {"filter": "*", "value": [1.0, 3.0]}]
    assert evaluate_setting(cond, "layers.0.mlp.up", 1.0) == 0.5
    assert evaluate_setting(cond, "layers.0.attn.q", 1.0) == 3.0
    assert evaluate_setting([{"filter": "mlp", "value": 1}], "attn", 0.0) is None  # falls through
    assert evaluate_setting([True, False], "x", 1.0) is False
    with pytest.raises(ConfigError, match="unknown key 'filtr'"):
        evaluate_setting([{"filtr": "mlp", "value": 1}], "mlp", 0)


def test_fall_through_to_top_level(models: Path) -> None:
    d = _cfg(models)
    d["models"][0]["parameters"]["density"] = [{"filter": "mlp", "value": 0.9}]
    d["parameters"]["density"] = 0.1
    cfg = parse_config(d)
    assert cfg.resolve("model.layers.0.mlp.up_proj.weight", 0.0)["density"][0] == 0.9
    assert cfg.resolve("model.layers.0.self_attn.q_proj.weight", 0.0)["density"][0] == 0.1


def test_layer_position_and_dtype() -> None:
    assert layer_position("model.layers.0.x", 5) == 0.0
    assert layer_position("model.layers.4.x", 5) == 1.0
    assert layer_position("transformer.h.2.attn.weight", 3) == 1.0
    assert layer_position("model.embed_tokens.weight", 5) == 0.0
    assert parse_dtype("bf16") == torch.bfloat16 and parse_dtype(None) is None


def test_yaml_errors(tmp_path: Path) -> None:
    p = tmp_path / "c.yml"
    p.write_text("merge_method: ties\nparameters: {lambda: 1}\nparameters: {lambda: 2}\n")
    with pytest.raises(ConfigError, match="line 3: duplicate key 'parameters'"):
        load_yaml(p)
    p.write_text("merge_method: ties\nmodels: [a, b\n")
    with pytest.raises(ConfigError, match=r"invalid YAML \(line \d+, column \d+\)"):
        load_yaml(p)
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_yaml(p)
    p.write_text("")
    with pytest.raises(ConfigError, match="empty"):
        load_yaml(p)
    with pytest.raises(FileNotFoundError):
        load_yaml(tmp_path / "missing.yml")


def test_base_listed_among_models_follows_the_method(models: Path) -> None:
    """slerp lists the base and one model (the base is the base); linear averages a listed base (mergekit)."""
    listed = [{"model": str(models / "base"), "parameters": {"weight": 0.3}}, {"model": str(models / "ft0")}]
    cfg = parse_config(
        {
            "merge_method": "slerp",
            "base_model": str(models / "base"),
            "models": listed[:1] + [{"model": str(models / "ft0")}],
            "parameters": {"t": [0, 0.5, 1]},
        }
    )
    assert [m.path for m in cfg.models] == [(models / "ft0").absolute()]
    assert cfg.resolve("model.layers.1.mlp.w", 0.25)["t"] == 0.25  # gradient [0, 0.5, 1] at t = 0.25
    cfg = parse_config({"merge_method": "linear", "base_model": str(models / "base"), "models": listed})
    assert [m.path for m in cfg.models] == [(models / "base").absolute(), (models / "ft0").absolute()]
    assert cfg.resolve("x")["weights"] == [0.3, 1.0]
