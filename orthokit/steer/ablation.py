"""Directional ablation: remove one direction from the residual stream, by hooks or by editing the weights.

Math. With the unit direction ``r̂ = r/‖r‖`` the ablation is the orthogonal projection
``h ↦ h − (h·r̂) r̂ = (I − r̂r̂ᵀ) h``. Applied at *every write into the residual stream* (token and learned position
embeddings, each attention output projection, each MLP down-projection) the stream never holds a component along
``r̂``. Since every write is ``W x + b`` for a matrix ``W`` whose output axis is the residual axis,
``(I − r̂r̂ᵀ)(W x + b) = W' x + b'`` with ``W' = (I − r̂r̂ᵀ) W``, ``b' = (I − r̂r̂ᵀ) b`` — the *weight
orthogonalization* of Arditi et al. is exactly the hook form, computed once (tested: logits agree to 1e-5 in
float32, 1e-10 in float64).

A hook on a block's *output* alone is not the same: inside the block the MLP reads ``resid_mid = resid_pre +
attn_out`` with the attention's component along ``r̂`` still there. :func:`ablate` therefore hooks the input of
every block (``resid_pre``, which catches the embeddings' write), and the output of every attention
out-projection and MLP down-projection — the hooks of the reference code (pre-hook on each block, output hooks on
each attention and MLP module), on the projection modules themselves.

Supported (name-based discovery, tested on tiny random models): Llama-like blocks (``self_attn.o_proj``,
``mlp.down_proj``: Llama, Mistral, Qwen2/Qwen3, Gemma), GPT-2 (``attn.c_proj``, ``mlp.c_proj``; Conv1D weights are
stored ``[in, out]``), GPT-NeoX (``attention.dense``, ``mlp.dense_4h_to_h``), and GPT-J (``attn.out_proj``,
``mlp.fc_out``). Embeddings: every ``nn.Embedding`` outside the blocks whose width is the hidden size (token and
learned position embeddings). Gemma2/Gemma3 blocks normalise each write (``post_attention_layernorm``,
``post_feedforward_layernorm``) before adding it: :func:`ablate` hooks those norms' outputs, and
:func:`orthogonalize_weights` refuses them (an RMSNorm with a per-channel gain does not keep a vector orthogonal to
``r̂``, so no weight edit is exact).

Source: Arditi et al., "Refusal in Language Models Is Mediated by a Single Direction", NeurIPS 2024, arXiv
2406.11717; code github.com/andyrdt/refusal_direction (``pipeline/utils/hook_utils.py``:
``get_all_direction_ablation_hooks``; ``pipeline/model_utils/*_model.py``: ``orthogonalize_*_weights``).

Example:
    >>> import torch
    >>> from orthokit.steer.ablation import DirectionalAblation
    >>> s = DirectionalAblation(torch.tensor([0.0, 2.0]))
    >>> s.edit(torch.tensor([[1.0, 5.0], [3.0, -1.0]]))
    tensor([[1., 0.],
            [3., 0.]])
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ._hooks import Steerer, SteeringHandle, _apply_edit, as_direction, residual_layers
from .registry import STEERERS

__all__ = ["DirectionalAblation", "ResidualWriters", "ablate", "orthogonalize_weights", "residual_writers"]

#: attention output projections, tried in this order inside each block
ATTN_OUT = ("self_attn.o_proj", "attn.c_proj", "attention.dense", "attn.out_proj")
#: MLP output projections, tried in this order inside each block
MLP_OUT = ("mlp.down_proj", "mlp.c_proj", "mlp.dense_4h_to_h", "mlp.fc_out")
#: Gemma2/Gemma3 post-norms: the modules whose outputs are added to the residual stream in those blocks
POST_NORMS = ("post_attention_layernorm", "post_feedforward_layernorm")


@STEERERS.register("ablation", norm_preserving=False, kind="projection", needs_plane=False)
class DirectionalAblation(Steerer):
    """Directional ablation ``h − (h·r̂) r̂`` (Arditi et al. 2024); idempotent, identity on states ``⟂ r̂``.

    Through :func:`~orthokit.steer._hooks.steer` it edits the chosen blocks' outputs only; :func:`ablate` applies
    it at every residual write (the paper's intervention), :func:`orthogonalize_weights` bakes that into the weights.

    Args:
        direction: the direction ``[d]`` to remove (normalized in float64).
    """

    name = "ablation"
    norm_preserving = False

    def __init__(self, direction: Tensor) -> None:
        self.direction = as_direction(direction)

    def edit(self, h: Tensor) -> Tensor:
        """``h − (h·r̂) r̂`` in ``h``'s dtype (``h`` is ``[..., d]``)."""
        self._check_h(h, self.direction.shape[0])
        r = self._cast("r", self.direction, h)
        return h - (h @ r).unsqueeze(-1) * r


@dataclass(frozen=True)
class ResidualWriters:
    """The modules of a model that write into its residual stream (see :func:`residual_writers`).

    Attributes:
        hidden_size: width ``d`` of the residual stream.
        embeddings: ``(name, nn.Embedding)`` for the token and learned position embeddings.
        projections: ``(name, module)`` for every attention out-projection and MLP down-projection
            (``nn.Linear`` with ``out_features == d`` or transformers ``Conv1D`` with ``nf == d``); empty when
            ``post_norms`` is used.
        post_norms: ``(name, module)`` for Gemma2/3-style post-norms whose outputs are the writes.
        blocks: the decoder blocks.
    """

    hidden_size: int
    embeddings: tuple[tuple[str, nn.Module], ...]
    projections: tuple[tuple[str, nn.Module], ...]
    post_norms: tuple[tuple[str, nn.Module], ...]
    blocks: tuple[nn.Module, ...]


def _is_conv1d(m: nn.Module) -> bool:
    return (
        type(m).__name__ == "Conv1D" and hasattr(m, "nf") and isinstance(getattr(m, "weight", None), Tensor)
    )


def _find(block: nn.Module, names: tuple[str, ...]) -> tuple[str, nn.Module] | None:
    for n in names:
        try:
            return n, block.get_submodule(n)
        except AttributeError:
            continue
    return None


def residual_writers(model: nn.Module) -> ResidualWriters:
    """Find the embeddings and per-block projections that write into ``model``'s residual stream.

    Raises:
        ValueError: for an architecture whose blocks have none of the known attention/MLP output projections
            (the message lists the names searched), or whose projections do not output the hidden size.
    """
    blocks = residual_layers(model)
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if not isinstance(emb, nn.Embedding):
        raise ValueError(
            f"{type(model).__name__} has no nn.Embedding input embeddings (get_input_embeddings())"
        )
    d = int(emb.weight.shape[1])
    names = {id(m): n for n, m in model.named_modules()}
    inside = {id(m) for b in blocks for m in b.modules()}
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    embeddings = tuple(
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, nn.Embedding) and id(m) not in inside and m.weight.shape[1] == d and m is not out_emb
    )
    projections: list[tuple[str, nn.Module]] = []
    post_norms: list[tuple[str, nn.Module]] = []
    for i, block in enumerate(blocks):
        prefix = names[id(block)]
        if all(_find(block, (p,)) is not None for p in (*POST_NORMS, "pre_feedforward_layernorm")):
            post_norms += [(f"{prefix}.{n}", block.get_submodule(n)) for n in POST_NORMS]
            continue
        for kind, cand in (("attention output projection", ATTN_OUT), ("MLP output projection", MLP_OUT)):
            hit = _find(block, cand)
            if hit is None:
                raise ValueError(
                    f"{type(model).__name__}: block {i} ({type(block).__name__}) has no {kind}; searched {cand} "
                    "(supported: Llama/Mistral/Qwen2/Gemma, GPT-2, GPT-NeoX, GPT-J)"
                )
            n, m = hit
            width = m.nf if _is_conv1d(m) else getattr(m, "out_features", None)
            if not (isinstance(m, nn.Linear) or _is_conv1d(m)) or width != d:
                raise ValueError(
                    f"{prefix}.{n} is {type(m).__name__} with output width {width}: expected nn.Linear/Conv1D "
                    f"writing the hidden size {d}"
                )
            projections.append((f"{prefix}.{n}", m))
    if post_norms and projections:
        raise ValueError(
            f"{type(model).__name__} mixes post-norm and plain blocks: not a supported architecture"
        )
    return ResidualWriters(d, embeddings, tuple(projections), tuple(post_norms), tuple(blocks))


