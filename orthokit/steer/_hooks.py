"""Forward-hook machinery shared by every steering method: find the decoder blocks, edit their output states.

A *steerer* is a plain object with ``edit(h) -> h'`` acting on residual-stream states ``h`` of shape ``[..., d]``
(same shape, same dtype out). :func:`steer` registers one forward hook per chosen decoder block of a transformers
causal LM; the hook replaces the block's output hidden state (the first element when the block returns a tuple,
the tensor itself otherwise — transformers 5 decoder layers return a tensor, older versions a tuple) by
``steerer.edit(...)``. The returned :class:`SteeringHandle` removes the hooks (idempotent) and is a context
manager, so ``with steer(...):`` restores the model even when the body raises. Several handles compose: hooks on
the same block run in registration order, each seeing the previous one's output.

Dtype: a half-precision (float16/bfloat16) state is edited in float32 and cast back, so a rotation or a
projection is not rounded twice; float32/float64 states are edited in their own dtype.

Positions: ``positions="all"`` edits every position of each forward call, ``"last"`` only the last one
(``h[..., -1, :]``). During generation with a KV cache each forward call after the prompt holds only the new
token, so ``"all"`` then edits the prompt once and every generated token, and ``"last"`` edits the last prompt
token and every generated token. With right-padded batches the last position is padding: left-pad for ``"last"``.

Example:
    >>> import torch
    >>> from transformers import GPT2Config, GPT2LMHeadModel
    >>> from orthokit.steer._hooks import residual_layers, steer
    >>> import orthokit.steer.addition  # registers "addition"
    >>> torch.manual_seed(0) and None
    >>> cfg = GPT2Config(vocab_size=32, n_positions=16, n_embd=8, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0)
    >>> model = GPT2LMHeadModel(cfg).eval()
    >>> len(residual_layers(model))
    2
    >>> ids = torch.tensor([[1, 2, 3]])
    >>> before = model(ids).logits
    >>> with steer(model, "addition", direction=torch.randn(8), alpha=4.0, layers=[0]):
    ...     steered = model(ids).logits
    >>> bool((steered - before).abs().max() > 1e-3), torch.equal(model(ids).logits, before)
    (True, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .registry import STEERERS

__all__ = [
    "Steerer",
    "SteeringHandle",
    "as_direction",
    "hidden_size",
    "num_hidden_layers",
    "residual_layers",
    "steer",
]

_POSITIONS = ("all", "last")


def num_hidden_layers(model: nn.Module) -> int:
    """The decoder depth from ``model.config`` (``num_hidden_layers``, ``n_layer`` or ``num_layers``).

    Raises:
        ValueError: if the model has no config or the config names no layer count.
    """
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError(f"model ({type(model).__name__}) has no .config: pass a transformers model")
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        n = getattr(config, key, None)
        if isinstance(n, int) and n > 0:
            return n
    raise ValueError(
        f"model config ({type(config).__name__}) has no num_hidden_layers / n_layer / num_layers: "
        "cannot tell which ModuleList holds the decoder blocks"
    )


def _auto_types() -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
    """(causal-LM model types, masked-LM model types, every base-model type) known to transformers."""
    try:
        from transformers.models.auto import modeling_auto as auto
    except ImportError:  # pragma: no cover - transformers is a dependency of this family
        return frozenset(), frozenset(), frozenset()
    return (
        frozenset(auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES),
        frozenset(auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES),
        frozenset(auto.MODEL_MAPPING_NAMES),
    )


def _require_causal_decoder(model: nn.Module) -> None:
    """Refuse encoders and encoder-decoders (see :func:`residual_layers` for the rule)."""
    config = model.config  # type: ignore[union-attr]
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    cfgs = [c for c in {id(c): c for c in (config, text)}.values()]
    name = type(model).__name__
    mt = getattr(config, "model_type", None)
    if any(getattr(c, "is_encoder_decoder", False) is True for c in cfgs):
        raise ValueError(
            f"{name} (model_type {mt!r}) is an encoder-decoder model, not a decoder-only causal LM: "
            "steering hooks the residual stream of a decoder-only model"
        )
    types = {t for t in (getattr(c, "model_type", None) for c in cfgs) if isinstance(t, str) and t}
    causal, masked, base = _auto_types()
    if types & masked and not any(getattr(c, "is_decoder", False) is True for c in cfgs):
        raise ValueError(
            f"{name} (model_type {mt!r}) is not a decoder-only causal LM: an encoder family with "
            "config.is_decoder=False (bidirectional attention)"
        )
    if types and types <= base and not types & causal:
        raise ValueError(
            f"{name} (model_type {mt!r}) is not a decoder-only causal LM: transformers has no causal-LM "
            "class for this model type"
        )


def residual_layers(model: nn.Module) -> list[nn.Module]:
    """The decoder blocks of a transformers decoder-only causal LM, in order.

    Walks ``model.named_modules()`` (definition order) for the first :class:`torch.nn.ModuleList` whose length
    equals ``config.num_hidden_layers``: ``model.model.layers`` for Llama/Mistral/Qwen2/Gemma,
    ``model.transformer.h`` for GPT-2/GPT-J, ``model.gpt_neox.layers`` for GPT-NeoX, ...

    Decoder-only rule (checked on ``model.config`` and its text config): refused are encoder-decoders
    (``config.is_encoder_decoder``: T5, BART, Whisper, ...), encoder families that also have a masked-LM class
    unless ``config.is_decoder`` is set (``BertModel`` is refused, ``BertLMHeadModel(is_decoder=True)``
    accepted), and model types transformers registers without any causal-LM class (ViT, CLIP, ...). A model
    type transformers does not know (remote code, a custom config) is accepted.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module``.
        ValueError: if ``model`` has no config, is not a decoder-only causal LM, or no ModuleList of that
            length exists.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    n = num_hidden_layers(model)
    _require_causal_decoder(model)
    for _, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) == n:
            return list(mod)
    raise ValueError(
        f"no nn.ModuleList of length num_hidden_layers={n} found in {type(model).__name__}: "
        "not a decoder-only transformers model with a list of blocks"
    )


