"""Directional ablation: remove one direction from the residual stream, by hooks or by editing the weights.

Math. With the unit direction ``r̂ = r/‖r‖`` the ablation is the orthogonal projection
``h ↦ h − (h·r̂) r̂ = (I − r̂r̂ᵀ) h``. Applied at *every write into the residual stream* (token and learned
position embeddings, each attention output projection, each MLP down-projection) the stream never holds a
component along ``r̂`` — in eval mode (see *Training mode* below). Since every write is ``W x + b`` for a matrix
``W`` whose output axis is the residual axis, ``(I − r̂r̂ᵀ)(W x + b) = W' x + b'`` with ``W' = (I − r̂r̂ᵀ) W``,
``b' = (I − r̂r̂ᵀ) b`` — the *weight orthogonalization* of Arditi et al. is exactly the hook form, computed once
(tested: logits agree to 1e-5 in float32, 1e-10 in float64).

Training mode. GPT-2, GPT-J, GPT-NeoX and Phi3 apply *residual dropout* to a write after the module that
produces it (``attn.resid_dropout``, ``post_mlp_dropout``, ``resid_attn_dropout``, ...); an elementwise dropout
mask does not keep a vector orthogonal to ``r̂``, so in ``train()`` block outputs keep a component along ``r̂``
(measured 0.04–0.08 relative on tiny random GPT-2, GPT-NeoX and Phi3 models with dropout 0.1). :func:`ablate`
warns when it is registered on a model in training mode with such a dropout.

A hook on a block's *output* alone is not the same: inside the block the MLP reads ``resid_mid = resid_pre +
attn_out`` with the attention's component along ``r̂`` still there. :func:`ablate` therefore hooks the input of
every block (``resid_pre``, which catches the embeddings' write), and the output of every attention
out-projection and MLP down-projection — the hooks of the reference code (pre-hook on each block, output hooks on
each attention and MLP module), on the projection modules themselves.

Supported (name-based discovery of the projections, tested on tiny random models): Llama-like blocks
(``self_attn.o_proj``, ``mlp.down_proj``: Llama, Mistral, Qwen2/Qwen3, Gemma), GPT-2 (``attn.c_proj``,
``mlp.c_proj``; Conv1D weights are stored ``[in, out]``), GPT-NeoX (``attention.dense``, ``mlp.dense_4h_to_h``),
and GPT-J (``attn.out_proj``, ``mlp.fc_out``). Embeddings: every ``nn.Embedding`` outside the blocks whose width is
the hidden size (token and learned position embeddings).

Post-norm blocks. Some architectures normalise a projection's output before adding it to the stream: Gemma2/3
(``post_attention_layernorm``, ``post_feedforward_layernorm``), OLMo2/OLMo3/Exaone4 (the same names, without a
``pre_feedforward_layernorm``), GLM4 (``post_self_attn_layernorm``, ``post_mlp_layernorm``) — while in Llama or
GLM4 a ``post_attention_layernorm`` is the MLP's *pre*-norm. Names do not tell, so :func:`residual_writers` finds
them structurally: one probe forward pass (four token ids, eval mode, no grad) records each projection's output
tensor and flags every normalization module (``*Norm*`` class, ``nn.LayerNorm``) whose input *is* such a tensor.
There the norm's output is the write: :func:`ablate` hooks it, and :func:`orthogonalize_weights` refuses (an
RMSNorm with a per-channel gain does not keep a vector orthogonal to ``r̂``, so no weight edit is exact). As a
safety net :func:`ablate` then runs a second probe forward with its hooks and refuses (removing them) if any
block output keeps a component along ``r̂`` above :data:`VERIFY_TOL` — an architecture that writes somewhere the
hooks miss is an error, never a silent partial ablation.

Composition with other hooks. Both probe passes run with every *other* forward hook and pre-hook registered on
the model's modules (a :func:`~orthokit.steer._hooks.steer` handle, a user's recorder, transformers' own output
capturing hooks) suspended, and restored in their order afterwards: the probes see the architecture and
ablate's own hooks only, so a steering hook registered before :func:`ablate` neither trips the verification nor
records the probes. (Global hooks, ``torch.nn.modules.module.register_module_forward_hook``, are not suspended.)
The ablation guarantee covers ablate's own writes: a hook that adds a component along ``r̂`` after the last
ablation point (e.g. activation addition at a block output) keeps it in that block's output, by design.

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
from collections.abc import Iterator
from contextlib import contextmanager
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
#: relative tolerance of the check that ``ablate`` left no component along r̂ in any block output, by dtype
VERIFY_TOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 2e-2}


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
            (``nn.Linear`` with ``out_features == d`` or transformers ``Conv1D`` with ``nf == d``) whose output is
            added to the stream as is.
        post_norms: ``(name, module)`` for the normalization modules that read a projection's output (found by a
            probe forward pass): their outputs are the writes (Gemma2/3, OLMo2/3, Exaone4, GLM4).
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


def _is_norm(m: nn.Module) -> bool:
    """A normalization module: LayerNorm, RMSNorm and the per-architecture ``*Norm`` classes of transformers."""
    return isinstance(m, nn.LayerNorm | nn.GroupNorm) or "norm" in type(m).__name__.lower()


@contextmanager
def _nothing() -> Iterator[None]:
    yield


@contextmanager
def _probing(model: nn.Module) -> Iterator[None]:
    """Eval mode and no grad for a probe forward pass; every module's training flag is restored afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, t in flags:
            m.training = t


