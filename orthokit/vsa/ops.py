r"""MBAT operations: bundle (superposition), bind/unbind through a binder, cleanup memory, seeded atom codebook.

* :func:`bundle` — the VSA "addition of terms": ``Σ_i v_i``, optionally rescaled to unit norm. MBAT binds
  *sums* of terms (Gallant & Okaywe 2013: a phrase is ``M·(v_the + v_smart + v_girl)``, not a product of the
  terms), so bundling is a plain sum; normalisation is an option (reconstructed: we could not read whether
  either paper normalises bundles; the JSON encoder leaves them unnormalised by default).
* :func:`bind` / :func:`unbind` — ``M_role · x`` / the binder's inverse rule (``Mᵀ`` for orthogonal binders).
* :func:`cleanup` — the cleanup (item) memory: the codebook row with the largest cosine to a noisy query.
* :class:`Codebook` — atoms (random unit vectors) for symbols, each a deterministic function of
  ``(seed, symbol)``, so two codebooks with the same seed agree on every symbol they both hold.

Example:
    >>> import torch
    >>> from orthokit.vsa.haar import HaarBinder
    >>> from orthokit.vsa.ops import Codebook, bind, bundle, cleanup, unbind
    >>> cb = Codebook(512, seed=0)
    >>> b = HaarBinder(512, seed=0)
    >>> rec = bundle([bind(b, "name", cb.atom("ada")), bind(b, "city", cb.atom("london"))])
    >>> cb.add(["bob", "paris"])
    >>> cb.cleanup(unbind(b, "city", rec))[0]
    'london'
    >>> idx, cos = cleanup(unbind(b, "name", rec), cb.matrix())
    >>> cb.symbols[int(idx)], 0.5 < float(cos) < 0.9
    ('ada', True)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from orthokit.vsa.binding import Binder, Role, role_seed

__all__ = ["bundle", "bind", "unbind", "cleanup", "cosine", "Codebook"]


def _check_vec(x: object, what: str, d: int | None = None) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{what} must be a real floating tensor, got dtype {x.dtype}")
    if x.dim() == 0:
        raise ValueError(f"{what} must have at least one dimension")
    if d is not None and x.shape[-1] != d:
        raise ValueError(f"{what} must have last dimension {d}, got shape {tuple(x.shape)}")
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{what} contains NaN or inf")
    return x


def _unit(x: Tensor) -> Tensor:
    """``x / ‖x‖`` along the last dim, computed scale-safely (divided by ``max|x|`` first, so neither ``1e30`` nor
    ``1e-30`` float32 vectors overflow or underflow the norm); zero vectors stay zero."""
    m = x.abs().amax(dim=-1, keepdim=True)
    xs = x / torch.where(m > 0, m, torch.ones_like(m))
    n = xs.norm(dim=-1, keepdim=True)
    return xs / torch.where(n > 0, n, torch.ones_like(n))


def bundle(vectors: Sequence[Tensor] | Tensor, *, normalize: bool = False) -> Tensor:
    """Superpose vectors: ``Σ_i v_i`` over the first axis of a ``[n, ..., d]`` tensor or a non-empty sequence.

    ``normalize=True`` rescales the sum to unit norm along the last dim (``ValueError`` if it is zero).

    Example:
        >>> bundle(torch.eye(3, dtype=torch.float64), normalize=True)
        tensor([0.5774, 0.5774, 0.5774], dtype=torch.float64)
    """
    if isinstance(vectors, Tensor):
        v = _check_vec(vectors, "vectors")
        if v.dim() < 2 or v.shape[0] == 0:
            raise ValueError(f"vectors must be a non-empty [n, ..., d] tensor, got shape {tuple(v.shape)}")
        s = v.sum(dim=0)
    else:
        if not isinstance(vectors, (list, tuple)) or len(vectors) == 0:
            raise ValueError("vectors must be a non-empty sequence of tensors")
        vs = [_check_vec(x, f"vectors[{i}]") for i, x in enumerate(vectors)]
        shape = vs[0].shape
        for i, x in enumerate(vs):
            if x.shape != shape:
                raise ValueError(f"vectors[{i}] has shape {tuple(x.shape)}, expected {tuple(shape)}")
        s = torch.stack(vs).sum(dim=0)
    if normalize:
        if bool((s == 0).all(dim=-1).any()):
            raise ValueError("cannot normalize a bundle whose sum is the zero vector")
        s = _unit(s)
    return s


def bind(binder: Binder, role: Role, x: Tensor, *, power: int = 1) -> Tensor:
    """``binder.bind(role, x, power=power)``: ``M_role^power · x`` row-wise."""
    if not isinstance(binder, Binder):
        raise TypeError(f"binder must be a Binder, got {type(binder).__name__}")
    return binder.bind(role, x, power=power)


def unbind(binder: Binder, role: Role, y: Tensor, *, power: int = 1) -> Tensor:
    """``binder.unbind(role, y, power=power)``: the binder's inverse rule (``Mᵀ`` when orthogonal)."""
    if not isinstance(binder, Binder):
        raise TypeError(f"binder must be a Binder, got {type(binder).__name__}")
    return binder.unbind(role, y, power=power)


