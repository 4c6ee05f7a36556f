r"""Function vectors: the summed mean outputs of the attention heads that causally carry an in-context task.

Source: E. Todd, M. L. Li, A. Sen Sharma, A. Mueller, B. C. Wallace, D. Bau, "Function Vectors in Large
Language Models", ICLR 2024 (arXiv 2310.15213); official code github.com/ericwtodd/function_vectors
(``src/utils/extract_utils.py::get_mean_head_activations, compute_function_vector``,
``src/compute_indirect_effect.py::activation_replacement_per_class_intervention``).

For every attention head ``(ℓ, j)`` let ``a_{ℓj}(p)`` be its output at the last token of prompt ``p`` — the
head's slice of the input of the attention out-projection (``o_proj`` in Llama-like models, ``c_proj`` in
GPT-2, ``dense`` in GPT-NeoX, ``out_proj`` in GPT-J/OPT). Then

* mean activation over clean in-context prompts: ``ā_{ℓj} = mean_p a_{ℓj}(p)``;
* indirect effect on a corrupted prompt ``p̃`` (shuffled labels) with answer token ``y``:
  ``IE_{ℓj}(p̃) = P(y | p̃, a_{ℓj} := ā_{ℓj}) − P(y | p̃)``, the head's last-token output replaced by its mean;
  the *average indirect effect* ``AIE_{ℓj}`` is its mean over corrupted prompts;
* function vector: ``v = Σ_{(ℓ,j) ∈ top-k AIE} W^O_ℓ [0 … ā_{ℓj} … 0]`` — each selected head's mean output
  mapped through its layer's out-projection (the reference calls the projection module, so a biased
  projection adds its bias once per head; ``out_proj_bias=False`` drops it).

The paper adds ``v`` to the hidden state after layer ``⌊L/3⌋`` at the last token
(:meth:`FunctionVector.steer`).

Example:
    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> from orthokit.steer.function_vectors import function_vector
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
    ...                   num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32)
    >>> model = LlamaForCausalLM(cfg).eval()
    >>> clean = torch.randint(0, 32, (5, 7)); corrupted = torch.randint(0, 32, (4, 7))
    >>> fv = function_vector(model, clean, corrupted, torch.tensor([3, 3, 3, 3]), top_k=2)
    >>> fv.vector.shape, len(fv.heads), fv.layer
    (torch.Size([16]), 2, 1)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from orthokit.steer._hooks import SteeringHandle, residual_layers, steer
from orthokit.steer.addition import ActivationAddition

__all__ = [
    "FunctionVector",
    "attention_out_projections",
    "function_vector",
    "head_indirect_effects",
    "mean_head_activations",
]

_OUT_NAMES = ("o_proj", "out_proj", "c_proj", "dense")


def attention_out_projections(model: nn.Module) -> list[nn.Module]:
    """The attention out-projection of every decoder block (its input is the concatenation of the heads).

    In each block of :func:`~orthokit.steer._hooks.residual_layers` it looks for a module named ``o_proj``,
    ``out_proj``, ``c_proj`` or ``dense`` inside a submodule whose name contains ``attn``/``attention``
    (so GPT-2's ``mlp.c_proj`` is never taken). ``ValueError`` naming the block if there is none.
    """
    outs: list[nn.Module] = []
    for i, block in enumerate(residual_layers(model)):
        found: nn.Module | None = None
        for want in _OUT_NAMES:
            for name, mod in block.named_modules():
                parts = name.split(".")
                if parts[-1] == want and any(
                    "attn" in p.lower() or "attention" in p.lower() for p in parts[:-1]
                ):
                    found = mod
                    break
            if found is not None:
                break
        if found is None or not hasattr(found, "weight"):
            raise ValueError(
                f"decoder block {i} ({type(block).__name__}) has no attention out-projection "
                f"(looked for {', '.join(_OUT_NAMES)} under an attn/attention submodule)"
            )
        outs.append(found)
    return outs


def _in_features(proj: nn.Module) -> int:
    if isinstance(proj, nn.Linear):
        return int(proj.in_features)
    if type(proj).__name__ == "Conv1D":  # transformers' GPT-2 Conv1D: weight [in, out]
        return int(proj.weight.shape[0])
    raise ValueError(
        f"unsupported attention out-projection type {type(proj).__name__} (expected Linear or Conv1D)"
    )


def _num_heads(model: nn.Module) -> int:
    cfg = getattr(model, "config", None)
    n = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", None)
    if not isinstance(n, int) or n < 1:
        raise ValueError(
            "model.config has no num_attention_heads/n_head: cannot split the attention output into heads"
        )
    return n


def _as_prompts(ids: Any, name: str, vocab: int | None) -> list[Tensor]:
    """Prompts as a list of 1-D LongTensors (a ``[n, T]`` tensor is split into rows; lengths may differ)."""
    if isinstance(ids, Tensor):
        if ids.dim() != 2 or 0 in ids.shape:
            raise ValueError(
                f"{name} must be a [n, T] tensor of token ids (or a list of 1-D ones), got {tuple(ids.shape)}"
            )
        rows = list(ids)
    elif isinstance(ids, Sequence) and not isinstance(ids, (str, bytes)) and len(ids) > 0:
        rows = list(ids)
    else:
        raise TypeError(f"{name} must be a [n, T] LongTensor or a non-empty list of 1-D LongTensors")
    for i, r in enumerate(rows):
        if (
            not isinstance(r, Tensor)
            or r.dtype not in (torch.int64, torch.int32)
            or r.dim() != 1
            or r.numel() == 0
        ):
            raise TypeError(f"{name}[{i}] must be a non-empty 1-D integer tensor of token ids")
        if int(r.min()) < 0 or (vocab is not None and int(r.max()) >= vocab):
            raise ValueError(f"{name}[{i}] has token ids outside [0, {vocab})")
    return [r.long() for r in rows]


def _vocab(model: nn.Module) -> int | None:
    v = getattr(getattr(model, "config", None), "vocab_size", None)
    return int(v) if isinstance(v, int) else None


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


class _EvalMode:
    """Run with grad off and the model in eval mode; restore the mode afterwards (even on error)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> None:
        self.was_training = self.model.training
        self.grad = torch.is_grad_enabled()
        self.model.eval()
        torch.set_grad_enabled(False)

    def __exit__(self, *exc: object) -> None:
        torch.set_grad_enabled(self.grad)
        self.model.train(self.was_training)


def _input_of(args: tuple[Any, ...], proj: nn.Module) -> Tensor:
    if not args or not isinstance(args[0], Tensor):
        raise RuntimeError(
            f"{type(proj).__name__} was not called with its input as the first positional argument"
        )
    return args[0]


def mean_head_activations(
    model: nn.Module, icl_prompts_ids: Tensor | Sequence[Tensor], *, layers: Sequence[int] | None = None
) -> Tensor:
    """Mean last-token input of every layer's attention out-projection over the prompts: ``[L, H, head_dim]``.

    Layers not in ``layers`` are left as zeros. Accumulated in float64; returned in float64.
    """
    projs = attention_out_projections(model)
    H = _num_heads(model)
    L = len(projs)
    chosen = _check_layers(layers, L)
    prompts = _as_prompts(icl_prompts_ids, "icl_prompts_ids", _vocab(model))
    D = _in_features(projs[0])
    if D % H:
        raise ValueError(f"out-projection input size {D} is not divisible by the {H} heads")
    total = torch.zeros(L, D, dtype=torch.float64)
    dev = _device(model)
    handles = []
    store: dict[int, Tensor] = {}

    def make(i: int, proj: nn.Module) -> Any:
        def pre(mod: nn.Module, args: tuple[Any, ...]) -> None:
            store[i] = _input_of(args, proj)[:, -1, :].detach().double().sum(dim=0).cpu()

        return pre

    try:
        for i in chosen:
            handles.append(projs[i].register_forward_pre_hook(make(i, projs[i])))
        with _EvalMode(model):
            for p in prompts:
                model(input_ids=p[None].to(dev))
                for i in chosen:
                    total[i] += store[i]
    finally:
        for h in handles:
            h.remove()
    return (total / len(prompts)).reshape(L, H, D // H)


def _check_layers(layers: Sequence[int] | None, L: int) -> list[int]:
    if layers is None:
        return list(range(L))
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence) or len(layers) == 0:
        raise TypeError("layers must be a non-empty sequence of layer indices or None")
    out = []
    for i in layers:
        if isinstance(i, bool) or not isinstance(i, int) or not -L <= i < L:
            raise ValueError(f"layers has {i!r}; valid layer indices are 0..{L - 1}")
        out.append(i % L)
    return sorted(set(out))


def head_indirect_effects(
    model: nn.Module,
    mean_acts: Tensor,
    corrupted_ids: Tensor | Sequence[Tensor],
    answer_ids: Tensor | Sequence[int],
    *,
    layers: Sequence[int] | None = None,
) -> Tensor:
    """Average indirect effect ``[L, H]`` of patching each head's mean activation into the corrupted prompts.

    ``AIE[ℓ, j] = mean_p̃ [P(y | p̃, a_{ℓj} := ā_{ℓj}) − P(y | p̃)]`` at the last token; the ``H`` heads of a
    layer are patched in one batched forward (one batch row per head). Layers outside ``layers`` are NaN.
    """
    projs = attention_out_projections(model)
    L = len(projs)
    H = _num_heads(model)
    chosen = _check_layers(layers, L)
    if not isinstance(mean_acts, Tensor) or mean_acts.dim() != 3 or mean_acts.shape[:2] != (L, H):
        raise ValueError(
            f"mean_acts must have shape [{L}, {H}, head_dim], got {getattr(mean_acts, 'shape', None)}"
        )
    hd = int(mean_acts.shape[2])
    prompts = _as_prompts(corrupted_ids, "corrupted_ids", _vocab(model))
    answers = _as_answers(answer_ids, len(prompts), _vocab(model))
    dev = _device(model)
    aie = torch.full((L, H), float("nan"), dtype=torch.float64)
    acc = torch.zeros(L, H, dtype=torch.float64)
    with _EvalMode(model):
        for p, y in zip(prompts, answers):
            base = torch.softmax(model(input_ids=p[None].to(dev)).logits[0, -1].double(), dim=-1)[y]
            batch = p[None].expand(H, -1).to(dev)
            for i in chosen:
                vals = mean_acts[i].to(dev)

                def pre(
                    mod: nn.Module, args: tuple[Any, ...], vals: Tensor = vals, proj: nn.Module = projs[i]
                ) -> Any:
                    x = _input_of(args, proj).clone()
                    for j in range(H):
                        x[j, -1, j * hd : (j + 1) * hd] = vals[j].to(x.dtype)
                    return (x, *args[1:])

                h = projs[i].register_forward_pre_hook(pre)
                try:
                    logits = model(input_ids=batch).logits[:, -1].double()
                finally:
                    h.remove()
                acc[i] += (torch.softmax(logits, dim=-1)[:, y] - base).cpu()
    aie[chosen] = acc[chosen] / len(prompts)
    return aie


def _as_answers(answer_ids: Any, n: int, vocab: int | None) -> list[int]:
    if isinstance(answer_ids, Tensor):
        if answer_ids.dim() != 1 or answer_ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(
                "answer_ids must be a 1-D integer tensor (one first answer token per corrupted prompt)"
            )
        vals = [int(v) for v in answer_ids.tolist()]
    elif isinstance(answer_ids, Sequence) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in answer_ids
    ):
        vals = list(answer_ids)
    else:
        raise TypeError("answer_ids must be a 1-D integer tensor or a list of ints")
    if len(vals) != n:
        raise ValueError(f"answer_ids has {len(vals)} entries but there are {n} corrupted prompts")
    for v in vals:
        if v < 0 or (vocab is not None and v >= vocab):
            raise ValueError(f"answer_ids has token id {v} outside [0, {vocab})")
    return vals