_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks")


@contextmanager
def _only_hooks(model: nn.Module, keep: set[int]) -> Iterator[None]:
    """Suspend every forward hook / pre-hook of ``model``'s modules whose handle id is not in ``keep``.

    The suspended hooks are put back afterwards in their original order (hook dicts are edited in place, so
    handles registered meanwhile still remove themselves).
    """
    saved: list[tuple[dict[int, Any], list[int], dict[int, Any]]] = []
    for m in model.modules():
        for attr in _HOOK_DICTS:
            d = getattr(m, attr, None)
            if not isinstance(d, dict) or not d:
                continue
            foreign = {k: v for k, v in d.items() if k not in keep}
            if foreign:
                saved.append((d, list(d), foreign))
                for k in foreign:
                    del d[k]
    try:
        yield
    finally:
        for d, order, foreign in saved:
            current = dict(d)
            d.clear()
            for k in order:
                if k in foreign:
                    d[k] = foreign[k]
                elif k in current:
                    d[k] = current.pop(k)
            d.update(current)  # hooks registered during the suspension (not removed) go last


def _probe_forward(model: nn.Module, emb: nn.Embedding, purpose: str, keep: set[int] | None = None) -> None:
    """Run ``model`` on four token ids (eval mode, no grad) so that registered hooks can observe one forward.

    Only the hooks whose handle ids are in ``keep`` run (see :func:`_only_hooks`); ``None`` keeps all.
    """
    w = emb.weight
    if w.device.type == "meta":
        raise ValueError(
            f"{type(model).__name__} is on the meta device: load its weights before {purpose} "
            "(the residual writes are located by one probe forward pass)"
        )
    ids = (torch.arange(1, 5, device=w.device) % int(emb.num_embeddings)).unsqueeze(0)
    try:
        with _probing(model), _only_hooks(model, keep) if keep is not None else _nothing():
            model(ids)
    except Exception as e:
        raise ValueError(
            f"{type(model).__name__}: the probe forward pass for {purpose} failed ({type(e).__name__}: {e})"
        ) from e


