"""The merge configuration: mergekit-shaped YAML → a validated :class:`MergeConfig`.

Accepted top-level keys (mergekit's names and meaning where they overlap)::

    merge_method: ties               # a registered method (orthokit.merge.MERGE_METHODS)
    base_model: path/to/base         # required by methods with needs_base
    models:                          # the fine-tuned models (a listed base is skipped, except for methods with
                                     # base_policy "ignored", e.g. linear, where it is one more input)
      - model: path/to/ft1           # HF folder, sharded folder, .safetensors file, or BASE+ADAPTER (PEFT LoRA)
        parameters: {weight: 1.0, density: 0.2}
      - model: path/to/lora_adapter  # an adapter folder alone is applied to base_model
        parameters: {weight: [{filter: mlp, value: 0.5}, {value: 1.0}]}
    parameters: {lambda: 0.4, normalize: true, density: [0.2, 0.8]}
    dtype: float32                   # compute dtype for inputs
    out_dtype: bfloat16              # dtype written (default: dtype, else each base tensor's dtype)
    tokenizer_source: base           # optional; only "base" (tokenizer/config files are copied from the base)
    allow_nonfinite: false           # optional; true writes NaN/inf outputs instead of failing (default false)

Parameter settings follow mergekit: a scalar; a numeric list = a *gradient* linearly interpolated over the layer
position t = layer/(num_layers − 1) (tensors outside the numbered layers — embeddings, final norm, lm_head — use
t = 0, as mergekit does); or a list of ``{filter, value}`` where the first entry whose ``filter`` is missing,
``"*"`` or a **substring** of the tensor name applies. Precedence: a model's own ``parameters`` → top-level
``parameters``; a level whose conditional list matches nothing falls through to the next. Per-model
parameters (``weight``, ``density``, …: the method's schema says which) may be given at either level; global ones
(``lambda``, ``normalize``, …) only at the top level. ``int8_mask`` is accepted and ignored (a mergekit memory
option with no effect on results).

Instead of ``models``, mergekit's ``slices:`` (layer ranges, frankenmerges) may be given: see
:mod:`orthokit.merge.slices`. Any other key — including mergekit's ``modules``, ``tokenizer``, ``chat_template`` —
is an error that names it. Factor methods (registered with ``inputs="lora"``, e.g. ``do_merging``, or
``inputs="orthogonal"``, e.g. ``orthomerge_oft``) need a ``base_model`` and every model to be a PEFT adapter
folder (LoRA, resp. OFT: checked when the plan opens them), so ``--dry-run`` reports a mismatch. Paths are resolved against the current directory, then against the config file's folder; ``@revision``
references and hub ids are rejected (the tool is offline).

Example:
    >>> from orthokit.merge.config import parse_config
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()); _ = [(d / n).mkdir() for n in ("b", "f")]
    >>> cfg = parse_config({"merge_method": "ties", "base_model": str(d / "b"),
    ...                     "models": [{"model": str(d / "f"), "parameters": {"density": 0.3}}]})
    >>> cfg.resolve("model.layers.0.mlp.weight", 0.0)["density"]
    [0.3]

Reference: mergekit's YAML schema (Goddard et al., "Arcee's MergeKit", EMNLP 2024; ``mergekit/config.py``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from orthokit.io.config import ConfigError, load_yaml
from orthokit.merge.registry import MERGE_METHODS, MethodSchema, method_schema, validate_params

__all__ = [
    "ConfigError",
    "ModelRef",
    "MergeConfig",
    "parse_config",
    "load_config",
    "evaluate_setting",
    "layer_position",
    "parse_dtype",
    "TOP_LEVEL_KEYS",
]

TOP_LEVEL_KEYS = (
    "merge_method",
    "base_model",
    "models",
    "parameters",
    "dtype",
    "out_dtype",
    "tokenizer_source",
    "allow_nonfinite",
    "slices",
)
_MERGEKIT_UNSUPPORTED = {
    "modules": "multi-module configs (modules) are not supported",
    "tokenizer": "tokenizer surgery (tokenizer:) is not supported; the base model's tokenizer files are copied",
    "chat_template": "chat_template is not supported; the base model's tokenizer files are copied",
}
_IGNORED_PARAMS = {"int8_mask"}
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
    "fp64": torch.float64,
    "double": torch.float64,
}
_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|h|layer|blocks|block)\.(\d+)(?:\.|$)")


def parse_dtype(value: Any, key: str = "dtype") -> torch.dtype | None:
    """``"bfloat16"`` (or ``torch.bfloat16``) → ``torch.bfloat16``; ``None`` stays ``None``; else ConfigError."""
    if value is None or isinstance(value, torch.dtype):
        return value
    v = str(value).lower().removeprefix("torch.")
    if v not in _DTYPES:
        raise ConfigError(f"{key}: unknown dtype {value!r}; use one of float32, float16, bfloat16, float64")
    return _DTYPES[v]


def layer_position(name: str, num_layers: int) -> float:
    """mergekit's gradient position t of a tensor: idx/(num_layers − 1) inside numbered layers, else 0.

    Example:
        >>> layer_position("model.layers.3.mlp.up_proj.weight", 7), layer_position("lm_head.weight", 7)
        (0.5, 0.0)
    """
    m = _LAYER_RE.search(name)
    if m is None or num_layers <= 1:
        return 0.0
    return min(1.0, int(m.group(1)) / (num_layers - 1))


def count_layers(names: Sequence[str]) -> int:
    """Number of numbered layers (max index + 1) among tensor names (0 if none)."""
    idx = [int(m.group(1)) for n in names if (m := _LAYER_RE.search(n))]
    return max(idx) + 1 if idx else 0


def evaluate_setting(setting: Any, name: str, t: float) -> Any:
    """Evaluate a mergekit parameter setting for tensor ``name`` at layer position ``t``.

    Returns ``None`` when a conditional list has no matching filter (the caller falls through).

    Example:
        >>> evaluate_setting([0.0, 1.0, 0.0], "x", 0.25), evaluate_setting([{"filter": "mlp", "value": 2}], "a.mlp", 0)
        (0.5, 2)
    """
    if isinstance(setting, Mapping):
        setting = [setting]
    if setting is None or isinstance(setting, (bool, int, float, str)):
        return setting
    if isinstance(setting, (list, tuple)):
        if not setting:
            return None
        if all(isinstance(e, (bool, int, float, str)) for e in setting):
            vals = list(setting)
            nums = []
            for v in vals:
                if isinstance(v, bool):
                    break
                try:
                    nums.append(float(v))
                except (TypeError, ValueError):
                    break
            if len(nums) != len(vals):
                return vals[int(t * (len(vals) - 1))]
            x = t * (len(nums) - 1)
            i0 = int(x)
            i1 = min(len(nums) - 1, i0 + 1)
            frac = x - i0
            return (1 - frac) * nums[i0] + frac * nums[i1]
        for cond in setting:
            if not isinstance(cond, Mapping) or "value" not in cond:
                raise ConfigError(
                    f"a conditional parameter list needs {{filter, value}} entries, got {cond!r}"
                )
            extra = set(cond) - {"filter", "value"}
            if extra:
                raise ConfigError(
                    f"unknown key {sorted(extra)[0]!r} in a conditional parameter (use filter, value)"
                )
            f = cond.get("filter")
            if f is None or f == "*" or (name and str(f) in name):
                return evaluate_setting(cond["value"], name, t)
        return None
    raise ConfigError(f"unsupported parameter setting {setting!r}")


@dataclass
class ModelRef:
    """One model reference: ``path`` (a folder or file) and an optional LoRA ``adapter`` folder."""

    spec: str
    path: Path | None
    adapter: Path | None = None
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """Short display name."""
        return self.spec


def _resolve_path(raw: str, where: str, base_dir: Path | None) -> Path:
    if "@" in raw and not Path(raw).exists():
        raise ConfigError(
            f"{where}: revision references ({raw!r}) need the hub; orthokit merge works with local paths"
        )
    p = Path(os.path.expanduser(raw))
    cands = [p] if p.is_absolute() else [Path.cwd() / p] + ([base_dir / p] if base_dir is not None else [])
    for c in cands:
        if c.exists():
            return c.absolute()
    looked = " or ".join(str(c) for c in cands)
    raise ConfigError(
        f"{where}: model path {raw!r} does not exist (looked for {looked}); orthokit merge works offline with "
        "local paths and never downloads hub models"
    )


def _parse_ref(value: Any, where: str, base_dir: Path | None) -> ModelRef:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: a model reference must be a non-empty string, got {value!r}")
    raw = value.strip()
    path_s, adapter_s = raw, None
    if "+" in raw and not Path(raw).exists():
        path_s, adapter_s = raw.split("+", 1)
    path = _resolve_path(path_s, where, base_dir)
    adapter = _resolve_path(adapter_s, where, base_dir) if adapter_s else None
    return ModelRef(raw, path, adapter)


@dataclass
class MergeConfig:
    """A validated merge configuration (see the module docstring for the YAML shape).

    Attributes:
        merge_method: canonical method name. base: the base model (or ``None``). models: fine-tuned models with
        their own ``parameters``. parameters: top-level parameters. dtype/out_dtype: compute/output dtypes.
        source: the YAML file (if any). raw: the parsed YAML mapping (written next to the output).
        allow_nonfinite: write outputs holding NaN/inf instead of failing (config ``allow_nonfinite``).
    """

    merge_method: str
    base: ModelRef | None
    models: list[ModelRef]
    parameters: dict[str, Any]
    dtype: torch.dtype | None = None
    out_dtype: torch.dtype | None = None
    source: Path | None = None
    raw: dict[str, Any] = field(default_factory=dict)
    num_layers: int = 0
    allow_nonfinite: bool = False
    slices: list[Any] | None = None

    @property
    def inputs_kind(self) -> str:
        """What the method merges: ``"full"`` weights, ``"lora"`` or ``"orthogonal"`` factors."""
        return str(MERGE_METHODS.capabilities(self.merge_method).get("inputs", "full"))

    def resolve_slice(
        self, slice_index: int, positions: Sequence[int], name: str, t: float
    ) -> dict[str, Any]:
        """Keyword arguments for tensor ``name`` of slice ``slice_index`` whose merged sources sit at
        ``positions`` in that slice: a source's own parameters → the slice's → the top level (as mergekit)."""
        assert self.slices is not None
        sl = self.slices[slice_index]
        levels = [[sl.sources[j].parameters, sl.parameters, self.parameters] for j in positions]
        labels = [self.models[sl.sources[j].model].label for j in positions]
        return resolve_params(self.merge_method, levels, [sl.parameters, self.parameters], labels, name, t)

    def protected_paths(self) -> list[tuple[str, Path]]:
        """``(label, path)`` of every input (base, models, adapters) and the config file: what an output folder
        must never be, contain, or lie inside (see :func:`orthokit._fs.check_output_target`)."""
        out: list[tuple[str, Path]] = []
        refs = ([("base_model", self.base)] if self.base is not None else []) + [
            (f"models[{i}]", m) for i, m in enumerate(self.models)
        ]
        for label, ref in refs:
            if ref.path is not None:
                out.append((f"input {label} {ref.spec!r}", ref.path))
            if ref.adapter is not None:
                out.append((f"LoRA adapter of {label} {ref.spec!r}", ref.adapter))
        if self.source is not None:
            out.append(("config file", self.source))
        return out

    @property
    def schema(self) -> MethodSchema:
        """The method's parameter schema."""
        return method_schema(self.merge_method)

    def resolve(self, name: str, t: float | None = None) -> dict[str, Any]:
        """Keyword arguments for the method on tensor ``name`` (evaluating gradients/filters at ``t``).

        ``t`` defaults to :func:`layer_position` of ``name`` with this config's ``num_layers``.
        """
        if t is None:
            t = layer_position(name, self.num_layers)
        return resolve_params(
            self.merge_method,
            [[m.parameters, self.parameters] for m in self.models],
            [self.parameters],
            [m.label for m in self.models],
            name,
            t,
        )


