r"""``quantize_model``: fake-quantize a (rotated) transformers model's weights, activations and KV cache.

What it does, on a deep copy unless ``inplace=True``:

* **weights** (``w_bits < 16``): every ``nn.Linear`` whose qualified name does not match ``skip`` (default
  ``("lm_head",)``, like QuaRot) — including the *inner* linear of an
  :class:`~orthokit.rotation.online.OnlineRotatedLinear` — is replaced by its fake-quantized weight: per output
  channel or per ``group_size`` input columns, symmetric or asymmetric, optional MSE clipping (``w_clip``), by
  ``method``:

  - ``"rtn"``: round to nearest (:func:`~orthokit.rotation.quant.quantize_weight`);
  - ``"gptq"``: GPTQ (:func:`~orthokit.rotation.gptq.gptq_quantize`), *sequential* like ``IST-DASLab/gptq``
    ``llama.py`` and QuaRot's ``gptq_fwrd``: the linears are visited in the order a forward pass calls them,
    grouped by shared input (q/k/v; gate/up), and each group's Hessian ``H = 2/n Σ x xᵀ`` is collected from
    ``calib`` with every earlier group already quantized (padding tokens excluded through ``attention_mask``).
    Like the reference, block inputs are cached: once a decoder/encoder block is final its output is stored, and
    later passes run the model's own forward with the earlier blocks returning that output (about ``groups + 1``
    block computations per block and batch instead of re-running every earlier block for each group); used only
    when one verification forward shows the blocks form an exact chain, else every pass starts from the inputs;
  - ``"rsq"``: the same with RSQ token weights ``H = 2/n Σ r_t x_t x_tᵀ`` (:mod:`orthokit.rotation.rsq`:
    attention concentration of the linear's own decoder layer, computed on that layer's current input). RSQ's
    "rotate" step is :func:`orthokit.rotation.rotate_model`, applied *before* this call.

* **activations** (``a_bits < 16``): a forward pre-hook on every quantized linear fake-quantizes its input per
  token (:func:`~orthokit.rotation.quant.quantize_activation`, straight-through gradient), so hooks on the inner
  linear of an online-rotated layer see the rotated input. Hooks are added after the weights are quantized
  (GPTQ's Hessians use full-precision activations, as in QuaRot) and are removed by :meth:`QuantReport.remove`.
* **KV cache** (``kv_bits < 16``): routes attention through the ``"orthokit"`` implementation
  (:func:`orthokit.rotation.attention.install_attention`) and sets ``module._orthokit_kv_quant`` on every
  attention module: K and V are fake-quantized per token and per head (after RoPE and after an online R3
  rotation when :func:`~orthokit.rotation.rotate_model` installed one), asymmetric by default.

A model that still carries an earlier call's activation hooks or KV quantizers is refused (a deep copy would keep
them where neither report can remove them, and GPTQ would see quantized activations): call the earlier
:meth:`QuantReport.remove` first. Weights quantized by an earlier call carry no hook and are accepted.

Errors (bad bits/method/group size, GPTQ without ``calib``, non-finite weights, …) are one-line ``ValueError``/
``TypeError`` naming the argument, raised before anything changes; a failure during GPTQ restores every weight
and hook, so the model is left untouched.

Example:
    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> from orthokit.rotation.quantize_model import quantize_model
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <...>
    >>> m = LlamaForCausalLM(LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
    ...                                  intermediate_size=64, vocab_size=50)).eval()
    >>> ids = torch.randint(0, 50, (4, 12))
    >>> q, rep = quantize_model(m, w_bits=4, a_bits=8, kv_bits=4, method="gptq", calib=ids)
    >>> sorted(rep.weight_rel_error)[:3], rep.skipped
    (['model.layers.0.mlp.down_proj', 'model.layers.0.mlp.gate_proj', 'model.layers.0.mlp.up_proj'], {'lm_head': "skip pattern 'lm_head'"})
    >>> bool(torch.equal(m.model.layers[0].mlp.up_proj.weight, q.model.layers[0].mlp.up_proj.weight))  # a copy
    False
    >>> rep.remove()   # activation and KV quantizers off; the weights stay quantized
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from orthokit.rotation.gptq import HessianAccumulator, gptq_quantize
from orthokit.rotation.quant import check_bits, quantize_activation, quantize_kv, quantize_weight, ste
from orthokit.rotation.rsq import attention_concentration, eager_attention, rsq_token_weights

__all__ = ["KVQuantizer", "QuantReport", "quantize_model"]

METHODS = ("rtn", "gptq", "rsq")


@dataclass
class QuantReport:
    """What :func:`quantize_model` did.

    Attributes:
        method: ``"rtn"``, ``"gptq"`` or ``"rsq"``.
        config: every quantization setting used (bits, granularity, symmetry, clipping, GPTQ options).
        weight_rel_error: linear name → ``‖Ŵ − W‖_F / ‖W‖_F`` (only quantized linears).
        skipped: linear name → why it kept its weights (matched ``skip``).
        act_quantized: names of linears with a per-token input quantizer.
        kv_quantized: names of attention modules with a KV quantizer.
        seconds: wall time of the call.
    """

    method: str
    config: dict[str, Any]
    weight_rel_error: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    act_quantized: list[str] = field(default_factory=list)
    kv_quantized: list[str] = field(default_factory=list)
    seconds: float = 0.0
    _handles: list[Any] = field(default_factory=list, repr=False)
    _kv_modules: list[nn.Module] = field(default_factory=list, repr=False)

    def remove(self) -> None:
        """Remove the activation hooks and KV quantizers (weights stay quantized). Idempotent."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for mod in self._kv_modules:
            if "_orthokit_kv_quant" in mod.__dict__:
                del mod._orthokit_kv_quant
        self._kv_modules.clear()
        self.act_quantized = []
        self.kv_quantized = []

    @property
    def mean_weight_rel_error(self) -> float | None:
        """Mean of :attr:`weight_rel_error` (``None`` when no weight was quantized)."""
        v = list(self.weight_rel_error.values())
        return sum(v) / len(v) if v else None

    def summary(self) -> str:
        """A few human-readable lines."""
        c = self.config
        err = self.mean_weight_rel_error
        lines = [
            f"quantize_model[{self.method}] W{c['w_bits']}A{c['a_bits']}KV{c['kv_bits']} "
            f"group_size={c['group_size']} sym={c['sym']} w_clip={c['w_clip']} ({self.seconds:.2f} s)",
            f"  weights: {len(self.weight_rel_error)} linears"
            + (f", mean rel. error {err:.4f}" if err is not None else ""),
            f"  activations: {len(self.act_quantized)} linears; KV: {len(self.kv_quantized)} attention modules",
        ]
        if self.skipped:
            lines.append("  skipped: " + ", ".join(sorted(self.skipped)))
        return "\n".join(lines)


