"""LoRA-factor merge methods (``do_merging``) from PEFT adapter folders through ``orthokit merge``, and the
dry-run checks that catch a method given the wrong kind of input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from orthokit.io.safetensors_io import open_checkpoint
from orthokit.merge.cli import main
from orthokit.merge.do_merging import do_merging

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("peft")
    cfg = transformers.LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2
    )
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(root / "base")
    specs = {
        "lora1": dict(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]),
        "lora2": dict(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj", "down_proj"], use_rslora=True),
    }
    for i, (name, kw) in enumerate(specs.items()):
        torch.manual_seed(10 + i)
        model = transformers.LlamaForCausalLM.from_pretrained(root / "base")
        pm = peft.get_peft_model(model, peft.LoraConfig(init_lora_weights=False, **kw))
        pm.save_pretrained(root / name)
        if name == "lora1":
            merged = pm.merge_and_unload().state_dict()
            torch.save({k: v.clone() for k, v in merged.items()}, root / "lora1_merged.pt")
    model = transformers.LlamaForCausalLM.from_pretrained(root / "base")
    ocfg = peft.OFTConfig(r=0, oft_block_size=4, target_modules=["q_proj"], init_weights=False)
    peft.get_peft_model(model, ocfg).save_pretrained(root / "oft1")
    return root


def _factors(folder: Path, module: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(A, scale·B) read straight from the PEFT files (not through orthokit's reader)."""
    from safetensors.torch import load_file

    sd = load_file(str(folder / "adapter_model.safetensors"))
    conf = json.loads((folder / "adapter_config.json").read_text())
    key = f"base_model.model.{module}"
    if f"{key}.lora_A.weight" not in sd:
        return None
    a, b = sd[f"{key}.lora_A.weight"], sd[f"{key}.lora_B.weight"]
    r = a.shape[0]
    scale = conf["lora_alpha"] / (r**0.5 if conf.get("use_rslora") else r)
    return a, b * scale


def _write(root: Path, name: str, body: str) -> Path:
    p = root / name
    p.write_text(f"base_model: {root / 'base'}\n{body}")
    return p


def test_do_merging_from_peft_folders_end_to_end(folders: Path, tmp_path: Path) -> None:
    cfg = _write(
        tmp_path,
        "do.yml",
        f"merge_method: do_merging\nmodels:\n  - model: {folders / 'lora1'}\n    parameters: {{weight: 1.0}}\n"
        f"  - model: {folders / 'lora2'}\n    parameters: {{weight: 0.5}}\n"
        "parameters: {lambda: 0.8, steps: 20}\ndtype: float32\n",
    )
    cfg.write_text(cfg.read_text().replace(str(tmp_path / "base"), str(folders / "base")))
    assert main([str(cfg), str(tmp_path / "out"), "--dry-run"]) == 0
    assert main([str(cfg), str(tmp_path / "out"), "--no-progress"]) == 0
    out, base = open_checkpoint(tmp_path / "out"), open_checkpoint(folders / "base")
    assert sorted(out.keys()) == sorted(base.keys())
    n_merged = 0
    for k in base.keys():
        mod = k.removesuffix(".weight")
        pairs = [
            (w, f)
            for w, f in ((1.0, _factors(folders / "lora1", mod)), (0.5, _factors(folders / "lora2", mod)))
        ]
        pairs = [(w, f) for w, f in pairs if f is not None]
        if not pairs:
            assert torch.equal(out.get(k), base.get(k)), k
            continue
        want = do_merging(
            base.get(k), [f for _, f in pairs], weights=[w for w, _ in pairs], lambda_=0.8, steps=20
        )
        torch.testing.assert_close(out.get(k), want, rtol=1e-6, atol=1e-7)
        n_merged += 1
    assert n_merged == 6  # q, v in two layers (both adapters) + down_proj in two layers (lora2 only)


def test_do_merging_one_adapter_equals_peft_merge_and_unload(folders: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "one.yml"
    cfg.write_text(
        f"merge_method: do_merging\nbase_model: {folders / 'base'}\nmodels:\n  - model: {folders / 'lora1'}\n"
    )
    assert main([str(cfg), str(tmp_path / "out"), "--no-progress"]) == 0
    peft_merged = torch.load(folders / "lora1_merged.pt")
    out = open_checkpoint(tmp_path / "out")
    for k in out.keys():
        torch.testing.assert_close(out.get(k), peft_merged[k], rtol=1e-5, atol=1e-6)


def test_dry_run_catches_input_kind_mismatches(
    folders: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    full = tmp_path / "full.yml"  # a factor method given a full checkpoint
    full.write_text(
        f"merge_method: do_merging\nbase_model: {folders / 'base'}\nmodels:\n  - model: {folders / 'base'}\n"
        f"  - model: {folders / 'lora1'}\n"
    )
    full.write_text(
        full.read_text().replace(f"  - model: {folders / 'base'}\n", f"  - model: {tmp_path / 'ft'}\n")
    )
    transformers.LlamaForCausalLM.from_pretrained(folders / "base").save_pretrained(tmp_path / "ft")
    capsys.readouterr()
    assert main([str(full), str(tmp_path / "o1"), "--dry-run"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "merges LoRA factors (inputs='lora')" in err and "models[0]" in err
    nobase = tmp_path / "nobase.yml"
    nobase.write_text(
        f"merge_method: do_merging\nmodels:\n  - model: {folders / 'lora1'}+{folders / 'lora1'}\n"
    )
    assert main([str(nobase), str(tmp_path / "o2"), "--dry-run"]) == 1
    oft = tmp_path / "oft.yml"  # an orthogonal-factor method cannot be fed from folders
    oft.write_text(
        f"merge_method: orthomerge_oft\nbase_model: {folders / 'base'}\nmodels:\n  - model: {folders / 'oft1'}\n"
    )
    capsys.readouterr()
    assert main([str(oft), str(tmp_path / "o3"), "--dry-run"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "orthogonal (OFT) factors" in err
    ok = tmp_path / "ok.yml"  # a full-weight method given LoRA folders applies them (W + s·BA): accepted
    ok.write_text(
        f"merge_method: task_arithmetic\nbase_model: {folders / 'base'}\nmodels:\n  - model: {folders / 'lora1'}\n"
    )
    assert main([str(ok), str(tmp_path / "o4"), "--dry-run"]) == 0
    assert "inputs: full" in capsys.readouterr().out
    ok.write_text(ok.read_text().replace("lora1", "oft1"))  # ... but an OFT folder is not a LoRA delta
    assert main([str(ok), str(tmp_path / "o5"), "--dry-run"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "peft_type 'OFT' is not supported" in err
