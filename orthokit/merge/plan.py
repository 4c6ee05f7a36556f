"""Merge planning: which tensors, from which inputs, with which parameters, into which output shard.

:func:`build_plan` opens every input lazily (headers only), checks that all models have the same tensors with the
same shapes and dtypes (errors name the tensor and the model), resolves the method's parameters for every tensor
(gradients/filters evaluated at the tensor's layer position), fixes the output dtype of each tensor and assigns
the outputs to shards (:func:`orthokit.io.safetensors_io.plan_shards`) — all before any tensor data is read.
:meth:`MergePlan.describe` is what ``orthokit merge --dry-run`` prints, including a peak-memory estimate:

    peak anonymous bytes ≈ max over tensors of  bytes(tensor in compute dtype) × (T + 3)  [+ casts of inputs]

(the [T, …] delta buffer, the sign mask/result, and one temporary; inputs are zero-copy memory maps unless
they must be cast to another dtype or moved to a device, which adds (T + 1) × bytes).

Example:
    >>> import tempfile, pathlib, torch
    >>> from orthokit.io.safetensors_io import save_sharded
    >>> from orthokit.merge.config import parse_config
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> for name, v in (("base", 0.0), ("ft1", 1.0), ("ft2", 2.0)):
    ...     _ = save_sharded({"model.layers.0.w": torch.full((4, 4), v), "step": torch.tensor(1)}, d / name)
    >>> cfg = parse_config({"merge_method": "ties", "base_model": str(d / "base"),
    ...                     "models": [{"model": str(d / "ft1")}, {"model": str(d / "ft2")}]})
    >>> plan = build_plan(cfg, max_shard_bytes=2**30)
    >>> [line for line in plan.describe().splitlines() if line.startswith("tensors:")]
    ['tensors: 2 (1 merged, 1 copied from the base), output 72 B in 1 shard(s)']
    >>> plan.close()
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from orthokit.io.config import ConfigError
from orthokit.io.safetensors_io import ShardSpec, TensorInfo, TensorSource, open_checkpoint, plan_shards
from orthokit.merge.config import MergeConfig, ModelRef, count_layers, layer_position
from orthokit.merge.registry import MERGE_METHODS

__all__ = ["TensorTask", "MergePlan", "build_plan", "open_ref", "format_bytes", "parse_size"]


def format_bytes(n: float) -> str:
    """Human-readable bytes (decimal units, like ``--out-shard-size``)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} TB"  # pragma: no cover


def parse_size(text: str | int) -> int:
    """Parse a byte size: ``5000000``, ``"500M"``, ``"5B"``/``"5G"`` (10⁹ — mergekit's spelling), ``"2GiB"``.

    Example:
        >>> parse_size("5B"), parse_size("100MB"), parse_size("1KiB")
        (5000000000, 100000000, 1024)
    """
    if isinstance(text, int):
        if text <= 0:
            raise ValueError(f"size must be positive, got {text}")
        return text
    m = re.fullmatch(r"(\d+(?:\.\d*)?)\s*(?:([KMGT])(I)?B?|(B)|BYTES?)?", str(text).strip().upper())
    if m is None or float(m.group(1)) <= 0:
        raise ValueError(f"cannot parse size {text!r} (examples: 500M, 5B, 2GiB, 1000000)")
    val = float(m.group(1))
    if m.group(2):
        mult = (1024 if m.group(3) else 1000) ** ("KMGT".index(m.group(2)) + 1)
    elif m.group(4):
        mult = 10**9  # mergekit's "5B" = 5 billion (bytes)
    else:
        mult = 1
    return int(val * mult)


@dataclass
class TensorTask:
    """One output tensor: its name, output info, compute dtype, layer position and whether it is merged.

    For ``slices:`` configs ``base_source``/``sources`` say where the inputs come from (``(index into
    MergePlan.models, input tensor name)``) and ``params`` holds the resolved method parameters; for LoRA-factor
    methods ``factors`` lists the models whose adapter targets the tensor. ``None`` = the plain layout (the base
    and every model, same name; parameters resolved from the config).
    """

    name: str
    out: TensorInfo
    compute_dtype: torch.dtype
    t: float
    merge: bool
    base_source: tuple[int, str] | None = None
    sources: list[tuple[int, str]] | None = None
    params: dict[str, Any] | None = None
    factors: list[int] | None = None


