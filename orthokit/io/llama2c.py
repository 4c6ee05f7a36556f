"""Checked reader for llama2.c legacy ("v0") checkpoints and conversion to ``transformers.LlamaForCausalLM``.

Format (Karpathy's llama2.c, ``export.py::legacy_export`` and ``run.c::memory_map_weights``,
https://github.com/karpathy/llama2.c): a 28-byte header of 7 little-endian int32
``(dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len)`` — ``vocab_size < 0`` marks an untied
classifier — followed by float32 weights in this order (``hs = dim // n_heads``, ``kv = n_kv_heads * hs``)::

    token_embedding_table [vocab, dim]
    rms_att_weight        [n_layers, dim]
    wq                    [n_layers, dim, dim]        (out, in) as in nn.Linear
    wk, wv                [n_layers, kv, dim]
    wo                    [n_layers, dim, dim]
    rms_ffn_weight        [n_layers, dim]
    w1                    [n_layers, hidden_dim, dim]
    w2                    [n_layers, dim, hidden_dim]
    w3                    [n_layers, hidden_dim, dim]
    rms_final_weight      [dim]
    freq_cis_real         [seq_len, hs // 2]          (unused by run.c, which recomputes RoPE)
    freq_cis_imag         [seq_len, hs // 2]
    wcls                  [vocab, dim]                (present only when vocab_size < 0)

Every check happens before any weight is read: the header values must be positive and bounded (a hostile header
cannot make the reader allocate more than the file's own size), ``dim`` divisible by ``n_heads``, ``n_heads`` by
``n_kv_heads``, the head size even, and the file size must be *exactly* what the header implies. The file is read
once into one buffer; the returned tensors are views of it. Non-finite weights are refused.

:func:`load_llama2c` builds a ``LlamaForCausalLM`` (RMSNorm eps 1e-5, RoPE θ = 10000, no biases, as run.c). llama2.c
rotates *interleaved* pairs ``(2i, 2i+1)`` of each head, Hugging Face Llama rotates the *halves* ``(i, i + hs/2)``;
the q/k rows are permuted per head accordingly (the permutation of transformers'
``convert_llama_weights_to_hf.py``), which makes the two models compute the same logits.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from orthokit.io.llama2c import read_llama2c_header, write_llama2c
    >>> with tempfile.TemporaryDirectory() as t:
    ...     p = Path(t) / "m.bin"
    ...     h = write_llama2c(p, dim=8, hidden_dim=16, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=5, seq_len=4)
    ...     read_llama2c_header(p) == h
    True
"""

from __future__ import annotations

import math
import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM

__all__ = [
    "HEADER_BYTES",
    "Llama2cHeader",
    "llama2c_layout",
    "load_llama2c",
    "read_llama2c",
    "read_llama2c_embeddings",
    "read_llama2c_header",
    "write_llama2c",
]

HEADER_BYTES = 28
# Upper bounds on header values: far above any llama2.c/Llama model (Llama-3-70B: dim 8192, hidden 28672,
# 80 layers, 64 heads, vocab 128256), far below what would overflow or allocate absurdly before the size check.
_LIMITS = {
    "dim": 1 << 16,
    "hidden_dim": 1 << 20,
    "n_layers": 1 << 12,
    "n_heads": 1 << 12,
    "n_kv_heads": 1 << 12,
    "vocab_size": 1 << 24,
    "seq_len": 1 << 22,
}


@dataclass(frozen=True)
class Llama2cHeader:
    """The 7 header integers of a llama2.c v0 checkpoint; ``shared_classifier`` is the sign of ``vocab_size``."""

    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    shared_classifier: bool
    seq_len: int

    @property
    def head_size(self) -> int:
        """``dim // n_heads``."""
        return self.dim // self.n_heads

    def n_bytes(self) -> int:
        """Exact file size (header included) this header implies."""
        return HEADER_BYTES + 4 * sum(math.prod(s) for _, s in llama2c_layout(self))

    def pack(self) -> bytes:
        """The 28 header bytes (``vocab_size`` negated for an untied classifier)."""
        v = self.vocab_size if self.shared_classifier else -self.vocab_size
        return struct.pack(
            "<7i", self.dim, self.hidden_dim, self.n_layers, self.n_heads, self.n_kv_heads, v, self.seq_len
        )


