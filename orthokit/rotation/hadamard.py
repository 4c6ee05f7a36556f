r"""Randomized Hadamard rotation ``Q = diag(s)·H_n`` for any ``n`` (block-diagonal fallback, never zero-padding).

``s`` are Rademacher signs drawn from ``torch.Generator().manual_seed(seed)`` and **stored** (int8), and
``H_n`` is the orthonormal Hadamard matrix :func:`orthokit.linalg.hadamard_matrix` (Sylvester for powers of two,
Paley I/II ⊗ Sylvester otherwise, e.g. ``12 = paley1(q=11)``, ``768 = paley1(q=11) ⊗ sylvester(64)``). As a
row-vector map ``x ↦ x·diag(s)·H_n``: flip signs, then one Hadamard transform — QuaRot's ``random_hadamard_matrix``
(``spcl/QuaRot``, ``hadamard_utils.py``; arXiv 2404.00456) in orthokit's row convention.

**Orders without a construction** (e.g. ``172 = 4·43``), or whose Paley core exceeds :data:`MAX_CORE` (512; e.g.
``29568 = 924·32``, too slow to apply — see :data:`MAX_CORE`): ``H`` becomes a block-diagonal
``H_{b_1} ⊕ H_{b_2} ⊕ ⋯`` of supported orders, chosen by :func:`block_orders`: the fewest blocks, and among those
the largest *smallest* block (``172 = 88 ⊕ 84``), blocks listed largest first. The smallest block bounds the
incoherence: an outlier in a block of order ``b`` is spread over only ``b`` coordinates (magnitude ``/√b``), so
``88 ⊕ 84`` beats the greedy ``168 ⊕ 4`` and ``128 ⊕ 44``. Any valid partition may be passed as ``blocks=``.
Zero-padding to the next supported order and truncating is **not** orthogonal and is never used (nn.md pitfall 6).

Every block applies through :func:`orthokit.linalg.hadamard_transform` (:func:`right_hadamard`: dense BLAS,
Kronecker or butterfly, chosen by a per-host measurement); ``apply_T`` uses its transposed transform.

Example:
    >>> import torch
    >>> from orthokit.rotation.hadamard import HadamardRotation, block_orders
    >>> block_orders(172), block_orders(12), block_orders(5)
    ((88, 84), (12,), (4, 1))
    >>> r = HadamardRotation(172, seed=0)
    >>> x = torch.randn(3, 172, dtype=torch.float64)
    >>> bool(torch.allclose(r.apply_T(r.apply(x)), x, atol=1e-12)), bool(torch.allclose(r.apply(x), x @ r.matrix()))
    (True, True)
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

from orthokit.linalg import hadamard_construction, hadamard_matrix
from orthokit.linalg.hadamard import _plan, _transform
from orthokit.rotation.base import Rotation
from orthokit.rotation.registry import ROTATIONS

__all__ = [
    "HadamardRotation",
    "block_orders",
    "is_hadamard_order",
    "legacy_construction",
    "rademacher_signs",
    "right_hadamard",
]


@lru_cache(maxsize=4096)
def is_hadamard_order(n: int) -> bool:
    """Whether :func:`orthokit.linalg.hadamard_matrix` has a construction for order ``n``.

    Example:
        >>> [k for k in range(1, 30) if is_hadamard_order(k)]
        [1, 2, 4, 8, 12, 16, 20, 24, 28]
    """
    if n != 1 and n != 2 and n % 4:
        return False  # a Hadamard matrix of order n > 2 needs 4 | n
    try:
        hadamard_construction(n)
    except ValueError:
        return False
    return True


#: largest Paley core order ``c`` (``n = c·2^b``) that :func:`block_orders` uses as one block. Applying
#: ``H_n`` costs ``≈ 2n·(c + Σ 2^{a_i})`` flops per row (kron method), so the ``cost="n log n"`` capability holds
#: only for a bounded core. Measured (1 thread, fp32, ``apply`` on 16 / 1024 rows, ms; full core vs the best
#: two-block split with cores ≤ 256): 11008 = 344·32: 2.3 / 422 vs 2.3 / 271 (kept: one full block spreads an
#: outlier over all 11008 coordinates for ≤ 1.6× the time); 11584 = 724·16: 19.5 / 742 vs 6.9 / 509;
#: 29568 = 924·32 (Qwen2-72B): 31 / 2464 vs 8.6 / 809; 10016 = 1252·8: 11.2 / 1294 vs 2.1 / 361 — above 512 the
#: full core is 1.5-5× slower, so those orders become a block-diagonal of orders with cores ≤ 512.
MAX_CORE = 512


@lru_cache(maxsize=4096)
def is_fast_order(n: int) -> bool:
    """Whether ``n`` is a Hadamard order whose Paley core is at most :data:`MAX_CORE` (a single block in
    :func:`block_orders`).

    Example:
        >>> is_fast_order(11008), is_fast_order(29568), is_hadamard_order(29568)   # cores 344 and 924
        (True, False, True)
    """
    plan = _plan(n) if is_hadamard_order(n) else None
    return plan is not None and plan[2] <= MAX_CORE


@lru_cache(maxsize=1024)
def block_orders(n: int) -> tuple[int, ...]:
    """Fast Hadamard orders (:func:`is_fast_order`) summing to ``n``: ``(n,)`` if ``n`` is one, else the fewest
    blocks, largest minimum.

    Two blocks: the partition ``n = a + b`` (``a ≥ b``, both supported) with the largest ``b``. If none exists,
    the largest supported order ``a ≤ n`` is taken and the rest split recursively (3+ blocks are rare: every
    multiple of 4 up to several thousand is ``a + b`` of supported orders). Odd ``n`` necessarily has a block of
    order 1 (Hadamard orders are 1, 2 or multiples of 4).

    Raises:
        ValueError: ``n < 1``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"block_orders needs a positive int n, got {n!r}")
    if is_fast_order(n):
        return (n,)
    for b in range(n // 2, 0, -1):
        if is_fast_order(b) and is_fast_order(n - b):
            return (n - b, b)
    a = next(k for k in range(n - 1, 0, -1) if is_fast_order(k))
    return tuple(sorted((a, *block_orders(n - a)), reverse=True))


def right_hadamard(x: Tensor, n: int, *, transpose: bool = False) -> Tensor:
    """``x @ H_n`` (or ``x @ H_nᵀ``) over the last dim, ``H_n`` = :func:`orthokit.linalg.hadamard_matrix` ``(n)``.

    Routed through :func:`orthokit.linalg.hadamard_transform`'s kernels (Kronecker / butterfly / dense, chosen per
    host; every supported order; ``transpose=True`` applies ``Hᵀ``, the inverse). Differentiable; ``n`` must equal
    ``x.shape[-1]``. NaN/inf **propagate** (as through ``x @ H`` or ``nn.Linear``; no finiteness check, so no host
    sync on an accelerator) — unlike the public ``hadamard_transform``, which refuses non-finite input.

    Example:
        >>> x = torch.randn(2, 12, dtype=torch.float64)
        >>> bool(torch.allclose(right_hadamard(x, 12), x @ hadamard_matrix(12, dtype=torch.float64)))
        True
    """
    if not isinstance(x, Tensor) or x.is_complex() or not x.is_floating_point() or x.dim() == 0:
        raise TypeError(
            f"right_hadamard: x must be a real floating tensor with >= 1 dim, got {type(x).__name__}"
        )
    if x.shape[-1] != n:
        raise ValueError(f"right_hadamard: x has last dim {x.shape[-1]}, expected {n}")
    if not is_hadamard_order(n):
        raise ValueError(f"right_hadamard: no Hadamard construction for order {n}")
    return _transform(x, -1, "auto", transpose)


def rademacher_signs(shape: tuple[int, ...], seed: int) -> Tensor:
    """Rademacher ``±1`` signs (int8) of ``shape`` from ``torch.Generator().manual_seed(seed)`` on CPU.

    Example:
        >>> rademacher_signs((6,), 0).abs().tolist()
        [1, 1, 1, 1, 1, 1]
    """
    g = torch.Generator().manual_seed(seed)
    bits = torch.randint(0, 2, shape, generator=g, dtype=torch.int8)
    return (2 * bits - 1).to(torch.int8)


def check_signs(signs: object, shape: tuple[int, ...], what: str) -> Tensor:
    """Validate a ``±1`` sign tensor of ``shape`` (any real/int dtype); return it as int8 on CPU."""
    if not isinstance(signs, Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(signs).__name__}")
    if tuple(signs.shape) != shape:
        raise ValueError(f"{what} must have shape {shape}, got {tuple(signs.shape)}")
    if signs.is_complex() or signs.dtype == torch.bool:
        raise ValueError(f"{what} must hold ±1 values (int or float), got dtype {signs.dtype}")
    s = signs.detach().cpu()
    if s.numel() and not bool(((s == 1) | (s == -1)).all()):
        raise ValueError(f"{what} must hold only ±1 values")
    return s.to(torch.int8).clone()


def _constructions(blocks: tuple[int, ...]) -> str:
    """The Hadamard construction of every block (:func:`orthokit.linalg.hadamard_construction`), ``" ⊕ "``-joined:
    stored in the state, so a rotation saved under another construction rule is refused instead of silently
    rebuilt from different matrices (states without the field are checked by :func:`legacy_construction`)."""
    return " ⊕ ".join(hadamard_construction(b) for b in blocks)


def _is_prime(q: int) -> bool:
    return q >= 2 and all(q % f for f in range(2, int(q**0.5) + 1))


def legacy_construction(n: int) -> str | None:
    """The construction :func:`orthokit.linalg.hadamard_construction` gave order ``n`` before prime-power Paley
    cores (commit 8b2684d): ``n = c·2^b`` with the smallest core ``c`` that is Paley I (``c = q + 1``,
    ``q ≡ 3 mod 4``) or Paley II (``c = 2(q + 1)``, ``q ≡ 1 mod 4``) over a **prime** ``q`` (Paley I first);
    ``None`` if that rule had no construction (e.g. 52 = paley2(q=25), new with prime powers).

    Hadamard states saved before the ``constructions`` field existed were built under this rule.

    Example:
        >>> legacy_construction(104), legacy_construction(24), legacy_construction(52)
        ('paley1(q=103)', 'paley1(q=11) ⊗ sylvester(2)', None)
    """
    if n >= 1 and n & (n - 1) == 0:
        return f"sylvester({n})"
    c = n
    while c % 2 == 0:
        c //= 2
    while c <= n:
        q1, q2 = c - 1, (c // 2 - 1 if c % 2 == 0 else 0)
        kind = None
        if q1 >= 3 and q1 % 4 == 3 and _is_prime(q1):
            kind = f"paley1(q={q1})"
        elif q2 >= 5 and q2 % 4 == 1 and _is_prime(q2):
            kind = f"paley2(q={q2})"
        if kind is not None:
            return kind if c == n else f"{kind} ⊗ sylvester({n // c})"
        c *= 2
    return None


def _check_legacy(blocks: tuple[int, ...]) -> None:
    """Refuse a state without ``constructions`` (saved before 8b2684d) if a block's matrix has changed since."""
    for b in blocks:
        old, new = legacy_construction(b), hadamard_construction(b)
        if old != new:
            was = "had no construction" if old is None else f"was {old}"
            raise ValueError(
                f"hadamard rotation state without 'constructions' (saved before prime-power Paley cores): block "
                f"order {b} {was}, now {new}; refusing to rebuild it from another Hadamard matrix"
            )


def _check_blocks(blocks: object, n: int, what: str) -> tuple[int, ...]:
    if isinstance(blocks, Tensor):
        if (
            blocks.dim() != 1
            or blocks.is_floating_point()
            or blocks.is_complex()
            or blocks.dtype == torch.bool
        ):
            raise ValueError(
                f"{what} must be a 1-D integer tensor, got shape {tuple(blocks.shape)} {blocks.dtype}"
            )
        blocks = tuple(int(b) for b in blocks.tolist())
    if not isinstance(blocks, (tuple, list)) or not blocks:
        raise TypeError(f"{what} must be a non-empty tuple of ints, got {type(blocks).__name__}")
    out = []
    for b in blocks:
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise ValueError(f"{what} must hold positive ints, got {b!r}")
        if not is_hadamard_order(b):
            raise ValueError(f"{what} contains {b}, which is not a supported Hadamard order")
        out.append(b)
    if sum(out) != n:
        raise ValueError(f"{what} {tuple(out)} sum to {sum(out)}, expected n={n}")
    return tuple(out)


@ROTATIONS.register(
    "hadamard",
    aliases=("randomized_hadamard",),
    structured=True,
    cost="n log n",
    haar_marginals="none",
    seeded=True,
    randomized=True,
    any_n=True,
)
class HadamardRotation(Rotation):
    """Randomized Hadamard ``Q = diag(s)·(H_{b_1} ⊕ ⋯ ⊕ H_{b_k})`` (one block when ``n`` is a Hadamard order).

    Args:
        n: size.
        seed: seed of the signs (ignored for the values when ``signs`` is given; kept as metadata).
        signs: explicit ``±1`` signs of length ``n`` (default: drawn from ``seed``).
        blocks: explicit block orders (default :func:`block_orders` ``(n)``).
    """

    name = "hadamard"

    def __init__(
        self,
        n: int,
        *,
        seed: int | None = 0,
        signs: Tensor | None = None,
        blocks: tuple[int, ...] | Tensor | None = None,
    ) -> None:
        super().__init__(n, seed=seed)
        if signs is None:
            if self.seed is None:
                raise ValueError("hadamard rotation needs a seed or explicit signs")
            self.signs = rademacher_signs((self.n,), self.seed)
        else:
            self.signs = check_signs(signs, (self.n,), "signs")
        self.blocks = block_orders(self.n) if blocks is None else _check_blocks(blocks, self.n, "blocks")

    def _forward(self, x: Tensor, transpose: bool) -> Tensor:
        s = self._cast_like("signs", self.signs, x)
        if not transpose:
            x = x * s
        if len(self.blocks) == 1:
            y = right_hadamard(x, self.n, transpose=transpose)
        else:
            parts = torch.split(x, list(self.blocks), dim=-1)
            y = torch.cat(
                [right_hadamard(p, b, transpose=transpose) for p, b in zip(parts, self.blocks)], dim=-1
            )
        return y * s if transpose else y

    def _dense64(self) -> Tensor:
        h = torch.block_diag(*(hadamard_matrix(b, dtype=torch.float64) for b in self.blocks))
        return self.signs.to(torch.float64)[:, None] * h

    def _state(self) -> dict[str, Any]:
        return {
            "signs": self.signs.clone(),
            "blocks": torch.tensor(self.blocks, dtype=torch.int64),
            "constructions": _constructions(self.blocks),
        }

    @classmethod
    def _from_state(cls, n: int, seed: int | None, d: dict[str, Any]) -> Rotation:
        if "signs" not in d or "blocks" not in d:
            raise ValueError("hadamard rotation state needs 'signs' and 'blocks'")
        signs = check_signs(d["signs"], (n,), "hadamard rotation state 'signs'")
        blocks = _check_blocks(d["blocks"], n, "hadamard rotation state 'blocks'")
        if "constructions" not in d:
            _check_legacy(blocks)
        elif d["constructions"] != _constructions(blocks):
            raise ValueError(
                f"hadamard rotation state 'constructions' {d['constructions']!r} differs from this version's "
                f"{_constructions(blocks)!r}: the saved rotation used other Hadamard matrices"
            )
        return cls(n, seed=seed, signs=signs, blocks=blocks)

    def __repr__(self) -> str:
        b = " ⊕ ".join(map(str, self.blocks))
        return f"HadamardRotation(n={self.n}, seed={self.seed}, blocks={b}{', transposed' if self.transposed else ''})"