class KVQuantizer:
    """The callable set as ``module._orthokit_kv_quant``: ``(k, v) -> quantize_kv(k, v, bits, ...)``.

    Example:
        >>> import torch
        >>> kq, vq = KVQuantizer(4)(torch.randn(1, 2, 3, 8), torch.randn(1, 2, 3, 8))
        >>> kq.shape
        torch.Size([1, 2, 3, 8])
    """

    def __init__(
        self, bits: int, *, group_size: int | None = None, sym: bool = False, clip_ratio: float = 1.0
    ) -> None:
        self.bits = check_bits(bits, "kv_bits")
        self.group_size, self.sym, self.clip_ratio = group_size, sym, clip_ratio

    def __call__(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        kq, vq = quantize_kv(
            k, v, self.bits, group_size=self.group_size, sym=self.sym, clip_ratio=self.clip_ratio
        )
        return ste(k, kq), ste(v, vq)

    def __repr__(self) -> str:
        return f"KVQuantizer(bits={self.bits}, group_size={self.group_size}, sym={self.sym}, clip_ratio={self.clip_ratio})"


class _Stop(Exception):
    """Raised by a hook to end a calibration forward pass early."""


def _raise_stop(*_: object) -> None:
    raise _Stop()


def _matches(name: str, patterns: Sequence[str]) -> str | None:
    dotted = f".{name}."
    for p in patterns:
        if f".{p}." in dotted:
            return p
    return None


def _block_prefix(name: str) -> str | None:
    """``model.layers.3.self_attn.q_proj`` → ``model.layers.3`` (up to the first numeric component)."""
    parts = name.split(".")
    for i, p in enumerate(parts):
        if p.isdigit():
            return ".".join(parts[: i + 1])
    return None


def _calib_batches(calib: Any, batch_size: int, device: torch.device) -> list[dict[str, Any]]:
    if isinstance(calib, Tensor):
        if calib.is_floating_point() or calib.dim() != 2:
            raise ValueError(
                f"calib must be a LongTensor of token ids [n, seq], got {calib.dtype} {tuple(calib.shape)}"
            )
        return [
            {"input_ids": calib[i : i + batch_size].to(device)} for i in range(0, calib.shape[0], batch_size)
        ]
    if isinstance(calib, Mapping):
        calib = [calib]
    if not isinstance(calib, Sequence) or isinstance(calib, str) or len(calib) == 0:
        raise TypeError(
            f"calib must be a LongTensor [n, seq], a dict of model inputs or a non-empty list of them, got {type(calib).__name__}"
        )
    out = []
    for b in calib:
        if isinstance(b, Tensor):
            out.extend(_calib_batches(b if b.dim() == 2 else b[None], batch_size, device))
        elif isinstance(b, Mapping):
            out.append({k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in b.items()})
        else:
            raise TypeError(f"calib entries must be tensors or dicts of model inputs, got {type(b).__name__}")
    return out


def _run(model: nn.Module, batch: dict[str, Any]) -> None:
    try:
        model(**batch)
    except _Stop:
        pass


def _token_mask(batch: dict[str, Any]) -> Tensor | None:
    m = batch.get("attention_mask")
    return m if isinstance(m, Tensor) and m.dim() == 2 else None


def _row_weights(x: Tensor, w: Tensor | None) -> Tensor | None:
    if w is None:
        return None
    if w.shape == x.shape[:-1]:
        return w.to(x.device)
    if w.numel() == x[..., 0].numel():
        return w.reshape(x.shape[:-1]).to(x.device)
    return None  # e.g. BERT's pooler sees one token per sequence: uniform weights


def _discover_groups(
    model: nn.Module, targets: dict[str, nn.Linear], batch: dict[str, Any]
) -> tuple[list[list[str]], dict[str, int]]:
    """Linears in first-call order, grouped by the identity of their input tensor; call counts per forward."""
    keep: list[Tensor] = []
    groups: dict[int, list[str]] = {}
    counts: dict[str, int] = {}
    handles = []

    def make(name: str) -> Callable[..., None]:
        def pre(_m: nn.Module, args: tuple[Any, ...]) -> None:
            counts[name] = counts.get(name, 0) + 1
            if counts[name] == 1:
                x = args[0]
                keep.append(x)
                groups.setdefault(id(x), []).append(name)

        return pre

    for name, lin in targets.items():
        handles.append(lin.register_forward_pre_hook(make(name)))
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        for h in handles:
            h.remove()
    return list(groups.values()), counts


def _collect_hessians(
    run: Callable[[int], None],
    group: dict[str, nn.Linear],
    batch_weights: list[Tensor | None],
    *,
    early: bool,
) -> dict[str, HessianAccumulator]:
    """Hessians of the inputs of ``group``'s linears over all batches (token weights per batch); with ``early``,
    each pass stops as soon as every linear of the group has seen its input."""
    accs = {n: HessianAccumulator(lin.in_features, device=lin.weight.device) for n, lin in group.items()}
    seen: set[str] = set()
    current: list[Tensor | None] = [None]

    def make(name: str) -> Callable[..., None]:
        def pre(_m: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            accs[name].add(x, _row_weights(x, current[0]))
            seen.add(name)
            if early and len(seen) == len(group):
                raise _Stop()

        return pre

    handles = [lin.register_forward_pre_hook(make(n)) for n, lin in group.items()]
    try:
        for j, w in enumerate(batch_weights):
            seen.clear()
            current[0] = w
            run(j)
    finally:
        for h in handles:
            h.remove()
    return accs


def _output_hidden(out: Any) -> Any:
    return out[0] if isinstance(out, tuple) and out else out


def _has_forward_hooks(blocks: list[nn.Module]) -> bool:
    """Whether a block (or every module, through ``torch.nn.modules.module.register_module_forward_hook`` /
    ``..._pre_hook``) has a forward hook or pre-hook: block-input caching replays a block's stored output through
    ``Module.__call__``, which runs these hooks a second time on an output they already changed (out of place or
    in place), so such models take the uncached path (reviewer rC #2)."""
    from torch.nn.modules import module as nn_module

    if getattr(nn_module, "_global_forward_hooks", None) or getattr(
        nn_module, "_global_forward_pre_hooks", None
    ):
        return True
    return any(b._forward_hooks or b._forward_pre_hooks for b in blocks)


def _block_chain(
    model: nn.Module, groups: list[list[str]], batch: dict[str, Any]
) -> tuple[list[nn.Module], dict[str, int]] | None:
    """The decoder/encoder blocks as a verified chain, or ``None`` when block-input caching would not be exact.

    The blocks are the children of the container holding the groups' blocks (``model.layers``,
    ``encoder.layer``). Caching is used only when no block has forward hooks / pre-hooks (nor are there global
    module hooks; :func:`_has_forward_hooks`), and, in one forward pass, every block is called once, in order,
    each block's hidden-state input IS the previous block's output, and the groups visit the blocks in order.
    """
    prefixes = [_block_prefix(g[0]) for g in groups]
    chained = [p for p in prefixes if p is not None]
    if not chained:
        return None
    parent = chained[0].rsplit(".", 1)[0]
    if any(p.rsplit(".", 1)[0] != parent for p in chained):
        return None
    try:
        container = model.get_submodule(parent)
    except AttributeError:
        return None
    blocks = list(container.children())
    index = {f"{parent}.{name}": i for i, (name, _) in enumerate(container.named_children())}
    if any(p not in index for p in chained) or any("forward" in b.__dict__ for b in blocks):
        return None  # (an instance-level forward, e.g. an offloading wrapper's, is not ours to replace)
    if _has_forward_hooks(blocks):
        return None  # a replayed block would run its hooks again on an output they already changed
    order = [index[p] if p is not None else None for p in prefixes]
    first = next(i for i, o in enumerate(order) if o is not None)
    last = max(i for i, o in enumerate(order) if o is not None)
    inner = order[first : last + 1]
    if any(o is None for o in inner) or any(a > b for a, b in zip(inner, inner[1:])):
        return None
    calls: list[tuple[int, Any, Any]] = []
    handles = []
    for i, blk in enumerate(blocks):

        def hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, i: int = i) -> None:
            x = args[0] if args else kwargs.get("hidden_states")
            calls.append((i, x, _output_hidden(out)))

        handles.append(blk.register_forward_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        for h in handles:
            h.remove()
    if [c[0] for c in calls] != list(range(len(blocks))):
        return None
    if any(calls[i + 1][1] is not calls[i][2] for i in range(len(calls) - 1)):
        return None
    return blocks, index


class _BlockRunner:
    """Runs calibration batch ``j``; blocks up to ``cached`` return their stored output instead of recomputing it
    (the reference's layer-by-layer caching of block inputs, done through the model's own forward so masks,
    position embeddings and attention implementations stay the model's)."""

    def __init__(
        self, model: nn.Module, batches: list[dict[str, Any]], blocks: list[nn.Module] | None
    ) -> None:
        self.model, self.batches, self.blocks = model, batches, blocks or []
        self.cached = -1
        self.outputs: list[Any] = []
        self.skip = True

    def __call__(self, j: int) -> None:
        if not self.skip or self.cached < 0:
            _run(self.model, self.batches[j])
            return
        out = self.outputs[j]

        def fwd(*_a: Any, **_k: Any) -> Any:
            if isinstance(out, tuple):
                return (out[0].clone(), *out[1:])
            return out.clone()

        for blk in self.blocks[: self.cached + 1]:
            blk.forward = fwd
        try:
            _run(self.model, self.batches[j])
        finally:
            for blk in self.blocks[: self.cached + 1]:
                del blk.forward

    def advance(self, upto: int) -> None:
        """Cache the outputs of block ``upto`` (all blocks up to it are final) for every batch."""
        if upto <= self.cached:
            return
        blk = self.blocks[upto]
        new: list[Any] = []

        def hook(_m: nn.Module, _a: Any, out: Any) -> None:
            new.append(out)
            raise _Stop()

        h = blk.register_forward_hook(hook)
        try:
            for j in range(len(self.batches)):
                self(j)
        finally:
            h.remove()
        self.outputs, self.cached = new, upto


def _sequential_gptq(
    model: nn.Module,
    targets: dict[str, nn.Linear],
    batches: list[dict[str, Any]],
    *,
    rsq: bool,
    rsq_range: tuple[float, float],
    gptq_kw: dict[str, Any],
    cache_blocks: bool = True,
) -> list[str]:
    """GPTQ/RSQ every target called by a forward pass, group by group; returns the targets never called."""
    from orthokit.rotation.attention import attention_modules

    groups, counts = _discover_groups(model, targets, batches[0])
    chain = _block_chain(model, groups, batches[0]) if cache_blocks else None
    runner = _BlockRunner(model, batches, chain[0] if chain else None)
    block_index = chain[1] if chain else {}
    attn_by_block = {_block_prefix(n): m for n, m in attention_modules(model).items()}
    weights_block: str | None = None
    batch_weights: list[Tensor | None] = [_token_mask(b) for b in batches]
    for group in groups:
        block = _block_prefix(group[0])
        runner.skip = block in block_index
        if runner.skip and block_index[block] > 0:
            runner.advance(block_index[block] - 1)
        if rsq and block != weights_block:
            weights_block = block
            attn = attn_by_block.get(block)
            batch_weights = [_token_mask(b) for b in batches]
            if attn is not None:
                for j, b in enumerate(batches):
                    with eager_attention(model, attn) as probs:
                        stop = attn.register_forward_hook(_raise_stop)  # after the probe's hook
                        try:
                            runner(j)
                        finally:
                            stop.remove()
                    batch_weights[j] = rsq_token_weights(
                        attention_concentration(probs[0], _token_mask(b)),
                        _token_mask(b),
                        r_min=rsq_range[0],
                        r_max=rsq_range[1],
                    )
        early = all(counts[n] == 1 for n in group)
        accs = _collect_hessians(runner, {n: targets[n] for n in group}, batch_weights, early=early)
        for n in group:
            lin = targets[n]
            lin.weight.data = gptq_quantize(lin.weight.data, accs[n].hessian, **gptq_kw)
    called = {n for g in groups for n in g}
    return [n for n in targets if n not in called]


class _ActQuantHook:
    """Forward pre-hook: per-token fake quantization of a linear's input (a class, so a leftover one is found)."""

    def __init__(self, bits: int, sym: bool, clip_ratio: float) -> None:
        self.bits, self.sym, self.clip_ratio = bits, sym, clip_ratio

    def __call__(self, _m: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]
        q = quantize_activation(x, self.bits, sym=self.sym, clip_ratio=self.clip_ratio)
        return (ste(x, q), *args[1:])


def _leftover_quantizer(model: nn.Module) -> str | None:
    """Name of the first module carrying an activation hook or KV quantizer of an earlier call, else None."""
    for name, mod in model.named_modules():
        if "_orthokit_kv_quant" in mod.__dict__:
            return f"{name or type(model).__name__} (KV quantizer)"
        if any(isinstance(h, _ActQuantHook) for h in mod._forward_pre_hooks.values()):
            return f"{name or type(model).__name__} (activation quantizer)"
    return None


def quantize_model(
    model: nn.Module,
    w_bits: int = 16,
    a_bits: int = 16,
    kv_bits: int = 16,
    *,
    group_size: int | None = None,
    method: str = "rtn",
    sym: bool = True,
    calib: Any = None,
    skip: Sequence[str] = ("lm_head",),
    inplace: bool = False,
    w_clip: bool | float = False,
    a_sym: bool = True,
    a_clip_ratio: float = 1.0,
    kv_sym: bool = False,
    kv_group_size: int | None = None,
    kv_clip_ratio: float = 1.0,
    percdamp: float = 0.01,
    act_order: bool = False,
    block_size: int = 128,
    static_groups: bool = False,
    calib_batch_size: int = 8,
    rsq_r_min: float = 0.01,
    rsq_r_max: float = 1.0,
) -> tuple[nn.Module, QuantReport]:
    """Fake-quantize ``model`` (see the module docstring). Returns ``(quantized model, QuantReport)``.

    Args:
        model: a transformers Llama-family or BERT-family model (rotated or not), or any module with
            ``nn.Linear`` layers (activation/weight quantization; KV needs transformers attention modules).
        w_bits, a_bits, kv_bits: 2..8, or 16 = leave unquantized.
        group_size: weight groups of input columns (``None``: per output channel); must divide in_features.
        method: ``"rtn"``, ``"gptq"`` or ``"rsq"`` (the latter two need ``calib``).
        sym: symmetric weight grid (``a_sym``/``kv_sym`` for activations/KV; KV asymmetric by default).
        calib: token ids ``LongTensor [n, seq]`` (split into batches of ``calib_batch_size``), or a dict / list of
            dicts of model inputs (``attention_mask`` excludes padding from the Hessian).
        skip: linears left in full precision: a name matches when a pattern is a dotted run of its components.
        inplace: modify ``model`` itself instead of a deep copy.
        w_clip: weight clipping (``True`` = MSE grid search, a float = fixed ratio, ``False`` = none).
        a_clip_ratio, kv_clip_ratio: per-token range shrink in (0, 1].
        kv_group_size: KV groups within head_dim (``None``: one grid per head and token).
        percdamp, act_order, block_size, static_groups: GPTQ options (:func:`~orthokit.rotation.gptq.gptq_quantize`).
        rsq_r_min, rsq_r_max: RSQ importance range (:func:`~orthokit.rotation.rsq.rsq_token_weights`).
    """
    t0 = time.perf_counter()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    w_bits, a_bits, kv_bits = (
        check_bits(w_bits, "w_bits"),
        check_bits(a_bits, "a_bits"),
        check_bits(kv_bits, "kv_bits"),
    )
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if isinstance(skip, str) or not all(isinstance(s, str) for s in skip):
        raise TypeError("skip must be a sequence of module-name patterns (str), e.g. ('lm_head',)")
    for nm, v in (("group_size", group_size), ("kv_group_size", kv_group_size)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
            raise ValueError(f"{nm} must be a positive int or None, got {v!r}")
    for nm, v in (("a_clip_ratio", a_clip_ratio), ("kv_clip_ratio", kv_clip_ratio)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
            raise ValueError(f"{nm} must be a float in (0, 1], got {v!r}")
    if not isinstance(w_clip, bool) and not (isinstance(w_clip, (int, float)) and 0 < w_clip <= 1):
        raise ValueError(f"w_clip must be a bool or a float in (0, 1], got {w_clip!r}")
    if isinstance(calib_batch_size, bool) or not isinstance(calib_batch_size, int) or calib_batch_size <= 0:
        raise ValueError(f"calib_batch_size must be a positive int, got {calib_batch_size!r}")
    if not (0.0 <= rsq_r_min <= rsq_r_max and rsq_r_max > 0):
        raise ValueError(
            f"rsq_r_min/rsq_r_max must satisfy 0 <= rsq_r_min <= rsq_r_max, got {rsq_r_min}, {rsq_r_max}"
        )
    leftover = _leftover_quantizer(model)
    if leftover is not None:
        raise ValueError(
            f"model already carries a quantizer from an earlier quantize_model call on {leftover}: call that "
            "call's QuantReport.remove() first, or quantize the unquantized model"
        )
    needs_calib = method in ("gptq", "rsq") and w_bits < 16
    if needs_calib and calib is None:
        raise ValueError(
            f"calib is required for method={method!r} (token ids [n, seq] or dicts of model inputs)"
        )

    targets: dict[str, nn.Linear] = {}
    skipped: dict[str, str] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            hit = _matches(name, skip)
            if hit is not None:
                skipped[name] = f"skip pattern {hit!r}"
            else:
                targets[name] = mod
    if (w_bits < 16 or a_bits < 16) and not targets:
        raise ValueError(f"model has no nn.Linear to quantize outside skip={tuple(skip)}")
    if w_bits < 16:
        for name, lin in targets.items():
            if group_size is not None and lin.in_features % group_size:
                raise ValueError(
                    f"group_size={group_size} does not divide in_features={lin.in_features} of {name}"
                )
            if not bool(torch.isfinite(lin.weight).all()):
                raise ValueError(f"weight of {name} contains non-finite values (nan/inf)")
    attn_mods: dict[str, nn.Module] = {}
    if kv_bits < 16:
        from orthokit.rotation.attention import SUPPORTED_BASES, attention_modules

        attn_mods = attention_modules(model)
        impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
        if not attn_mods:
            raise ValueError(
                f"kv_bits={kv_bits}: model {type(model).__name__} has no attention module to quantize"
            )
        if (impl or "eager") not in (*SUPPORTED_BASES, "orthokit"):
            raise ValueError(
                f"kv_bits={kv_bits}: attention implementation {impl!r} is not supported (use sdpa or eager)"
            )
        for name, mod in attn_mods.items():
            hd = getattr(mod, "head_dim", getattr(mod, "attention_head_size", None))
            if kv_group_size is not None and hd is not None and hd % kv_group_size:
                raise ValueError(f"kv_group_size={kv_group_size} does not divide head_dim={hd} of {name}")
    batches: list[dict[str, Any]] = []
    if needs_calib:
        device = next(iter(targets.values())).weight.device
        batches = _calib_batches(calib, calib_batch_size, device)

    config = dict(
        w_bits=w_bits, a_bits=a_bits, kv_bits=kv_bits, group_size=group_size, sym=sym, w_clip=w_clip,
        a_sym=a_sym, a_clip_ratio=a_clip_ratio, kv_sym=kv_sym, kv_group_size=kv_group_size,
        kv_clip_ratio=kv_clip_ratio, skip=tuple(skip),
    )  # fmt: skip
    if method != "rtn":
        config.update(percdamp=percdamp, act_order=act_order, block_size=block_size, static_groups=static_groups,
                      calib_batches=len(batches), calib_batch_size=calib_batch_size)  # fmt: skip
    if method == "rsq":
        config.update(rsq_r_min=rsq_r_min, rsq_r_max=rsq_r_max)
    report = QuantReport(method=method, config=config, skipped=skipped)

    if not inplace:
        memo: dict[int, Any] = {}
        work = copy.deepcopy(model, memo)
        targets = {n: memo[id(m)] for n, m in targets.items()}
        attn_mods = {n: memo[id(m)] for n, m in attn_mods.items()}
    else:
        work = model
    originals = {n: lin.weight.data.clone() for n, lin in targets.items()} if inplace and w_bits < 16 else {}
    cfg_obj = getattr(work, "config", None)
    saved_impl = getattr(cfg_obj, "_attn_implementation", None)
    was_training = work.training
    try:
        if w_bits < 16:
            if method == "rtn":
                for lin in targets.values():
                    lin.weight.data = quantize_weight(
                        lin.weight.data, w_bits, group_size=group_size, sym=sym, clip=w_clip
                    )
            else:
                work.eval()
                gptq_kw = dict(bits=w_bits, group_size=group_size, sym=sym, block_size=block_size, percdamp=percdamp,
                               act_order=act_order, static_groups=static_groups, clip=w_clip)  # fmt: skip
                with torch.no_grad():
                    uncalled = _sequential_gptq(
                        work,
                        targets,
                        batches,
                        rsq=method == "rsq",
                        rsq_range=(rsq_r_min, rsq_r_max),
                        gptq_kw=gptq_kw,
                    )
                for n in uncalled:  # never reached by the calibration forward: no Hessian, round to nearest
                    lin = targets[n]
                    lin.weight.data = quantize_weight(
                        lin.weight.data, w_bits, group_size=group_size, sym=sym, clip=w_clip
                    )
                report.config["rtn_fallback"] = uncalled
            for n, lin in targets.items():
                ref = originals[n] if n in originals else _original_weight(model, n)
                denom = float(ref.double().norm())
                report.weight_rel_error[n] = float((lin.weight.data.double() - ref.double()).norm()) / max(
                    denom, 1e-300
                )
        if a_bits < 16:
            hook = _ActQuantHook(a_bits, a_sym, float(a_clip_ratio))
            for n, lin in targets.items():
                report._handles.append(lin.register_forward_pre_hook(hook))
                report.act_quantized.append(n)
        if kv_bits < 16:
            from orthokit.rotation.attention import install_attention

            install_attention(work)
            quantizer = KVQuantizer(
                kv_bits, group_size=kv_group_size, sym=kv_sym, clip_ratio=float(kv_clip_ratio)
            )
            for n, mod in attn_mods.items():
                mod._orthokit_kv_quant = quantizer  # type: ignore[assignment]
                report._kv_modules.append(mod)
                report.kv_quantized.append(n)
    except BaseException:
        report.remove()
        for n, w in originals.items():
            targets[n].weight.data = w
        if inplace and kv_bits < 16 and saved_impl != "orthokit":
            from orthokit.rotation.attention import uninstall_attention

            if getattr(cfg_obj, "_attn_implementation", None) == "orthokit":
                uninstall_attention(work)
        raise
    finally:
        work.train(was_training)
    report.seconds = time.perf_counter() - t0
    return work, report


def _original_weight(model: nn.Module, name: str) -> Tensor:
    return model.get_submodule(name).weight.data
