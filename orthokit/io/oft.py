"""PEFT OFT adapter folders: orthogonal block rotations of ``nn.Linear`` inputs (Qiu et al., NeurIPS 2023).

PEFT (≥ 0.16) stores, per targeted module, ``oft_R.weight`` of shape ``[r, b(b−1)/2]``: the strict upper
triangles of ``r`` skew-symmetric ``b × b`` blocks ``Q_i`` (``b = oft_block_size``; one shared block when
``block_share``). A block's rotation is the Cayley transform ``R_i = (I − Q_i)(I + Q_i)⁻¹`` — or, when
``use_cayley_neumann`` (PEFT's default), its truncated Neumann series ``I + 2Q + 2Q² + … + Q^{k−1}`` with
``k = num_cayley_neumann_terms``; ``b`` is read off the stored shape — and the merged weight is ``W' = W · blockdiag(R)ᵀ`` (PEFT's
``OFTLayer.merge``: ``(blockdiag(R) Wᵀ)ᵀ``).

* :class:`OftAppliedCheckpoint` gives ``W'`` exactly as PEFT merges it (Neumann series included), so any
  full-weight merge method can take OFT folders.
* :meth:`OftAdapter.rotations` gives the *exact* Cayley rotations (orthogonal to rounding), the input of
  ``orthomerge_oft``: the Neumann series is an approximation of them and is not orthogonal, so the rotations
  merged on SO(b) are the ones it approximates (a difference of order ``‖Q‖^k``).

Only ``nn.Linear`` targets are supported (2-D weights whose input size is a multiple of ``b``); ``coft``,
``bias`` other than ``"none"``, ``modules_to_save`` and the pre-0.16 full-matrix ``oft_r`` layout are refused
with a one-line error.

Example:
    >>> import json, tempfile, pathlib, torch
    >>> from safetensors.torch import save_file
    >>> from orthokit.io.safetensors_io import save_sharded, open_checkpoint
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = save_sharded({"q.weight": torch.eye(2)}, d / "base")
    >>> (d / "ad").mkdir()
    >>> save_file({"base_model.model.q.oft_R.weight": torch.tensor([[0.5]])}, str(d / "ad" / "adapter_model.safetensors"))
    >>> _ = (d / "ad" / "adapter_config.json").write_text(json.dumps(
    ...     {"peft_type": "OFT", "oft_block_size": 2, "r": 0, "use_cayley_neumann": False}))
    >>> ck = OftAppliedCheckpoint(open_checkpoint(d / "base"), OftAdapter.load(d / "ad"))
    >>> ck.get("q.weight")  # Cayley of [[0, .5], [-.5, 0]]: a rotation by 2·atan(0.5)
    tensor([[ 0.6000,  0.8000],
            [-0.8000,  0.6000]])

Reference: Z. Qiu et al., "Controlling Text-to-Image Diffusion by Orthogonal Finetuning", NeurIPS 2023
(arXiv:2306.07280); PEFT's ``tuners/oft/layer.py`` (read for the storage layout and merge rule).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from orthokit.io.safetensors_io import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    AdapterAppliedCheckpoint,
    SafetensorsError,
    SafetensorsFile,
    TensorSource,
    _finite_number,
    _inside,
)

__all__ = ["OftAdapter", "OftAppliedCheckpoint", "cayley_blocks", "apply_block_rotation", "peft_type"]

_KEY = re.compile(r"^(?:base_model\.model\.)?(.+?)\.oft_R(?:\.[^.]+)?\.weight$")


def peft_type(folder: str | os.PathLike[str]) -> str:
    """The upper-cased ``peft_type`` of an adapter folder (``"LORA"`` when the config omits it)."""
    p = Path(folder) / ADAPTER_CONFIG
    try:
        cfg = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SafetensorsError(f"{p}: cannot read the adapter config ({e})") from None
    return str(cfg.get("peft_type", "LORA")).upper() if isinstance(cfg, dict) else "?"


def _skew(vec: Tensor, b: int) -> Tensor:
    rows, cols = torch.triu_indices(b, b, 1)
    m = torch.zeros(vec.shape[0], b, b, dtype=vec.dtype)
    m[:, rows, cols] = vec
    return m - m.transpose(-1, -2)


def cayley_blocks(vec: Tensor, b: int, neumann_terms: int | None = None) -> Tensor:
    """Rotations ``[r, b, b]`` from PEFT's packed skew parameters ``[r, b(b−1)/2]``.

    ``neumann_terms=None``: the exact Cayley map ``(I − Q)(I + Q)⁻¹``; else PEFT's truncated Neumann series.

    Example:
        >>> R = cayley_blocks(torch.tensor([[0.1, 0.2, 0.3]], dtype=torch.float64), 3)
        >>> torch.allclose(R[0] @ R[0].T, torch.eye(3, dtype=torch.float64))
        True
    """
    if vec.dim() != 2 or vec.shape[1] != b * (b - 1) // 2:
        raise ValueError(
            f"OFT parameters must have shape [r, {b * (b - 1) // 2}] for block size {b}, got {list(vec.shape)}"
        )
    q = _skew(vec, b)
    eye = torch.eye(b, dtype=vec.dtype).expand_as(q)
    if neumann_terms is None:
        return torch.linalg.solve(eye + q, eye - q, left=False)
    r = eye.clone()
    if neumann_terms > 1:
        r = r + 2.0 * q
        if neumann_terms > 2:
            power = q @ q
            r = r + 2.0 * power
            for _ in range(3, neumann_terms - 1):
                power = power @ q
                r = r + 2.0 * power
            power = power @ q
            r = r + power
    return r


def apply_block_rotation(w: Tensor, rot: Tensor) -> Tensor:
    """``W · blockdiag(R)ᵀ`` for ``W [out, in]`` and blocks ``R [n, b, b]`` (``n = 1`` = one block shared).

    Example:
        >>> w = torch.randn(3, 4, dtype=torch.float64); R = cayley_blocks(torch.randn(2, 1, dtype=torch.float64), 2)
        >>> torch.allclose(apply_block_rotation(w, R), w @ torch.block_diag(*R).T)
        True
    """
    out_f, in_f = w.shape
    n, b, _ = rot.shape
    blocks = in_f // b
    if blocks * b != in_f or n not in (1, blocks):
        raise ValueError(f"a weight with {in_f} inputs does not split into {n} OFT block(s) of size {b}")
    r = rot.expand(blocks, b, b) if n == 1 else rot
    return torch.einsum("okc,kdc->okd", w.reshape(out_f, blocks, b), r).reshape(out_f, in_f)


@dataclass
class OftAdapter:
    """A PEFT OFT adapter folder. ``deltas[name]`` maps a base tensor name to its ``oft_R.weight`` key (the same
    attribute name as :class:`~orthokit.io.safetensors_io.LoraAdapter`, so planners treat both alike)."""

    path: Path
    config: dict[str, Any]
    neumann_terms: int | None
    deltas: dict[str, str] = field(default_factory=dict)
    block_sizes: dict[str, int] = field(default_factory=dict)
    replacements: dict[str, str] = field(default_factory=dict)
    file: SafetensorsFile | None = None

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> OftAdapter:
        """Read and validate a PEFT OFT adapter folder (see the module docstring for what is refused)."""
        folder = Path(folder)
        cfg_path = _inside(folder, ADAPTER_CONFIG)
        try:
            cfg = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as e:
            raise SafetensorsError(f"{cfg_path}: not valid JSON ({e})") from None
        if str(cfg.get("peft_type", "")).upper() != "OFT":
            raise SafetensorsError(f"{cfg_path}: peft_type {cfg.get('peft_type')!r} is not OFT")
        for key in ("coft", "modules_to_save"):
            if cfg.get(key):
                raise SafetensorsError(f"{cfg_path}: OFT with {key}={cfg.get(key)!r} is not supported")
        if cfg.get("bias", "none") != "none":
            raise SafetensorsError(f"{cfg_path}: OFT with bias={cfg.get('bias')!r} is not supported")
        neumann = None
        if cfg.get("use_cayley_neumann", True):
            neumann = int(
                _finite_number(
                    cfg.get("num_cayley_neumann_terms", 5), "num_cayley_neumann_terms", cfg_path, integer=True
                )
            )
        wfile = folder / ADAPTER_WEIGHTS
        if not wfile.is_file():
            raise FileNotFoundError(f"{folder}: missing {ADAPTER_WEIGHTS}")
        f = SafetensorsFile(_inside(folder, ADAPTER_WEIGHTS))
        ad = cls(folder, cfg, neumann, file=f)
        for key in f.keys():
            m = _KEY.match(key)
            if m is None:
                f.close()
                raise SafetensorsError(
                    f"{wfile}: tensor {key!r} is not a PEFT ≥ 0.16 OFT parameter (oft_R.weight); older layouts and "
                    "modules_to_save are not supported"
                )
            info = f.info(key)
            n_el = info.shape[1] if len(info.shape) == 2 else 0
            b = int(round((1 + math.sqrt(1 + 8 * n_el)) / 2))
            if len(info.shape) != 2 or b < 2 or b * (b - 1) // 2 != n_el:
                f.close()
                raise SafetensorsError(
                    f"{wfile}: {key!r} has shape {list(info.shape)}, not [blocks, b(b-1)/2] packed skew parameters"
                )
            ad.deltas[f"{m.group(1)}.weight"] = key
            ad.block_sizes[f"{m.group(1)}.weight"] = b
        if not ad.deltas:
            f.close()
            raise SafetensorsError(f"{wfile}: the adapter contains no OFT tensors")
        return ad

    def _vec(self, name: str) -> Tensor:
        assert self.file is not None
        if name not in self.deltas:
            raise KeyError(f"OFT adapter {self.path} has no rotation for {name!r}")
        return self.file.get(self.deltas[name])

    def rotations(self, name: str, dtype: torch.dtype = torch.float64) -> Tensor:
        """The exact Cayley rotations ``[n, b, b]`` of ``name`` (computed in float64, returned in ``dtype``)."""
        return cayley_blocks(self._vec(name).to(torch.float64), self.block_sizes[name]).to(dtype)

    def applied_rotations(self, name: str, dtype: torch.dtype) -> Tensor:
        """The blocks PEFT multiplies into the weight (Neumann series when the adapter uses it), in ``dtype``."""
        return cayley_blocks(self._vec(name).to(dtype), self.block_sizes[name], self.neumann_terms)


class OftAppliedCheckpoint(AdapterAppliedCheckpoint):
    """A base checkpoint with an OFT adapter merged in lazily: ``get(name) = W · blockdiag(R)ᵀ`` (PEFT's merge,
    computed in float32 — float64 for float64 weights — and cast back to the weight's dtype)."""

    def __init__(self, base: TensorSource, adapter: OftAdapter) -> None:
        self.base = base
        self.adapter = adapter
        self.path: Path | None = adapter.path
        keys = set(base.keys())
        for name, key in adapter.deltas.items():
            if name not in keys:
                raise SafetensorsError(
                    f"OFT adapter {adapter.path}: targets {name!r}, which the base model lacks"
                )
            shape = base.info(name).shape
            assert adapter.file is not None
            n = adapter.file.info(key).shape[0]
            b = adapter.block_sizes[name]
            if len(shape) != 2 or shape[1] % b or n not in (1, shape[1] // b):
                raise SafetensorsError(
                    f"OFT adapter {adapter.path}: {n} block(s) of size {b} do not fit {name!r} of shape {list(shape)} "
                    "(only nn.Linear targets are supported)"
                )

    def get(self, name: str) -> Tensor:
        """W, rotated if the adapter targets ``name``."""
        w = self.base.get(name)
        if name not in self.adapter.deltas:
            return w
        work = torch.float64 if w.dtype == torch.float64 else torch.float32
        return apply_block_rotation(w.to(work), self.adapter.applied_rotations(name, work)).to(w.dtype)