def llama2c_layout(h: Llama2cHeader) -> list[tuple[str, tuple[int, ...]]]:
    """``(name, shape)`` of every float32 array of the file, in file order (run.c's ``memory_map_weights``)."""
    L, d, f, hs = h.n_layers, h.dim, h.hidden_dim, h.head_size
    kv = h.n_kv_heads * hs
    out: list[tuple[str, tuple[int, ...]]] = [
        ("token_embedding_table", (h.vocab_size, d)),
        ("rms_att_weight", (L, d)),
        ("wq", (L, h.n_heads * hs, d)),
        ("wk", (L, kv, d)),
        ("wv", (L, kv, d)),
        ("wo", (L, d, h.n_heads * hs)),
        ("rms_ffn_weight", (L, d)),
        ("w1", (L, f, d)),
        ("w2", (L, d, f)),
        ("w3", (L, f, d)),
        ("rms_final_weight", (d,)),
        ("freq_cis_real", (h.seq_len, hs // 2)),
        ("freq_cis_imag", (h.seq_len, hs // 2)),
    ]
    if not h.shared_classifier:
        out.append(("wcls", (h.vocab_size, d)))
    return out


def _check_path(path: str | os.PathLike[str]) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"llama2.c checkpoint path must be a str or os.PathLike, got {type(path).__name__}")
    p = Path(path)
    if not p.exists():
        raise ValueError(f"llama2.c checkpoint {str(p)!r} does not exist")
    if not p.is_file():
        raise ValueError(f"llama2.c checkpoint {str(p)!r} is not a regular file")
    return p


def _parse_header(raw: bytes, name: str) -> Llama2cHeader:
    if len(raw) < HEADER_BYTES:
        raise ValueError(f"{name}: {len(raw)} bytes, shorter than the {HEADER_BYTES}-byte llama2.c header")
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = struct.unpack("<7i", raw[:HEADER_BYTES])
    vals = {
        "dim": dim,
        "hidden_dim": hidden,
        "n_layers": n_layers,
        "n_heads": n_heads,
        "n_kv_heads": n_kv,
        "vocab_size": abs(vocab),
        "seq_len": seq_len,
    }
    desc = " ".join(f"{k}={v}" for k, v in vals.items())
    bad = [k for k, v in vals.items() if not 0 < v <= _LIMITS[k]]
    if bad:
        raise ValueError(f"{name}: implausible llama2.c header ({', '.join(bad)} out of range): {desc}")
    if dim % n_heads:
        raise ValueError(f"{name}: implausible llama2.c header (dim not divisible by n_heads): {desc}")
    if n_heads % n_kv:
        raise ValueError(f"{name}: implausible llama2.c header (n_heads not divisible by n_kv_heads): {desc}")
    if (dim // n_heads) % 2:
        raise ValueError(
            f"{name}: implausible llama2.c header (odd head size {dim // n_heads}, RoPE needs pairs)"
        )
    return Llama2cHeader(dim, hidden, n_layers, n_heads, n_kv, abs(vocab), vocab > 0, seq_len)


def read_llama2c_header(path: str | os.PathLike[str]) -> Llama2cHeader:
    """Parse and check the header only (reads 28 bytes); the file size must match it exactly.

    Example:
        >>> from orthokit.bench.data import data_dir
        >>> h = read_llama2c_header(data_dir() / "models" / "stories260K.bin")
        >>> (h.dim, h.n_layers, h.n_heads, h.n_kv_heads, h.vocab_size, h.shared_classifier)
        (64, 5, 8, 4, 512, True)
    """
    p = _check_path(path)
    with p.open("rb") as f:
        h = _parse_header(f.read(HEADER_BYTES), p.name)
    _check_size(h, p.stat().st_size, p.name)
    return h


def _check_size(h: Llama2cHeader, size: int, name: str) -> None:
    need = h.n_bytes()
    if size != need:
        raise ValueError(
            f"{name}: {size} bytes, but the llama2.c v0 header (dim={h.dim} hidden_dim={h.hidden_dim} "
            f"n_layers={h.n_layers} n_heads={h.n_heads} n_kv_heads={h.n_kv_heads} vocab_size={h.vocab_size} "
            f"shared_classifier={h.shared_classifier} seq_len={h.seq_len}) implies exactly {need}"
        )


def _read_exact(p: Path, start: int, n: int) -> bytearray:
    buf = bytearray(n)
    with p.open("rb") as f:
        f.seek(start)
        got = f.readinto(buf)
    if got != n:  # the file shrank between stat and read
        raise ValueError(f"{p.name}: could read only {got} of {n} bytes")
    return buf


def _floats(buf: bytearray) -> Tensor:
    """float32 view of little-endian bytes (a copy only on big-endian hosts)."""
    if sys.byteorder == "little":
        return torch.frombuffer(buf, dtype=torch.float32)
    return torch.from_numpy(np.frombuffer(buf, dtype="<f4").astype(np.float32))  # pragma: no cover


def read_llama2c(path: str | os.PathLike[str]) -> tuple[Llama2cHeader, dict[str, Tensor]]:
    """Header and float32 arrays (llama2.c's names and shapes, see :func:`llama2c_layout`) of a v0 checkpoint.

    The file is read once; the tensors are views of that one buffer (``wcls`` is the token table itself when
    the classifier is shared). Raises a one-line ``ValueError`` naming the file for a missing or malformed file
    (see the module docstring) or non-finite weights.

    Example:
        >>> from orthokit.bench.data import data_dir
        >>> h, w = read_llama2c(data_dir() / "models" / "stories260K.bin")
        >>> tuple(w["wk"].shape), w["wcls"] is w["token_embedding_table"]
        ((5, 32, 64), True)
    """
    p = _check_path(path)
    with p.open("rb") as f:
        h = _parse_header(f.read(HEADER_BYTES), p.name)
    _check_size(h, p.stat().st_size, p.name)
    buf = _read_exact(p, HEADER_BYTES, h.n_bytes() - HEADER_BYTES)
    data = _floats(buf)
    out: dict[str, Tensor] = {}
    off = 0
    for name, shape in llama2c_layout(h):
        n = math.prod(shape)
        t = data[off : off + n].view(shape)
        off += n
        if name.startswith("freq_cis"):  # unused by run.c; not checked
            out[name] = t
            continue
        if not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise ValueError(f"{p.name}: {bad} non-finite value(s) in {name}")
        out[name] = t
    if h.shared_classifier:
        out["wcls"] = out["token_embedding_table"]
    return h, out


def read_llama2c_embeddings(path: str | os.PathLike[str], *, partial: bool = False) -> Tensor:
    """Token-embedding table ``[vocab, dim]`` (float32) of a llama2.c v0 checkpoint; reads only those bytes.

    The header is checked as in :func:`read_llama2c` and so is the exact file size, unless ``partial=True``, which
    accepts any file holding at least the header and the token table (a truncated or prefix-only file).

    Example:
        >>> from orthokit.bench.data import data_dir
        >>> read_llama2c_embeddings(data_dir() / "models" / "stories260K.bin").shape
        torch.Size([512, 64])
    """
    p = _check_path(path)
    with p.open("rb") as f:
        h = _parse_header(f.read(HEADER_BYTES), p.name)
    size = p.stat().st_size
    need = HEADER_BYTES + 4 * h.vocab_size * h.dim
    if partial:
        if size < need:
            raise ValueError(f"{p.name}: {size} bytes, the {h.vocab_size}x{h.dim} token table needs {need}")
    else:
        _check_size(h, size, p.name)
    E = _floats(_read_exact(p, HEADER_BYTES, need - HEADER_BYTES))
    E = E.view(h.vocab_size, h.dim)
    if not bool(torch.isfinite(E).all()):
        raise ValueError(f"{p.name}: non-finite values in the token table token_embedding_table")
    return E


def _rope_interleaved_to_half(w: Tensor, heads: int) -> Tensor:
    """Permute the rows of q/k (``[heads*hs, in]``) from llama2.c's pairs (2i, 2i+1) to HF's (i, i + hs/2)."""
    out_dim, in_dim = w.shape
    return w.reshape(heads, out_dim // heads // 2, 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def load_llama2c(path: str | os.PathLike[str], *, dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    """``transformers.LlamaForCausalLM`` (eval mode, ``dtype``) with the weights of a llama2.c v0 checkpoint.

    Config: RMSNorm eps 1e-5, RoPE θ = 10000 (default rope), no biases, ``max_position_embeddings = seq_len``,
    ``tie_word_embeddings`` from the header's sign. q/k rows are permuted interleaved → half-split RoPE (see the
    module docstring); every other weight is copied unchanged.

    Example:
        >>> import torch
        >>> from orthokit.bench.data import data_dir
        >>> m = load_llama2c(data_dir() / "models" / "stories260K.bin")
        >>> m(torch.tensor([[1, 300, 301]])).logits.shape
        torch.Size([1, 3, 512])
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"load_llama2c: dtype must be a floating torch.dtype, got {dtype!r}")
    h, w = read_llama2c(path)
    try:
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError as e:  # pragma: no cover - the hf extra is installed for the tests
        raise ImportError("load_llama2c needs transformers (pip install 'orthokit[hf]')") from e

    cfg = LlamaConfig(
        vocab_size=h.vocab_size,
        hidden_size=h.dim,
        intermediate_size=h.hidden_dim,
        num_hidden_layers=h.n_layers,
        num_attention_heads=h.n_heads,
        num_key_value_heads=h.n_kv_heads,
        head_dim=h.head_size,
        max_position_embeddings=h.seq_len,
        rms_norm_eps=1e-5,
        hidden_act="silu",
        tie_word_embeddings=h.shared_classifier,
        attention_bias=False,
        mlp_bias=False,
    )
    sd: dict[str, Tensor] = {
        "model.embed_tokens.weight": w["token_embedding_table"],
        "model.norm.weight": w["rms_final_weight"],
    }
    for i in range(h.n_layers):
        pre = f"model.layers.{i}."
        sd[pre + "input_layernorm.weight"] = w["rms_att_weight"][i]
        sd[pre + "self_attn.q_proj.weight"] = _rope_interleaved_to_half(w["wq"][i], h.n_heads)
        sd[pre + "self_attn.k_proj.weight"] = _rope_interleaved_to_half(w["wk"][i], h.n_kv_heads)
        sd[pre + "self_attn.v_proj.weight"] = w["wv"][i]
        sd[pre + "self_attn.o_proj.weight"] = w["wo"][i]
        sd[pre + "post_attention_layernorm.weight"] = w["rms_ffn_weight"][i]
        sd[pre + "mlp.gate_proj.weight"] = w["w1"][i]
        sd[pre + "mlp.down_proj.weight"] = w["w2"][i]
        sd[pre + "mlp.up_proj.weight"] = w["w3"][i]
    sd["lm_head.weight"] = w["wcls"]
    model = LlamaForCausalLM(cfg).to(dtype)
    with torch.no_grad():
        params = dict(model.named_parameters(remove_duplicate=False))
        missing = sorted(set(params) - set(sd))
        if missing:  # pragma: no cover - a transformers layout change
            raise ValueError(
                f"load_llama2c: transformers' LlamaForCausalLM has unmapped parameters {missing[:3]}"
            )
        for k, p in params.items():
            if tuple(p.shape) != tuple(sd[k].shape):  # pragma: no cover - guarded by the header checks
                raise ValueError(
                    f"load_llama2c: {k} has shape {tuple(p.shape)}, checkpoint {tuple(sd[k].shape)}"
                )
            p.copy_(sd[k])
    return model.eval()


def write_llama2c(
    path: str | os.PathLike[str],
    *,
    dim: int,
    hidden_dim: int,
    n_layers: int,
    n_heads: int,
    n_kv_heads: int,
    vocab_size: int,
    seq_len: int,
    shared_classifier: bool = True,
    weights: dict[str, Tensor] | None = None,
    seed: int = 0,
) -> Llama2cHeader:
    """Write a llama2.c v0 checkpoint (``weights`` by llama2.c name, missing ones random N(0, 0.02²), norms 1).

    ``freq_cis_real/imag`` are written as export.py does (cos/sin of ``pos * 10000^(-2i/hs)``) unless given.
    Meant for tests and tiny synthetic models; the file is written to a temporary name and renamed.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> with tempfile.TemporaryDirectory() as t:
        ...     h = write_llama2c(Path(t) / "m.bin", dim=8, hidden_dim=16, n_layers=2, n_heads=2, n_kv_heads=2,
        ...                       vocab_size=7, seq_len=4, shared_classifier=False)
        ...     (Path(t) / "m.bin").stat().st_size == h.n_bytes()
        True
    """
    vals = (
        dim,
        hidden_dim,
        n_layers,
        n_heads,
        n_kv_heads,
        vocab_size if shared_classifier else -vocab_size,
        seq_len,
    )
    h = _parse_header(struct.pack("<7i", *vals), str(path))
    weights = dict(weights or {})
    layout = dict(llama2c_layout(h))
    unknown = sorted(set(weights) - set(layout))
    if unknown:
        raise ValueError(
            f"write_llama2c: unknown weight name(s) {unknown}; expected some of {sorted(layout)}"
        )
    g = torch.Generator().manual_seed(seed)
    hs = h.head_size
    inv = 10000.0 ** (-torch.arange(0, hs, 2, dtype=torch.float64) / hs)
    ang = torch.arange(h.seq_len, dtype=torch.float64)[:, None] * inv[None, :]
    parts = []
    for name, shape in llama2c_layout(h):
        if name in weights:
            t = weights[name]
            if tuple(t.shape) != shape:
                raise ValueError(f"write_llama2c: {name} has shape {tuple(t.shape)}, expected {shape}")
        elif name.startswith("rms_"):
            t = torch.ones(shape)
        elif name == "freq_cis_real":
            t = ang.cos()
        elif name == "freq_cis_imag":
            t = ang.sin()
        else:
            t = torch.randn(shape, generator=g) * 0.02
        parts.append(t.detach().to(torch.float32).contiguous().reshape(-1))
    payload = torch.cat(parts).numpy().astype("<f4").tobytes()
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_bytes(h.pack() + payload)
    os.replace(tmp, p)
    return h
