"""Tiny randomly initialised transformers causal LMs for the steering tests (shared by the steer test files).

``tiny_model(family)`` builds one of :data:`FAMILIES` in eval mode with the eager attention kernel:

- ``"llama"``: LlamaForCausalLM, hidden 64, 2 layers, 4 heads, vocab 256, intermediate 172 (untied head);
- ``"gpt2"``: GPT2LMHeadModel, n_embd 64, 2 layers, 4 heads, vocab 256 (tied head, learned positions, Conv1D);
- ``"gpt_neox"``: GPTNeoXForCausalLM, hidden 64, 2 layers, 4 heads (parallel residual, biases, rotary);
- ``"qwen2"``: Qwen2ForCausalLM, hidden 64, 2 layers, 4 heads (q/k/v biases, *tied* head);
- ``"gemma2"`` (in :data:`EXTRA`): Gemma2ForCausalLM, hidden 64, 2 layers (post-norms around each residual write);
- ``"olmo2"``, ``"olmo3"``, ``"exaone4"``, ``"glm4"`` (in :data:`EXTRA`): the same shape; post-norms on each write
  (OLMo2/3 and Exaone4 without a pre-feedforward norm, GLM4 named ``post_self_attn_layernorm``/``post_mlp_layernorm``).

The weights are re-drawn with std ``init_std`` (default 0.2, ten times HF's 0.02) so activations and steering
effects are far above rounding; in the :data:`EXTRA` families the norms' per-channel gains also get N(0, 0.5²)
noise (with uniform gains a post-norm maps a write ⟂ r̂ to a write ⟂ r̂, which would hide a missed post-norm).
"""

from __future__ import annotations

import torch
from torch import nn

FAMILIES = ("llama", "gpt2", "gpt_neox", "qwen2")
#: built on request only (not in the families every test iterates over)
EXTRA = ("gemma2", "olmo2", "olmo3", "exaone4", "glm4")
#: the post-norm architectures of EXTRA whose classes this transformers version has
_POST_NORM_CLASSES = {
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM"),
    "olmo3": ("Olmo3Config", "Olmo3ForCausalLM"),
    "exaone4": ("Exaone4Config", "Exaone4ForCausalLM"),
    "glm4": ("Glm4Config", "Glm4ForCausalLM"),
}
VOCAB = 256
HIDDEN = 64


#: the shape every family except GPT-2 shares (GPT-2 names its fields differently, see :data:`_SPECS`)
_BASE = {
    "hidden_size": HIDDEN,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "max_position_embeddings": 128,
}
#: per family: (config class, model class, config keywords on top of ``vocab_size`` and, unless ``None``, of
#: :data:`_BASE`); one table so adding a family is one row
_SPECS: dict[str, tuple[str, str, dict[str, object] | None]] = {
    "llama": (
        "LlamaConfig",
        "LlamaForCausalLM",
        {"num_key_value_heads": 4, "intermediate_size": 172, "tie_word_embeddings": False},
    ),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", None),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", {"tie_word_embeddings": False}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {"num_key_value_heads": 2, "tie_word_embeddings": True}),
    "gemma2": (
        "Gemma2Config",
        "Gemma2ForCausalLM",
        {"num_key_value_heads": 2, "head_dim": 16, "sliding_window": 4},
    ),
    **{
        family: (
            cfg_cls,
            model_cls,
            {
                "num_key_value_heads": 2,
                "pad_token_id": 0,
                "bos_token_id": 0,
                "eos_token_id": 0,
                "tie_word_embeddings": False,
            },
        )
        for family, (cfg_cls, model_cls) in _POST_NORM_CLASSES.items()
    },
}
_GPT2 = {
    "n_embd": HIDDEN,
    "n_layer": 2,
    "n_head": 4,
    "n_positions": 128,
    "bos_token_id": 0,
    "eos_token_id": 0,
}


def _config(family: str) -> object:
    import transformers as tf

    if family not in _SPECS:
        raise ValueError(f"unknown family {family!r}; choose from {FAMILIES + EXTRA}")
    cfg_cls, _, extra = _SPECS[family]
    kwargs = dict(_GPT2) if extra is None else {**_BASE, **extra}
    return getattr(tf, cfg_cls)(vocab_size=VOCAB, **kwargs)


def available(family: str) -> bool:
    """Whether the installed transformers has ``family``'s classes."""
    import transformers as tf

    return family not in _POST_NORM_CLASSES or all(hasattr(tf, c) for c in _POST_NORM_CLASSES[family])


def tiny_model(
    family: str, *, seed: int = 0, dtype: torch.dtype = torch.float32, init_std: float = 0.2
) -> nn.Module:
    """A tiny random ``family`` causal LM in eval mode (see the module docstring)."""
    import transformers as tf

    cfg = _config(family)
    cfg._attn_implementation = "eager"  # type: ignore[attr-defined]
    cls = getattr(tf, _SPECS[family][1])
    torch.manual_seed(seed)
    model = cls(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2 or name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * init_std)
            elif family in EXTRA and "norm" in name:
                # per-channel gains far from uniform: a uniform gain would keep a write ⟂ r̂ after the post-norm
                # and hide a missed post-norm
                p.add_(torch.randn(p.shape, generator=g) * 0.5)
    return model.to(dtype).eval()


def tiny_ids(batch: int = 2, length: int = 7, *, seed: int = 1) -> torch.Tensor:
    """Random token ids ``[batch, length]`` in the tiny vocabulary."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, length), generator=g)