def _ablation_fn(r: Tensor) -> Any:
    cache: dict[tuple[torch.dtype, torch.device], Tensor] = {}

    def fn(h: Tensor) -> Tensor:
        key = (h.dtype, h.device)
        if key not in cache:
            cache[key] = r.to(dtype=h.dtype, device=h.device)
        v = cache[key]
        return h - (h @ v).unsqueeze(-1) * v

    return fn


def ablate(model: nn.Module, direction: Tensor) -> SteeringHandle:
    """Ablate ``direction`` at every write into the residual stream (Arditi et al.'s intervention), by hooks.

    Registers a forward pre-hook on every decoder block (its input ``resid_pre``; the first block's input is the
    embeddings' write) and a forward hook on every attention out-projection and MLP down-projection (Gemma2/3: on
    the post-norms), all positions. Equivalent to :func:`orthogonalize_weights` up to rounding.

    Returns:
        A :class:`~orthokit.steer._hooks.SteeringHandle` (``remove()`` or ``with``), whose ``steerer`` is the
        :class:`DirectionalAblation`.

    Raises:
        TypeError/ValueError: bad direction (or length ≠ hidden size), unsupported architecture.
    """
    writers = residual_writers(model)
    r = as_direction(direction, dim=writers.hidden_size)
    fn = _ablation_fn(r)
    handles = []
    try:
        for i, block in enumerate(writers.blocks):
            where = f"ablation at the input of block {i}"

            def pre(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], _w: str = where) -> Any:
                if args and isinstance(args[0], Tensor):
                    return (_apply_edit(fn, args[0], _w), *args[1:]), kwargs
                if isinstance(kwargs.get("hidden_states"), Tensor):
                    return args, {**kwargs, "hidden_states": _apply_edit(fn, kwargs["hidden_states"], _w)}
                raise TypeError(f"{_w}: found no hidden-state tensor among the block's inputs")

            handles.append(block.register_forward_pre_hook(pre, with_kwargs=True))
        for name, mod in (*writers.projections, *writers.post_norms):
            where = f"ablation at {name}"

            def post(_m: nn.Module, _a: Any, out: Any, _w: str = where) -> Any:
                if isinstance(out, tuple):
                    return (_apply_edit(fn, out[0], _w), *out[1:])
                return _apply_edit(fn, out, _w)

            handles.append(mod.register_forward_hook(post))
    except Exception:
        for h in handles:
            h.remove()
        raise
    return SteeringHandle(handles, DirectionalAblation(r))


