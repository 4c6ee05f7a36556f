r"""RSQ token importance: attention concentration ("AttnCon") → token weights for GPTQ's Hessian.

RSQ — "Rotate, Scale, then Quantize" (Sung, Yadav, Li, Yoon, Bansal 2025, arXiv 2503.01820, "RSQ: Learning from
Important Tokens Leads to Better Quantized LLMs"; code ``ylsung/rsq``, ``fake_quant/input_weighting_module.py::
OriginalAttentionWeighting`` and ``fake_quant/gptq_utils.py::GPTQ.add_batch`` at commit ``50fdf69``):

1. **Rotate**: apply a computational-invariance rotation first — in orthokit that is
   :func:`orthokit.rotation.rotate_model` (QuaRot-style Hadamard R1/R2/R4), done *before*
   ``quantize_model(..., method="rsq")``, which does not rotate by itself.
2. **Scale**: weight every calibration token by its importance. For decoder layer ``ℓ``, the layer's own
   attention probabilities ``A ∈ ℝ^{heads×T×T}`` on its (already partially quantized) input stream give the
   attention concentration of token ``j``

   .. math:: s_j = \sum_{m}\sum_{i} A_{m i j}

   (summed over heads and over the queries attending to ``j``). Per sequence, ``s`` is mapped linearly onto
   ``[r_min, r_max]`` (min–max; ``r_max = 1``; the paper finds ``r_min = 0.01`` best with rotation, Sec. 5.2; the
   released script sweeps {0.1, …, 0.005}), then renormalized to mean 1 over the sequence (``add_batch``:
   ``w ← w / Σw · T``).
3. **Quantize** with GPTQ on the weighted Hessian ``H = 2/n Σ_t r_t x_t x_tᵀ`` (same weights for every linear of
   the layer, as the released code's ``weighting_apply_module=all``).

Padded positions (``attention_mask == 0``) get weight 0, are left out of the min–max range, and as *queries*
are left out of the sum ``Σ_i`` (the reference runs unpadded sequences of equal length, batch 1; per-sequence
normalization and query masking make a padded batch give each sequence the weights it gets alone).

Example:
    >>> import torch
    >>> from orthokit.rotation.rsq import attention_concentration, rsq_token_weights
    >>> A = torch.tensor([[[[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.8, 0.1, 0.1]]]])   # 1 batch, 1 head, causal
    >>> s = attention_concentration(A); s
    tensor([[2.3000, 0.6000, 0.1000]])
    >>> w = rsq_token_weights(s, r_min=0.1); w       # [1, (0.5/2.2)·0.9+0.1, 0.1] / mean
    tensor([[2.1359, 0.6505, 0.2136]])
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

__all__ = ["attention_concentration", "eager_attention", "rsq_token_weights"]


def attention_concentration(probs: Tensor, mask: Tensor | None = None) -> Tensor:
    """AttnCon scores ``s[b, j] = Σ_heads Σ_{valid queries i} A[b, h, i, j]`` from attention probabilities
    (batch, heads, q, k).

    ``mask`` (batch, q), the ``attention_mask`` of the batch, leaves padded *queries* out of the sum: a padded
    query row still attends to the valid keys, and without the mask a sequence's scores would depend on how much
    padding it got in its batch.

    Example:
        >>> import torch
        >>> attention_concentration(torch.full((2, 3, 4, 4), 0.25)).shape
        torch.Size([2, 4])
        >>> attention_concentration(torch.full((1, 1, 3, 3), 1 / 3), torch.tensor([[1, 1, 0]]))
        tensor([[0.6667, 0.6667, 0.6667]])
    """
    if not isinstance(probs, Tensor) or not probs.is_floating_point():
        raise TypeError("probs must be a floating-point tensor of attention probabilities")
    if probs.dim() != 4:
        raise ValueError(f"probs must be 4-D (batch, heads, queries, keys), got shape {tuple(probs.shape)}")
    p = probs.detach().float()
    if mask is not None:
        if not isinstance(mask, Tensor) or tuple(mask.shape) != (p.shape[0], p.shape[2]):
            got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
            raise ValueError(
                f"mask must be a tensor of shape (batch, queries) = {(p.shape[0], p.shape[2])}, got {got}"
            )
        p = p * (mask.to(device=p.device) > 0).to(p.dtype)[:, None, :, None]
    return p.sum(dim=(1, 2))


def rsq_token_weights(
    scores: Tensor, mask: Tensor | None = None, *, r_min: float = 0.01, r_max: float = 1.0
) -> Tensor:
    """RSQ token weights from importance ``scores`` (batch, T): per sequence min–max onto ``[r_min, r_max]`` over
    the valid tokens, then divided by their mean (mean weight 1). Padded tokens (``mask == 0``) get 0; a sequence
    whose scores are all equal gets weight 1 everywhere.

    Example:
        >>> import torch
        >>> rsq_token_weights(torch.tensor([[4.0, 2.0, 0.0, 9.0]]), torch.tensor([[1, 1, 1, 0]]), r_min=0.5)
        tensor([[1.3333, 1.0000, 0.6667, 0.0000]])
    """
    if not isinstance(scores, Tensor) or not scores.is_floating_point() or scores.dim() != 2:
        raise ValueError("scores must be a 2-D floating tensor (batch, tokens)")
    if not (0.0 <= r_min <= r_max) or r_max <= 0:
        raise ValueError(f"r_min, r_max must satisfy 0 <= r_min <= r_max and r_max > 0, got {r_min}, {r_max}")
    s = scores.detach().to(torch.float64)
    valid = torch.ones_like(s, dtype=torch.bool) if mask is None else mask.to(s.device) > 0
    if valid.shape != s.shape:
        raise ValueError(f"mask must have the scores' shape {tuple(s.shape)}, got {tuple(valid.shape)}")
    out = torch.zeros_like(s)
    for b in range(s.shape[0]):
        v = s[b][valid[b]]
        if v.numel() == 0:
            continue
        lo, hi = v.min(), v.max()
        if hi > lo:
            r = ((v - lo) / (hi - lo) * (r_max - r_min) + r_min).clamp(r_min, r_max)
        else:
            r = torch.ones_like(v)
        out[b][valid[b]] = r / r.mean()
    return out.to(scores.dtype)


@contextmanager
def eager_attention(model: nn.Module, attention: nn.Module) -> Iterator[list[Tensor]]:
    """Within the block, ``attention`` (a Llama-family ``self_attn`` or BERT self-attention of ``model``) runs the
    eager implementation and every call's attention probabilities ``(batch, heads, q, k)`` are appended to the
    yielded list. The previous implementation (sdpa, eager or orthokit's) is restored on exit.

    Example:
        >>> import torch
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> m = LlamaForCausalLM(LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        ...                                  intermediate_size=64, vocab_size=50)).eval()
        >>> with eager_attention(m, m.model.layers[0].self_attn) as probs:
        ...     _ = m(torch.arange(5)[None])
        >>> probs[0].shape, m.config._attn_implementation
        (torch.Size([1, 2, 5, 5]), 'sdpa')
    """
    config = model.config
    saved_cfg = config._attn_implementation
    saved_base = attention.__dict__.get("_orthokit_base_impl", None)
    if saved_cfg == "orthokit":
        attention._orthokit_base_impl = "eager"  # type: ignore[assignment]
    else:
        config._attn_implementation = "eager"
    probs: list[Tensor] = []

    def hook(_mod: nn.Module, _args: object, output: object) -> None:
        if isinstance(output, tuple) and len(output) > 1 and isinstance(output[1], Tensor):
            probs.append(output[1].detach())

    handle = attention.register_forward_hook(hook)
    try:
        yield probs
    finally:
        handle.remove()
        if saved_cfg == "orthokit":
            if saved_base is None:
                del attention._orthokit_base_impl
            else:
                attention._orthokit_base_impl = saved_base  # type: ignore[assignment]
        else:
            config._attn_implementation = saved_cfg