def hidden_size(model: nn.Module) -> int | None:
    """The residual-stream width of ``model``: ``hidden_size``/``n_embd``/``d_model`` of its (text) config, else
    the input embeddings' width; ``None`` when neither tells."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for key in ("hidden_size", "n_embd", "d_model"):
        d = getattr(config, key, None)
        if isinstance(d, int) and not isinstance(d, bool) and d > 0:
            return d
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    w = getattr(emb, "weight", None)
    return int(w.shape[-1]) if isinstance(w, Tensor) and w.ndim == 2 else None


#: attribute names read as directions by :func:`_check_steerer_dim` when a steerer declares no ``dim``
DIRECTION_ATTRS = (
    "direction",
    "second",
    "b1",
    "b2",
    "axis",
    "normal",
    "vector",
    "plane",
    "r",
    "u",
    "v",
)


def _check_steerer_dim(steerer: Any, model: nn.Module) -> None:
    """The steerer's width must be the model's: its ``dim`` when it declares one (an int), else the length of every
    1-D tensor attribute named like a direction (:data:`DIRECTION_ATTRS`: ``direction``, ``b1``, ``axis``, ...).

    Other tensor attributes (per-layer strengths, schedules, ...) are the steerer's own business and not checked.
    """
    d = hidden_size(model)
    if d is None:
        return
    label = getattr(steerer, "name", type(steerer).__name__)
    dim = getattr(steerer, "dim", None)
    if isinstance(dim, int) and not isinstance(dim, bool) and dim != d:
        raise ValueError(
            f"direction has length {dim} (steerer {label!r}) but {type(model).__name__} has hidden size {d}"
        )
    if isinstance(dim, int):
        return
    attrs = getattr(steerer, "__dict__", {})
    for attr in DIRECTION_ATTRS:
        v = attrs.get(attr)
        if isinstance(v, Tensor) and v.ndim == 1 and v.shape[0] != d:
            raise ValueError(
                f"direction has length {v.shape[0]} (steerer {label!r}, attribute {attr!r}) but "
                f"{type(model).__name__} has hidden size {d}"
            )


def as_direction(direction: Any, name: str = "direction", dim: int | None = None) -> Tensor:
    """Validate a steering direction and return it as a float64 unit vector on its device.

    Raises:
        TypeError: if ``direction`` is not a tensor.
        ValueError: if it is not 1-D (of length ``dim`` when given), is non-finite, or is (numerically) zero.
    """
    if not isinstance(direction, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(direction).__name__}")
    if direction.ndim != 1 or direction.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D tensor [d], got shape {tuple(direction.shape)}")
    if dim is not None and direction.shape[0] != dim:
        raise ValueError(f"{name} has length {direction.shape[0]}, the hidden size is {dim}")
    if not direction.is_floating_point():
        raise TypeError(f"{name} must be a real floating-point tensor, got {direction.dtype}")
    d64 = direction.detach().to(torch.float64)
    if not bool(torch.isfinite(d64).all()):
        raise ValueError(f"{name} contains NaN or inf")
    norm = torch.linalg.vector_norm(d64)
    if not bool(norm > 0):
        raise ValueError(f"{name} is the zero vector: no direction to steer along")
    return d64 / norm


class Steerer:
    """Base class of the steering methods: ``edit(h)`` maps residual states ``[..., d]`` to edited states.

    Subclasses set the class attributes ``name`` (the registry name) and ``norm_preserving`` (``True`` when
    ``‖edit(h)‖ = ‖h‖`` row by row — a tested invariant) and implement :meth:`edit`, which must return a tensor of
    the input's shape and dtype. :meth:`_cast` caches a float64 vector in the states' dtype and device.
    """

    name: str = "steerer"
    norm_preserving: bool = False

    def edit(self, h: Tensor) -> Tensor:
        """Return the edited states (same shape and dtype as ``h``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement edit(h)")

    def _cast(self, key: str, v: Tensor, like: Tensor) -> Tensor:
        cache: dict[tuple[str, torch.dtype, torch.device], Tensor] = self.__dict__.setdefault(
            "_cast_cache", {}
        )
        k = (key, like.dtype, like.device)
        out = cache.get(k)
        if out is None:
            out = v.to(device=like.device, dtype=like.dtype)
            cache[k] = out
        return out

    def _check_h(self, h: Tensor, dim: int) -> None:
        if not isinstance(h, Tensor):
            raise TypeError(f"{self.name}: h must be a torch.Tensor, got {type(h).__name__}")
        if h.ndim < 1 or h.shape[-1] != dim:
            raise ValueError(f"{self.name}: h must have shape [..., {dim}], got {tuple(h.shape)}")
        if not h.is_floating_point():
            raise TypeError(f"{self.name}: h must be floating point, got {h.dtype}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, norm_preserving={self.norm_preserving})"


class SteeringHandle:
    """The hooks one :func:`steer` (or ``ablate``) call registered; ``remove()`` is idempotent.

    Also a context manager: ``with steer(model, ...) as h:`` removes the hooks on exit, exceptions included.
    """

    def __init__(self, handles: Sequence[RemovableHandle], steerer: Steerer | None = None) -> None:
        self._handles = list(handles)
        self.steerer = steerer

    @property
    def active(self) -> bool:
        """Whether the hooks are still registered."""
        return bool(self._handles)

    def remove(self) -> None:
        """Remove every hook of this handle (a second call does nothing)."""
        while self._handles:
            self._handles.pop().remove()

    def __enter__(self) -> SteeringHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"SteeringHandle(hooks={len(self._handles)}, steerer={self.steerer!r})"


def _apply_edit(fn: Any, h: Tensor, where: str, check_finite: bool = True) -> Tensor:
    """Run ``fn`` on ``h`` (half precision promoted to float32 and cast back); check shape, dtype and finiteness.

    The finiteness check costs one reduction and one host-device sync per edit (``isfinite(out).all()``; the
    input is only inspected when that fails); it is skipped for ``check_finite=False`` and on the meta device.
    """
    work = h.float() if h.dtype in (torch.float16, torch.bfloat16) else h
    out = fn(work)
    if not isinstance(out, Tensor):
        raise TypeError(f"{where}: edit returned {type(out).__name__}, expected a Tensor")
    if out.shape != work.shape:
        raise ValueError(
            f"{where}: edit returned shape {tuple(out.shape)} for states of shape {tuple(work.shape)}"
        )
    if out.dtype != work.dtype:
        raise ValueError(f"{where}: edit returned dtype {out.dtype} for states of dtype {work.dtype}")
    if (
        check_finite
        and out.device.type != "meta"
        and not bool(torch.isfinite(out).all())
        and bool(torch.isfinite(work).all())
    ):
        raise ValueError(f"{where}: edit produced NaN or inf from finite states")
    return out.to(h.dtype) if out.dtype != h.dtype else out


def _edit_positions(fn: Any, h: Tensor, positions: str, where: str, check_finite: bool = True) -> Tensor:
    if positions == "all" or h.ndim < 2:
        return _apply_edit(fn, h, where, check_finite)
    last = _apply_edit(fn, h[..., -1:, :], where, check_finite)
    return torch.cat([h[..., :-1, :], last], dim=-2)


def _replace_output(output: Any, fn: Any, positions: str, where: str, check_finite: bool = True) -> Any:
    if isinstance(output, Tensor):
        return _edit_positions(fn, output, positions, where, check_finite)
    if isinstance(output, tuple) and output and isinstance(output[0], Tensor):
        return (_edit_positions(fn, output[0], positions, where, check_finite), *output[1:])
    raise TypeError(f"{where}: block output is {type(output).__name__}, expected a Tensor or a tuple of them")


def _resolve_layers(layers: Sequence[int] | None, n: int) -> list[int]:
    if layers is None:
        return list(range(n))
    if isinstance(layers, int | str) or not isinstance(layers, Sequence):
        raise TypeError(f"layers must be a sequence of ints, got {type(layers).__name__}")
    out: list[int] = []
    for i in layers:
        if isinstance(i, bool) or not isinstance(i, int):
            raise TypeError(f"layers must hold ints, got {type(i).__name__}")
        if not -n <= i < n:
            raise ValueError(f"layer {i} out of range for a model with {n} decoder blocks")
        j = i % n
        if j in out:
            raise ValueError(f"layer {i} listed twice in layers")
        out.append(j)
    if not out:
        raise ValueError("layers is empty: pass None for all layers")
    return out


def steer(
    model: nn.Module,
    steerer: Steerer | str,
    *,
    layers: Sequence[int] | None = None,
    positions: str = "all",
    check_finite: bool = True,
    **kw: Any,
) -> SteeringHandle:
    """Register ``steerer.edit`` on the output of the chosen decoder blocks of ``model``.

    Args:
        model: a transformers causal LM (any model :func:`residual_layers` understands).
        steerer: a :class:`Steerer`, or a registry name (``STEERERS``) built with ``**kw``
            (``steer(model, "addition", direction=v, alpha=4.0, layers=[2])``).
        layers: block indices (negative allowed; default: every block).
        positions: ``"all"`` or ``"last"`` (see the module docstring for generation with a KV cache).
        check_finite: check that each edit's output is finite (one ``isfinite(...).all()`` per edited block and
            forward call, i.e. one host-device sync on an accelerator); ``False`` skips it (saves that sync; speed-up
            not measured here; no error on NaN). Always skipped on the meta device.

    Returns:
        A :class:`SteeringHandle`; ``remove()`` it or use it as a context manager.

    Raises:
        TypeError/ValueError: bad steerer, unknown name, keyword arguments with a steerer instance, bad layers or
            positions, a model that is not a decoder-only causal LM, a direction whose length is not the model's
            hidden size (checked here, before any hook is registered). Inside the forward pass, a ``ValueError`` when the edit changes shape or dtype, or returns
            NaN/inf from finite states.
    """
    if isinstance(steerer, str):
        steerer = STEERERS.get(steerer)(**kw)
    elif kw:
        raise TypeError(
            f"keyword arguments {sorted(kw)} are only accepted with a steerer name, not an instance"
        )
    if not callable(getattr(steerer, "edit", None)):
        raise TypeError(f"steerer must be a Steerer or a registry name, got {type(steerer).__name__}")
    if positions not in _POSITIONS:
        raise ValueError(f"positions must be one of {_POSITIONS}, got {positions!r}")
    if not isinstance(check_finite, bool):
        raise TypeError(f"check_finite must be a bool, got {type(check_finite).__name__}")
    blocks = residual_layers(model)
    idx = _resolve_layers(layers, len(blocks))
    _check_steerer_dim(steerer, model)
    name = getattr(steerer, "name", type(steerer).__name__)
    handles: list[RemovableHandle] = []
    for i in idx:
        where = f"steerer {name!r} at layer {i}"

        def hook(_m: nn.Module, _args: Any, output: Any, _where: str = where) -> Any:
            return _replace_output(output, steerer.edit, positions, _where, check_finite)

        handles.append(blocks[i].register_forward_hook(hook))
    return SteeringHandle(handles, steerer)