@dataclass(frozen=True)
class FunctionVector:
    """A function vector: ``vector [d]``, the ``heads`` ``[(layer, head, aie), …]`` it sums (best first), the
    ``layer`` after which the paper adds it, and the full ``aie [L, H]`` table (NaN where not measured)."""

    vector: Tensor
    heads: list[tuple[int, int, float]]
    layer: int
    aie: Tensor = field(repr=False)

    def steer(self, model: nn.Module, *, scale: float = 1.0, positions: str = "last") -> SteeringHandle:
        """Add ``scale · vector`` to the hidden state after block ``layer`` (the paper: last token, scale 1)."""
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(float(scale)):
            raise TypeError(f"scale must be a finite real number, got {scale!r}")
        norm = float(self.vector.double().norm())
        if norm == 0.0:
            raise ValueError("the function vector is zero: nothing to add")
        return steer(
            model,
            ActivationAddition(self.vector, alpha=float(scale) * norm),
            layers=[self.layer],
            positions=positions,
        )


def function_vector(
    model: nn.Module,
    icl_prompts_ids: Tensor | Sequence[Tensor],
    corrupted_ids: Tensor | Sequence[Tensor],
    answer_ids: Tensor | Sequence[int],
    *,
    top_k: int = 10,
    layers: Sequence[int] | None = None,
    edit_layer: int | None = None,
    out_proj_bias: bool = True,
) -> FunctionVector:
    """Todd et al.'s function vector from clean ICL prompts and their shuffled-label (corrupted) versions.

    Args:
        model: a transformers causal LM (Llama/Mistral/Qwen/Gemma ``o_proj``, GPT-2 ``c_proj``, GPT-NeoX
            ``dense``, GPT-J/OPT ``out_proj``). It is run in eval mode without grad; its mode is restored.
        icl_prompts_ids: clean in-context prompts (``[n, T]`` or a list of 1-D id tensors); the mean head
            activations are read at their last token.
        corrupted_ids: the corrupted prompts (labels shuffled), ``[m, T']`` or a list.
        answer_ids: the first token of each corrupted prompt's correct answer ``[m]``.
        top_k: number of heads summed (the paper uses 10 for GPT-J; needs ``1 ≤ top_k ≤ #heads considered``).
        layers: only consider heads of these layers (default all).
        edit_layer: the layer after which :meth:`FunctionVector.steer` adds the vector (default ``⌊L/3⌋``).
        out_proj_bias: apply the out-projection module as the reference does (its bias added once per
            selected head); ``False`` sums only the linear part ``W^O_ℓ [0 … ā … 0]``.

    Returns:
        :class:`FunctionVector` (vector in the model's dtype).
    """
    projs = attention_out_projections(model)
    L, H = len(projs), _num_heads(model)
    chosen = _check_layers(layers, L)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= len(chosen) * H:
        raise ValueError(f"top_k must be an int in [1, {len(chosen) * H}] (heads considered), got {top_k!r}")
    if edit_layer is None:
        edit_layer = L // 3
    if isinstance(edit_layer, bool) or not isinstance(edit_layer, int) or not 0 <= edit_layer < L:
        raise ValueError(f"edit_layer must be an int in [0, {L - 1}], got {edit_layer!r}")
    if not isinstance(out_proj_bias, bool):
        raise TypeError(f"out_proj_bias must be a bool, got {type(out_proj_bias).__name__}")
    _as_prompts(
        corrupted_ids, "corrupted_ids", _vocab(model)
    )  # validate everything before the expensive runs
    _as_answers(answer_ids, len(_as_prompts(corrupted_ids, "corrupted_ids", None)), _vocab(model))
    means = mean_head_activations(model, icl_prompts_ids, layers=chosen)
    aie = head_indirect_effects(model, means, corrupted_ids, answer_ids, layers=chosen)
    flat = torch.where(torch.isnan(aie), torch.full_like(aie, -math.inf), aie).flatten()
    top = torch.topk(flat, top_k).indices.tolist()
    heads = [(int(t) // H, int(t) % H, float(aie.flatten()[t])) for t in top]
    hd = int(means.shape[2])
    dev = _device(model)
    dtype = next(model.parameters()).dtype
    vec = torch.zeros(_out_features(projs[0]), dtype=torch.float64)
    with _EvalMode(model):
        for li, hj, _ in heads:
            x = torch.zeros(1, 1, H * hd, dtype=dtype, device=dev)
            x[0, 0, hj * hd : (hj + 1) * hd] = means[li, hj].to(dtype)
            out = projs[li](x)[0, 0].double().cpu()
            if not out_proj_bias:
                out = out - projs[li](torch.zeros_like(x))[0, 0].double().cpu()
            vec += out
    return FunctionVector(vec.to(dtype), heads, int(edit_layer), aie)


def _out_features(proj: nn.Module) -> int:
    if isinstance(proj, nn.Linear):
        return int(proj.out_features)
    return int(proj.weight.shape[1])  # Conv1D
