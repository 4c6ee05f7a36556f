"""The char-level transformers Llama of the steering benchmark: training works, the cache is reused and atomic."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from orthokit.bench.hf_char import QUICK, HFCharConfig, config_hash, load_or_train, vocabulary


def test_quick_model_trains_caches_and_reloads(tmp_path: Path) -> None:
    logs: list[str] = []
    lm = load_or_train(tmp_path, QUICK, log=logs.append)
    assert type(lm.model).__name__ == "LlamaForCausalLM" and not lm.info["cached"]
    # trained: both corpora well below the uniform loss log(V) on their held-out tails
    uniform = torch.log(torch.tensor(float(len(lm.chars)))).item()
    assert set(lm.info["val_loss"]) == {"tinyshakespeare", "wikitext2_valid"}
    assert all(v < uniform - 1.0 for v in lm.info["val_loss"].values()), lm.info["val_loss"]
    folder = tmp_path / "cache" / f"hf_char_{config_hash(QUICK, lm.chars)}"
    assert lm.path == folder and (folder / "config.json").is_file()
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]  # no temp folder left
    again = load_or_train(tmp_path, QUICK, log=logs.append)
    assert again.info["cached"] and any("loaded cached" in s for s in logs)
    ids = lm.encode("First Citizen:\nBefore we proceed")[None]
    with torch.no_grad():
        assert torch.equal(lm.model(ids).logits, again.model(ids).logits)


def test_hash_depends_on_recipe_and_vocab() -> None:
    chars = vocabulary()
    other = dataclasses.replace(QUICK, steps=QUICK.steps + 1)
    assert config_hash(QUICK, chars) != config_hash(other, chars)
    assert config_hash(QUICK, chars) != config_hash(QUICK, chars[:-1])


def test_bad_config_and_foreign_cache_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="divisible"):
        HFCharConfig(hidden=30, heads=4)
    with pytest.raises(ValueError, match="steps"):
        HFCharConfig(steps=0)
    with pytest.raises(TypeError, match="HFCharConfig"):
        load_or_train(tmp_path, {"hidden": 8})  # type: ignore[arg-type]
    # a folder with the cache's name that this module did not write is never deleted
    cfg = dataclasses.replace(QUICK, steps=2)
    foreign = tmp_path / "cache" / f"hf_char_{config_hash(cfg, vocabulary())}"
    foreign.mkdir(parents=True)
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not written by orthokit"):
        load_or_train(tmp_path, cfg, log=lambda s: None)
    assert (foreign / "keep.txt").read_text() == "mine"
