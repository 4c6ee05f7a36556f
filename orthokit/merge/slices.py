"""mergekit ``slices:`` — layer-range assembly (frankenmerges) and per-slice merges.

A config may list output *slices* instead of ``models``::

    merge_method: passthrough
    slices:
      - sources:
          - model: path/to/a
            layer_range: [0, 4]          # layers 0..3 of a (half-open, as in mergekit)
      - sources:
          - model: path/to/b
            layer_range: [2, 6]          # become output layers 4..7
        parameters: {scale: 1.0}         # slice-level parameters (optional)

Semantics follow mergekit 0.1.5 (``mergekit/plan.py``, ``MergePlanner.plan_module``):

* Output layers are numbered consecutively over the slices; output layer ``k`` of a slice is input layer
  ``layer_range[0] + k`` of every source of that slice (all sources of one slice must span the same number of
  layers). The output ``config.json`` gets the new layer count (``num_hidden_layers``).
* Tensors outside the numbered layers come from the sources of the *first* slice (embeddings and everything
  named like an embedding) or of the *last* slice (final norm, ``lm_head``, …), at gradient position ``t = 0``.
* Gradients inside a slice use ``t = k / (n − 1)`` over the slice's own ``n`` layers (``t = 1`` for a one-layer
  slice), exactly as mergekit.
* Parameters: a source's own ``parameters`` → the slice's ``parameters`` → the top-level ``parameters``.
* Several sources in one slice are merged with ``merge_method``. The slice's ``base_model`` (else the top-level
  one), matched by path among the sources, becomes the base and the other sources the models — for methods whose
  registered ``base_policy`` is ``"required"`` (it must be there) or ``"optional"`` (used when there). For
  ``"ignored"`` methods every source is an input (mergekit's ``linear`` averages all listed sources, the base
  included).
* ``passthrough`` (:mod:`orthokit.merge.passthrough`) copies the single source of each slice (times an optional
  per-source ``scale``).

Example:
    >>> import tempfile, pathlib, torch
    >>> from orthokit.io.safetensors_io import save_sharded
    >>> from orthokit.merge.config import parse_config
    >>> from orthokit.merge.plan import build_plan
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> sd = {f"model.layers.{i}.w": torch.full((2,), float(i)) for i in range(3)}
    >>> _ = save_sharded({**sd, "model.embed_tokens.weight": torch.zeros(4, 2)}, d / "a")
    >>> cfg = parse_config({"merge_method": "passthrough", "slices": [
    ...     {"sources": [{"model": str(d / "a"), "layer_range": [0, 2]}]},
    ...     {"sources": [{"model": str(d / "a"), "layer_range": [1, 3]}]}]})
    >>> plan = build_plan(cfg)
    >>> [(t.name, t.sources[0][1]) for t in plan.tasks if "layers" in t.name]
    ... # doctest: +NORMALIZE_WHITESPACE
    [('model.layers.0.w', 'model.layers.0.w'), ('model.layers.1.w', 'model.layers.1.w'),
     ('model.layers.2.w', 'model.layers.1.w'), ('model.layers.3.w', 'model.layers.2.w')]
    >>> plan.out_num_layers
    4
    >>> plan.close()

Reference: Goddard et al., "Arcee's MergeKit", EMNLP 2024 (industry track), ``mergekit/config.py`` and
``mergekit/plan.py`` (read for behaviour; not copied).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orthokit.io.config import ConfigError

__all__ = [
    "SliceSource",
    "SliceDef",
    "SliceTensor",
    "parse_slices",
    "parse_sliced_config",
    "layout_slices",
    "is_pre_weight",
    "registered",
]

_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|h|layer|blocks|block)\.(\d+)(?:\.|$)")
_PRE_RE = re.compile(
    r"embed|(?:^|\.)wte(?:\.|$)|(?:^|\.)wpe(?:\.|$)|word_embeddings|position_embeddings|token_type"
)


def registered(method: str) -> bool:
    """Whether ``method`` names a registered merge method (aliases included)."""
    from orthokit.merge.registry import MERGE_METHODS

    try:
        MERGE_METHODS.entry(method)
    except (KeyError, ValueError):
        return False
    return True


def base_policy_of(caps: Mapping[str, Any]) -> str:
    """A method's ``base_policy`` capability: ``"required"``, ``"optional"`` (used if given) or ``"ignored"``
    (the base is not special: listed among the models it is one more input, as in mergekit's ``linear``).

    Example:
        >>> base_policy_of({"needs_base": True}), base_policy_of({"base_policy": "ignored"}), base_policy_of({})
        ('required', 'ignored', 'optional')
    """
    policy = caps.get("base_policy")
    if policy is None:
        return "required" if caps.get("needs_base") else "optional"
    return str(policy)


def is_pre_weight(name: str) -> bool:
    """Whether a tensor outside the numbered layers comes *before* them (embeddings), as in mergekit's
    ``pre_weights``; everything else (final norm, ``lm_head``, poolers) is a ``post_weight``.

    Example:
        >>> is_pre_weight("model.embed_tokens.weight"), is_pre_weight("transformer.wte.weight"), is_pre_weight("lm_head.weight")
        (True, True, False)
    """
    return _PRE_RE.search(name) is not None


@dataclass
class SliceSource:
    """One input of a slice: a model (index into ``MergeConfig.models``), its half-open layer range, parameters."""

    model: int
    layer_range: tuple[int, int]
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def length(self) -> int:
        """Number of layers taken."""
        return self.layer_range[1] - self.layer_range[0]


@dataclass
class SliceDef:
    """One output slice: its sources, the index of the source used as the base (or ``None``), parameters."""

    sources: list[SliceSource]
    base: int | None
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def length(self) -> int:
        """Number of output layers."""
        return self.sources[0].length


@dataclass
class SliceTensor:
    """One output tensor of a sliced merge: where its inputs come from and its gradient position."""

    name: str
    slice_index: int
    base_source: tuple[int, str] | None  # (index into MergeConfig.models, input tensor name)
    sources: list[tuple[int, str]]
    source_positions: list[int]  # position of each source inside its slice (for its parameters)
    t: float


def _layer_range(value: Any, where: str) -> tuple[int, int]:
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise ConfigError(f"{where}: layer_range must be a list of two integers [start, end), got {value!r}")
    a, b = int(value[0]), int(value[1])
    if a < 0 or b <= a:
        raise ConfigError(f"{where}: layer_range {[a, b]} must satisfy 0 <= start < end")
    return a, b


def parse_slices(
    raw: Any,
    *,
    method: str,
    base_policy: str,
    base: Any,
    parse_ref: Any,
    check_params: Any,
) -> tuple[list[SliceDef], list[Any]]:
    """Validate mergekit ``slices:`` and return ``(slices, models)``; ``models`` are the distinct
    :class:`~orthokit.merge.config.ModelRef` s the slices read (indices in :attr:`SliceSource.model`).

    ``parse_ref(value, where)`` turns a model string into a ModelRef; ``check_params(params, where, per_model)``
    validates a parameter mapping; ``base`` is the top-level base ModelRef or ``None``.

    Raises:
        ConfigError: an unknown key, a bad ``layer_range``, sources of unequal length, a passthrough slice with
        several sources, or a method needing a base whose slice does not list it among its sources.
    """
    if not isinstance(raw, list) or not raw:
        raise ConfigError("'slices' must be a non-empty list of {sources: [{model, layer_range}, ...]}")
    models: list[Any] = []

    def index_of(ref: Any) -> int:
        for i, m in enumerate(models):
            if m.path == ref.path and m.adapter == ref.adapter:
                return i
        models.append(ref)
        return len(models) - 1

    slices: list[SliceDef] = []
    for si, entry in enumerate(raw):
        where = f"slices[{si}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where}: must be a mapping with 'sources', got {entry!r}")
        for k in entry:
            if k == "residual_weight":
                raise ConfigError(f"{where}: residual_weight is not supported (mergekit ignores it as well)")
            if k not in ("sources", "base_model", "parameters"):
                raise ConfigError(f"{where}: unknown key {k!r} (valid: sources, base_model, parameters)")
        srcs_raw = entry.get("sources")
        if not isinstance(srcs_raw, list) or not srcs_raw:
            raise ConfigError(f"{where}: 'sources' must be a non-empty list of {{model, layer_range}}")
        sources: list[SliceSource] = []
        refs = []
        for j, s in enumerate(srcs_raw):
            sw = f"{where}.sources[{j}]"
            if not isinstance(s, Mapping):
                raise ConfigError(f"{sw}: must be a mapping with 'model' and 'layer_range', got {s!r}")
            for k in s:
                if k not in ("model", "layer_range", "parameters"):
                    raise ConfigError(f"{sw}: unknown key {k!r} (valid: model, layer_range, parameters)")
            if "model" not in s or "layer_range" not in s:
                raise ConfigError(f"{sw}: needs both 'model' and 'layer_range'")
            ref = parse_ref(s["model"], f"{sw}.model")
            if (
                ref.path is not None
                and ref.adapter is None
                and (Path(ref.path) / "adapter_config.json").is_file()
            ):
                raise ConfigError(f"{sw}: {s['model']!r} is a LoRA adapter; write BASE+ADAPTER in slices")
            refs.append(ref)
            sources.append(
                SliceSource(
                    index_of(ref),
                    _layer_range(s["layer_range"], f"{sw}.layer_range"),
                    check_params(s.get("parameters"), f"{sw}.parameters", True),
                )
            )
        lengths = {s.length for s in sources}
        if len(lengths) != 1:
            raise ConfigError(
                f"{where}: all sources of a slice must span the same number of layers, got "
                f"{[s.length for s in sources]}"
            )
        sbase = parse_ref(entry["base_model"], f"{where}.base_model") if entry.get("base_model") else base
        base_pos = None
        if base_policy != "ignored":
            for j, ref in enumerate(refs):
                if sbase is not None and ref.path == sbase.path and ref.adapter == sbase.adapter:
                    base_pos = j
                    break
        if base_policy == "required":
            if base_pos is None:
                what = f"its base model {sbase.spec!r}" if sbase is not None else "a base_model"
                raise ConfigError(
                    f"{where}: merge method {method!r} needs a base, so {what} must be listed among the "
                    "slice's sources (with a layer_range)"
                )
            if len(sources) < 2:
                raise ConfigError(
                    f"{where}: merge method {method!r} needs the base and at least one more source"
                )
        if method == "passthrough" and len(sources) != 1:
            raise ConfigError(f"{where}: passthrough takes exactly one source per slice, got {len(sources)}")
        slices.append(
            SliceDef(sources, base_pos, check_params(entry.get("parameters"), f"{where}.parameters", False))
        )
    return slices, models


def parse_sliced_config(
    data: Mapping[str, Any], method: str, base: Any, src: Path | None, base_dir: Path | None
) -> Any:
    """The :class:`~orthokit.merge.config.MergeConfig` of a ``slices:`` config (called by ``parse_config``).

    Raises:
        ConfigError: a factor method (``inputs`` other than ``"full"``), or any error of :func:`parse_slices`.
    """
    from orthokit.merge.config import MergeConfig, _check_param_keys, _parse_ref, parse_dtype
    from orthokit.merge.registry import MERGE_METHODS, method_schema

    schema = method_schema(method)
    caps = MERGE_METHODS.capabilities(method)
    if caps.get("inputs", "full") != "full":
        raise ConfigError(f"merge method {method!r} merges adapter factors and cannot be used with 'slices'")

    def check(params: Any, where: str, per_model: bool) -> dict[str, Any]:
        return _check_param_keys(params, where, schema, per_model)

    slices, models = parse_slices(
        data["slices"],
        method=method,
        base_policy=base_policy_of(caps),
        base=base,
        parse_ref=lambda v, w: _parse_ref(v, w, base_dir),
        check_params=check,
    )
    allow_nonfinite = data.get("allow_nonfinite", False)
    if not isinstance(allow_nonfinite, bool):
        raise ConfigError(f"allow_nonfinite must be true or false, got {allow_nonfinite!r}")
    return MergeConfig(
        merge_method=method,
        base=base,
        models=models,
        parameters=check(data.get("parameters"), "parameters", False),
        dtype=parse_dtype(data.get("dtype"), "dtype"),
        out_dtype=parse_dtype(data.get("out_dtype"), "out_dtype"),
        source=src,
        raw=dict(data),
        allow_nonfinite=allow_nonfinite,
        slices=slices,
    )


def layout_slices(
    slices: Sequence[SliceDef], names_of: Sequence[Sequence[str]], labels: Sequence[str]
) -> tuple[list[SliceTensor], int]:
    """Lay out the output tensors of a sliced merge (mergekit's order: pre weights, layers, post weights).

    ``names_of[i]`` are the tensor names of model ``i``. Returns the output tensors and the output layer count.

    Raises:
        ConfigError: a layer_range beyond a model's layers, a source missing a tensor the others have.
    """
    layers: list[dict[int, list[str]]] = []
    outside: list[list[str]] = []
    for names in names_of:
        by_layer: dict[int, list[str]] = {}
        rest: list[str] = []
        for n in names:
            m = _LAYER_RE.search(n)
            if m is None:
                rest.append(n)
            else:
                by_layer.setdefault(int(m.group(1)), []).append(n)
        layers.append(by_layer)
        outside.append(rest)

    def suffixed(name: str) -> tuple[str, str, str]:
        m = _LAYER_RE.search(name)
        assert m is not None
        return name[: m.start(1)], m.group(1), name[m.end(1) :]

    def group(sl: SliceDef, si: int, in_names: Sequence[str], out_name: str, t: float) -> SliceTensor:
        base = None
        srcs: list[tuple[int, str]] = []
        pos: list[int] = []
        for j, (s, n) in enumerate(zip(sl.sources, in_names)):
            if j == sl.base:
                base = (s.model, n)
            else:
                srcs.append((s.model, n))
                pos.append(j)
        return SliceTensor(out_name, si, base, srcs, pos, t)

    out: list[SliceTensor] = []
    sl = slices[0]
    for n in outside[sl.sources[0].model]:
        if is_pre_weight(n):
            _check_present(sl, n, outside, labels, "slices[0]")
            out.append(group(sl, 0, [n] * len(sl.sources), n, 0.0))
    k_out = 0
    for si, sl in enumerate(slices):
        for s in sl.sources:
            have = len(layers[s.model])
            if s.layer_range[1] > have:
                raise ConfigError(
                    f"slices[{si}]: layer_range {list(s.layer_range)} of {labels[s.model]!r} goes beyond its "
                    f"{have} layers"
                )
        n = sl.length
        for k in range(n):
            t = k / (n - 1) if n > 1 else 1.0
            ref = sl.sources[0]
            ref_names = layers[ref.model].get(ref.layer_range[0] + k, [])
            ref_suffixes = [suffixed(x) for x in ref_names]
            for s in sl.sources[1:]:
                other = {
                    (p, q) for p, _, q in (suffixed(x) for x in layers[s.model].get(s.layer_range[0] + k, []))
                }
                want = {(p, q) for p, _, q in ref_suffixes}
                if other != want:
                    diff = sorted(want ^ other)[0]
                    raise ConfigError(
                        f"slices[{si}]: layer {s.layer_range[0] + k} of {labels[s.model]!r} and layer "
                        f"{ref.layer_range[0] + k} of {labels[ref.model]!r} differ in tensor "
                        f"'{diff[0]}N{diff[1]}'"
                    )
            for prefix, _idx, suffix in ref_suffixes:
                in_names = [f"{prefix}{s.layer_range[0] + k}{suffix}" for s in sl.sources]
                out.append(group(sl, si, in_names, f"{prefix}{k_out}{suffix}", t))
            k_out += 1
    sl = slices[-1]
    for n in outside[sl.sources[0].model]:
        if not is_pre_weight(n):
            _check_present(sl, n, outside, labels, f"slices[{len(slices) - 1}]")
            out.append(group(sl, len(slices) - 1, [n] * len(sl.sources), n, 0.0))
    return out, k_out


def _check_present(
    sl: SliceDef, name: str, outside: Sequence[Sequence[str]], labels: Sequence[str], where: str
) -> None:
    for s in sl.sources:
        if name not in outside[s.model]:
            raise ConfigError(f"{where}: model {labels[s.model]!r} is missing tensor {name!r}")
