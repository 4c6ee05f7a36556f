"""The ``"orthokit"`` transformers attention implementation: online q/k rotation (R3) and KV fake-quant hooks.

R3 (QuaRot arXiv 2404.00456 §4 "online Hadamard on queries and keys"; SpinQuant arXiv 2405.16406 R3): after RoPE,
queries and keys of every head are multiplied by one orthogonal ``H`` over ``head_dim``. Scores are unchanged,
``(qH)(kH)ᵀ = q H Hᵀ kᵀ = q kᵀ``, but the keys entering a quantizer have their outliers spread. transformers
(5.x) computes q/k/v, applies RoPE and updates the cache inside each attention module, then calls the function
registered under ``config._attn_implementation`` in :data:`transformers.AttentionInterface` with
``(module, query, key, value, attention_mask, **kwargs)``. Llama, Mistral, Qwen2 and BERT all go through it, so
one registered function, :func:`orthokit_attention`, covers every family: per attention module it

1. rotates ``query`` and ``key`` by ``module._orthokit_qk_rotation`` (a :class:`~orthokit.rotation.base.Rotation`
   over head_dim) when set — with a cache, ``key`` is the full cached K (rotated on every call; exact);
2. replaces ``(key, value)`` by ``module._orthokit_kv_quant(key, value)`` when set (H5's fake KV quantizer);
3. calls the implementation recorded in ``module._orthokit_base_impl`` (``"sdpa"`` or ``"eager"``; eager is the
   modelling file's own ``eager_attention_forward``).

The attention mask for ``"orthokit"`` is built by transformers' ``eager_mask`` (an additive float mask, never
skipped): both base implementations accept it, so one registration serves both.

Example:
    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> from orthokit.rotation.attention import install_attention
    >>> m = LlamaForCausalLM(LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
    ...                                  intermediate_size=64, vocab_size=50)).eval()
    >>> ids = torch.arange(6)[None]
    >>> ref = m(ids).logits
    >>> install_attention(m)
    ['model.layers.0.self_attn']
    >>> m.config._attn_implementation
    'orthokit'
    >>> torch.allclose(m(ids).logits, ref, atol=1e-6)
    True
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

__all__ = [
    "ATTN_NAME",
    "SUPPORTED_BASES",
    "attention_modules",
    "install_attention",
    "orthokit_attention",
    "uninstall_attention",
]

#: the name registered in transformers' AttentionInterface / AttentionMaskInterface
ATTN_NAME = "orthokit"
#: base implementations the orthokit function can delegate to
SUPPORTED_BASES = ("sdpa", "eager")
_ATTRS = ("_orthokit_base_impl", "_orthokit_qk_rotation", "_orthokit_kv_quant")


def _base_function(module: nn.Module, impl: str) -> Callable[..., Any]:
    if impl == "eager":
        fn = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
        if fn is None:
            raise ValueError(
                f"attention: {type(module).__name__}'s module defines no eager_attention_forward"
            )
        return fn
    from transformers import AttentionInterface

    return AttentionInterface._global_mapping[impl]


def orthokit_attention(
    module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None, **kwargs: Any
) -> tuple[Tensor, Tensor | None]:
    """The registered ``"orthokit"`` attention function (see the module docstring for the three steps)."""
    rot = getattr(module, "_orthokit_qk_rotation", None)
    if rot is not None:
        query, key = rot.apply(query), rot.apply(key)
    quant = getattr(module, "_orthokit_kv_quant", None)
    if quant is not None:
        key, value = quant(key, value)
    impl = getattr(module, "_orthokit_base_impl", "sdpa")
    return _base_function(module, impl)(module, query, key, value, attention_mask, **kwargs)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    if AttentionInterface._global_mapping.get(ATTN_NAME) is not orthokit_attention:
        AttentionInterface.register(ATTN_NAME, orthokit_attention)
    if AttentionMaskInterface._global_mapping.get(ATTN_NAME) is not eager_mask:
        AttentionMaskInterface.register(ATTN_NAME, eager_mask)


def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The modules that call the attention interface: Llama-family ``self_attn`` (``q_proj``) and BERT
    self-attention (``query``), by qualified name.

    Example:
        >>> from transformers import BertConfig, BertModel
        >>> m = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        ...                          intermediate_size=64, vocab_size=50))
        >>> list(attention_modules(m))
        ['encoder.layer.0.attention.self', 'encoder.layer.1.attention.self']
    """
    return {
        name: mod
        for name, mod in model.named_modules()
        if hasattr(mod, "config")
        and (
            isinstance(getattr(mod, "q_proj", None), nn.Module)
            or isinstance(getattr(mod, "query", None), nn.Module)
        )
    }


def install_attention(model: nn.Module) -> list[str]:
    """Route ``model``'s attention through ``"orthokit"``; idempotent. Returns the attention modules' names.

    Records the current implementation (``sdpa`` or ``eager``) on every attention module as
    ``_orthokit_base_impl`` and sets ``config._attn_implementation = "orthokit"``. The function is exact until a
    rotation or quantizer is attached (``module._orthokit_qk_rotation`` / ``module._orthokit_kv_quant``).

    Raises:
        ValueError: the model has no attention module this hook understands, or its implementation is neither
            sdpa nor eager (e.g. ``flash_attention_2``, ``flex_attention``); the model is then unchanged.
    """
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "_attn_implementation"):
        raise ValueError(
            f"model: {type(model).__name__} has no transformers config with an attention implementation"
        )
    mods = attention_modules(model)
    if not mods:
        raise ValueError(
            f"model: {type(model).__name__} has no attention module with q_proj/query projections"
        )
    current = config._attn_implementation or "eager"
    if current != ATTN_NAME and current not in SUPPORTED_BASES:
        raise ValueError(
            f"model: attention implementation {current!r} is not supported (use one of {SUPPORTED_BASES})"
        )
    _register()
    for mod in mods.values():
        if getattr(mod, "_orthokit_base_impl", None) is None:
            base = current if current != ATTN_NAME else "sdpa"
            mod._orthokit_base_impl = base  # type: ignore[assignment]
        for cfg in {id(c): c for c in (config, getattr(mod, "config", None)) if c is not None}.values():
            cfg._attn_implementation = ATTN_NAME
    return list(mods)


def uninstall_attention(model: nn.Module) -> None:
    """Undo :func:`install_attention`: restore the recorded base implementation and drop the orthokit attributes."""
    base = None
    for mod in attention_modules(model).values():
        base = getattr(mod, "_orthokit_base_impl", None) or base
        for attr in _ATTRS:
            if attr in mod.__dict__:
                delattr(mod, attr)
        if getattr(mod.config, "_attn_implementation", None) == ATTN_NAME and base is not None:
            mod.config._attn_implementation = base
    if base is not None and getattr(model.config, "_attn_implementation", None) == ATTN_NAME:
        model.config._attn_implementation = base