@dataclass
class MergePlan:
    """Everything needed to run a merge, decided before reading any tensor data."""

    config: MergeConfig
    base: TensorSource | None
    models: list[TensorSource]
    tasks: list[TensorTask]
    shards: list[ShardSpec]
    peak_bytes_estimate: int
    copy_from: Path | None
    notes: list[str] = field(default_factory=list)
    out_num_layers: int | None = None

    def describe(self) -> str:
        """The human-readable plan (printed by ``--dry-run``)."""
        c = self.config
        lines = [f"merge_method: {c.merge_method}", c.schema.describe()]
        lines.append(f"inputs: {c.inputs_kind}")
        lines.append(f"base_model: {c.base.spec if c.base else None}")
        for i, m in enumerate(c.models):
            extra = f" + LoRA {m.adapter}" if m.adapter else ""
            lines.append(f"model[{i}]: {m.path}{extra}  parameters={m.parameters}")
        for i, sl in enumerate(c.slices or []):
            srcs = ", ".join(f"{c.models[s.model].spec}{list(s.layer_range)}" for s in sl.sources)
            lines.append(f"slice[{i}]: {srcs}  parameters={sl.parameters}")
        if self.out_num_layers is not None:
            lines.append(f"output layers: {self.out_num_layers}")
        lines.append(f"parameters: {c.parameters}")
        n_merge = sum(t.merge for t in self.tasks)
        total = sum(t.out.nbytes for t in self.tasks)
        lines.append(
            f"tensors: {len(self.tasks)} ({n_merge} merged, {len(self.tasks) - n_merge} copied{' from the base' if c.slices is None else ''}), "
            f"output {format_bytes(total)} in {len(self.shards)} shard(s)"
        )
        for s in self.shards:
            lines.append(f"  {s.filename}: {len(s.tensors)} tensors, {format_bytes(s.nbytes)}")
        lines.append(f"estimated peak anonymous memory for tensors: {format_bytes(self.peak_bytes_estimate)}")
        if self.copy_from is not None:
            lines.append(f"config/tokenizer files copied from: {self.copy_from}")
        if self.tasks:
            probe = next((t for t in self.tasks if t.merge), self.tasks[0])
            kw = (
                probe.params
                if probe.params is not None or c.slices is not None
                else c.resolve(probe.name, probe.t)
            )
            lines.append(f"example parameters for {probe.name!r} (t={probe.t:.3f}): {kw}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def close(self) -> None:
        """Release the input memory maps."""
        for s in [self.base, *self.models]:
            if s is not None:
                s.close()


def open_ref(ref: ModelRef) -> TensorSource:
    """Open a :class:`ModelRef` (a checkpoint, or BASE+ADAPTER applying the LoRA lazily)."""
    assert ref.path is not None
    if ref.adapter is not None:
        return open_checkpoint(ref.adapter, base=ref.path)
    return open_checkpoint(ref.path)


def _config_dir(ref: ModelRef | None) -> Path | None:
    if ref is None or ref.path is None:
        return None
    p = ref.path if ref.path.is_dir() else None
    return p if p is not None and (p / "config.json").is_file() else p


def build_plan(config: MergeConfig, max_shard_bytes: int | None = None) -> MergePlan:
    """Open the inputs lazily, check them against each other, resolve parameters and lay out the output.

    Raises:
        ConfigError: missing/extra tensors (named, with the model), shape or dtype mismatches, parameter errors.
        SafetensorsError / FileNotFoundError: unreadable inputs.
    """
    if config.slices is not None:
        return _build_sliced(config, max_shard_bytes)
    base = open_ref(config.base) if config.base is not None else None
    models: list[TensorSource] = []
    lora = config.inputs_kind in ("lora", "orthogonal")
    try:
        for m in config.models:
            models.append(open_ref(m))
        ref_src = base if base is not None else models[0]
        ref_label = config.base.spec if config.base is not None else config.models[0].spec
        names = ref_src.keys()
        name_set = set(names)
        for m, src in zip(config.models, models):
            keys = src.keys()
            ks = set(keys)
            missing = [n for n in names if n not in ks]
            if missing:
                raise ConfigError(
                    f"model {m.spec!r} is missing tensor {missing[0]!r} (present in {ref_label!r})"
                    + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
                )
            extra = [n for n in keys if n not in name_set]
            if extra:
                raise ConfigError(
                    f"model {m.spec!r} has tensor {extra[0]!r}, which {ref_label!r} does not have"
                    + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
                )
        config.num_layers = count_layers(names)
        schema = config.schema
        n_models = len(models)
        tasks: list[TensorTask] = []
        peak = 0
        for name in names:
            info = ref_src.info(name)
            for m, src in zip(config.models, models):
                mi = src.info(name)
                if mi.shape != info.shape:
                    raise ConfigError(
                        f"tensor {name!r}: model {m.spec!r} has shape {list(mi.shape)}, {ref_label!r} has {list(info.shape)}"
                    )
                if mi.dtype != info.dtype and (
                    config.dtype is None or not (mi.dtype.is_floating_point and info.dtype.is_floating_point)
                ):
                    raise ConfigError(
                        f"tensor {name!r}: model {m.spec!r} is {mi.dtype} but {ref_label!r} is {info.dtype} "
                        "(set 'dtype:' in the config to compute in one dtype)"
                    )
            is_float = info.dtype.is_floating_point
            t = layer_position(name, config.num_layers)
            if is_float and lora:
                factors = _lora_targets(name, config, models)
                if not factors:
                    tasks.append(TensorTask(name, info, info.dtype, t, False))
                    continue
                cd = config.dtype or info.dtype
                config.resolve(name, t)
                tb = TensorInfo(cd, info.shape).nbytes
                peak = max(peak, tb * 4)
                od = config.out_dtype or cd
                tasks.append(TensorTask(name, TensorInfo(od, info.shape), cd, t, True, factors=factors))
            elif is_float:
                cd = config.dtype or info.dtype
                od = config.out_dtype or cd
                config.resolve(name, t)  # validate parameters for this tensor now
                tb = TensorInfo(cd, info.shape).nbytes
                casts = (n_models + 1) * tb if cd != info.dtype else 0
                peak = max(peak, tb * (n_models + 3) + casts)
                tasks.append(TensorTask(name, TensorInfo(od, info.shape), cd, t, True))
            else:
                tasks.append(TensorTask(name, info, info.dtype, t, False))
        if not tasks:
            raise ConfigError(f"{ref_label!r} has no tensors")
        meta = {"merged_by": "orthokit", "merge_method": config.merge_method}
        shards = plan_shards([(t.name, t.out) for t in tasks], max_shard_bytes, metadata=meta)
        notes = []
        if schema.takes_generator and MERGE_METHODS.capabilities(config.merge_method).get("stochastic"):
            notes.append("stochastic method: one generator per tensor seeded from (--seed, tensor name)")
        copy_from = _config_dir(config.base) or _config_dir(config.models[0])
        return MergePlan(config, base, models, tasks, shards, peak, copy_from, notes)
    except BaseException:
        for s in [base, *models]:
            if s is not None:
                s.close()
        raise


def _unchanged_base_layer(src: Any, name: str) -> bool:
    """Whether the adapter's copy of ``name`` is PEFT's saved base layer (``save_embedding_layers``) and equal to
    the base model's tensor — then it carries nothing to merge and the factor methods may ignore it."""
    adapter = src.adapter
    if name not in getattr(adapter, "saved_base_layers", ()):
        return False
    return bool(torch.equal(adapter.file.get(adapter.replacements[name]), src.base.get(name)))


def _lora_targets(name: str, config: MergeConfig, models: list[TensorSource]) -> list[int]:
    """Indices of the models whose adapter (LoRA or OFT, as the method's ``inputs`` says) targets ``name``."""
    out = []
    kind = config.inputs_kind
    for i, (m, src) in enumerate(zip(config.models, models)):
        adapter = getattr(src, "adapter", None)
        if adapter is None or not hasattr(adapter, "factors" if kind == "lora" else "rotations"):
            want = "a PEFT LoRA" if kind == "lora" else "a PEFT OFT"
            raise ConfigError(
                f"model {m.spec!r} is not {want} adapter folder, which merge method {config.merge_method!r} "
                f"(inputs={kind!r}) needs"
            )
        if name in adapter.replacements and not _unchanged_base_layer(src, name):
            raise ConfigError(
                f"adapter {m.spec!r} replaces {name!r} in full (PEFT modules_to_save); merge method "
                f"{config.merge_method!r} merges only adapter factors — use a full-weight method"
            )
        if name in adapter.deltas:
            out.append(i)
    return out


def _build_sliced(config: MergeConfig, max_shard_bytes: int | None) -> MergePlan:
    """The plan of a ``slices:`` config (see :mod:`orthokit.merge.slices`)."""
    from orthokit.merge.slices import layout_slices

    assert config.slices is not None
    models: list[TensorSource] = []
    try:
        for m in config.models:
            models.append(open_ref(m))
        labels = [m.spec for m in config.models]
        layout, n_layers = layout_slices(config.slices, [s.keys() for s in models], labels)
        config.num_layers = n_layers
        tasks: list[TensorTask] = []
        peak = 0
        for st in layout:
            ins = ([st.base_source] if st.base_source is not None else []) + st.sources
            infos = [models[i].info(n) for i, n in ins]
            info = infos[0]
            for (i, n), mi in zip(ins[1:], infos[1:]):
                where = f"tensor {st.name!r} (slices[{st.slice_index}])"
                if mi.shape != info.shape:
                    raise ConfigError(
                        f"{where}: {labels[i]!r} {n!r} has shape {list(mi.shape)}, {labels[ins[0][0]]!r} "
                        f"{ins[0][1]!r} has {list(info.shape)}"
                    )
                if mi.dtype != info.dtype and (
                    config.dtype is None or not (mi.dtype.is_floating_point and info.dtype.is_floating_point)
                ):
                    raise ConfigError(
                        f"{where}: {labels[i]!r} is {mi.dtype} but {labels[ins[0][0]]!r} is {info.dtype} "
                        "(set 'dtype:' in the config to compute in one dtype)"
                    )
            if info.dtype.is_floating_point:
                cd = config.dtype or info.dtype
                od = config.out_dtype or cd
                params = config.resolve_slice(st.slice_index, st.source_positions, st.name, st.t)
                tb = TensorInfo(cd, info.shape).nbytes
                casts = len(ins) * tb if cd != info.dtype else 0
                peak = max(peak, tb * (len(ins) + 2) + casts)
                tasks.append(
                    TensorTask(
                        st.name,
                        TensorInfo(od, info.shape),
                        cd,
                        st.t,
                        True,
                        st.base_source,
                        st.sources,
                        params,
                    )
                )
            else:
                tasks.append(TensorTask(st.name, info, info.dtype, st.t, False, st.base_source, st.sources))
        if not tasks:
            raise ConfigError("the slices select no tensors")
        meta = {"merged_by": "orthokit", "merge_method": config.merge_method}
        shards = plan_shards([(t.name, t.out) for t in tasks], max_shard_bytes, metadata=meta)
        first = config.models[config.slices[0].sources[0].model]
        copy_from = _config_dir(config.base) or _config_dir(first)
        notes = [f"slices: {len(config.slices)}, {n_layers} output layers (config.json updated)"]
        return MergePlan(config, None, models, tasks, shards, peak, copy_from, notes, n_layers)
    except BaseException:
        for s in models:
            s.close()
        raise


def plan_summary(plan: MergePlan) -> dict[str, Any]:
    """A JSON-able summary of a plan (tensor count, shards, bytes, memory estimate)."""
    return {
        "merge_method": plan.config.merge_method,
        "tensors": len(plan.tasks),
        "shards": [s.filename for s in plan.shards],
        "output_bytes": sum(t.out.nbytes for t in plan.tasks),
        "peak_bytes_estimate": plan.peak_bytes_estimate,
    }
