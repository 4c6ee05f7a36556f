"""Pure, differentiable rotation of Llama-family parameters (the offline part of QuaRot / SpinQuant / OstQuant).

Math (row-vector convention, ``x ↦ x @ Q``; for ``nn.Linear`` weight ``W`` (out, in), ``y = x Wᵀ + b``):

*Computational invariance* (Ashkboos et al., SliceGPT arXiv 2401.15024 §3; QuaRot arXiv 2404.00456 §4;
SpinQuant arXiv 2405.16406 §3). In a pre-norm RMSNorm transformer, ``RMSNorm(h) = γ ⊙ h / rms(h)``. Once every
gain ``γ`` is folded into the linears that read the norm (``W ← W diag(γ)``, then ``γ := 1``), the norm commutes
with any orthogonal ``Q``: ``rms(hQ) = rms(h)``, so ``RMSNorm(hQ) = RMSNorm(h) Q``. Rotating the residual stream
``h ↦ h Q`` (R1) is then exact when

- the token embedding ``E ← E Q`` (rows are residual vectors);
- every linear *reading* the residual (q/k/v, gate/up, lm_head) gets ``W ← W Q`` — ``(xQ)(WQ)ᵀ = xWᵀ``;
- every linear *writing* into it (o_proj, down_proj) gets ``W ← Qᵀ W``, ``b ← b Q`` — ``y Q = x (QᵀW)ᵀ + bQ``.

*R2* (per head, offline): a ``head_dim × head_dim`` orthogonal ``R`` on each value head: v_proj's rows of kv head
``g`` ``W_g ← Rᵀ W_g`` (``b_g ← b_g R``) and o_proj's columns of query head ``h`` ``W_{:,h} ← W_{:,h} R``. The
attention mix is linear in ``v`` and acts across tokens, so ``o_h R = softmax(·) (v_g R)``; with grouped-query
attention query head ``h`` reads kv head ``g = h // (n_heads / n_kv_heads)`` (transformers' ``repeat_kv``).
``R`` may differ per layer (SpinQuant learns one ``R2`` per layer): each layer's value/output pair is independent.

*OstQuant scalings* (Hu et al., arXiv 2501.13987 §3): diagonal, positive, exact equivalent transforms applied in
the rotated basis — norm-linear ``γ ← γ s``, reading linears' columns ``÷ s``; up/down ``W_up`` rows ``× s``,
``W_down`` columns ``÷ s`` (SwiGLU ``act(g)·(u s) = (act(g)·u) s``); value/output ``W_v`` rows (after R2) ``× s``,
``W_o`` columns ``÷ s`` repeated over the query heads of each kv group.

References for the fusion rules: QuaRot ``spcl/QuaRot`` ``fake_quant/rotation_utils.py`` (``fuse_ln_linear``,
``rotate_*``), SpinQuant ``facebookresearch/SpinQuant`` ``utils/fuse_norm_utils.py`` and ``utils/rotation_utils.py``.
This module re-derives them; it copies no code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from orthokit.rotation.fuse import fold_norm, untie_head

__all__ = ["LlamaDims", "fuse_llama_norms", "llama_dims", "llama_head", "rotate_llama_params"]

#: names of a top-level linear that reads the final norm (causal LM head, sequence-classification head)
_HEAD_NAMES = ("lm_head", "score")


@dataclass(frozen=True)
class LlamaDims:
    """The shapes a Llama-family rewrite needs, read from a transformers config."""

    hidden: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate: int

    @property
    def n_rep(self) -> int:
        """Query heads per kv head (1 without grouped-query attention)."""
        return self.n_heads // self.n_kv_heads


def llama_dims(config: Any) -> LlamaDims:
    """:class:`LlamaDims` of a Llama/Mistral/Qwen2 config (``head_dim`` defaults to ``hidden // n_heads``).

    Example:
        >>> from transformers import LlamaConfig
        >>> llama_dims(LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
        ...                        num_hidden_layers=2, intermediate_size=172)).head_dim
        16
    """
    hidden = int(config.hidden_size)
    n_heads = int(config.num_attention_heads)
    n_kv = int(getattr(config, "num_key_value_heads", None) or n_heads)
    head_dim = int(getattr(config, "head_dim", None) or hidden // n_heads)
    if n_heads % n_kv:
        raise ValueError(
            f"config: num_attention_heads={n_heads} is not a multiple of num_key_value_heads={n_kv}"
        )
    return LlamaDims(
        hidden, int(config.num_hidden_layers), n_heads, n_kv, head_dim, int(config.intermediate_size)
    )


def llama_head(model: nn.Module) -> tuple[str, nn.Linear] | None:
    """``(name, linear)`` of the top-level head reading the final norm (``lm_head``/``score``), else ``None``."""
    for name in _HEAD_NAMES:
        head = getattr(model, name, None)
        if isinstance(head, nn.Linear):
            return name, head
    return None


def _base(model: nn.Module) -> nn.Module:
    """The decoder stack (``model.model`` for a ``*ForCausalLM``, else the model itself)."""
    inner = getattr(model, "model", None)
    return inner if isinstance(inner, nn.Module) and hasattr(inner, "layers") else model


@torch.no_grad()
def fuse_llama_norms(model: nn.Module) -> None:
    """Fold every RMSNorm gain into the linears that read it, in float64, and untie a tied head (in place).

    ``input_layernorm.weight`` goes into q/k/v_proj, ``post_attention_layernorm.weight`` into gate/up_proj and the
    final ``norm.weight`` into the head (``lm_head`` or ``score``); each gain then becomes 1 (``W ← W diag(γ)``,
    QuaRot ``fuse_ln_linear``). A head tied to ``embed_tokens`` is first given its own copy of the weight and the
    config's ``tie_word_embeddings`` is cleared (rotation treats the two differently: ``E ← EQ`` but the head's
    gain fold would otherwise rescale the embedding). A model without a head keeps its final gain. The function
    output is unchanged up to rounding; running it twice is a no-op.

    Example:
        >>> import torch
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> cfg = LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        ...                   vocab_size=50, tie_word_embeddings=True)
        >>> m = LlamaForCausalLM(cfg).eval()
        >>> with torch.no_grad():
        ...     _ = m.model.norm.weight.uniform_(0.5, 2.0)
        >>> ids = torch.arange(8)[None]
        >>> ref = m(ids).logits
        >>> fuse_llama_norms(m)
        >>> bool(m.model.norm.weight.eq(1).all()), m.lm_head.weight is m.model.embed_tokens.weight
        (True, False)
        >>> torch.allclose(m(ids).logits, ref, atol=1e-5)
        True
    """
    base = _base(model)
    head = llama_head(model)
    embed = getattr(base, "embed_tokens", None)
    if head is not None and isinstance(embed, nn.Embedding):
        untie_head(model, head[1], embed)
    for layer in base.layers:
        att, mlp = layer.self_attn, layer.mlp
        fold_norm(layer.input_layernorm, [att.q_proj, att.k_proj, att.v_proj])
        fold_norm(layer.post_attention_layernorm, [mlp.gate_proj, mlp.up_proj])
    if head is not None:
        fold_norm(base.norm, [head[1]])


def _find(params: dict[str, Tensor], *candidates: str) -> str:
    for key in candidates:
        if key in params:
            return key
    raise ValueError(f"params: missing {candidates[0]!r} (is this a Llama-family state dict?)")


def _check_vec(name: str, s: Tensor, n: int) -> None:
    if not isinstance(s, Tensor) or s.shape != (n,):
        shape = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
        raise ValueError(f"{name}: expected a tensor of shape ({n},), got {shape}")
    if not bool(torch.isfinite(s).all()) or not bool((s > 0).all()):
        raise ValueError(f"{name}: scales must be finite and positive")


def _check_square(name: str, r: Tensor, n: int) -> None:
    if not isinstance(r, Tensor):
        raise TypeError(f"{name}: expected a Tensor, got {type(r).__name__}")
    if r.shape != (n, n):
        raise ValueError(f"{name}: expected shape ({n}, {n}), got {tuple(r.shape)}")
    if not r.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got {r.dtype}")


def _per_layer_r2(
    r2: Tensor | list[Tensor] | tuple[Tensor, ...] | None, dims: LlamaDims, r1: Tensor
) -> list[Tensor] | None:
    """``r2`` as one ``(head_dim, head_dim)`` matrix per layer: a single matrix is shared by every layer; a
    ``(n_layers, head_dim, head_dim)`` tensor or a list of ``n_layers`` matrices gives one per layer (SpinQuant)."""
    if r2 is None:
        return None
    hd, n = dims.head_dim, dims.n_layers
    if isinstance(r2, Tensor) and r2.dim() == 3:
        if r2.shape != (n, hd, hd):
            raise ValueError(
                f"r2: per-layer tensor must have shape ({n}, {hd}, {hd}) (n_layers, head_dim, head_dim), "
                f"got {tuple(r2.shape)}"
            )
        mats: list[Any] = list(r2.unbind(0))
    elif isinstance(r2, (list, tuple)):
        if len(r2) != n:
            raise ValueError(f"r2: expected one matrix per layer ({n}), got {len(r2)}")
        mats = list(r2)
    else:
        mats = [r2] * n
    for i, m in enumerate(mats):
        name = "r2" if len(mats) == 1 or mats[0] is r2 else f"r2[{i}]"
        _check_square(name, m, hd)
        if m.dtype != r1.dtype:
            raise TypeError(f"{name}: dtype {m.dtype} differs from r1's {r1.dtype}")
    return mats


def rotate_llama_params(
    params: dict[str, Tensor],
    config: Any,
    r1: Tensor,
    r2: Tensor | list[Tensor] | tuple[Tensor, ...] | None = None,
    *,
    norm_scales: dict[str, Tensor] | None = None,
    ffn_scales: dict[int, Tensor] | None = None,
    ov_scales: dict[int, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Rotate (and optionally scale) Llama-family parameters; returns a NEW dict, inputs untouched.

    Args:
        params: ``model.state_dict()``-style tensors of a model already passed through :func:`fuse_llama_norms`
            (a ``*ForCausalLM`` with ``model.`` prefix or a bare ``LlamaModel``; a down_proj wrapped by an online
            rotation, ``mlp.down_proj.linear.weight``, is found too).
        config: the transformers config (hidden size, heads, kv heads, head_dim, intermediate size).
        r1: ``(hidden, hidden)`` residual rotation R1. Every output tensor is computed in ``r1.dtype`` (use
            float64 for an exact offline rewrite, float32 while learning) — no ``torch.no_grad``: gradients flow
            into ``r1``, ``r2`` and the scales.
        r2: optional rotation of the value heads (v_proj output, o_proj input): one ``(head_dim, head_dim)`` matrix
            shared by every layer, or one per layer (SpinQuant's ``R2`` is per layer) as a
            ``(n_layers, head_dim, head_dim)`` tensor or a list of ``n_layers`` matrices.
        norm_scales: ``{"layers.{i}.input_layernorm": s, "layers.{i}.post_attention_layernorm": s, "norm": s}``,
            positive, length hidden: norm gain ``× s``, reading linears' columns ``÷ s`` (after R1).
        ffn_scales: ``{i: s}`` length intermediate: up_proj rows ``× s``, down_proj columns ``÷ s``.
        ov_scales: ``{i: s}`` length ``head_dim·n_kv_heads``: v_proj rows ``× s`` (after R2), o_proj columns ``÷ s``
            (repeated over the query heads of each kv group).

    Returns:
        Every key of ``params``; the rotated/scaled ones are new tensors in ``r1.dtype``, the others (e.g. gains
        without a scale) are the input objects.

    Example:
        >>> import torch
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> from orthokit.rotation._functional import fuse_llama_norms, rotate_llama_params
        >>> cfg = LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        ...                   vocab_size=50)
        >>> m = LlamaForCausalLM(cfg).eval()
        >>> ids = torch.arange(8)[None]
        >>> ref = m(ids).logits
        >>> fuse_llama_norms(m)
        >>> q, _ = torch.linalg.qr(torch.randn(32, 32, dtype=torch.float64))
        >>> r2, _ = torch.linalg.qr(torch.randn(16, 16, dtype=torch.float64))
        >>> new = rotate_llama_params(m.state_dict(), cfg, q, r2)
        >>> _ = m.load_state_dict({k: v.float() for k, v in new.items()})
        >>> torch.allclose(m(ids).logits, ref, atol=1e-5)
        True
    """
    dims = llama_dims(config)
    _check_square("r1", r1, dims.hidden)
    r2_layers = _per_layer_r2(r2, dims, r1)
    embed_key = next((k for k in params if k.endswith("embed_tokens.weight")), None)
    if embed_key is None:
        raise ValueError("params: no '*embed_tokens.weight' (is this a Llama-family state dict?)")
    p = embed_key[: -len("embed_tokens.weight")]
    head_key = next((f"{h}.weight" for h in _HEAD_NAMES if f"{h}.weight" in params), None)
    norm_scales = dict(norm_scales or {})
    ffn_scales = dict(ffn_scales or {})
    ov_scales = dict(ov_scales or {})
    allowed = {"norm"} | {
        f"layers.{i}.{n}"
        for i in range(dims.n_layers)
        for n in ("input_layernorm", "post_attention_layernorm")
    }
    for key, s in norm_scales.items():
        if key not in allowed:
            raise ValueError(
                f"norm_scales: unknown key {key!r}; expected 'norm' or 'layers.{{i}}.input_layernorm'"
            )
        if key == "norm" and head_key is None:
            raise ValueError(
                "norm_scales: 'norm' needs a head (lm_head/score) to absorb 1/s; this model has none"
            )
        _check_vec(f"norm_scales[{key!r}]", s, dims.hidden)
    for name, scales, n in (
        ("ffn_scales", ffn_scales, dims.intermediate),
        ("ov_scales", ov_scales, dims.head_dim * dims.n_kv_heads),
    ):
        for i, s in scales.items():
            if not isinstance(i, int) or not 0 <= i < dims.n_layers:
                raise ValueError(f"{name}: layer index {i!r} out of range [0, {dims.n_layers})")
            _check_vec(f"{name}[{i}]", s, n)

    dt, dev = r1.dtype, r1.device
    out = dict(params)

    def get(key: str) -> Tensor:
        return params[key].to(device=dev, dtype=dt)

    def read(key: str, s: Tensor | None) -> None:  # W ← W Q diag(1/s)
        w = get(key) @ r1
        out[key] = w / s if s is not None else w

    def write(prefix: str, w: Tensor) -> None:  # W ← Qᵀ W, b ← b Q
        out[f"{prefix}.weight"] = r1.T @ w
        if f"{prefix}.bias" in params:
            out[f"{prefix}.bias"] = get(f"{prefix}.bias") @ r1

    def gain(norm_key: str, s: Tensor | None) -> None:
        if s is not None:
            out[f"{p}{norm_key}.weight"] = get(f"{p}{norm_key}.weight") * s.to(device=dev, dtype=dt)

    out[embed_key] = get(embed_key) @ r1
    hd, nkv = dims.head_dim, dims.n_kv_heads
    for i in range(dims.n_layers):
        lp = f"{p}layers.{i}."
        s_in = norm_scales.get(f"layers.{i}.input_layernorm")
        s_post = norm_scales.get(f"layers.{i}.post_attention_layernorm")
        gain(f"layers.{i}.input_layernorm", s_in)
        gain(f"layers.{i}.post_attention_layernorm", s_post)
        for name in ("q_proj", "k_proj", "v_proj"):
            read(
                _find(params, f"{lp}self_attn.{name}.weight"),
                None if s_in is None else s_in.to(device=dev, dtype=dt),
            )
        for name in ("gate_proj", "up_proj"):
            read(
                _find(params, f"{lp}mlp.{name}.weight"),
                None if s_post is None else s_post.to(device=dev, dtype=dt),
            )

        # value heads: R2 on the output side of v_proj, then the ov scale
        v_key = f"{lp}self_attn.v_proj"
        s_ov = ov_scales.get(i)
        s_ov = None if s_ov is None else s_ov.to(device=dev, dtype=dt)
        r2_i = None if r2_layers is None else r2_layers[i].to(device=dev)
        if r2_i is not None or s_ov is not None:
            wv = out[f"{v_key}.weight"].to(device=dev, dtype=dt)
            if r2_i is not None:
                wv = torch.einsum("ji,gjk->gik", r2_i, wv.reshape(nkv, hd, -1)).reshape(nkv * hd, -1)
            if s_ov is not None:
                wv = wv * s_ov[:, None]
            out[f"{v_key}.weight"] = wv
            if f"{v_key}.bias" in params:
                bv = get(f"{v_key}.bias")
                if r2_i is not None:
                    bv = (bv.reshape(nkv, hd) @ r2_i).reshape(-1)
                out[f"{v_key}.bias"] = bv * s_ov if s_ov is not None else bv

        # o_proj: R2 then 1/s on the input (columns), R1ᵀ on the output
        o_key = f"{lp}self_attn.o_proj"
        wo = get(_find(params, f"{o_key}.weight"))
        if r2_i is not None:
            wo = (wo.reshape(-1, dims.n_heads, hd) @ r2_i).reshape(wo.shape[0], -1)
        if s_ov is not None:
            wo = wo / s_ov.reshape(nkv, hd).repeat_interleave(dims.n_rep, dim=0).reshape(-1)
        write(o_key, wo)

        # up rows × s, down columns ÷ s, down output R1ᵀ
        s_ffn = ffn_scales.get(i)
        d_key = (
            f"{lp}mlp.down_proj.linear"
            if f"{lp}mlp.down_proj.linear.weight" in params
            else f"{lp}mlp.down_proj"
        )
        wd = get(_find(params, f"{d_key}.weight"))
        if s_ffn is not None:
            s_ffn = s_ffn.to(device=dev, dtype=dt)
            up = f"{lp}mlp.up_proj"
            out[f"{up}.weight"] = out[f"{up}.weight"] * s_ffn[:, None]
            if f"{up}.bias" in params:
                out[f"{up}.bias"] = get(f"{up}.bias") * s_ffn
            wd = wd / s_ffn
        write(d_key, wd)

    s_norm = norm_scales.get("norm")
    gain("norm", s_norm)
    if head_key is not None:
        read(head_key, None if s_norm is None else s_norm.to(device=dev, dtype=dt))
    return out
