"""The merge-method registry, the method signature convention, and config-schema derivation.

A merge method is a plain function on tensors, one file per method, registered with
:func:`register_merge_method`. Every method has the signature::

    fn(base: Tensor | None, tensors: Sequence[Tensor], *,
       weights: Sequence[float] | None = None,
       <typed keyword hyperparameters with defaults>,
       generator: torch.Generator | None = None,
       [name: str = ""]) -> Tensor

* ``base`` is the pre-trained tensor θ₀ (``None`` only for methods registered with ``needs_base=False``);
  ``tensors`` are the fine-tuned tensors θ₁…θ_T, all of the base's shape and dtype.
* ``weights`` (per-model weights w_t) and every name listed in ``per_model_params`` arrive as sequences aligned
  with ``tensors``; all other keyword arguments are global scalars.
* ``generator`` makes stochastic methods reproducible; methods that want the tensor's name (e.g. to skip
  embeddings) declare a ``name: str`` keyword and receive it.

The registry derives each method's *config schema* from its signature (:func:`inspect.signature` plus type hints):
:func:`method_schema` lists the parameters with their types, defaults and scope, and :func:`validate_params`
checks and coerces a parameter dict (as read from YAML or given to :func:`orthokit.merge.merge`) against it,
rejecting unknown keys by name. Config names follow mergekit: the Python keyword ``lambda_`` is spelled
``lambda`` and ``weights`` is spelled ``weight`` (both spellings are accepted).

Example:
    >>> import torch
    >>> from orthokit.merge.registry import MERGE_METHODS, method_schema, validate_params
    >>> fn = MERGE_METHODS.get("task_arithmetic")
    >>> [p.config_name for p in method_schema("task_arithmetic").params]
    ['weight', 'lambda', 'normalize']
    >>> kw = validate_params("task_arithmetic", {"weight": 0.5, "lambda": 2.0}, n_models=2)
    >>> kw["weights"], kw["lambda_"]
    ([0.5, 0.5], 2.0)

Reference: mergekit (Goddard et al., "Arcee's MergeKit", EMNLP 2024 industry track) — the config
conventions (``weight``, ``density``, ``lambda``, ``normalize``) are kept so mergekit configs can be reused.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union

import torch
from torch import Tensor

from orthokit._registry import Registry

__all__ = [
    "MERGE_METHODS",
    "INPUT_KINDS",
    "MergeFn",
    "ParamSpec",
    "MethodSchema",
    "register_merge_method",
    "method_schema",
    "validate_params",
    "check_merge_inputs",
]

MergeFn = Callable[..., Tensor]

#: The registry every merge method registers into (``MERGE_METHODS.names()`` lists them).
MERGE_METHODS: Registry[MergeFn] = Registry("merge method")

#: Allowed values of the ``inputs`` capability: full weights, LoRA factors, orthogonal (OFT) factors.
INPUT_KINDS = ("full", "lora", "orthogonal")

_RESERVED = ("base", "tensors", "generator", "name")
_CONFIG_NAME = {"weights": "weight"}


@dataclass(frozen=True)
class ParamSpec:
    """One hyperparameter of a merge method, derived from its signature.

    Attributes:
        name: the Python keyword (``lambda_``).
        config_name: the YAML/CLI spelling (``lambda``).
        per_model: ``True`` if the value is a sequence aligned with the models.
        type: the scalar type (``float``, ``int``, ``bool``, ``str``) of the value or of each element.
        choices: allowed values for ``Literal[...]`` annotations (else ``None``).
        default: the default (``inspect.Parameter.empty`` if required).
        optional: ``True`` if ``None`` is an accepted value.
    """

    name: str
    config_name: str
    per_model: bool
    type: type
    choices: tuple[Any, ...] | None
    default: Any
    optional: bool

    @property
    def required(self) -> bool:
        """Whether the parameter has no default."""
        return self.default is inspect.Parameter.empty

    def describe(self) -> str:
        """One-line human description used by ``--help`` / ``--dry-run``."""
        t = "|".join(map(repr, self.choices)) if self.choices else self.type.__name__
        scope = "per-model" if self.per_model else "global"
        d = "required" if self.required else f"default {self.default!r}"
        if self.name == "weights" and self.default is None:
            d = "default 1.0"
        return f"{self.config_name} ({scope} {t}, {d})"


@dataclass(frozen=True)
class MethodSchema:
    """The config schema of one merge method: its parameters and registration capabilities."""

    method: str
    params: tuple[ParamSpec, ...]
    capabilities: Mapping[str, Any]
    takes_name: bool
    takes_generator: bool

    def lookup(self, key: str) -> ParamSpec | None:
        """The parameter a config key refers to (config spelling or Python keyword), or ``None``."""
        for p in self.params:
            if key in (p.name, p.config_name):
                return p
        return None

    def describe(self) -> str:
        """Multi-line help text: capabilities and one line per parameter."""
        caps = ", ".join(f"{k}={v}" for k, v in self.capabilities.items() if k != "reference")
        lines = [f"{self.method}: {caps}"]
        lines += [f"  {p.describe()}" for p in self.params]
        return "\n".join(lines)


def _strip_optional(ann: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(ann)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        optional = len(args) < len(typing.get_args(ann))
        if len(args) == 1:
            return args[0], optional
        return Union[tuple(args)], optional  # noqa: UP007
    return ann, False


def _scalar_of(ann: Any, per_model: bool, where: str) -> tuple[type, tuple[Any, ...] | None]:
    """Scalar element type (and Literal choices) of an annotation such as ``float`` or ``Sequence[float]``."""
    ann, _ = _strip_optional(ann)
    candidates: list[Any] = []
    origin = typing.get_origin(ann)
    if origin in (Union, types.UnionType):
        candidates = list(typing.get_args(ann))
    else:
        candidates = [ann]
    scalars: list[Any] = []
    for c in candidates:
        o = typing.get_origin(c)
        if o is not None and o is not Literal and issubclass(o, Sequence):
            (elem,) = typing.get_args(c) or (float,)
            scalars.append(elem)
        else:
            scalars.append(c)
    # Prefer the first recognised scalar type.
    for s in scalars:
        if typing.get_origin(s) is Literal:
            ch = typing.get_args(s)
            return type(ch[0]), tuple(ch)
        if s in (bool, int, float, str):
            return s, None
    raise TypeError(
        f"{where}: unsupported annotation {ann!r} (use float/int/bool/str/Literal or Sequence thereof)"
    )


def _build_schema(
    name: str, fn: Callable[..., Any], per_model_params: Sequence[str], caps: Mapping[str, Any]
) -> MethodSchema:
    sig = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn)
    except Exception as e:  # pragma: no cover - only for broken annotations
        raise TypeError(f"merge method {name!r}: cannot resolve type hints: {e}") from e
    params = list(sig.parameters.values())
    if len(params) < 2 or params[0].name != "base" or params[1].name != "tensors":
        raise TypeError(
            f"merge method {name!r} must take (base, tensors, *, ...) as its first two parameters"
        )
    for p in params[:2]:
        if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            raise TypeError(f"merge method {name!r}: {p.name!r} must be positional")
    kw = {p.name: p for p in params[2:]}
    for p in kw.values():
        if p.kind is not p.KEYWORD_ONLY:
            raise TypeError(
                f"merge method {name!r}: hyperparameter {p.name!r} must be keyword-only (after *)"
            )
    if "weights" not in kw:
        raise TypeError(f"merge method {name!r} must accept weights: Sequence[float] | None = None")
    for pm in per_model_params:
        if pm not in kw:
            raise TypeError(f"merge method {name!r}: per_model_params names {pm!r}, which is not a keyword")
    specs: list[ParamSpec] = []
    for p in kw.values():
        if p.name in _RESERVED:
            continue
        if p.name not in hints:
            raise TypeError(f"merge method {name!r}: hyperparameter {p.name!r} needs a type hint")
        per_model = p.name == "weights" or p.name in per_model_params
        scalar, choices = _scalar_of(hints[p.name], per_model, f"merge method {name!r}, {p.name!r}")
        _, optional = _strip_optional(hints[p.name])
        cfg = _CONFIG_NAME.get(p.name, p.name.rstrip("_"))
        specs.append(
            ParamSpec(p.name, cfg, per_model, scalar, choices, p.default, optional or p.default is None)
        )
    return MethodSchema(name, tuple(specs), dict(caps), "name" in kw, "generator" in kw)


def register_merge_method(
    name: str,
    *,
    inputs: str = "full",
    needs_base: bool = True,
    per_model_params: Sequence[str] = ("weights",),
    order_invariant: bool = True,
    aliases: Sequence[str] = (),
    one_model_exact: Mapping[str, Any] | Literal[False] | None = None,
    idempotent: Mapping[str, Any] | Literal[False] | None = None,
    base_fixed_point: Mapping[str, Any] | Literal[False] | None = None,
    **capabilities: Any,
) -> Callable[[MergeFn], MergeFn]:
    """Decorator registering a merge method in :data:`MERGE_METHODS`.

    The signature is validated at import time (see the module docstring), so a method that breaks the
    convention fails loudly instead of misbehaving in the CLI.

    Args:
        name: canonical method name (mergekit's spelling where the method exists there).
        inputs: what the tensors are: ``"full"`` weights, ``"lora"`` factors or ``"orthogonal"`` factors.
        needs_base: whether ``base`` must be given.
        per_model_params: keyword names whose values are sequences aligned with ``tensors`` (``weights`` is
            always per-model).
        order_invariant: whether permuting ``tensors`` (with their per-model parameters) leaves the result
            unchanged; the conformance tests check this claim.
        aliases: alternative names.
        one_model_exact: parameters (a mapping, ``{}`` = the defaults) under which merging a single fine-tune
            returns it exactly (for ``inputs="lora"``: ``base + B A``), or ``False`` if it never does.
        idempotent: parameters under which merging T identical fine-tunes returns that model, or ``False``.
        base_fixed_point: parameters under which fine-tunes equal to the base (zero task vectors; zero
            adapters; rotations equal to the base) return the base, or ``False``.
            These three are the method's *declared properties*: the conformance suite
            (``tests/merge/conformance.py``) checks every declared one, and requires all three to be declared
            (``None`` = undeclared). Parameter names are validated against the signature at registration.
        **capabilities: free-form metadata (e.g. ``reference="arXiv:2212.04089"``, ``stochastic=True``).

    Example (skipped: registering adds a method to the process-wide registry, and the conformance suite
    then requires its declared properties and a closed-form check):
        >>> from orthokit.merge.registry import register_merge_method
        >>> @register_merge_method("weighted_mean", needs_base=False,  # doctest: +SKIP
        ...                        one_model_exact={}, idempotent={}, base_fixed_point={})
        ... def weighted_mean(base: Tensor | None, tensors: Sequence[Tensor], *,
        ...                   weights: Sequence[float] | None = None,
        ...                   generator: torch.Generator | None = None) -> Tensor:
        ...     w = check_merge_inputs(base, tensors, weights, needs_base=False)
        ...     return sum(wi * t for wi, t in zip(w, tensors)) / sum(w)
    """
    if inputs not in INPUT_KINDS:
        raise ValueError(f"inputs must be one of {INPUT_KINDS}, got {inputs!r}")
    pm = tuple(dict.fromkeys(("weights", *per_model_params)))

    props = {
        "one_model_exact": one_model_exact,
        "idempotent": idempotent,
        "base_fixed_point": base_fixed_point,
    }
    for key, val in props.items():
        if val is not None and val is not False and not isinstance(val, Mapping):
            raise TypeError(f"{key} must be a mapping of parameters, False or None, got {val!r}")

    def deco(fn: MergeFn) -> MergeFn:
        caps = dict(
            inputs=inputs,
            needs_base=bool(needs_base),
            per_model_params=pm,
            order_invariant=bool(order_invariant),
            **{k: (dict(v) if isinstance(v, Mapping) else v) for k, v in props.items() if v is not None},
            **capabilities,
        )
        schema = _build_schema(name, fn, pm, caps)  # validate the convention now
        for key, val in props.items():
            for p in val or {}:
                if schema.lookup(str(p)) is None:
                    raise TypeError(f"merge method {name!r}: {key} names unknown parameter {p!r}")
        MERGE_METHODS.add(name, fn, aliases=tuple(aliases), **caps)
        return fn

    return deco


def method_schema(name: str) -> MethodSchema:
    """The config schema of merge method ``name`` (derived from its signature and registration; cached)."""
    entry = MERGE_METHODS.entry(name)
    cached = _SCHEMA_CACHE.get(entry.name)
    if cached is not None and cached[0] is entry.obj:
        return cached[1]
    caps = entry.capabilities
    schema = _build_schema(entry.name, entry.obj, caps.get("per_model_params", ("weights",)), caps)
    _SCHEMA_CACHE[entry.name] = (entry.obj, schema)
    return schema


_SCHEMA_CACHE: dict[str, tuple[Any, MethodSchema]] = {}


def _coerce_scalar(value: Any, spec: ParamSpec, where: str) -> Any:
    if value is None:
        if spec.optional:
            return None
        raise ValueError(f"{where}: {spec.config_name!r} may not be null")
    t = spec.type
    if t is bool:
        if isinstance(value, bool):
            out: Any = value
        elif isinstance(value, str) and value.lower() in ("true", "false"):
            out = value.lower() == "true"
        else:
            raise TypeError(f"{where}: {spec.config_name!r} must be a boolean, got {value!r}")
    elif t in (int, float):
        if isinstance(value, bool):
            raise TypeError(f"{where}: {spec.config_name!r} must be a number, got {value!r}")
        if isinstance(value, str):
            try:
                value = float(value)  # YAML reads 1e-3 as a string
            except ValueError:
                raise TypeError(f"{where}: {spec.config_name!r} must be a number, got {value!r}") from None
        if isinstance(value, Tensor) and value.numel() == 1:
            value = value.item()
        if not isinstance(value, (int, float)):
            raise TypeError(f"{where}: {spec.config_name!r} must be a number, got {type(value).__name__}")
        if t is int:
            if float(value) != int(value):
                raise TypeError(f"{where}: {spec.config_name!r} must be an integer, got {value!r}")
            out = int(value)
        else:
            out = float(value)
            if out != out or out in (float("inf"), float("-inf")):
                raise ValueError(f"{where}: {spec.config_name!r} must be finite, got {value!r}")
    else:
        if not isinstance(value, str):
            raise TypeError(f"{where}: {spec.config_name!r} must be a string, got {value!r}")
        out = value
    if spec.choices is not None and out not in spec.choices:
        raise ValueError(f"{where}: {spec.config_name!r} must be one of {spec.choices}, got {out!r}")
    return out


def validate_params(
    method: str, params: Mapping[str, Any], n_models: int, *, where: str | None = None
) -> dict[str, Any]:
    """Check and coerce ``params`` against ``method``'s schema; return Python keyword arguments.

    Per-model parameters accept a scalar (broadcast to every model) or a sequence of length ``n_models``;
    they are returned as lists. Missing optional parameters are left out (the function default applies);
    ``weights`` is filled with ones when absent (mergekit requires it; we default to 1.0).

    Raises:
        ValueError: an unknown key (named, with the valid keys), a wrong-length sequence, a bad choice.
        TypeError: a value of the wrong type.
    """
    schema = method_schema(method)
    where = where or f"merge method {schema.method!r}"
    if not isinstance(params, Mapping):
        raise TypeError(f"{where}: parameters must be a mapping, got {type(params).__name__}")
    if n_models < 1:
        raise ValueError(f"{where}: need at least one model to merge, got {n_models}")
    out: dict[str, Any] = {}
    for key, value in params.items():
        spec = schema.lookup(str(key))
        if spec is None:
            valid = ", ".join(p.config_name for p in schema.params)
            raise ValueError(f"{where}: unknown parameter {key!r}; valid parameters: {valid}")
        if spec.name in out:
            raise ValueError(f"{where}: parameter {spec.config_name!r} given twice")
        if spec.per_model:
            if isinstance(value, Tensor):
                value = value.tolist()
            if isinstance(value, (list, tuple)):
                if len(value) != n_models:
                    raise ValueError(
                        f"{where}: per-model parameter {spec.config_name!r} has {len(value)} values "
                        f"for {n_models} models"
                    )
                out[spec.name] = [_coerce_scalar(v, spec, where) for v in value]
            else:
                v = _coerce_scalar(value, spec, where)
                out[spec.name] = None if v is None else [v] * n_models
        else:
            if isinstance(value, (list, tuple)):
                raise TypeError(f"{where}: {spec.config_name!r} is a global parameter and takes one value")
            out[spec.name] = _coerce_scalar(value, spec, where)
    for spec in schema.params:
        if spec.required and spec.name not in out:
            raise ValueError(f"{where}: missing required parameter {spec.config_name!r}")
    if out.get("weights") is None:
        out["weights"] = [1.0] * n_models
    return out


def check_merge_inputs(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    weights: Sequence[float] | None,
    *,
    needs_base: bool = True,
    name: str = "",
) -> list[float]:
    """Validate the common inputs of a merge method and return the weights as a list of floats.

    Checks: at least one tensor, every tensor a floating ``torch.Tensor`` with the base's (or the first
    tensor's) shape, dtype and device, and one finite weight per tensor.

    Raises:
        TypeError: non-tensor input or dtype mismatch. ValueError: shape/device/length mismatch, missing base.
    """
    label = f" for tensor {name!r}" if name else ""
    if isinstance(tensors, Tensor) or not isinstance(tensors, Sequence):
        raise TypeError(f"tensors{label} must be a sequence of tensors, got {type(tensors).__name__}")
    if len(tensors) == 0:
        raise ValueError(f"need at least one tensor to merge{label}")
    if base is None and needs_base:
        raise ValueError(f"this merge method needs a base tensor{label}")
    ref = base if base is not None else tensors[0]
    items = ([("base", base)] if base is not None else []) + [
        (f"tensors[{i}]", t) for i, t in enumerate(tensors)
    ]
    for what, t in items:
        if not isinstance(t, Tensor):
            raise TypeError(f"{what}{label} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{what}{label} must be floating point, got {t.dtype}")
        if t.shape != ref.shape:
            raise ValueError(
                f"shape mismatch{label}: {what} has shape {tuple(t.shape)}, expected {tuple(ref.shape)}"
            )
        if t.dtype != ref.dtype:
            raise TypeError(f"dtype mismatch{label}: {what} is {t.dtype}, expected {ref.dtype}")
        if t.device != ref.device:
            raise ValueError(f"device mismatch{label}: {what} is on {t.device}, expected {ref.device}")
    if weights is None:
        return [1.0] * len(tensors)
    w = [float(x) for x in weights]
    if len(w) != len(tensors):
        raise ValueError(f"got {len(w)} weights for {len(tensors)} tensors{label}")
    if not all(x == x and abs(x) != float("inf") for x in w):
        raise ValueError(f"weights must be finite{label}, got {w}")
    return w


def per_model(values: float | Sequence[float] | None, n: int, what: str, default: float) -> list[float]:
    """Broadcast a per-model parameter to a list of ``n`` floats (``None`` → ``default``)."""
    if values is None:
        return [float(default)] * n
    if isinstance(values, (int, float)):
        return [float(values)] * n
    vals = [float(v) for v in values]
    if len(vals) != n:
        raise ValueError(f"{what}: got {len(vals)} values for {n} models")
    return vals


def _as_generator(generator: torch.Generator | None) -> torch.Generator | None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return generator