def resolve_params(
    method: str,
    model_levels: Sequence[Sequence[Mapping[str, Any]]],
    global_levels: Sequence[Mapping[str, Any]],
    labels: Sequence[str],
    name: str,
    t: float,
) -> dict[str, Any]:
    """Resolve a method's parameters for tensor ``name`` at layer position ``t`` (mergekit's precedence).

    ``model_levels[i]`` are model i's parameter mappings from highest to lowest precedence (its own, then a
    slice's, then the top level); ``global_levels`` those searched for global parameters. A conditional list
    that matches nothing falls through to the next level.

    Example:
        >>> resolve_params("task_arithmetic", [[{"weight": 0.5}, {}], [{}, {"weight": [0, 1]}]],
        ...                [{"lambda": 2}], ["a", "b"], "model.layers.1.w", 0.5)["weights"]
        [0.5, 0.5]
    """
    schema = method_schema(method)
    n = len(model_levels)
    params: dict[str, Any] = {}
    for spec in schema.params:
        keys = (spec.config_name, spec.name)
        if spec.per_model:
            vals = []
            given = False
            for levels in model_levels:
                v = None
                for level in levels:
                    for k in keys:
                        if k in level:
                            v = evaluate_setting(level[k], name, t)
                            if v is not None:
                                break
                    if v is not None:
                        break
                given = given or v is not None
                vals.append(v)
            if given:
                if any(v is None for v in vals):
                    missing = labels[vals.index(None)]
                    if spec.required:
                        raise ConfigError(
                            f"{spec.config_name!r} is required but not set for model {missing!r} ({name})"
                        )
                    fill = (
                        spec.default
                        if spec.default is not None
                        else (1.0 if spec.name == "weights" else None)
                    )
                    if fill is None:
                        raise ConfigError(
                            f"{spec.config_name!r} is set for some models but not for {missing!r}"
                        )
                    vals = [fill if v is None else v for v in vals]
                params[spec.config_name] = vals
        else:
            found = False
            for level in global_levels:
                for k in keys:
                    if k in level:
                        v = evaluate_setting(level[k], name, t)
                        if v is not None:
                            params[spec.config_name] = v
                            found = True
                            break
                if found:
                    break
    try:
        return validate_params(method, params, n, where=f"merge method {method!r}, tensor {name!r}")
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None