def cosine(a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarity along the last dim (0 where either vector is zero), broadcast over leading dims.

    Scale-safe: each vector is divided by its largest ``|entry|`` before the norm, so huge (``1e30``) or tiny
    (``1e-30``) float32 vectors give the right cosine instead of ``nan``/``0``.

    Example:
        >>> float(cosine(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])))  # doctest: +ELLIPSIS
        0.7071...
    """
    a = _check_vec(a, "a")
    b = _check_vec(b, "b", a.shape[-1])
    return (_unit(a) * _unit(b)).sum(-1)


def cleanup(query: Tensor, codebook: Tensor) -> tuple[Tensor, Tensor]:
    """Cleanup memory: for each query ``[..., d]`` the index of the codebook row ``[n, d]`` with the largest
    cosine, and that cosine. Returns ``(index [...] int64, cosine [...])``. Scale-safe like :func:`cosine`; a
    zero query has cosine 0 with every row (index 0).

    Example:
        >>> cb = torch.eye(4, dtype=torch.float64)
        >>> cleanup(torch.tensor([0.1, 0.2, 0.9, 0.0], dtype=torch.float64), cb)[0]
        tensor(2)
    """
    q = _check_vec(query, "query")
    c = _check_vec(codebook, "codebook", q.shape[-1])
    if c.dim() != 2 or c.shape[0] == 0:
        raise ValueError(f"codebook must be a non-empty [n, d] tensor, got shape {tuple(c.shape)}")
    sims = _unit(q) @ _unit(c.to(q.dtype)).T
    val, idx = sims.max(dim=-1)
    return idx, val


class Codebook:
    """Seeded atoms: one random unit vector per symbol, ``atom(s)`` a deterministic function of ``(seed, s)``.

    Args:
        d: dimension.
        seed: integer seed.
        dtype: dtype of the stored atoms (generated in float64, then cast).
    """

    def __init__(self, d: int, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> None:
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise ValueError(f"d must be a positive int, got {d!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        self.d, self.seed, self.dtype = d, seed, dtype
        self._index: dict[str, int] = {}
        self._rows: list[Tensor] = []
        self._stacked: Tensor | None = None

    @staticmethod
    def _check_symbol(symbol: object) -> str:
        if not isinstance(symbol, str):
            raise TypeError(f"symbol must be a str, got {type(symbol).__name__}")
        return symbol

    def make(self, symbol: str) -> Tensor:
        """The atom of ``symbol`` without storing it (a fresh unit vector, deterministic)."""
        self._check_symbol(symbol)
        g = torch.Generator().manual_seed(role_seed(self.seed, "atom", symbol))
        v = torch.randn(self.d, generator=g, dtype=torch.float64)
        return (v / v.norm()).to(self.dtype)

    def atom(self, symbol: str) -> Tensor:
        """The atom of ``symbol``, added to the codebook if new."""
        i = self._index.get(self._check_symbol(symbol))
        if i is None:
            v = self.make(symbol)
            self._index[symbol] = len(self._rows)
            self._rows.append(v)
            self._stacked = None
            return v
        return self._rows[i]

    def add(self, symbols: Iterable[str]) -> None:
        """Add several symbols (all checked first: a bad one adds nothing)."""
        syms = list(symbols)
        for s in syms:
            self._check_symbol(s)
        for s in syms:
            self.atom(s)

    @property
    def symbols(self) -> list[str]:
        """The stored symbols, in insertion order (row order of :meth:`matrix`)."""
        return list(self._index)

    def matrix(self) -> Tensor:
        """All atoms as a ``[n, d]`` tensor (rows in :attr:`symbols` order)."""
        if not self._rows:
            raise ValueError("codebook is empty")
        if self._stacked is None or self._stacked.shape[0] != len(self._rows):
            self._stacked = torch.stack(self._rows)
        return self._stacked

    def cleanup(self, query: Tensor) -> tuple[str, float]:
        """The stored symbol whose atom has the largest cosine with a single query ``[d]``, and the cosine."""
        q = _check_vec(query, "query", self.d)
        if q.dim() != 1:
            raise ValueError(f"query must be a single [d] vector, got shape {tuple(q.shape)}")
        idx, val = cleanup(q, self.matrix())
        return self.symbols[int(idx)], float(val)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, symbol: object) -> bool:
        return isinstance(symbol, str) and symbol in self._index

    def state_dict(self) -> dict[str, Any]:
        """``{"d", "seed", "dtype", "symbols"}`` — the atoms themselves are regenerated from the seed."""
        return {
            "d": self.d,
            "seed": self.seed,
            "dtype": str(self.dtype).removeprefix("torch."),
            "symbols": self.symbols,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Codebook:
        """Rebuild a codebook from :meth:`state_dict`."""
        if not isinstance(state, dict) or not {"d", "seed", "symbols"} <= set(state):
            raise ValueError(
                "state must be a dict with keys 'd', 'seed' and 'symbols' (from Codebook.state_dict())"
            )
        dtype = getattr(torch, str(state.get("dtype", "float32")), None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"unknown dtype {state.get('dtype')!r} in codebook state")
        syms = state["symbols"]
        if not isinstance(syms, (list, tuple)):
            raise TypeError(f"state['symbols'] must be a list of str, got {type(syms).__name__}")
        cb = cls(state["d"], seed=state["seed"], dtype=dtype)
        cb.add(syms)
        return cb

    def __repr__(self) -> str:
        return f"Codebook(d={self.d}, seed={self.seed}, n={len(self)})"
