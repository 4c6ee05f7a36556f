"""Streaming safetensors I/O: lazy memory-mapped readers and a sharded, atomic, streaming writer.

Readers (all expose ``keys()``, ``info(name)``, ``get(name)``):

* :class:`SafetensorsFile` — one ``.safetensors`` file. The header is parsed and fully validated up front
  (clear :class:`SafetensorsError` naming the file and tensor for truncated files, bad JSON, unknown dtypes,
  inconsistent shapes/offsets, overlaps); tensors are returned as **zero-copy views of a private memory map**
  (``mmap.ACCESS_COPY``), so reading a tensor costs page-cache (file-backed) memory, not anonymous memory, and
  nothing is read until it is used.
* :class:`ShardedCheckpoint` — a ``model.safetensors.index.json`` with its shards.
* :class:`LoraAdapter` — a PEFT LoRA folder (``adapter_config.json`` + ``adapter_model.safetensors``);
  :class:`LoraAppliedCheckpoint` applies it to a base reader lazily: W + s · B A with s = α/r (α/√r for rsLoRA).
* :func:`open_checkpoint` picks the right reader for a path: a ``.safetensors`` file, an index JSON, a Hugging
  Face folder (single file or sharded), or a PEFT adapter folder (given ``base=``).

Writer: :func:`plan_shards` assigns tensors (name, dtype, shape) to shards of at most ``max_shard_bytes``
*before* any data exists, so each shard's header is known in advance and :class:`StreamingShardWriter` writes
every tensor straight to its final place — no output buffering (peak memory: the tensor being written).
:func:`atomic_output_dir` gives a temporary folder next to the destination that is renamed into place only on
success (a crash or Ctrl-C leaves no partial output).

Example:
    >>> import torch, tempfile, pathlib
    >>> from orthokit.io.safetensors_io import save_sharded, open_checkpoint
    >>> d = pathlib.Path(tempfile.mkdtemp()) / "ckpt"
    >>> _ = save_sharded({"a": torch.ones(2, 3), "b": torch.zeros(4)}, d, max_shard_bytes=30)
    >>> ck = open_checkpoint(d)
    >>> sorted(ck.keys()), ck.get("a").sum().item()
    (['a', 'b'], 6.0)

Reference: the safetensors format (https://github.com/huggingface/safetensors, "Format" section): an 8-byte
little-endian header length N, an N-byte JSON header ``{name: {dtype, shape, data_offsets: [begin, end]}}``
(offsets relative to the byte buffer after the header) plus optional ``__metadata__`` (str → str).
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import os
import re
import shutil
import struct
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from orthokit._fs import (
    LOCK_NAME,
    check_replaceable,
    clean_stale_temps,
    publish_mode,
    register_temp,
    resolve_inside,
    unregister_temp,
    write_lock,
    write_marker,
)

__all__ = [
    "AdapterAppliedCheckpoint",
    "SafetensorsError",
    "TensorInfo",
    "TensorSource",
    "SafetensorsFile",
    "ShardedCheckpoint",
    "LoraAdapter",
    "LoraAppliedCheckpoint",
    "StateDictSource",
    "open_checkpoint",
    "ShardSpec",
    "plan_shards",
    "StreamingShardWriter",
    "atomic_output_dir",
    "save_sharded",
    "load_file",
    "DTYPES",
    "INDEX_NAME",
    "SINGLE_NAME",
]

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_MAX_HEADER = 100 * 1024 * 1024

#: safetensors dtype code → torch dtype.
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "U16": torch.uint16,
    "U32": torch.uint32,
    "U64": torch.uint64,
}
_CODES = {v: k for k, v in DTYPES.items()}


class SafetensorsError(ValueError):
    """A safetensors file or checkpoint folder is malformed, incomplete or inconsistent."""


@dataclass(frozen=True)
class TensorInfo:
    """Dtype and shape of a stored tensor (known without reading its data)."""

    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Size of the data in bytes."""
        return self.numel * _itemsize(self.dtype)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


class TensorSource(Protocol):
    """What the merge engine needs from a checkpoint: names, metadata and lazy tensor access."""

    path: Path | None

    def keys(self) -> list[str]: ...

    def info(self, name: str) -> TensorInfo: ...

    def get(self, name: str) -> Tensor: ...

    def close(self) -> None: ...


def _missing(name: str, where: str, keys: Sequence[str]) -> KeyError:
    import difflib

    close = difflib.get_close_matches(name, list(keys), n=2)
    hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
    return KeyError(f"tensor {name!r} not found in {where}{hint}")


