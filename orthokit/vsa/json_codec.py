r"""JSON → one fixed-length MBAT vector, with decoding of queried paths (Gallant, arXiv 2202.04771).

Encoding (``enc``), recursively; ``M_r`` is the binder's matrix for role ``r``:

* object ``{k_1: v_1, …}`` → ``Σ_i M_{key:k_i} · enc(v_i)`` — one binding matrix per key (reference notes D8:
  "JSON is encoded as ``Σ_key M_key·enc(value)``"). JSON objects are unordered, so key *order* inside one object
  does not change the vector; key *nesting* does: ``{"a": {"b": x}}`` is ``M_a M_b x`` and ``{"b": {"a": x}}``
  is ``M_b M_a x`` — different because matrix binding is non-commutative (the paper's argument for matrices).
* array ``[x_0, x_1, …]`` → ``Σ_j P_k^{j+1} · enc(x_j)`` — position ``j`` is bound by the ``(j+1)``-th power
  of the position matrix ``P_k`` of the array's nesting level ``k`` (1 + the number of arrays enclosing it, objects
  in between do not count; roles ``"[]"``, ``"[]2"``, ``"[]3"``, …), i.e. the recurrent sequence code
  ``s_j = P_k·(s_{j-1} + x_j)`` unrolled (MBAT's recurrent connections); order matters. One matrix per level is
  needed because powers of one matrix commute: with a single ``P``, element ``[i][j]`` would be bound by
  ``P^{i+j+2}`` and ``[[a, b]]`` would equal ``[[a], [b]]``. It is computed in Horner form,
  ``s ← P_k·enc(x_{n-1})`` then ``s ← P_k·(enc(x_j) + s)`` for ``j = n-2 … 0`` — ``n`` binds for ``n`` items (the
  same vector up to rounding as the ``n(n+1)/2`` binds of the sum of powers).
* string → a seeded random unit atom per distinct string; ``true``/``false``/``null`` → their own atoms; empty
  object/array → an atom each.
* number → the **soft** code (reconstructed, see below): ``t = sign(x)·log(1+|x|)`` is placed on a grid of
  ``number_levels`` atoms ``a_0 … a_{G-1}`` spanning ``[-T, T]`` (``T = log(1+number_max)``) and encoded as the
  unit-norm linear interpolation ``((1-w)·a_j + w·a_{j+1}) / ‖·‖`` between its two neighbours (the grid atoms
  are orthonormalised when ``d ≥ number_levels``, so a lone number decodes exactly), so nearby numbers
  have similar vectors (cosine falls linearly to ~0 over two grid steps). Decoding finds the best adjacent pair
  and reads ``w = c_{j+1} / (c_j + c_{j+1})`` from the two cosines.

Decoding a path ``"orders[1].sku"`` unbinds in order (``M_{key:orders}ᵀ``, ``(P_1ᵀ)²``, ``M_{key:sku}ᵀ``; the
``k``-th index of a path uses ``P_k``) — index ``j`` costs ``j + 1`` unbinds, so an index is only accepted up to
``min(max_index, max_items - 2)`` (``max_index`` an argument, default 4096) — and cleans the result up against
every known leaf atom (strings the encoder has seen or was given, the
literals, and the number grid). With an orthogonal binder unbinding is exact, so the only error is crosstalk
from the other terms of the record (``≈ √(terms/d)``); with the Gaussian baseline each unbinding adds more.
If the winning cosine is below the noise floor ``min_cosine`` (default ``3/√d``), nothing is taken to be stored
at the path (e.g. an index past the end of its array) and decoding raises ``ValueError``; this is a heuristic:
at ``d = 1024`` it rejects ~4/5 of out-of-range indices and 2/50 items of a 50-item array.

Fidelity: the paper's abstract and our reference notes fix the object rule (one matrix per key, sum over
keys) and that binding must be non-commutative; we could not read its full text, so the *array* rule
(powers of a position matrix, one per nesting level), the *soft number* code and the *string* atoms are **reconstructed**, chosen
to satisfy the paper's stated goals (one fixed-length vector, similar JSON → similar vectors, order-aware).

Hostile input: ``max_depth`` (default 32) and ``max_items`` (default 100 000 nodes) limits, non-string keys,
non-JSON types, NaN/inf numbers and numbers beyond ``number_max`` (also integers too large for a float) raise a
one-line ``ValueError``/``TypeError`` naming the path; a failed ``encode`` leaves the encoder's vocabulary
unchanged. Decoding an array index beyond ``min(max_index, max_items - 2)``, a path whose unbound vector is
zero, or one whose best cleanup cosine is below the noise floor raises ``ValueError``.

Example:
    >>> from orthokit.vsa.json_codec import JSONEncoder
    >>> enc = JSONEncoder(1024, binder="hadamard", seed=0)
    >>> rec = {"name": "ada", "age": 36, "tags": ["math", "engines"], "address": {"city": "london"}}
    >>> v = enc.encode(rec)
    >>> v.shape
    torch.Size([1024])
    >>> enc.decode_path(v, "address.city"), enc.decode_path(v, "tags[1]")
    ('london', 'engines')
    >>> abs(enc.decode_path(v, "age") - 36) < 2
    True
    >>> enc.similarity(v, enc.encode({**rec, "name": "bob"})) > 0.5
    True
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from orthokit.linalg.qr import qr_basis
from orthokit.vsa.binding import Binder, make_binder, role_seed
from orthokit.vsa.ops import Codebook, _unit, cosine

__all__ = ["JSONEncoder", "parse_path"]

_DEFAULT_MAX_INDEX = 4096
_NOISE_SIGMAS = 3.0


def _pos_role(level: int) -> str:
    """The position role of an array enclosed by ``level - 1`` other arrays: ``"[]"``, ``"[]2"``, ``"[]3"``, …"""
    return "[]" if level == 1 else f"[]{level}"


_PATH_TOKEN = re.compile(r"\[(\d+)\]|\.?([^.\[\]]+)")


def parse_path(path: str | Sequence[str | int], *, max_index: int | None = None) -> list[str | int]:
    """Split ``"a.b[2].c"`` into ``["a", "b", 2, "c"]``; a sequence of keys (str) and indices (int) passes through.

    ``max_index``: the largest array index accepted (``ValueError`` beyond it); decoding index ``j`` costs
    ``j + 1`` unbinds, so :class:`JSONEncoder` passes ``min(max_index, max_items - 2)``. Indices of more than 18 digits are
    always rejected.

    Example:
        >>> parse_path("orders[0].items[12].sku")
        ['orders', 0, 'items', 12, 'sku']
        >>> parse_path(["a.b", 3])
        ['a.b', 3]
        >>> parse_path("a[99999999999]", max_index=99_998)
        Traceback (most recent call last):
        ...
        ValueError: array index 99999999999 in path 'a[99999999999]' exceeds max_index=99998
    """
    if max_index is not None and (isinstance(max_index, bool) or not isinstance(max_index, int)):
        raise TypeError(f"max_index must be an int or None, got {type(max_index).__name__}")
    out = _split_path(path)
    for p in out:
        if isinstance(p, int) and max_index is not None and p > max_index:
            raise ValueError(f"array index {p} in path {path!r} exceeds max_index={max_index}")
    return out


def _split_path(path: str | Sequence[str | int]) -> list[str | int]:
    if isinstance(path, str):
        if not path:
            raise ValueError("path must not be empty")
        out: list[str | int] = []
        pos = 0
        while pos < len(path):
            m = _PATH_TOKEN.match(path, pos)
            if m is None or (m.group(2) is not None and path[pos] == "." and pos == 0):
                raise ValueError(f"malformed path {path!r} at character {pos}")
            if m.group(1) is not None and len(m.group(1)) > 18:
                raise ValueError(f"array index at character {pos} of path {path[:40]!r} is too large")
            out.append(int(m.group(1)) if m.group(1) is not None else m.group(2))
            pos = m.end()
        return out
    if not isinstance(path, (list, tuple)) or not path:
        raise TypeError(
            f"path must be a non-empty str or sequence of keys/indices, got {type(path).__name__}"
        )
    for p in path:
        if isinstance(p, bool) or not isinstance(p, (str, int)) or (isinstance(p, int) and p < 0):
            raise ValueError(f"path elements must be str keys or non-negative int indices, got {p!r}")
    return list(path)


class JSONEncoder:
    """Encode JSON values into one ``d``-vector with MBAT binding; decode queried paths by cleanup.

    Args:
        d: vector dimension.
        binder: a registered binder name (``"haar"``, ``"hadamard"``, ``"gaussian"``) or a :class:`Binder`.
        seed: seed of the binder and of the atoms.
        dtype: dtype of the produced vectors (float32 or float64).
        normalize: rescale every object/array bundle to unit norm before it is bound (default ``False``: plain
            sums, as MBAT's additive terms).
        number_levels: number of grid atoms of the soft number code (≥ 2).
        number_max: largest ``|x|`` representable (numbers beyond raise ``ValueError``).
        max_depth: maximum nesting depth.
        max_items: maximum number of JSON nodes in one value.
        binder_options: extra options for a binder given by name (e.g. ``{"k": 2}`` for ``hadamard``).
    """

    def __init__(
        self,
        d: int,
        binder: Binder | str = "haar",
        *,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        normalize: bool = False,
        number_levels: int = 128,
        number_max: float = 1e6,
        max_depth: int = 32,
        max_items: int = 100_000,
        binder_options: dict[str, Any] | None = None,
    ) -> None:
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
        if isinstance(number_levels, bool) or not isinstance(number_levels, int) or number_levels < 2:
            raise ValueError(f"number_levels must be an int ≥ 2, got {number_levels!r}")
        if isinstance(number_max, bool) or not isinstance(number_max, (int, float)):
            raise TypeError(f"number_max must be a positive finite number, got {type(number_max).__name__}")
        if not math.isfinite(number_max) or number_max <= 0:
            raise ValueError(f"number_max must be a positive finite number, got {number_max!r}")
        for nm, v in (("max_depth", max_depth), ("max_items", max_items)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{nm} must be a positive int, got {v!r}")
        self.binder = make_binder(binder, d, seed=seed, **(binder_options or {}))
        self.d, self.seed, self.dtype, self.normalize = d, seed, dtype, bool(normalize)
        self.number_levels, self.number_max = number_levels, float(number_max)
        self.max_depth, self.max_items = max_depth, max_items
        self._tmax = math.log1p(self.number_max)
        self.atoms = Codebook(d, seed=seed, dtype=dtype)  # strings, literals, empty containers
        self.atoms.add(["lit:true", "lit:false", "lit:null", "lit:{}", "lit:[]"])
        self._num_grid = self._number_grid()

    def _number_grid(self) -> Tensor:
        """``[G, d]`` grid atoms of the soft number code: orthonormal when ``d ≥ G`` (QR of a seeded Gaussian),
        so a lone number decodes exactly; independent random unit vectors otherwise."""
        g = torch.Generator().manual_seed(role_seed(self.seed, "number-grid", self.number_levels))
        a = torch.randn(self.d, self.number_levels, generator=g, dtype=torch.float64)
        if self.d >= self.number_levels:
            grid = qr_basis(a).T
        else:
            grid = (a / a.norm(dim=0, keepdim=True)).T
        return grid.contiguous().to(self.dtype)

    # -- encoding ---------------------------------------------------------------------------------------
    def _grid(self, x: float) -> tuple[int, float]:
        t = math.copysign(math.log1p(abs(x)), x)
        u = (t + self._tmax) / (2 * self._tmax) * (self.number_levels - 1)
        j = min(int(math.floor(u)), self.number_levels - 2)
        return j, u - j

    def _number(self, x: float) -> Tensor:
        j, w = self._grid(x)
        a = self._num_grid
        v = (1.0 - w) * a[j] + w * a[j + 1]
        return v / v.norm()

    def _enc(
        self, obj: Any, path: str, depth: int, count: list[int], new: set[str], arrays: int = 0
    ) -> Tensor:
        count[0] += 1
        if count[0] > self.max_items:
            raise ValueError(f"JSON value has more than max_items={self.max_items} nodes (at {path or '$'})")
        if depth > self.max_depth:
            raise ValueError(f"JSON nesting deeper than max_depth={self.max_depth} at {path or '$'}")
        if obj is None:
            return self.atoms.atom("lit:null")
        if isinstance(obj, bool):
            return self.atoms.atom("lit:true" if obj else "lit:false")
        if isinstance(obj, (int, float)):
            try:
                x = float(obj)
            except OverflowError:
                raise ValueError(
                    f"number at {path or '$'} is too large for a float, beyond number_max={self.number_max:g}"
                ) from None
            if not math.isfinite(x):
                raise ValueError(f"number at {path or '$'} is {obj!r}; JSON numbers must be finite")
            if abs(x) > self.number_max:
                raise ValueError(f"number at {path or '$'} is {obj!r}, beyond number_max={self.number_max:g}")
            return self._number(x)
        if isinstance(obj, str):
            sym = "str:" + obj
            if sym not in self.atoms:
                new.add(sym)
            return self.atoms.make(sym)
        if isinstance(obj, dict):
            if not obj:
                return self.atoms.atom("lit:{}")
            terms = []
            for k, v in obj.items():
                if not isinstance(k, str):
                    raise TypeError(
                        f"object key {k!r} at {path or '$'} is a {type(k).__name__}; JSON keys are strings"
                    )
                sub = self._enc(v, f"{path}.{k}" if path else k, depth + 1, count, new, arrays)
                terms.append(self.binder.bind("key:" + k, sub))
            return self._sum(terms)
        if isinstance(obj, (list, tuple)):
            if not obj:
                return self.atoms.atom("lit:[]")
            subs = [
                self._enc(v, f"{path}[{j}]", depth + 1, count, new, arrays + 1) for j, v in enumerate(obj)
            ]
            # Σ_j P^{j+1} x_j in Horner form (n binds instead of n(n+1)/2); P is the position matrix of this
            # array-nesting level, so [[a, b]] (P1 P2 a + P1 P2² b) ≠ [[a], [b]] (P1 P2 a + P1² P2 b)
            role = _pos_role(arrays + 1)
            s = self.binder.bind(role, subs[-1])
            for sub in reversed(subs[:-1]):
                s = self.binder.bind(role, sub + s)
            return self._scale(s)
        raise TypeError(f"value at {path or '$'} has type {type(obj).__name__}, which is not a JSON type")

    def _sum(self, terms: list[Tensor]) -> Tensor:
        return self._scale(torch.stack(terms).sum(0))

    def _scale(self, s: Tensor) -> Tensor:
        if self.normalize:
            n = s.norm()
            if float(n) > 0:
                s = s / n
        return s

    def encode(self, obj: Any) -> Tensor:
        """The ``[d]`` vector of a JSON value (dict/list/str/int/float/bool/None, nested)."""
        new: set[str] = set()
        v = self._enc(obj, "", 0, [0], new)
        self.atoms.add(sorted(new))  # only after success: a failed encode leaves the vocabulary unchanged
        return v.to(self.dtype)

    def encode_many(self, objs: Sequence[Any]) -> Tensor:
        """``[n, d]`` vectors of several JSON values."""
        return torch.stack([self.encode(o) for o in objs])

    def add_vocabulary(self, strings: Sequence[str]) -> None:
        """Make strings decodable without encoding them first."""
        for s in strings:
            if not isinstance(s, str):
                raise TypeError(f"vocabulary entries must be str, got {type(s).__name__}")
        self.atoms.add(["str:" + s for s in strings])

    # -- decoding ---------------------------------------------------------------------------------------
    def _check_vec(self, vec: Tensor) -> Tensor:
        if not isinstance(vec, Tensor):
            raise TypeError(f"vec must be a torch.Tensor, got {type(vec).__name__}")
        if vec.shape != (self.d,) or not vec.is_floating_point():
            raise ValueError(f"vec must be a floating [d={self.d}] vector, got shape {tuple(vec.shape)}")
        if not bool(torch.isfinite(vec).all()):
            raise ValueError("vec contains NaN or inf")
        return vec.to(self.dtype)

    def unbind_path(
        self, vec: Tensor, path: str | Sequence[str | int], *, max_index: int = _DEFAULT_MAX_INDEX
    ) -> Tensor:
        """The noisy leaf vector at ``path``: the unbinding steps of the path applied to ``vec``.

        Index ``j`` costs ``j + 1`` unbinds, so indices beyond ``min(max_index, max_items - 2)`` raise
        ``ValueError`` before any work (default ``max_index`` 4096)."""
        if isinstance(max_index, bool) or not isinstance(max_index, int) or max_index < 0:
            raise ValueError(f"max_index must be a non-negative int, got {max_index!r}")
        steps = parse_path(path, max_index=min(max_index, self.max_items - 2))
        q = self._check_vec(vec)
        level = 0  # number of array indices so far = array-nesting level of the next index
        for p in steps:
            if isinstance(p, int):
                level += 1
                q = self.binder.unbind(_pos_role(level), q, power=p + 1)
            else:
                q = self.binder.unbind("key:" + p, q)
        return q

    def _decode_leaf(self, q: Tensor) -> tuple[Any, float]:
        qn = _unit(q)
        sym_cos = self.atoms.matrix() @ qn
        num_cos = self._num_grid @ qn
        i_s = int(sym_cos.argmax())
        j = int(num_cos.argmax())
        # a soft number has cosine ≥ 1/√2 with its nearer grid atom; compare like for like
        if float(num_cos[j]) > float(sym_cos[i_s]):
            lo = j - 1 if (j == self.number_levels - 1 or (j > 0 and num_cos[j - 1] > num_cos[j + 1])) else j
            c0, c1 = float(num_cos[lo].clamp_min(0)), float(num_cos[lo + 1].clamp_min(0))
            w = c1 / (c0 + c1) if c0 + c1 > 0 else 0.0
            u = lo + w
            t = u / (self.number_levels - 1) * (2 * self._tmax) - self._tmax
            return math.copysign(math.expm1(abs(t)), t), float(num_cos[j])
        sym = self.atoms.symbols[i_s]
        val: Any
        if sym.startswith("str:"):
            val = sym[4:]
        else:
            val = {"lit:true": True, "lit:false": False, "lit:null": None, "lit:{}": {}, "lit:[]": []}[sym]
        return val, float(sym_cos[i_s])

    def query_path(
        self,
        vec: Tensor,
        path: str | Sequence[str | int],
        *,
        max_index: int = _DEFAULT_MAX_INDEX,
        min_cosine: float | None = None,
    ) -> tuple[Any, float]:
        """``(decoded leaf value, cosine of the winning atom)`` at ``path`` (numbers come back as floats).

        ``ValueError`` ("nothing to decode at path") if the unbound vector is zero (e.g. ``vec`` is zero) or if
        the winning cosine is below the noise floor ``min_cosine`` (default ``3/√d``: an unrelated unit vector
        has cosine ≈ N(0, 1/d) with each atom, so nothing is stored at ``path``, e.g. an index past the end of
        its array). Pass ``min_cosine=-1.0`` to always get the best guess. ``max_index``: see
        :meth:`unbind_path` (index ``j`` costs ``j + 1`` unbinds).

        Example:
            >>> enc = JSONEncoder(1024, "hadamard", seed=0)
            >>> v = enc.encode({"a": ["x", "y"]})
            >>> enc.query_path(v, "a[1]")[0]
            'y'
            >>> enc.query_path(v, "a[2]")  # past the end: what is left is crosstalk
            Traceback (most recent call last):
            ...
            ValueError: nothing to decode at path 'a[2]': best cleanup cosine 0.089 is below the noise floor 0.094
        """
        if min_cosine is None:
            floor = _NOISE_SIGMAS / math.sqrt(self.d)
        elif (
            isinstance(min_cosine, bool) or not isinstance(min_cosine, (int, float)) or math.isnan(min_cosine)
        ):
            raise TypeError(f"min_cosine must be a float or None, got {min_cosine!r}")
        else:
            floor = float(min_cosine)
        q = self.unbind_path(vec, path, max_index=max_index)
        if not bool(q.ne(0).any()):
            raise ValueError(f"nothing to decode at path {path!r}: the unbound vector is zero")
        val, cos = self._decode_leaf(q)
        if cos < floor:
            raise ValueError(
                f"nothing to decode at path {path!r}: best cleanup cosine {cos:.3f} is below the noise floor "
                f"{floor:.3f}"
            )
        return val, cos

    def decode_path(
        self,
        vec: Tensor,
        path: str | Sequence[str | int],
        *,
        max_index: int = _DEFAULT_MAX_INDEX,
        min_cosine: float | None = None,
    ) -> Any:
        """The leaf value at ``path`` (``"a.b[2].c"`` or ``["a", "b", 2, "c"]``), cleaned up against known atoms.

        Raises ``ValueError`` when nothing is stored there (see :meth:`query_path`)."""
        return self.query_path(vec, path, max_index=max_index, min_cosine=min_cosine)[0]

    def similarity(self, a: Tensor | Any, b: Tensor | Any) -> float:
        """Cosine between two encoded vectors (JSON values are encoded first)."""
        va = a if isinstance(a, Tensor) else self.encode(a)
        vb = b if isinstance(b, Tensor) else self.encode(b)
        return float(cosine(self._check_vec(va), self._check_vec(vb)))

    # -- serialization ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """JSON-able state: the binder's state, options and the string vocabulary."""
        return {
            "binder": self.binder.state_dict(),
            "d": self.d,
            "seed": self.seed,
            "dtype": str(self.dtype).removeprefix("torch."),
            "normalize": self.normalize,
            "number_levels": self.number_levels,
            "number_max": self.number_max,
            "max_depth": self.max_depth,
            "max_items": self.max_items,
            "vocabulary": [s[4:] for s in self.atoms.symbols if s.startswith("str:")],
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> JSONEncoder:
        """Rebuild an encoder that produces identical vectors and decodes the same vocabulary."""
        need = {
            "binder",
            "d",
            "seed",
            "dtype",
            "normalize",
            "number_levels",
            "number_max",
            "max_depth",
            "max_items",
        }
        if not isinstance(state, dict) or not need <= set(state):
            raise ValueError(f"state must be a dict with keys {sorted(need)} (from JSONEncoder.state_dict())")
        dtype = {"float32": torch.float32, "float64": torch.float64}.get(state["dtype"])
        if dtype is None:
            raise ValueError(f"unknown dtype {state['dtype']!r} in encoder state")
        enc = cls(
            state["d"],
            Binder.from_state_dict(state["binder"]),
            seed=state["seed"],
            dtype=dtype,
            normalize=state["normalize"],
            number_levels=state["number_levels"],
            number_max=state["number_max"],
            max_depth=state["max_depth"],
            max_items=state["max_items"],
        )
        enc.add_vocabulary(state.get("vocabulary", []))
        return enc

    def __repr__(self) -> str:
        return f"JSONEncoder(d={self.d}, binder={self.binder!r}, vocabulary={len(self.atoms) - 5})"
