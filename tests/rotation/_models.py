"""Tiny randomly initialised transformers models for the ``orthokit.rotation`` tests (shared fixture).

``tiny_model(family)`` builds one of :data:`FAMILIES` in eval mode, float32 (for exactness tests ONLY: a random
tiny model has no outliers, so never use it to show a quantization benefit):

- ``"llama"``: LlamaForCausalLM, hidden 64, 2 layers, 4 heads, 4 kv heads, intermediate 172, vocab 256, untied head;
- ``"llama_tied"``: the same with ``tie_word_embeddings=True``;
- ``"llama_gqa"``: 4 heads sharing 2 kv heads (grouped-query attention), untied;
- ``"mistral"``: MistralForCausalLM, 4 heads / 2 kv heads, untied;
- ``"qwen2"``: Qwen2ForCausalLM, 4 heads / 2 kv heads, q/k/v biases, *tied* head;
- ``"bert"``: BertModel, hidden 64, 2 layers, 4 heads, intermediate 128, vocab 256 (post-LN encoder).

Weights are redrawn with std ``init_std`` (default 0.1) so activations are far above rounding, and every norm gain
(and LayerNorm bias, and linear bias) is redrawn too: with HF's all-ones gains a rewriter that forgets to fuse them
would still be exact and its bug would go unseen. Norm gains are ``exp(N(0, 0.3²))`` (positive, far from 1).
"""

from __future__ import annotations

import torch
from torch import nn

#: every family a rewriter test should iterate over
FAMILIES = ("llama", "llama_tied", "llama_gqa", "mistral", "qwen2", "bert")
#: the decoder-only (Llama-family) subset
DECODERS = ("llama", "llama_tied", "llama_gqa", "mistral", "qwen2")
VOCAB = 256
HIDDEN = 64
INTERMEDIATE = 172
BERT_INTERMEDIATE = 128

_DECODER_BASE: dict[str, object] = {
    "vocab_size": VOCAB,
    "hidden_size": HIDDEN,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": INTERMEDIATE,
    "max_position_embeddings": 128,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
#: family -> (config class, model class, config keywords on top of the base)
_SPECS: dict[str, tuple[str, str, dict[str, object]]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {"num_key_value_heads": 4, "tie_word_embeddings": False}),
    "llama_tied": (
        "LlamaConfig",
        "LlamaForCausalLM",
        {"num_key_value_heads": 4, "tie_word_embeddings": True},
    ),
    "llama_gqa": (
        "LlamaConfig",
        "LlamaForCausalLM",
        {"num_key_value_heads": 2, "tie_word_embeddings": False},
    ),
    "mistral": (
        "MistralConfig",
        "MistralForCausalLM",
        {"num_key_value_heads": 2, "tie_word_embeddings": False},
    ),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {"num_key_value_heads": 2, "tie_word_embeddings": True}),
    "bert": (
        "BertConfig",
        "BertModel",
        {
            "vocab_size": VOCAB,
            "hidden_size": HIDDEN,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": BERT_INTERMEDIATE,
            "max_position_embeddings": 128,
            "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0,
        },
    ),
}


def config(family: str, *, attn_implementation: str = "sdpa", **overrides: object) -> object:
    """The transformers config of ``family`` (``overrides`` replace any field, e.g. ``num_hidden_layers=1``)."""
    import transformers as tf

    if family not in _SPECS:
        raise ValueError(f"unknown family {family!r}; choose from {FAMILIES}")
    cfg_cls, _, extra = _SPECS[family]
    kwargs = dict(extra) if family == "bert" else {**_DECODER_BASE, **extra}
    kwargs.update(overrides)
    cfg = getattr(tf, cfg_cls)(**kwargs)
    cfg._attn_implementation = attn_implementation  # type: ignore[attr-defined]
    return cfg


def tiny_model(
    family: str,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    init_std: float = 0.1,
    attn_implementation: str = "sdpa",
    model_class: str | None = None,
    **overrides: object,
) -> nn.Module:
    """A tiny random ``family`` model in eval mode (see the module docstring).

    ``model_class`` picks another head class of the same family (e.g. ``"BertForMaskedLM"``, ``"LlamaModel"``).
    """
    import transformers as tf

    cfg = config(family, attn_implementation=attn_implementation, **overrides)
    cls = getattr(tf, model_class or _SPECS[family][1])
    torch.manual_seed(seed)
    model = cls(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name.lower() and name.endswith("weight"):
                p.copy_(torch.exp(torch.randn(p.shape, generator=g) * 0.3))
            elif p.ndim >= 2 or name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * init_std)
    if getattr(cfg, "tie_word_embeddings", False) and hasattr(model, "tie_weights"):
        model.tie_weights()
    return model.to(dtype).eval()


def tiny_ids(batch: int = 2, length: int = 16, *, seed: int = 1) -> torch.Tensor:
    """Random token ids ``[batch, length]`` in the tiny vocabulary (avoiding the special ids 0..2)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=g)


def tiny_padded_inputs(batch: int = 2, length: int = 16, *, seed: int = 1) -> dict[str, torch.Tensor]:
    """``{"input_ids", "attention_mask"}`` with the second row right-padded after half its length."""
    ids = tiny_ids(batch, length, seed=seed)
    mask = torch.ones_like(ids)
    if batch > 1:
        mask[1, length // 2 :] = 0
        ids[1, length // 2 :] = 0
    return {"input_ids": ids, "attention_mask": mask}