class SafetensorsFile:
    """One ``.safetensors`` file, header validated eagerly, tensors memory-mapped lazily (zero-copy).

    Args:
        path: the file.

    Raises:
        FileNotFoundError: the file does not exist. SafetensorsError: the file is malformed (message names the
        file and, where relevant, the tensor).

    Example:
        >>> import torch, tempfile, pathlib
        >>> from orthokit.io.safetensors_io import save_sharded, SafetensorsFile
        >>> d = pathlib.Path(tempfile.mkdtemp()) / "m"
        >>> _ = save_sharded({"w": torch.arange(6.0).reshape(2, 3)}, d)
        >>> SafetensorsFile(d / "model.safetensors").get("w")[1]
        tensor([3., 4., 5.])
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path: Path | None = Path(path)
        p = self.path
        if not p.is_file():
            raise FileNotFoundError(f"safetensors file not found: {p}")
        size = p.stat().st_size
        if size < 8:
            raise SafetensorsError(
                f"{p}: not a safetensors file (only {size} bytes; need an 8-byte header length)"
            )
        with open(p, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > min(size - 8, _MAX_HEADER):
                raise SafetensorsError(
                    f"{p}: header length {n} exceeds the file size {size} (truncated or not a safetensors file)"
                )
            raw = f.read(n)
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SafetensorsError(f"{p}: header is not valid JSON ({e})") from None
        if not isinstance(header, dict):
            raise SafetensorsError(f"{p}: header must be a JSON object, got {type(header).__name__}")
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict):
            raise SafetensorsError(f"{p}: __metadata__ must be an object")
        self.metadata: dict[str, str] = {str(k): str(v) for k, v in meta.items()}
        self._data_start = 8 + n
        data_size = size - self._data_start
        self._entries: dict[str, tuple[TensorInfo, int, int]] = {}
        spans: list[tuple[int, int, str]] = []
        for name, e in header.items():
            if not isinstance(e, dict) or not {"dtype", "shape", "data_offsets"} <= e.keys():
                raise SafetensorsError(f"{p}: tensor {name!r}: entry must have dtype, shape and data_offsets")
            code = e["dtype"]
            if code not in DTYPES:
                raise SafetensorsError(f"{p}: tensor {name!r}: unsupported dtype {code!r}")
            shape = e["shape"]
            if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
                raise SafetensorsError(f"{p}: tensor {name!r}: invalid shape {shape!r}")
            offs = e["data_offsets"]
            if (
                not isinstance(offs, list)
                or len(offs) != 2
                or not all(isinstance(o, int) for o in offs)
                or not 0 <= offs[0] <= offs[1]
            ):
                raise SafetensorsError(f"{p}: tensor {name!r}: invalid data_offsets {offs!r}")
            info = TensorInfo(DTYPES[code], tuple(shape))
            if offs[1] - offs[0] != info.nbytes:
                raise SafetensorsError(
                    f"{p}: tensor {name!r}: data_offsets span {offs[1] - offs[0]} bytes but dtype {code} "
                    f"and shape {shape} need {info.nbytes}"
                )
            if offs[1] > data_size:
                raise SafetensorsError(
                    f"{p}: tensor {name!r}: data ends at byte {offs[1]} but the file has only {data_size} data "
                    "bytes (truncated file?)"
                )
            self._entries[name] = (info, offs[0], offs[1])
            spans.append((offs[0], offs[1], name))
        spans.sort()
        for (_b0, e0, n0), (b1, _e1, n1) in zip(spans, spans[1:]):
            if b1 < e0:
                raise SafetensorsError(f"{p}: tensors {n0!r} and {n1!r} overlap in the data buffer")
        self._mm: mmap.mmap | None = None

    def _map(self) -> mmap.mmap:
        if self._mm is None:
            assert self.path is not None
            with open(self.path, "rb") as f:
                # ACCESS_COPY: a private, writable (copy-on-write) mapping — torch.frombuffer needs a writable
                # buffer; pages stay file-backed unless written (they never are), and the file is never modified.
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        return self._mm

    def keys(self) -> list[str]:
        """Tensor names in file order."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def info(self, name: str) -> TensorInfo:
        """Dtype and shape of ``name`` (``KeyError`` naming it if absent)."""
        if name not in self._entries:
            raise _missing(name, str(self.path), self.keys())
        return self._entries[name][0]

    def get(self, name: str) -> Tensor:
        """The tensor ``name`` as a zero-copy view of the memory map (treat it as read-only)."""
        info = self.info(name)
        _, begin, end = self._entries[name]
        if info.numel == 0:
            return torch.empty(info.shape, dtype=info.dtype)
        t = torch.frombuffer(
            self._map(), dtype=torch.uint8, count=end - begin, offset=self._data_start + begin
        )
        return t.view(info.dtype).reshape(info.shape)

    def release(self, name: str) -> None:
        """Drop the mapped pages of ``name`` from this process (``madvise(MADV_DONTNEED)``) once it is used.

        Only resident-set accounting changes: the pages stay in the page cache, and a later access re-reads
        them (the mapping is private and never written, so nothing is lost). Keeps RssFile at a few tensors
        when streaming through a large checkpoint.
        """
        if self._mm is None or name not in self._entries or not hasattr(mmap, "MADV_DONTNEED"):
            return
        _, b, e = self._entries[name]
        ps = mmap.PAGESIZE
        a0 = -(-(self._data_start + b) // ps) * ps
        a1 = (self._data_start + e) // ps * ps
        if a1 > a0:
            self._mm.madvise(mmap.MADV_DONTNEED, a0, a1 - a0)

    def close(self) -> None:
        """Drop the memory map (tensors still referencing it keep it alive)."""
        self._mm = None

    def __repr__(self) -> str:
        return f"SafetensorsFile({str(self.path)!r}, {len(self._entries)} tensors)"


class ShardedCheckpoint:
    """A sharded checkpoint described by ``model.safetensors.index.json`` (``{"weight_map": {name: file}}``).

    Shard files are opened lazily; every shard is validated when first used, and every name in the
    ``weight_map`` must exist in its shard (checked on access, error names both).

    Example:
        >>> import torch, tempfile, pathlib
        >>> from orthokit.io.safetensors_io import save_sharded, ShardedCheckpoint
        >>> d = pathlib.Path(tempfile.mkdtemp()) / "m"
        >>> _ = save_sharded({"a": torch.ones(4), "b": torch.ones(4)}, d, max_shard_bytes=16)
        >>> len(set(ShardedCheckpoint(d / "model.safetensors.index.json").weight_map.values()))
        2
    """

    def __init__(self, index_path: str | os.PathLike[str]) -> None:
        self.index_path = Path(index_path)
        self.path: Path | None = self.index_path.parent
        if not self.index_path.is_file():
            raise FileNotFoundError(f"index file not found: {self.index_path}")
        try:
            idx = json.loads(self.index_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SafetensorsError(f"{self.index_path}: not valid JSON ({e})") from None
        wm = idx.get("weight_map") if isinstance(idx, dict) else None
        if not isinstance(wm, dict) or not all(isinstance(v, str) for v in wm.values()):
            raise SafetensorsError(f"{self.index_path}: missing or invalid 'weight_map' (name → shard file)")
        self.weight_map: dict[str, str] = dict(wm)
        self.metadata: dict[str, Any] = dict(idx.get("metadata") or {})
        for shard in sorted(set(wm.values())):
            try:
                resolve_inside(self.path, shard, "shard")
            except ValueError as e:
                raise SafetensorsError(f"{self.index_path}: {e}") from None
            if not (self.path / shard).is_file():
                raise SafetensorsError(
                    f"{self.index_path}: shard {shard!r} listed in the index does not exist"
                )
        self._shards: dict[str, SafetensorsFile] = {}

    def _shard(self, file: str) -> SafetensorsFile:
        if file not in self._shards:
            assert self.path is not None
            self._shards[file] = SafetensorsFile(self.path / file)
        return self._shards[file]

    def keys(self) -> list[str]:
        """Tensor names in index order."""
        return list(self.weight_map)

    def __contains__(self, name: object) -> bool:
        return name in self.weight_map

    def info(self, name: str) -> TensorInfo:
        """Dtype and shape of ``name`` (reads only its shard's header)."""
        if name not in self.weight_map:
            raise _missing(name, str(self.index_path), self.keys())
        shard = self._shard(self.weight_map[name])
        if name not in shard:
            raise SafetensorsError(
                f"{self.index_path}: tensor {name!r} is mapped to {shard.path} but is not in it"
            )
        return shard.info(name)

    def get(self, name: str) -> Tensor:
        """The tensor ``name`` (zero-copy memory-mapped view)."""
        self.info(name)
        return self._shard(self.weight_map[name]).get(name)

    def release(self, name: str) -> None:
        """Drop ``name``'s mapped pages (see :meth:`SafetensorsFile.release`)."""
        f = self.weight_map.get(name)
        if f is not None and f in self._shards:
            self._shards[f].release(name)

    def close(self) -> None:
        """Release all shard maps."""
        for s in self._shards.values():
            s.close()
        self._shards.clear()


class StateDictSource:
    """An in-memory ``{name: tensor}`` mapping seen through the :class:`TensorSource` interface."""

    def __init__(self, state: Mapping[str, Tensor], label: str = "state dict") -> None:
        self.path: Path | None = None
        self.label = label
        for k, v in state.items():
            if not isinstance(v, Tensor):
                raise TypeError(f"{label}: entry {k!r} is a {type(v).__name__}, not a tensor")
        self._state = dict(state)

    def keys(self) -> list[str]:
        """Names in insertion order."""
        return list(self._state)

    def info(self, name: str) -> TensorInfo:
        """Dtype and shape of ``name``."""
        if name not in self._state:
            raise _missing(name, self.label, self.keys())
        t = self._state[name]
        return TensorInfo(t.dtype, tuple(t.shape))

    def get(self, name: str) -> Tensor:
        """The tensor itself (no copy)."""
        self.info(name)
        return self._state[name]

    def close(self) -> None:
        """Nothing to release."""


def _finite_number(value: Any, key: str, where: Path, integer: bool = False) -> float:
    """A finite number from an adapter config (JSON reads ``1e400`` as inf); SafetensorsError naming the key."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise SafetensorsError(f"{where}: {key} must be a finite number, got {value!r}")
    if integer:
        if float(value) != int(value) or int(value) <= 0:
            raise SafetensorsError(f"{where}: {key} must be a positive integer, got {value!r}")
        return int(value)
    return float(value)


@dataclass
class LoraAdapter:
    """A PEFT LoRA adapter folder: per target module the factors A [r, in], B [out, r] and the scale.

    ``deltas[name]`` maps a base tensor name (``<module>.weight``) to ``(A, B, scale, transpose)`` with
    ΔW = scale · B A (transposed for ``fan_in_fan_out`` layers and for embeddings). Non-LoRA tensors in the
    adapter (PEFT ``modules_to_save``) are full replacements in ``replacements``.

    Supported ``adapter_config.json`` keys: ``r``, ``lora_alpha``, ``use_rslora`` (scale α/√r), ``rank_pattern``
    / ``alpha_pattern`` (keys match a module name exactly or as a ``.``-separated suffix), ``fan_in_fan_out``.
    DoRA (``use_dora: true``) is rejected with a clear error.

    Reference: E. Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022, arXiv:2106.09685;
    rsLoRA scale: D. Kalajdzievski, arXiv:2312.03732.
    """

    path: Path
    config: dict[str, Any]
    deltas: dict[str, tuple[str, str, float, bool]] = field(default_factory=dict)
    replacements: dict[str, str] = field(default_factory=dict)
    #: replacements that are PEFT's saved copy of a wrapped layer's own weight (``<module>.base_layer.weight``)
    saved_base_layers: set[str] = field(default_factory=set)
    file: SafetensorsFile | None = None

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> LoraAdapter:
        """Read and validate a PEFT adapter folder."""
        folder = Path(folder)
        cfg_path = folder / ADAPTER_CONFIG
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{folder}: not a PEFT adapter folder (no {ADAPTER_CONFIG})")
        cfg_path = _inside(folder, ADAPTER_CONFIG)
        try:
            cfg = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as e:
            raise SafetensorsError(f"{cfg_path}: not valid JSON ({e})") from None
        ptype = str(cfg.get("peft_type", "LORA")).upper()
        if ptype != "LORA":
            raise SafetensorsError(f"{cfg_path}: peft_type {ptype!r} is not supported (LORA and OFT are)")
        if cfg.get("use_dora"):
            raise SafetensorsError(f"{cfg_path}: DoRA adapters (use_dora: true) are not supported")
        wfile = folder / ADAPTER_WEIGHTS
        if wfile.is_file():
            wfile = _inside(folder, ADAPTER_WEIGHTS)
        if not wfile.is_file():
            raise FileNotFoundError(
                f"{folder}: missing {ADAPTER_WEIGHTS} (pickled adapter_model.bin is not supported)"
            )
        f = SafetensorsFile(wfile)
        ad = cls(folder, cfg, file=f)
        r_default = _finite_number(cfg.get("r", 8), "r", cfg_path, integer=True)
        alpha_default = _finite_number(cfg.get("lora_alpha", r_default), "lora_alpha", cfg_path)
        rank_pat: dict[str, int] = dict(cfg.get("rank_pattern") or {})
        alpha_pat: dict[str, float] = dict(cfg.get("alpha_pattern") or {})
        rslora = bool(cfg.get("use_rslora", False))
        fifo = bool(cfg.get("fan_in_fan_out", False))
        pat = re.compile(
            r"^(?:base_model\.model\.)?(.+?)\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B)(?:\.[^.]+)?(?:\.weight)?$"
        )
        pairs: dict[str, dict[str, str]] = {}
        for key in f.keys():
            m = pat.match(key)
            if m:
                mod, kind = m.group(1), m.group(2)
                pairs.setdefault(mod, {})[kind] = key
            else:
                name = key[len("base_model.model.") :] if key.startswith("base_model.model.") else key
                # PEFT's save_embedding_layers (default "auto": on when an embedding is a target) stores the
                # wrapped layer's full weight as `<module>.base_layer.weight`: it replaces `<module>.weight`,
                # and the LoRA delta of that module is added on top (as PEFT's merge_and_unload does).
                if ".base_layer." in name:
                    name = name.replace(".base_layer.", ".")
                    ad.saved_base_layers.add(name)
                ad.replacements[name] = key

        def lookup(pats: Mapping[str, Any], mod: str, default: Any) -> Any:
            for k, v in pats.items():
                if mod == k or mod.endswith("." + k):
                    return v
            return default

        for mod, kinds in pairs.items():
            emb = "lora_embedding_A" in kinds or "lora_embedding_B" in kinds
            ka, kb = ("lora_embedding_A", "lora_embedding_B") if emb else ("lora_A", "lora_B")
            if ka not in kinds or kb not in kinds:
                raise SafetensorsError(f"{wfile}: module {mod!r} has only one of {ka}/{kb}")
            a, b = f.info(kinds[ka]), f.info(kinds[kb])
            if len(a.shape) != 2 or len(b.shape) != 2 or a.shape[0] != b.shape[1]:
                raise SafetensorsError(
                    f"{wfile}: module {mod!r}: incompatible LoRA shapes A {list(a.shape)} and B {list(b.shape)}"
                )
            r = a.shape[0]
            r_cfg = int(lookup(rank_pat, mod, r_default))
            if r_cfg != r:
                raise SafetensorsError(
                    f"{wfile}: module {mod!r}: A has rank {r} but the config says r={r_cfg}"
                )
            alpha = _finite_number(lookup(alpha_pat, mod, alpha_default), f"alpha_pattern[{mod!r}]", cfg_path)
            scale = alpha / math.sqrt(r) if rslora else alpha / r
            ad.deltas[f"{mod}.weight"] = (kinds[ka], kinds[kb], scale, emb or fifo)
        if not ad.deltas and not ad.replacements:
            raise SafetensorsError(f"{wfile}: the adapter contains no LoRA tensors")
        return ad

    @property
    def base_model_name_or_path(self) -> str | None:
        """``base_model_name_or_path`` from the adapter config (may be a hub id or a local path)."""
        v = self.config.get("base_model_name_or_path")
        return str(v) if v else None

    def delta(self, name: str, dtype: torch.dtype = torch.float32) -> Tensor:
        """ΔW for base tensor ``name`` = scale · B A (transposed where needed), computed in ``dtype``."""
        assert self.file is not None
        ka, kb, scale, transpose = self.deltas[name]
        a = self.file.get(ka).to(dtype)
        b = self.file.get(kb).to(dtype)
        d = (b @ a).mul_(scale)
        return d.T if transpose else d

    def factors(self, name: str, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        """``(A, B)`` for base tensor ``name`` in ``dtype`` with ``B A = ΔW`` exactly as :meth:`delta` applies it:
        the scale is folded into ``B``; for transposed layers (``fan_in_fan_out``, embeddings) ``A = Bᵀ_peft``
        and ``B = scale · Aᵀ_peft``. This is the input convention of ``inputs="lora"`` merge methods."""
        assert self.file is not None
        if name not in self.deltas:
            raise KeyError(f"LoRA adapter {self.path} has no factors for {name!r}")
        ka, kb, scale, transpose = self.deltas[name]
        a = self.file.get(ka).to(dtype)
        b = self.file.get(kb).to(dtype)
        if transpose:
            return b.T.contiguous(), (a.T * scale).contiguous()
        return a.contiguous(), b * scale


class AdapterAppliedCheckpoint:
    """Shared part of a base checkpoint with a PEFT adapter applied lazily: the base's names and infos, and
    releasing/closing both maps. Subclasses set ``base``, ``adapter`` and ``path`` and define ``get``."""

    base: TensorSource
    adapter: Any

    def keys(self) -> list[str]:
        """The base's tensor names."""
        return self.base.keys()

    def info(self, name: str) -> TensorInfo:
        """The base tensor's dtype and shape."""
        return self.base.info(name)

    def release(self, name: str) -> None:
        """Drop the base tensor's mapped pages once used."""
        rel = getattr(self.base, "release", None)
        if rel is not None:
            rel(name)

    def close(self) -> None:
        """Release the base and adapter maps."""
        self.base.close()
        if self.adapter.file is not None:
            self.adapter.file.close()


class LoraAppliedCheckpoint(AdapterAppliedCheckpoint):
    """A base checkpoint with a LoRA adapter merged in lazily: get(name) = W + s · B A for targeted tensors.

    The product is computed in float32 (float64 for float64 weights) and cast to the base tensor's dtype.

    Raises:
        SafetensorsError: the adapter targets a tensor the base lacks, or a ΔW shape differs from W's.

    Example:
        >>> import json, tempfile, pathlib, torch
        >>> from safetensors.torch import save_file
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = save_sharded({"q.weight": torch.zeros(3, 2)}, d / "base")
        >>> (d / "ad").mkdir()
        >>> save_file({"base_model.model.q.lora_A.weight": torch.ones(1, 2),
        ...            "base_model.model.q.lora_B.weight": torch.ones(3, 1)}, str(d / "ad" / ADAPTER_WEIGHTS))
        >>> _ = (d / "ad" / ADAPTER_CONFIG).write_text(json.dumps({"peft_type": "LORA", "r": 1, "lora_alpha": 2}))
        >>> ck = LoraAppliedCheckpoint(open_checkpoint(d / "base"), LoraAdapter.load(d / "ad"))
        >>> ck.get("q.weight")  # 0 + (alpha / r) · B A
        tensor([[2., 2.],
                [2., 2.],
                [2., 2.]])
    """

    def __init__(self, base: TensorSource, adapter: LoraAdapter) -> None:
        self.base = base
        self.adapter = adapter
        self.path: Path | None = adapter.path
        keys = set(base.keys())
        for name in list(adapter.deltas) + list(adapter.replacements):
            if name not in keys:
                raise SafetensorsError(
                    f"LoRA adapter {adapter.path}: targets tensor {name!r}, which the base model does not have"
                )
        for name, key in adapter.replacements.items():
            assert adapter.file is not None
            if tuple(adapter.file.info(key).shape) != tuple(base.info(name).shape):
                raise SafetensorsError(
                    f"LoRA adapter {adapter.path}: its copy of {name!r} has shape "
                    f"{list(adapter.file.info(key).shape)} but the base tensor has {list(base.info(name).shape)} "
                    "(resized vocabularies are not supported)"
                )
        for name, (ka, kb, _s, tr) in adapter.deltas.items():
            assert adapter.file is not None
            a, b = adapter.file.info(ka), adapter.file.info(kb)
            shape = (a.shape[1], b.shape[0]) if tr else (b.shape[0], a.shape[1])
            if tuple(base.info(name).shape) != shape:
                raise SafetensorsError(
                    f"LoRA adapter {adapter.path}: ΔW for {name!r} has shape {list(shape)} but the base tensor "
                    f"has {list(base.info(name).shape)}"
                )

    def get(self, name: str) -> Tensor:
        """W (the adapter's copy for ``modules_to_save`` / saved embedding layers) + scale · B A if targeted."""
        if name in self.adapter.replacements:
            assert self.adapter.file is not None
            w = self.adapter.file.get(self.adapter.replacements[name]).to(self.base.info(name).dtype)
        else:
            w = self.base.get(name)
        if name not in self.adapter.deltas:
            return w
        work = torch.float64 if w.dtype == torch.float64 else torch.float32
        return (w.to(work) + self.adapter.delta(name, work)).to(w.dtype)


def _inside(folder: Path, name: str) -> Path:
    try:
        return resolve_inside(folder, name, "file")
    except ValueError as e:
        raise SafetensorsError(str(e)) from None


def open_checkpoint(
    path: str | os.PathLike[str], *, base: str | os.PathLike[str] | TensorSource | None = None
) -> TensorSource:
    """Open any supported checkpoint location as a lazy :class:`TensorSource`.

    Accepted: a ``.safetensors`` file; a ``*.index.json``; a folder holding ``model.safetensors.index.json``,
    ``model.safetensors`` or exactly one ``*.safetensors``; a PEFT LoRA or OFT adapter folder
    (``adapter_config.json``; OFT: :mod:`orthokit.io.oft`), applied to ``base`` (a path or an open source; falls back to the adapter's ``base_model_name_or_path`` when
    that is an existing local folder).

    Raises:
        FileNotFoundError: nothing at ``path``. SafetensorsError: unsupported/ambiguous contents (e.g. only
        pickle ``.bin`` files, several unindexed safetensors files, an adapter without a base).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    if p.is_file():
        if p.name.endswith(".index.json"):
            return ShardedCheckpoint(p)
        if p.suffix == ".safetensors":
            return SafetensorsFile(p)
        raise SafetensorsError(f"{p}: unsupported checkpoint file (expected .safetensors or an index .json)")
    if (p / ADAPTER_CONFIG).is_file():
        from orthokit.io.oft import OftAdapter, OftAppliedCheckpoint, peft_type

        is_oft = peft_type(_inside(p, ADAPTER_CONFIG).parent) == "OFT"
        adapter: Any = OftAdapter.load(p) if is_oft else LoraAdapter.load(p)
        if base is None:
            guess = adapter.base_model_name_or_path
            if guess and Path(guess).is_dir():
                base = guess
            else:
                raise SafetensorsError(
                    f"{p} is a LoRA adapter; its base model ({guess!r}) is not a local folder — give the base "
                    "explicitly (config: 'model: BASE+ADAPTER', or base_model)"
                )
        src = base if not isinstance(base, (str, os.PathLike)) else open_checkpoint(base)
        return OftAppliedCheckpoint(src, adapter) if is_oft else LoraAppliedCheckpoint(src, adapter)
    if (p / INDEX_NAME).is_file():
        return ShardedCheckpoint(_inside(p, INDEX_NAME))
    if (p / SINGLE_NAME).is_file():
        return SafetensorsFile(_inside(p, SINGLE_NAME))
    indexes = sorted(p.glob("*.safetensors.index.json"))
    if len(indexes) == 1:
        return ShardedCheckpoint(_inside(p, indexes[0].name))
    files = sorted(p.glob("*.safetensors"))
    if len(files) == 1:
        return SafetensorsFile(_inside(p, files[0].name))
    if len(files) > 1:
        raise SafetensorsError(
            f"{p}: {len(files)} .safetensors files but no {INDEX_NAME} to say which is which"
        )
    if any(p.glob("*.bin")) or any(p.glob("*.pt")):
        raise SafetensorsError(
            f"{p}: only pickle checkpoints (.bin/.pt) found; convert them to safetensors first"
        )
    raise SafetensorsError(f"{p}: no safetensors checkpoint in this folder")


# ----------------------------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class ShardSpec:
    """One output shard: its file name, its tensors with byte offsets, and its serialized header."""

    filename: str
    tensors: tuple[tuple[str, TensorInfo, int, int], ...]
    header: bytes

    @property
    def nbytes(self) -> int:
        """Total file size (header + data)."""
        return len(self.header) + (self.tensors[-1][3] if self.tensors else 0)


def _header(entries: Sequence[tuple[str, TensorInfo, int, int]], metadata: Mapping[str, str]) -> bytes:
    h: dict[str, Any] = {}
    if metadata:
        h["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name, info, b, e in entries:
        h[name] = {"dtype": _CODES[info.dtype], "shape": list(info.shape), "data_offsets": [b, e]}
    raw = json.dumps(h, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def plan_shards(
    tensors: Sequence[tuple[str, TensorInfo]],
    max_shard_bytes: int | None = None,
    *,
    metadata: Mapping[str, str] | None = None,
) -> list[ShardSpec]:
    """Assign tensors (in the given order) to shards of at most ``max_shard_bytes`` data bytes.

    A tensor larger than the limit gets a shard of its own. File names follow Hugging Face:
    ``model.safetensors`` for one shard, ``model-0000i-of-0000N.safetensors`` otherwise.

    Raises:
        ValueError: duplicate names, non-positive shard size, unsupported dtype.
    """
    if max_shard_bytes is not None and max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    seen: set[str] = set()
    groups: list[list[tuple[str, TensorInfo]]] = [[]]
    size = 0
    for name, info in tensors:
        if name in seen:
            raise ValueError(f"duplicate tensor name {name!r}")
        if info.dtype not in _CODES:
            raise ValueError(f"tensor {name!r}: dtype {info.dtype} cannot be stored in safetensors")
        seen.add(name)
        if max_shard_bytes is not None and groups[-1] and size + info.nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append((name, info))
        size += info.nbytes
    meta = {"format": "pt", **(metadata or {})}
    n = len(groups)
    specs = []
    for i, g in enumerate(groups):
        entries = []
        off = 0
        for name, info in g:
            entries.append((name, info, off, off + info.nbytes))
            off += info.nbytes
        fname = SINGLE_NAME if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        specs.append(ShardSpec(fname, tuple(entries), _header(entries, meta)))
    return specs


class StreamingShardWriter:
    """Write planned shards tensor by tensor, each straight to its final offset; then the index.

    Tensors must be written in plan order (the order given to :func:`plan_shards`); each is checked against the
    plan (name, dtype, shape). Files are fsynced when complete. :meth:`close` verifies every tensor was written and
    writes ``model.safetensors.index.json`` (``metadata.total_size`` + ``weight_map``).

    Example:
        >>> import torch, tempfile, pathlib
        >>> from orthokit.io.safetensors_io import plan_shards, StreamingShardWriter, TensorInfo
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> w = StreamingShardWriter(d, plan_shards([("x", TensorInfo(torch.float32, (2,)))]))
        >>> w.write("x", torch.ones(2)); w.close()
        >>> sorted(p.name for p in d.iterdir())
        ['model.safetensors', 'model.safetensors.index.json']
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        shards: Sequence[ShardSpec],
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.shards = list(shards)
        self.metadata = dict(metadata or {})
        self._order = [(si, j) for si, s in enumerate(self.shards) for j in range(len(s.tensors))]
        self._pos = 0
        self._file: Any = None
        self._file_shard = -1
        self.bytes_written = 0

    def _open(self, si: int) -> None:
        self._finish_file()
        self._file = open(self.directory / self.shards[si].filename, "wb")
        self._file.write(self.shards[si].header)
        self._file_shard = si

    def _finish_file(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    def expected(self) -> str | None:
        """Name of the next tensor to write (``None`` when done)."""
        if self._pos >= len(self._order):
            return None
        si, j = self._order[self._pos]
        return self.shards[si].tensors[j][0]

    def write(self, name: str, tensor: Tensor) -> None:
        """Append ``tensor`` as ``name``; must match the next planned entry exactly."""
        if self._pos >= len(self._order):
            raise ValueError(f"all planned tensors were already written; got extra tensor {name!r}")
        si, j = self._order[self._pos]
        pname, info, begin, end = self.shards[si].tensors[j]
        if name != pname:
            raise ValueError(f"tensors must be written in plan order: expected {pname!r}, got {name!r}")
        if tensor.dtype != info.dtype or tuple(tensor.shape) != info.shape:
            raise ValueError(
                f"tensor {name!r}: planned {info.dtype} {list(info.shape)}, got {tensor.dtype} {list(tensor.shape)}"
            )
        if si != self._file_shard:
            self._open(si)
        t = tensor.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.contiguous().reshape(-1)
        if t.numel():
            self._file.write(memoryview(t.view(torch.uint8).numpy()))
        self.bytes_written += end - begin
        self._pos += 1
        if j == len(self.shards[si].tensors) - 1:
            self._finish_file()

    def close(self) -> None:
        """Finish the last shard and write the index; error if planned tensors are missing."""
        if self._pos != len(self._order):
            self._finish_file()
            raise ValueError(
                f"writer closed early: {len(self._order) - self._pos} planned tensors not written (next: {self.expected()!r})"
            )
        self._finish_file()
        for s in self.shards:  # shards with no tensors (empty model)
            if not s.tensors and not (self.directory / s.filename).exists():
                (self.directory / s.filename).write_bytes(s.header)
        total = sum(info.nbytes for s in self.shards for _, info, _, _ in s.tensors)
        index = {
            "metadata": {"total_size": total, **self.metadata},
            "weight_map": {name: s.filename for s in self.shards for name, _, _, _ in s.tensors},
        }
        _write_text_atomic(self.directory / INDEX_NAME, json.dumps(index, indent=2) + "\n")

    def abort(self) -> None:
        """Close the open file without finishing (the caller discards the folder)."""
        if self._file is not None:
            self._file.close()
            self._file = None


def _write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        publish_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_output_dir(out_dir: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder next to ``out_dir``; rename it to ``out_dir`` only if the block succeeds.

    On any exception (including ``KeyboardInterrupt``) the temporary folder is removed and ``out_dir`` is
    untouched; on SIGTERM/SIGHUP it is removed before the process ends. An existing ``out_dir`` raises
    ``FileExistsError`` unless ``overwrite``; then it must be a folder orthokit wrote (its
    :data:`orthokit._fs.MARKER_NAME` lists every file in it) or an empty one — anything else raises
    :class:`orthokit._fs.UnsafeOutputError` before any work, as does the current directory or a parent of it.
    The old folder is moved aside, the new one renamed into place, and the old one deleted (the destination is
    never partial). The published folder holds a marker listing the files written. Temporary folders left in
    the same parent by killed processes (their owner pid, recorded inside, is gone) are removed first, with a
    one-line notice on stderr.

    Example:
        >>> import tempfile, pathlib
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> with atomic_output_dir(root / "out") as tmp:
        ...     _ = (tmp / "f.txt").write_text("hi")
        >>> (root / "out" / "f.txt").read_text(), sorted(p.name for p in (root / "out").iterdir())
        ('hi', ['.orthokit-output.json', 'f.txt'])
    """
    out = Path(out_dir).absolute()
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise FileExistsError(
                f"output folder {out} already exists (use --overwrite / overwrite=True to replace it)"
            )
        if not out.is_dir() or out.is_symlink():
            raise FileExistsError(f"output path {out} exists and is not a folder")
        check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(out.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    register_temp(tmp)
    try:
        write_lock(tmp)
        publish_mode(tmp, directory=True)
        yield tmp
        write_marker(tmp)
        os.unlink(tmp / LOCK_NAME)
        old: Path | None = None
        if out.exists():
            check_replaceable(out)  # re-check: it may have changed while we worked
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        with contextlib.suppress(OSError):
            dfd = os.open(out.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        unregister_temp(tmp)


def save_sharded(
    state: Mapping[str, Tensor],
    out_dir: str | os.PathLike[str],
    *,
    max_shard_bytes: int | None = None,
    overwrite: bool = False,
    metadata: Mapping[str, str] | None = None,
) -> list[ShardSpec]:
    """Write a state dict as (sharded) safetensors + index into ``out_dir``, atomically.

    Args:
        state: name → tensor (any device; written from CPU). out_dir: destination folder (must not exist
            unless ``overwrite``). max_shard_bytes: shard size limit (``None`` = one file).
        metadata: extra ``__metadata__`` strings.

    Returns:
        The shard plan that was written.
    """
    items = [(k, TensorInfo(v.dtype, tuple(v.shape))) for k, v in state.items()]
    plan = plan_shards(items, max_shard_bytes, metadata=metadata)
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        w = StreamingShardWriter(tmp, plan)
        try:
            for s in plan:
                for name, _, _, _ in s.tensors:
                    w.write(name, state[name])
            w.close()
        except BaseException:
            w.abort()
            raise
    return plan


def load_file(path: str | os.PathLike[str], *, copy: bool = True) -> dict[str, Tensor]:
    """Load every tensor of a checkpoint (any form accepted by :func:`open_checkpoint`) into a dict.

    With ``copy=True`` (default) tensors are cloned into ordinary memory; ``copy=False`` returns the
    memory-mapped views (read-only by convention).
    """
    src = open_checkpoint(path)
    return {k: (src.get(k).clone() if copy else src.get(k)) for k in src.keys()}