def _post_norms(
    model: nn.Module, emb: nn.Embedding, blocks: list[nn.Module], projections: list[tuple[str, nn.Module]]
) -> dict[str, tuple[str, nn.Module]]:
    """``{projection name: (norm name, norm)}`` for every normalization module that reads a projection's output.

    Found structurally: one probe forward pass records each projection's output tensor, and a pre-hook on every
    normalization module inside the blocks checks whether its input *is* one of those tensors (OLMo2/OLMo3/
    Exaone4 ``post_attention_layernorm``/``post_feedforward_layernorm``, GLM4 ``post_self_attn_layernorm``/
    ``post_mlp_layernorm``, Gemma2/3 post-norms; Llama's ``post_attention_layernorm``, which reads the residual
    stream, is not one).
    """
    names = {id(m): n for n, m in model.named_modules()}
    proj_ids = {id(m) for _, m in projections}
    produced: dict[
        int, tuple[str, Tensor]
    ] = {}  # holds the tensors, so their ids stay unique during the probe
    found: dict[str, tuple[str, nn.Module]] = {}
    handles = []

    def record(pname: str) -> Any:
        def hook(_m: nn.Module, _a: Any, out: Any) -> None:
            t = out[0] if isinstance(out, tuple) else out
            if isinstance(t, Tensor):
                produced[id(t)] = (pname, t)

        return hook

    def consume(nname: str, norm: nn.Module) -> Any:
        def pre(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            x = args[0] if args else kwargs.get("hidden_states")
            hit = produced.get(id(x)) if isinstance(x, Tensor) else None
            if hit is not None and hit[1] is x:
                found[hit[0]] = (nname, norm)

        return pre

    try:
        for pname, m in projections:
            handles.append(m.register_forward_hook(record(pname)))
        for block in blocks:
            for m in block.modules():
                if _is_norm(m) and id(m) not in proj_ids:
                    handles.append(m.register_forward_pre_hook(consume(names[id(m)], m), with_kwargs=True))
        _probe_forward(model, emb, "locating the residual writes", keep={h.id for h in handles})
    finally:
        for h in handles:
            h.remove()
    return found


def residual_writers(model: nn.Module) -> ResidualWriters:
    """Find the embeddings and per-block modules whose outputs are added to ``model``'s residual stream.

    The attention out-projection and MLP down-projection of every block are found by name; one probe forward
    pass (four token ids, eval mode, no grad) then finds every normalization module that reads a projection's
    output before the residual add (see :func:`_post_norms`): that norm's output is the write.

    Raises:
        ValueError: for an architecture whose blocks have none of the known attention/MLP output projections
            (the message lists the names searched), whose projections do not output the hidden size, a model
            on the meta device, or a failing probe forward pass.
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
    for i, block in enumerate(blocks):
        prefix = names[id(block)]
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
    normed = _post_norms(model, emb, blocks, projections)
    plain = tuple((n, m) for n, m in projections if n not in normed)
    post = tuple(normed[n] for n, _ in projections if n in normed)
    return ResidualWriters(d, embeddings, plain, post, tuple(blocks))


def _ablation_fn(r: Tensor) -> Any:
    cache: dict[tuple[torch.dtype, torch.device], Tensor] = {}

    def fn(h: Tensor) -> Tensor:
        key = (h.dtype, h.device)
        if key not in cache:
            cache[key] = r.to(dtype=h.dtype, device=h.device)
        v = cache[key]
        return h - (h @ v).unsqueeze(-1) * v

    return fn


def _verify_ablated(model: nn.Module, writers: ResidualWriters, r: Tensor, own: set[int]) -> None:
    """One probe forward with only ablate's hooks (handle ids ``own``) and the recorders running: every block
    output must be ⟂ r̂ (relative :data:`VERIFY_TOL` of its dtype)."""
    worst: list[tuple[float, int, torch.dtype]] = []

    def record(i: int) -> Any:
        def hook(_m: nn.Module, _a: Any, out: Any) -> None:
            h = out[0] if isinstance(out, tuple) else out
            if isinstance(h, Tensor) and h.numel():
                h64 = h.detach().to(torch.float64)
                rel = (h64 @ r.to(h64.device)).abs() / h64.norm(dim=-1).clamp_min(1e-300)
                worst.append((float(rel.max()), i, h.dtype))

        return hook

    handles = [b.register_forward_hook(record(i)) for i, b in enumerate(writers.blocks)]
    try:
        emb = model.get_input_embeddings()
        keep = own | {h.id for h in handles}
        _probe_forward(model, emb, "verifying the ablation", keep=keep)  # type: ignore[arg-type]
    finally:
        for h in handles:
            h.remove()
    for rel, i, dtype in worst:
        if rel > VERIFY_TOL.get(dtype, 1e-4):
            raise ValueError(
                f"{type(model).__name__}: ablate() left a component {rel:.3g} (relative) along the direction in "
                f"the output of block {i} (probe with ablate's hooks only, other hooks suspended): this "
                "architecture writes into the residual stream somewhere the hooks do not reach; not supported"
            )


def _residual_dropouts(writers: ResidualWriters) -> list[str]:
    """``"name (p=...)"`` for every active dropout module in the blocks that can act on a residual write: all
    ``nn.Dropout`` with ``p > 0`` except the attention-probability dropouts (``attn_dropout``/``attention_dropout``,
    applied before the out-projection)."""
    out = []
    for i, block in enumerate(writers.blocks):
        for name, m in block.named_modules():
            leaf = name.rsplit(".", 1)[-1].lower()
            if (
                isinstance(m, nn.modules.dropout._DropoutNd)
                and m.p > 0
                and m.training
                and "attn_drop" not in leaf
                and "attention_drop" not in leaf
            ):
                out.append(f"block {i}: {name} (p={m.p:g})")
    return out


def ablate(
    model: nn.Module, direction: Tensor, *, verify: bool = True, check_finite: bool = True
) -> SteeringHandle:
    """Ablate ``direction`` at every write into the residual stream (Arditi et al.'s intervention), by hooks.

    Registers a forward pre-hook on every decoder block (its input ``resid_pre``; the first block's input is the
    embeddings' write) and a forward hook on every attention out-projection and MLP down-projection — or, where
    a normalization module reads that projection's output before the residual add (Gemma2/3, OLMo2/3, Exaone4,
    GLM4 post-norms), on that norm — all positions. Equivalent to :func:`orthogonalize_weights` up to rounding
    where that applies (no post-norms).

    Args:
        model: a supported transformers decoder-only causal LM (see the module docstring).
        direction: ``[hidden_size]``; normalized here.
        verify: after registering, run one probe forward pass (four tokens, eval mode, no grad) and check that
            every block output is orthogonal to ``r̂`` (relative :data:`VERIFY_TOL`: 1e-9 float64, 1e-4 float32,
            2e-2 half precision); on failure the hooks are removed and a ``ValueError`` names the block.
        check_finite: check each edit's output for NaN/inf (one host-device sync per hook call; see
            :func:`~orthokit.steer._hooks.steer`).

    Exactness holds in eval mode. A ``UserWarning`` is issued when the model is in training mode with an active
    residual dropout (GPT-2, GPT-J, GPT-NeoX, Phi3 with ``resid_pdrop``/``hidden_dropout`` > 0): the dropout
    after a write re-introduces a component along ``r̂`` (see the module docstring). The check is made at
    registration; switching the model to ``train()`` later is not noticed.

    Other hooks already on the model (another :func:`~orthokit.steer._hooks.steer` handle, ...) are suspended
    during the probe passes, so composing in either order works; their own edits are not ablated where they act
    after ablate's hooks.

    Returns:
        A :class:`~orthokit.steer._hooks.SteeringHandle` (``remove()`` or ``with``), whose ``steerer`` is the
        :class:`DirectionalAblation`.

    Raises:
        TypeError/ValueError: bad direction (or length ≠ hidden size), unsupported architecture, a model on the
            meta device, or a failed verification; the model is left without hooks then.
    """
    if not isinstance(verify, bool) or not isinstance(check_finite, bool):
        raise TypeError("verify and check_finite must be bools")
    writers = residual_writers(model)
    r = as_direction(direction, dim=writers.hidden_size)
    fn = _ablation_fn(r)
    handles = []
    try:
        for i, block in enumerate(writers.blocks):
            where = f"ablation at the input of block {i}"

            def pre(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], _w: str = where) -> Any:
                if args and isinstance(args[0], Tensor):
                    return (_apply_edit(fn, args[0], _w, check_finite), *args[1:]), kwargs
                if isinstance(kwargs.get("hidden_states"), Tensor):
                    edited = _apply_edit(fn, kwargs["hidden_states"], _w, check_finite)
                    return args, {**kwargs, "hidden_states": edited}
                raise TypeError(f"{_w}: found no hidden-state tensor among the block's inputs")

            handles.append(block.register_forward_pre_hook(pre, with_kwargs=True))
        for name, mod in (*writers.projections, *writers.post_norms):
            where = f"ablation at {name}"

            def post(_m: nn.Module, _a: Any, out: Any, _w: str = where) -> Any:
                if isinstance(out, tuple):
                    return (_apply_edit(fn, out[0], _w, check_finite), *out[1:])
                return _apply_edit(fn, out, _w, check_finite)

            handles.append(mod.register_forward_hook(post))
        if verify:
            _verify_ablated(model, writers, r, {h.id for h in handles})
    except Exception:
        for h in handles:
            h.remove()
        raise
    dropouts = _residual_dropouts(writers)
    if dropouts:
        more = f", ... ({len(dropouts)} in all)" if len(dropouts) > 2 else ""
        warnings.warn(
            f"{type(model).__name__} is in training mode with residual dropout ({', '.join(dropouts[:2])}{more}): "
            "dropout after a write re-introduces a component along the direction; ablate() is exact in eval "
            "mode only (call model.eval())",
            UserWarning,
            stacklevel=2,
        )
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
        TypeError/ValueError: bad direction, unsupported architecture (post-norm blocks — Gemma2/3, OLMo2/3,
            Exaone4, GLM4 — included); the model is untouched then.
    """
    writers = residual_writers(model)
    r = as_direction(direction, dim=writers.hidden_size)
    if writers.post_norms:
        normed = ", ".join(n for n, _ in writers.post_norms[:2])
        raise ValueError(
            f"{type(model).__name__} normalises residual writes before adding them ({normed}, ...): no weight "
            "edit equals the ablation there; use ablate(model, direction) (hooks) instead"
        )
    if not inplace:
        model = copy.deepcopy(model)
        get = model.get_submodule
        writers = ResidualWriters(
            writers.hidden_size,
            tuple((n, get(n)) for n, _ in writers.embeddings),
            tuple((n, get(n)) for n, _ in writers.projections),
            (),
            tuple(residual_layers(model)),
        )
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
