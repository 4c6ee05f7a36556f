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
    for name, neumann, seed in (("oft1", True, 20), ("oft_exact1", False, 21), ("oft_exact2", False, 22)):
        torch.manual_seed(seed)
        model = transformers.LlamaForCausalLM.from_pretrained(root / "base")
        ocfg = peft.OFTConfig(
            r=0,
            oft_block_size=4,
            target_modules=["q_proj", "v_proj"] if name != "oft_exact2" else ["q_proj", "up_proj"],
            init_weights=False,
            use_cayley_neumann=neumann,
        )
        pm = peft.get_peft_model(model, ocfg)
        pm.save_pretrained(root / name)
        rots = {  # PEFT's own block-diagonal rotation of every targeted layer
            f"{n.removeprefix('base_model.model.')}.weight": mod.oft_R["default"]
            .get_weight()
            .detach()
            .clone()
            for n, mod in pm.named_modules()
            if hasattr(mod, "oft_R") and "default" in getattr(mod, "oft_R", {})
        }
        torch.save(rots, root / f"{name}_rot.pt")
        merged = pm.merge_and_unload().state_dict()
        torch.save({k: v.clone() for k, v in merged.items()}, root / f"{name}_merged.pt")
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
    oft = tmp_path / "oft.yml"  # an orthogonal-factor method given a LoRA folder
    oft.write_text(
        f"merge_method: orthomerge_oft\nbase_model: {folders / 'base'}\nmodels:\n  - model: {folders / 'lora1'}\n"
    )
    capsys.readouterr()
    assert main([str(oft), str(tmp_path / "o3"), "--dry-run"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not a PEFT OFT adapter folder" in err
    oft.write_text(oft.read_text().replace("lora1", "oft1").replace("orthomerge_oft", "do_merging"))
    assert (
        main([str(oft), str(tmp_path / "o3"), "--dry-run"]) == 1
    )  # a LoRA-factor method given an OFT folder
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not a PEFT LoRA adapter folder" in err
    ok = tmp_path / "ok.yml"  # a full-weight method given LoRA folders applies them (W + s·BA): accepted
    ok.write_text(
        f"merge_method: task_arithmetic\nbase_model: {folders / 'base'}\nmodels:\n  - model: {folders / 'lora1'}\n"
    )
    assert main([str(ok), str(tmp_path / "o4"), "--dry-run"]) == 0
    assert "inputs: full" in capsys.readouterr().out


def _blocks(full: torch.Tensor, b: int = 4) -> torch.Tensor:
    """The diagonal b×b blocks of PEFT's block-diagonal rotation."""
    n = full.shape[0] // b
    return torch.stack([full[i * b : (i + 1) * b, i * b : (i + 1) * b] for i in range(n)])


def test_orthomerge_oft_from_peft_folders_end_to_end(folders: Path, tmp_path: Path) -> None:
    from orthokit.merge.orthomerge import orthomerge_oft

    cfg = tmp_path / "oft.yml"
    cfg.write_text(
        f"merge_method: orthomerge_oft\nbase_model: {folders / 'base'}\nmodels:\n"
        f"  - model: {folders / 'oft_exact1'}\n    parameters: {{weight: 1.0}}\n"
        f"  - model: {folders / 'oft_exact2'}\n    parameters: {{weight: 0.5}}\n"
        "parameters: {lambda: 0.9}\ndtype: float64\nout_dtype: float32\n"
    )
    assert main([str(cfg), str(tmp_path / "out"), "--no-progress"]) == 0
    out, base = open_checkpoint(tmp_path / "out"), open_checkpoint(folders / "base")
    rots = [torch.load(folders / f"oft_exact{i}_rot.pt") for i in (1, 2)]
    n_merged = 0
    for k in base.keys():
        have = [(w, _blocks(r[k].double())) for w, r in zip((1.0, 0.5), rots) if k in r]
        if not have:
            assert torch.equal(out.get(k), base.get(k)), k
            continue
        merged = orthomerge_oft(None, [r for _, r in have], weights=[w for w, _ in have], lambda_=0.9)
        want = base.get(k).double() @ torch.block_diag(*merged).T  # PEFT's merge rule: (R Wᵀ)ᵀ
        torch.testing.assert_close(out.get(k), want.float(), rtol=1e-5, atol=1e-6)
        n_merged += 1
    assert n_merged == 6  # q_proj (both), v_proj (first), up_proj (second), two layers each


@pytest.mark.parametrize(
    ("method", "folder"),
    [("orthomerge_oft", "oft_exact1"), ("task_arithmetic", "oft1"), ("ties", "oft_exact2")],
)
def test_one_oft_adapter_equals_peft_merge_and_unload(
    folders: Path, tmp_path: Path, method: str, folder: str
) -> None:
    """One OFT adapter merged alone (orthomerge_oft) or applied by a full-weight method (the Neumann-series
    adapter included) gives PEFT's merge_and_unload."""
    cfg = tmp_path / "c.yml"
    extra = "parameters: {density: 1.0}\n" if method == "ties" else ""
    cfg.write_text(
        f"merge_method: {method}\nbase_model: {folders / 'base'}\nmodels:\n  - model: {folders / folder}\n{extra}"
    )
    assert main([str(cfg), str(tmp_path / "out"), "--no-progress"]) == 0
    ref = torch.load(folders / f"{folder}_merged.pt")
    out = open_checkpoint(tmp_path / "out")
    for k in out.keys():
        torch.testing.assert_close(out.get(k), ref[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("key", "value"), [("coft", True), ("bias", "all"), ("modules_to_save", ["lm_head"])]
)
def test_unsupported_oft_options_are_one_line_errors(
    folders: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str, value: object
) -> None:
    import shutil

    shutil.copytree(folders / "oft_exact1", tmp_path / "ad")
    conf = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    conf[key] = value
    (tmp_path / "ad" / "adapter_config.json").write_text(json.dumps(conf))
    cfg = tmp_path / "c.yml"
    cfg.write_text(
        f"merge_method: orthomerge_oft\nbase_model: {folders / 'base'}\nmodels:\n  - model: {tmp_path / 'ad'}\n"
    )
    capsys.readouterr()
    assert main([str(cfg), str(tmp_path / "out"), "--dry-run"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"OFT with {key}=" in err and "not supported" in err


def test_lora_on_embeddings_with_peft_saved_base_layer(folders: Path, tmp_path: Path) -> None:
    """PEFT saves ``embed_tokens.base_layer.weight`` in the adapter when an embedding is a target
    (``save_embedding_layers="auto"``): a full-weight merge equals PEFT's ``merge_and_unload`` and the factor
    method ignores the unchanged copy (it used to stop with "targets a tensor the base model does not have")."""
    torch.manual_seed(30)
    model = transformers.LlamaForCausalLM.from_pretrained(folders / "base")
    pm = peft.get_peft_model(
        model,
        peft.LoraConfig(
            r=2, lora_alpha=4, target_modules=["q_proj", "embed_tokens"], init_lora_weights=False
        ),
    )
    pm.save_pretrained(tmp_path / "lora_emb")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "lora_emb" / "adapter_model.safetensors"), "pt") as f:
        assert any(".base_layer." in k for k in f.keys())  # the PEFT layout this test is about
    merged = pm.merge_and_unload().state_dict()
    ta = tmp_path / "ta.yml"
    ta.write_text(
        f"base_model: {folders / 'base'}\nmerge_method: task_arithmetic\nmodels:\n  - model: {tmp_path / 'lora_emb'}\n"
    )
    assert main([str(ta), str(tmp_path / "out_ta"), "--no-progress"]) == 0
    out = open_checkpoint(tmp_path / "out_ta")
    base_emb = open_checkpoint(folders / "base").get("model.embed_tokens.weight")
    assert not torch.equal(out.get("model.embed_tokens.weight"), base_emb)  # the embedding's LoRA was applied
    for k in out.keys():
        torch.testing.assert_close(out.get(k), merged[k], rtol=1e-5, atol=1e-6)
    dm = tmp_path / "dm.yml"
    dm.write_text(
        f"base_model: {folders / 'base'}\nmerge_method: do_merging\nmodels:\n  - model: {tmp_path / 'lora_emb'}\n"
    )
    assert main([str(dm), str(tmp_path / "out_dm"), "--no-progress"]) == 0
    out = open_checkpoint(tmp_path / "out_dm")
    for k in out.keys():
        torch.testing.assert_close(out.get(k), merged[k], rtol=1e-5, atol=1e-6)
