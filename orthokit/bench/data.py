"""Loaders for the real data bundled beside the repository in ``../shared/data``.

Nothing is downloaded: every loader reads local files and raises :class:`DataNotFoundError`
with the path it looked at when they are missing. The data folder is found, in order, from
``$ORTHOKIT_DATA``, then ``<repo>/../shared/data`` (the layout CI uses), then ``./shared/data``.

Example:
    >>> import torch
    >>> from orthokit.bench.data import load_mnist, char_corpus
    >>> (xtr, ytr), (xte, yte) = load_mnist(limit=100)   # float images in [0, 1], int64 labels (first 100)
    >>> tuple(xtr.shape), xtr.dtype, ytr.dtype, bool(0 <= xtr.min() and xtr.max() <= 1)
    ((100, 784), torch.float32, torch.int64, True)
    >>> corpus = char_corpus("tinyshakespeare")          # last 10 % of the text held out for validation
    >>> corpus.vocab_size, corpus.decode(corpus.train[:9])
    (65, 'First Cit')
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "DataNotFoundError",
    "data_dir",
    "load_mnist",
    "load_text",
    "CharCorpus",
    "char_corpus",
    "get_batch",
]


class DataNotFoundError(FileNotFoundError):
    """Raised when ``../shared/data`` (or a file inside it) is missing."""


def _candidates() -> list[Path]:
    out = []
    env = os.environ.get("ORTHOKIT_DATA")
    if env:
        out.append(Path(env))
    repo = Path(__file__).resolve().parents[2]
    out.append(repo.parent / "shared" / "data")
    out.append(Path.cwd().parent / "shared" / "data")
    out.append(Path.cwd() / "shared" / "data")
    return out


def data_dir() -> Path:
    """Return the bundled data folder, or raise :class:`DataNotFoundError` naming where it looked."""
    for c in _candidates():
        if c.is_dir():
            return c
    looked = ", ".join(str(c) for c in _candidates())
    raise DataNotFoundError(
        f"orthokit's bundled data folder was not found (looked in: {looked}). "
        "Place the project's shared/ folder beside the repository or set ORTHOKIT_DATA."
    )


def _file(*parts: str) -> Path:
    p = data_dir().joinpath(*parts)
    if not p.is_file():
        raise DataNotFoundError(f"expected data file {p} is missing")
    return p


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    magic = struct.unpack(">I", raw[:4])[0]
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    arr = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"corrupt IDX file {path}: header says {dims}, found {arr.size} values")
    return arr.reshape(dims)


@lru_cache(maxsize=2)
def _mnist_np(split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    x = _read_idx(_file("mnist", f"{prefix}-images-idx3-ubyte.gz"))
    y = _read_idx(_file("mnist", f"{prefix}-labels-idx1-ubyte.gz"))
    return x, y


def load_mnist(
    flatten: bool = True, limit: int | None = None
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Full MNIST as float tensors in [0, 1] and int64 labels: ``((x_train, y_train), (x_test, y_test))``.

    Args:
        flatten: return ``[N, 784]`` instead of ``[N, 1, 28, 28]``.
        limit: keep only the first ``limit`` examples of each split (for quick runs).
    """
    out = []
    for split in ("train", "test"):
        x, y = _mnist_np(split)
        if limit is not None:
            x, y = x[:limit], y[:limit]
        xt = torch.from_numpy(x.astype(np.float32) / 255.0)
        xt = xt.reshape(len(xt), -1) if flatten else xt.reshape(len(xt), 1, 28, 28)
        out.append((xt, torch.from_numpy(y.astype(np.int64))))
    return out[0], out[1]


_TEXTS = {
    "tinyshakespeare": ("tinyshakespeare.txt",),
    "wikitext2_valid": ("wikitext2", "wiki.valid.tokens.txt"),
    "wikitext2_test": ("wikitext2", "wiki.test.tokens.txt"),
}


def load_text(name: str) -> str:
    """Raw text of a bundled corpus: ``tinyshakespeare``, ``wikitext2_valid`` or ``wikitext2_test``."""
    if name not in _TEXTS:
        raise ValueError(f"unknown corpus {name!r}; valid: {', '.join(_TEXTS)}")
    return _file(*_TEXTS[name]).read_text(encoding="utf-8")


@dataclass
class CharCorpus:
    """A character-level corpus: vocabulary and train/validation token tensors (held-out tail = validation)."""

    chars: list[str]
    train: torch.Tensor
    val: torch.Tensor

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, s: str) -> torch.Tensor:
        idx = {c: i for i, c in enumerate(self.chars)}
        unk = idx.get(" ", 0)
        return torch.tensor([idx.get(c, unk) for c in s], dtype=torch.long)

    def decode(self, t: torch.Tensor) -> str:
        return "".join(self.chars[int(i)] for i in t)


def char_corpus(
    name: str = "tinyshakespeare", val_fraction: float = 0.1, chars: list[str] | None = None
) -> CharCorpus:
    """Character-level corpus with the last ``val_fraction`` of the text held out for validation.

    Args:
        name: a corpus accepted by :func:`load_text`, or several joined with ``+``
            (e.g. ``"tinyshakespeare+wikitext2_valid"``) sharing one vocabulary.
        chars: a fixed vocabulary (characters outside it map to space), e.g. to share it across corpora.
    """
    text = "".join(load_text(n) for n in name.split("+"))
    vocab = chars if chars is not None else sorted(set(text))
    corpus = CharCorpus(list(vocab), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long))
    data = corpus.encode(text)
    n = int(len(data) * (1 - val_fraction))
    corpus.train, corpus.val = data[:n], data[n:]
    return corpus


def get_batch(
    data: torch.Tensor, batch_size: int, block_size: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random contiguous windows ``(x, y)`` of shape ``[batch_size, block_size]``, y shifted by one."""
    ix = torch.randint(len(data) - block_size - 1, (batch_size,), generator=generator)
    x = torch.stack([data[i : i + block_size] for i in ix.tolist()])
    y = torch.stack([data[i + 1 : i + 1 + block_size] for i in ix.tolist()])
    return x, y
