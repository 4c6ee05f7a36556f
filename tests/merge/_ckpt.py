"""Tiny checkpoint generators shared by the merge tool tests (HF folder, sharded, bare file, PEFT LoRA)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from orthokit.io.safetensors_io import save_sharded

SHAPES = {
    "model.embed_tokens.weight": (40, 8),
    "model.layers.0.self_attn.q_proj.weight": (8, 8),
    "model.layers.0.mlp.up_proj.weight": (16, 8),
    "model.layers.0.input_layernorm.weight": (8,),
    "model.layers.1.self_attn.q_proj.weight": (8, 8),
    "model.layers.1.mlp.up_proj.weight": (16, 8),
    "model.layers.1.input_layernorm.weight": (8,),
    "model.norm.weight": (8,),
    "lm_head.weight": (40, 8),
}


def state(
    seed: int, base: dict[str, torch.Tensor] | None = None, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for n, s in SHAPES.items():
        x = torch.randn(*s, generator=g, dtype=torch.float64)
        out[n] = (x if base is None else base[n].double() + 0.05 * x).to(dtype)
    out["model.rotary.inv_freq_steps"] = torch.arange(4)  # a non-floating buffer
    return out


def write_hf(path: Path, sd: dict[str, torch.Tensor], shard: int | None = None) -> Path:
    save_sharded(sd, path, max_shard_bytes=shard)
    (path / "config.json").write_text(
        json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"})
    )
    (path / "tokenizer_config.json").write_text("{}")
    return path


def write_lora(
    path: Path, targets: dict[str, tuple[int, int]], r: int = 2, alpha: float = 4.0, seed: int = 9, **cfg
) -> dict[str, torch.Tensor]:
    """A PEFT-format LoRA folder; returns the expected ΔW per base tensor name."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    tensors, deltas = {}, {}
    scale = alpha / (r**0.5) if cfg.get("use_rslora") else alpha / r
    for name, (o, i) in targets.items():
        mod = name.removesuffix(".weight")
        a = torch.randn(r, i, generator=g)
        b = torch.randn(o, r, generator=g)
        tensors[f"base_model.model.{mod}.lora_A.weight"] = a
        tensors[f"base_model.model.{mod}.lora_B.weight"] = b
        deltas[name] = scale * (b.double() @ a.double())
    path.mkdir(parents=True)
    save_file(tensors, str(path / "adapter_model.safetensors"))
    conf = {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": alpha,
        "target_modules": ["q_proj"],
        "base_model_name_or_path": "org/not-local",
    }
    conf.update(cfg)
    (path / "adapter_config.json").write_text(json.dumps(conf))
    return deltas