def _project_out(w: Tensor, r: Tensor, axis: int) -> Tensor:
    """``w`` with ``r̂`` projected out of its ``axis`` (the residual axis), in float64, cast back."""
    w64 = w.detach().to(torch.float64)
    rr = r.to(device=w.device)
    if axis == -1:
        return (w64 - torch.outer(w64 @ rr, rr) if w64.ndim == 2 else w64 - (w64 @ rr) * rr).to(w.dtype)
    return (w64 - torch.outer(rr, rr @ w64)).to(w.dtype)


def orthogonalized_tensors(writers: ResidualWriters, r: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
    """``{parameter name: (parameter, new value)}`` for every residual-writing weight and bias (nothing assigned).

    Embedding rows, ``nn.Linear`` weights ``[d, in]`` (project the output rows' space: ``(I − r̂r̂ᵀ) W``),
    ``Conv1D`` weights ``[in, d]`` (``W (I − r̂r̂ᵀ)``) and the projections' biases ``[d]``.
    """
    out: dict[str, tuple[Tensor, Tensor]] = {}
    for name, m in writers.embeddings:
        out[f"{name}.weight"] = (m.weight, _project_out(m.weight, r, -1))
    for name, m in writers.projections:
        out[f"{name}.weight"] = (m.weight, _project_out(m.weight, r, -1 if _is_conv1d(m) else 0))
        bias = getattr(m, "bias", None)
        if isinstance(bias, Tensor):
            out[f"{name}.bias"] = (bias, _project_out(bias, r, -1))
    return out


def _untie_head(model: nn.Module, touched: set[int]) -> bool:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    w = getattr(head, "weight", None)
    if not isinstance(w, Tensor) or w.untyped_storage().data_ptr() not in touched:
        return False
    head.weight = nn.Parameter(w.detach().clone(), requires_grad=w.requires_grad)  # type: ignore[union-attr]
    for cfg in {
        id(c): c for c in (getattr(model, "config", None), _text_config(model)) if c is not None
    }.values():
        if hasattr(cfg, "tie_word_embeddings"):
            cfg.tie_word_embeddings = False
    return True


def _text_config(model: nn.Module) -> Any:
    cfg = getattr(model, "config", None)
    return cfg.get_text_config() if cfg is not None and hasattr(cfg, "get_text_config") else None


def apply_tensors(model: nn.Module, new: dict[str, tuple[Tensor, Tensor]]) -> bool:
    """Assign computed values (untying a head that shares an edited tensor first); returns whether it untied."""
    touched = {p.untyped_storage().data_ptr() for p, _ in new.values()}
    untied = _untie_head(model, touched)
    with torch.no_grad():
        for p, v in new.values():
            p.copy_(v)
    return untied


def orthogonalize_weights(model: nn.Module, direction: Tensor, *, inplace: bool = True) -> nn.Module:
    """Project ``direction`` out of every matrix (and bias) writing into the residual stream.

    Embeddings (token and learned position) lose the component along ``r̂`` in every row; attention
    out-projections and MLP down-projections (and their biases) can no longer write along ``r̂``. Computed in
    float64 and cast back to each parameter's dtype. If the LM head shares the token-embedding weight it is untied
    first (a ``UserWarning`` says so, ``config.tie_word_embeddings`` is set to ``False``) and left unchanged.

    Args:
        model: a supported transformers causal LM (see the module docstring).
        direction: ``[hidden_size]``; normalized here.
        inplace: edit ``model`` (default) or a deep copy of it.

    Returns:
        The edited model (``model`` itself when ``inplace``).

    Raises:
        TypeError/ValueError: bad direction, unsupported architecture (Gemma2/3 post-norm blocks included); the
            model is untouched then.
    """
    writers = residual_writers(model)
    r = as_direction(direction, dim=writers.hidden_size)
    if writers.post_norms:
        raise ValueError(
            f"{type(model).__name__} normalises each residual write ({', '.join(POST_NORMS)}): no weight edit equals "
            "the ablation there; use ablate(model, direction) (hooks) instead"
        )
    if not inplace:
        model = copy.deepcopy(model)
        writers = residual_writers(model)
    new = orthogonalized_tensors(writers, r)
    for key, (_, v) in new.items():
        if not bool(torch.isfinite(v).all()):
            raise ValueError(
                f"orthogonalizing {key} gives NaN/inf (the weight is non-finite or overflows its dtype)"
            )
    if apply_tensors(model, new):
        warnings.warn(
            f"{type(model).__name__}: the LM head shared the token-embedding weight; it was untied (copied) before "
            "orthogonalization and left unchanged (config.tie_word_embeddings = False)",
            UserWarning,
            stacklevel=2,
        )
    return model