def _check_param_keys(params: Any, where: str, schema: MethodSchema, per_model_level: bool) -> dict[str, Any]:
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise ConfigError(f"{where}: parameters must be a mapping, got {type(params).__name__}")
    out = {}
    for k, v in params.items():
        if k in _IGNORED_PARAMS:
            continue
        spec = schema.lookup(str(k))
        if spec is None:
            valid = ", ".join(p.config_name for p in schema.params)
            raise ConfigError(
                f"{where}: unknown parameter {k!r} for merge method {schema.method!r}; valid: {valid}"
            )
        if per_model_level and not spec.per_model:
            raise ConfigError(
                f"{where}: {k!r} is a global parameter of {schema.method!r}; put it under the top-level 'parameters'"
            )
        out[str(k)] = v
    return out


def parse_config(data: Mapping[str, Any], *, source: str | os.PathLike[str] | None = None) -> MergeConfig:
    """Validate a config mapping (as loaded from YAML) and resolve its paths.

    Raises:
        ConfigError: an unknown or unsupported key (named), a bad method name or parameter, a missing base for a
        method that needs one, a model path that does not exist, no models.
    """
    src = Path(source).absolute() if source is not None else None
    base_dir = src.parent if src is not None else None
    if not isinstance(data, Mapping):
        raise ConfigError(f"config must be a mapping, got {type(data).__name__}")
    for k in data:
        if k in _MERGEKIT_UNSUPPORTED:
            raise ConfigError(f"config key {k!r}: {_MERGEKIT_UNSUPPORTED[k]}")
        if k not in TOP_LEVEL_KEYS:
            raise ConfigError(f"unknown config key {k!r}; valid keys: {', '.join(TOP_LEVEL_KEYS)}")
    if "merge_method" not in data:
        raise ConfigError("missing required key 'merge_method'")
    ts = data.get("tokenizer_source")
    if ts not in (None, "base"):
        raise ConfigError(
            f"tokenizer_source: only 'base' is supported (got {ts!r}); the base's tokenizer is copied"
        )
    if data.get("slices") is not None and data.get("models") is not None:
        raise ConfigError("give either 'models' or 'slices', not both (as in mergekit)")
    try:
        method = MERGE_METHODS.entry(str(data["merge_method"])).name
    except ValueError as e:
        raise ConfigError(f"merge_method: {e}") from None
    schema = method_schema(method)
    caps = MERGE_METHODS.capabilities(method)
    base = (
        _parse_ref(data["base_model"], "base_model", base_dir) if data.get("base_model") is not None else None
    )
    if data.get("slices") is not None:
        from orthokit.merge.slices import parse_sliced_config

        return parse_sliced_config(data, method, base, src, base_dir)
    models_raw = data.get("models")
    if not isinstance(models_raw, list) or not models_raw:
        raise ConfigError("'models' must be a non-empty list of {model: PATH, parameters: {...}}")
    models: list[ModelRef] = []
    from orthokit.merge.slices import base_policy_of

    base_is_input = (
        base_policy_of(caps) == "ignored"
    )  # e.g. linear: a listed base is one more input (mergekit)
    for i, entry in enumerate(models_raw):
        where = f"models[{i}]"
        if isinstance(entry, str):
            entry = {"model": entry}
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where}: must be a mapping with a 'model' key, got {entry!r}")
        for k in entry:
            if k not in ("model", "parameters"):
                raise ConfigError(f"{where}: unknown key {k!r} (valid: model, parameters)")
        if "model" not in entry:
            raise ConfigError(f"{where}: missing 'model'")
        ref = _parse_ref(entry["model"], f"{where}.model", base_dir)
        ref.parameters = _check_param_keys(entry.get("parameters"), f"{where}.parameters", schema, True)
        if base is not None and ref.path == base.path and ref.adapter == base.adapter and not base_is_input:
            continue  # mergekit lists the base among models; it is not a fine-tune
        if ref.adapter is None and ref.path is not None and (ref.path / "adapter_config.json").is_file():
            if base is None:
                raise ConfigError(
                    f"{where}: {entry['model']!r} is a LoRA adapter; set base_model or write BASE+ADAPTER"
                )
            ref = ModelRef(ref.spec, base.path, ref.path, ref.parameters)
        models.append(ref)
    if not models:
        raise ConfigError("no fine-tuned models to merge (the only model listed is the base)")
    if caps.get("needs_base") and base is None:
        raise ConfigError(f"merge method {method!r} needs 'base_model'")
    _check_input_kinds(method, str(caps.get("inputs", "full")), base, models)
    params = _check_param_keys(data.get("parameters"), "parameters", schema, False)
    allow_nonfinite = data.get("allow_nonfinite", False)
    if not isinstance(allow_nonfinite, bool):
        raise ConfigError(f"allow_nonfinite must be true or false, got {allow_nonfinite!r}")
    cfg = MergeConfig(
        merge_method=method,
        base=base,
        models=models,
        parameters=params,
        dtype=parse_dtype(data.get("dtype"), "dtype"),
        out_dtype=parse_dtype(data.get("out_dtype"), "out_dtype"),
        source=src,
        raw=dict(data),
        allow_nonfinite=allow_nonfinite,
    )
    # validate every value once at t = 0 and t = 1 with a generic name (catches type errors before any I/O)
    for t in (0.0, 1.0):
        cfg.resolve("model.layers.0.self_attn.q_proj.weight", t)
    return cfg


def _check_input_kinds(method: str, kind: str, base: ModelRef | None, models: Sequence[ModelRef]) -> None:
    """A factor method needs PEFT adapter folders of its kind; a full-weight checkpoint is a one-line error."""
    if kind == "full":
        return
    what = "LoRA" if kind == "lora" else "OFT (orthogonal)"
    if base is None:
        raise ConfigError(
            f"merge method {method!r} merges {what} factors and needs 'base_model' (the frozen W0)"
        )
    for i, m in enumerate(models):
        if m.adapter is None:
            raise ConfigError(
                f"models[{i}]: merge method {method!r} merges {what} factors (inputs={kind!r}), but {m.spec!r} is "
                f"a full checkpoint; list PEFT {what.split()[0]} adapter folders, or use a full-weight method"
            )


def load_config(path: str | os.PathLike[str]) -> MergeConfig:
    """Load and validate a YAML merge config (see :func:`parse_config`)."""
    data = load_yaml(path)
    try:
        return parse_config(data, source=path)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
