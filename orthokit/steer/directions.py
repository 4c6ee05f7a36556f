"""Steering directions from contrasting activations: residual-stream collection and the mean difference.

:func:`collect_residuals` runs a transformers causal LM and records the hidden state after each decoder block
(the raw block output, i.e. the residual stream before any final norm — ``output_hidden_states`` applies the final
norm to the last entry in some architectures, a forward hook does not). :func:`mean_difference` is the
difference-in-means direction ``r = μ₊ − μ₋`` of Rimsky et al. (CAA, arXiv 2312.06681) and Arditi et al. (arXiv
2406.11717), computed in float64 and returned in the promoted input dtype (unnormalized, as the papers use it).

Example:
    >>> import torch
    >>> from orthokit.steer.directions import mean_difference
    >>> pos = torch.tensor([[2.0, 0.0], [4.0, 2.0]])
    >>> neg = torch.tensor([[0.0, 1.0]])
    >>> mean_difference(pos, neg)
    tensor([3., 0.])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ._hooks import _POSITIONS, _resolve_layers, residual_layers

__all__ = ["collect_residuals", "mean_difference"]


def _check_acts(x: Any, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim not in (2, 3):
        raise ValueError(f"{name} must be [n, d] or [L, n, d], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {x.dtype}")
    if x.shape[-2] == 0:
        raise ValueError(f"{name} has no rows (n = 0)")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return x


def mean_difference(pos: Tensor, neg: Tensor) -> Tensor:
    """Difference of means ``mean(pos) − mean(neg)`` over the sample axis.

    Args:
        pos: activations of the positive set, ``[n₊, d]`` or per layer ``[L, n₊, d]``.
        neg: activations of the negative set, ``[n₋, d]`` or ``[L, n₋, d]`` (same rank, ``L`` and ``d``).

    Returns:
        ``[d]`` (or ``[L, d]``), accumulated in float64, in ``torch.promote_types(pos.dtype, neg.dtype)``.

    Raises:
        TypeError/ValueError: non-tensors, wrong ranks, mismatched ``L``/``d``, empty sets, NaN/inf.
    """
    pos = _check_acts(pos, "pos")
    neg = _check_acts(neg, "neg")
    if pos.ndim != neg.ndim:
        raise ValueError(f"pos has rank {pos.ndim} and neg rank {neg.ndim}: both [n, d] or both [L, n, d]")
    if pos.shape[-1] != neg.shape[-1]:
        raise ValueError(f"pos has d = {pos.shape[-1]}, neg d = {neg.shape[-1]}")
    if pos.ndim == 3 and pos.shape[0] != neg.shape[0]:
        raise ValueError(f"pos has L = {pos.shape[0]} layers, neg L = {neg.shape[0]}")
    out_dtype = torch.promote_types(pos.dtype, neg.dtype)
    diff = pos.to(torch.float64).mean(dim=-2) - neg.to(torch.float64).mean(dim=-2)
    return diff.to(out_dtype)


def _recorder(store: dict[int, Tensor], i: int) -> Any:
    def hook(_mod: nn.Module, _args: Any, output: Any) -> None:
        h = output[0] if isinstance(output, tuple) else output
        store[i] = h.detach()

    return hook


@torch.no_grad()
def collect_residuals(
    model: nn.Module,
    input_ids: Tensor,
    layers: Sequence[int] | None = None,
    positions: str = "all",
    *,
    attention_mask: Tensor | None = None,
    batch_size: int | None = None,
) -> Tensor:
    """Hidden states after each chosen decoder block, stacked ``[L, N, d]``.

    Args:
        model: a transformers causal LM (run in its current mode; call ``.eval()`` first for dropout-free states).
        input_ids: token ids ``[B, T]`` (or ``[T]``).
        layers: block indices (default all), in the order given.
        positions: ``"all"`` — every (unmasked) position, ``N = Σ tokens`` in batch-major order; ``"last"`` — the last
            (unmasked) position of each sequence, ``N = B``.
        attention_mask: optional ``[B, T]`` 0/1 mask (left or right padding); passed to the model, and masked
            positions are dropped.
        batch_size: run the forward in chunks of this many sequences (default: one batch).

    Returns:
        ``[L, N, d]`` in the states' dtype, float16/bfloat16 promoted to float32.

    Raises:
        TypeError/ValueError: bad ids, mask, layers, positions or batch size.
    """
    if not isinstance(input_ids, Tensor) or input_ids.dtype not in (torch.int64, torch.int32):
        raise TypeError("input_ids must be an integer torch.Tensor [B, T]")
    if input_ids.ndim == 1:
        input_ids = input_ids[None]
        attention_mask = None if attention_mask is None else attention_mask.reshape(1, -1)
    if input_ids.ndim != 2 or input_ids.numel() == 0:
        raise ValueError(f"input_ids must be a non-empty [B, T] tensor, got shape {tuple(input_ids.shape)}")
    if positions not in _POSITIONS:
        raise ValueError(f"positions must be one of {_POSITIONS}, got {positions!r}")
    if attention_mask is not None:
        if not isinstance(attention_mask, Tensor) or attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask must be a tensor of shape {tuple(input_ids.shape)}")
        if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
            raise ValueError("attention_mask must hold only 0 and 1")
        if not bool((attention_mask.sum(dim=1) > 0).all()):
            raise ValueError("attention_mask has a row with no unmasked position")
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    blocks = residual_layers(model)
    idx = _resolve_layers(layers, len(blocks))
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(input_ids.device)
    step = batch_size or input_ids.shape[0]
    chunks: list[Tensor] = []
    for start in range(0, input_ids.shape[0], step):
        ids = input_ids[start : start + step]
        m = mask[start : start + step].bool()
        store: dict[int, Tensor] = {}

        handles = [blocks[i].register_forward_hook(_recorder(store, i)) for i in idx]
        try:
            kwargs: dict[str, Any] = {"use_cache": False}
            if attention_mask is not None:
                kwargs["attention_mask"] = mask[start : start + step]
            model(ids, **kwargs)
        finally:
            for hd in handles:
                hd.remove()
        per_layer = []
        for i in idx:
            h = store[i]
            if h.dtype in (torch.float16, torch.bfloat16):
                h = h.float()
            if positions == "all":
                per_layer.append(h[m.to(h.device)])
            else:
                t = torch.arange(m.shape[1], device=m.device)
                last = torch.where(m, t, -1).amax(dim=1)
                per_layer.append(h[torch.arange(h.shape[0], device=h.device), last.to(h.device)])
        chunks.append(torch.stack(per_layer))
    return torch.cat(chunks, dim=1)
