"""Orthonormal fast Walsh–Hadamard transform (Sylvester ordering) and Hadamard matrices (Sylvester, Paley)."""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from orthokit.linalg import dispatch
from orthokit.linalg._checks import check_finite, compute_dtype

__all__ = ["hadamard_transform", "hadamard_matrix", "hadamard_construction"]

# On CPU a dense BLAS matmul with a cached H beats the reshape butterfly for small n, but where the
# crossover lies depends on the host (BLAS, cores, cache sizes); method="auto" asks
# orthokit.linalg.dispatch.choose_hadamard_method, which times both once per (n, rows bucket, dtype)
# and caches the choice (fixed rule, used when probing is off: dense on CPU for n <= 512).


def _is_pow2(n: int) -> bool:
    return n >= 1 and (n & (n - 1)) == 0


@lru_cache(maxsize=16)
def _sylvester(n: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=dtype, device=device)
    base = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=dtype, device=device)
    while h.shape[0] < n:
        h = torch.kron(base, h)
    return h / math.sqrt(n)


def _is_prime(q: int) -> bool:
    if q < 2:
        return False
    if q % 2 == 0:
        return q == 2
    f = 3
    while f * f <= q:
        if q % f == 0:
            return False
        f += 2
    return True


def _core(c: int) -> tuple[str, int] | None:
    """The Paley construction of order ``c`` (``("paley1", q)`` / ``("paley2", q)``), or ``None``."""
    q = c - 1
    if q >= 3 and q % 4 == 3 and _is_prime(q):
        return ("paley1", q)
    if c % 2 == 0:
        q = c // 2 - 1
        if q >= 5 and q % 4 == 1 and _is_prime(q):
            return ("paley2", q)
    return None


def _plan(n: int) -> tuple[str, int, int] | None:
    """``(kind, q, core order c)`` with ``n = c·2^b`` and the smallest core ``c``; ``None`` if unsupported.

    ``kind`` is ``"sylvester"`` (``c = 1``), ``"paley1"`` or ``"paley2"`` (Paley I preferred on a tie).
    """
    if _is_pow2(n):
        return ("sylvester", 0, 1)
    m = n
    while m % 2 == 0:
        m //= 2
    c = m  # odd part; every candidate core is m·2^j
    while c <= n:
        found = _core(c)
        if found is not None:
            return (found[0], found[1], c)
        c *= 2
    return None


def _jacobsthal(q: int) -> list[list[int]]:
    """``Q[i][j] = χ(j − i)`` with the quadratic character χ of GF(q), q an odd prime."""
    residues = {(x * x) % q for x in range(1, q)}
    chi = [0] + [1 if a in residues else -1 for a in range(1, q)]
    return [[chi[(j - i) % q] for j in range(q)] for i in range(q)]


def _paley1(q: int) -> torch.Tensor:
    """Paley I, order ``q + 1`` (``q ≡ 3 mod 4``): ``H = I + S``, ``S = [[0, 1ᵀ], [−1, Q]]`` skew, integers.

    ``SSᵀ = qI`` (``Q1 = 0``, ``QQᵀ = qI − J``), so ``HHᵀ = I + S + Sᵀ + SSᵀ = (q + 1)I``.
    """
    Q = torch.tensor(_jacobsthal(q), dtype=torch.int64)
    S = torch.zeros(q + 1, q + 1, dtype=torch.int64)
    S[0, 1:] = 1
    S[1:, 0] = -1
    S[1:, 1:] = Q
    return torch.eye(q + 1, dtype=torch.int64) + S


def _paley2(q: int) -> torch.Tensor:
    """Paley II, order ``2(q + 1)`` (``q ≡ 1 mod 4``), integers.

    ``C = [[0, 1ᵀ], [1, Q]]`` is a symmetric conference matrix (``C² = qI``); each ``±1`` entry becomes
    ``±[[1, 1], [1, −1]]`` and each zero (the diagonal) ``[[1, −1], [−1, −1]]``:
    ``H = C ⊗ A + I ⊗ B`` with ``AAᵀ = BBᵀ = 2I`` and ``ABᵀ`` skew, so ``HHᵀ = 2(q + 1)I``.
    """
    C = torch.zeros(q + 1, q + 1, dtype=torch.int64)
    C[0, 1:] = 1
    C[1:, 0] = 1
    C[1:, 1:] = torch.tensor(_jacobsthal(q), dtype=torch.int64)
    A = torch.tensor([[1, 1], [1, -1]], dtype=torch.int64)
    B = torch.tensor([[1, -1], [-1, -1]], dtype=torch.int64)
    return torch.kron(C, A) + torch.kron(torch.eye(q + 1, dtype=torch.int64), B)


@lru_cache(maxsize=16)
def _integer_hadamard(n: int) -> torch.Tensor:
    """The ±1 (int64) Hadamard matrix ``core ⊗ Sylvester(2^b)`` of a supported non-power-of-two ``n``."""
    plan = _plan(n)
    assert plan is not None and plan[0] != "sylvester"
    kind, q, c = plan
    core = _paley1(q) if kind == "paley1" else _paley2(q)
    h = torch.ones(1, 1, dtype=torch.int64)
    base = torch.tensor([[1, 1], [1, -1]], dtype=torch.int64)
    while h.shape[0] * c < n:
        h = torch.kron(base, h)
    return torch.kron(core, h)


def _check_order(n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"Hadamard order n must be an int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"Hadamard order n must be >= 1, got {n}")
    return n


def _unsupported(n: int) -> ValueError:
    below = next((k for k in range(n - 1, 0, -1) if _plan(k) is not None), None)
    above = next(k for k in range(n + 1, 2 * n + 2) if _plan(k) is not None)
    near = f"{below} and {above}" if below is not None else f"{above}"
    return ValueError(
        f"no Hadamard construction for order {n} (supported: 2^a·m with m = 1, m = q+1 for a prime "
        f"q ≡ 3 mod 4, or m = 2(q+1) for a prime q ≡ 1 mod 4); nearest supported orders: {near}; "
        f"a block-diagonal of smaller Hadamard matrices is the orthogonal fallback (zero-padding is not)"
    )


def hadamard_construction(n: int) -> str:
    r"""Which construction :func:`hadamard_matrix` uses for order ``n``.

    ``n = c·2^b`` with the smallest core order ``c`` that has a construction (Paley I before Paley II on a
    tie, which cannot occur for the same ``c``): ``"sylvester(n)"`` for powers of two, otherwise
    ``"paley1(q=…)"`` (``c = q + 1``, ``q`` prime ``≡ 3 mod 4``) or ``"paley2(q=…)"`` (``c = 2(q + 1)``,
    ``q`` prime ``≡ 1 mod 4``), followed by ``" ⊗ sylvester(2^b)"`` when ``b > 0``.

    Raises:
        TypeError: ``n`` is not an int.
        ValueError: ``n < 1``, or no construction (e.g. 172 = 4·43: 43, 85 and 171 are not such primes);
            the message names the nearest supported orders.

    Example:
        >>> hadamard_construction(8), hadamard_construction(12), hadamard_construction(24)
        ('sylvester(8)', 'paley1(q=11)', 'paley1(q=11) ⊗ sylvester(2)')
        >>> hadamard_construction(36)
        'paley2(q=17)'
    """
    n = _check_order(n)
    plan = _plan(n)
    if plan is None:
        raise _unsupported(n)
    kind, q, c = plan
    if kind == "sylvester":
        return f"sylvester({n})"
    name = f"{kind}(q={q})"
    return name if c == n else f"{name} ⊗ sylvester({n // c})"


def hadamard_matrix(
    n: int, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> torch.Tensor:
    r"""An orthonormal Hadamard matrix ``H_n/√n`` (entries ``±1/√n``, ``H Hᵀ = I``).

    Powers of two: the Sylvester matrix ``H_{2k} = [[H_k, H_k], [H_k, −H_k]]``, symmetric and involutive
    (``(H_n/√n)² = I``), as used by :func:`hadamard_transform`. Other orders ``n = c·2^b``:
    ``P_c ⊗ H_{2^b}`` with ``P_c`` a Paley matrix (Paley 1933; the QuaRot/QuIP# tables use such
    ``H_12``, ``H_20``, ``H_28`` …): Paley I for ``c = q + 1`` (``q`` prime ``≡ 3 mod 4``, ``I + S`` with the
    skew ``S = [[0, 1ᵀ], [−1, Q]]`` from the quadratic-residue Jacobsthal matrix ``Q``), Paley II for
    ``c = 2(q + 1)`` (``q`` prime ``≡ 1 mod 4``, the symmetric conference matrix with ``2×2`` blocks); the
    smallest such ``c`` is used (:func:`hadamard_construction` names it). These are orthogonal but in general
    neither symmetric nor involutive. Built exactly in integers, scaled in float64, then cast to ``dtype``.

    Raises:
        TypeError: ``n`` not an int, ``dtype`` not a real floating dtype.
        ValueError: ``n < 1`` or no construction for ``n`` (e.g. 172); the message names the nearest
            supported orders. Zero-padding is never used (it is not orthogonal); a block-diagonal of smaller
            Hadamard matrices is the orthogonal fallback, left to the caller.

    Example:
        >>> hadamard_matrix(2, dtype=torch.float64) * 2 ** 0.5
        tensor([[ 1.,  1.],
                [ 1., -1.]], dtype=torch.float64)
        >>> H = hadamard_matrix(12, dtype=torch.float64)
        >>> bool(torch.allclose(H @ H.T, torch.eye(12, dtype=torch.float64), atol=1e-12))
        True
    """
    n = _check_order(n)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a real floating torch.dtype, got {dtype!r}")
    if _is_pow2(n):
        return _sylvester(n, dtype, str(torch.device(device))).clone()
    if _plan(n) is None:
        raise _unsupported(n)
    h = _integer_hadamard(n).to(torch.float64) / math.sqrt(n)
    return h.to(dtype=dtype, device=device)


def _fwht_last(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[-1]
    lead = x.shape[:-1]
    y = x.reshape(-1, n)
    h = 1
    while h < n:
        y = y.reshape(-1, n // (2 * h), 2, h)
        a = y[:, :, 0, :]
        b = y[:, :, 1, :]
        y = torch.stack((a + b, a - b), dim=2)
        h *= 2
    return y.reshape(*lead, n) / math.sqrt(n)


def hadamard_transform(x: torch.Tensor, dim: int = -1, *, method: str = "auto") -> torch.Tensor:
    r"""Orthonormal Walsh–Hadamard transform ``y = x·H_n/√n`` along ``dim`` (Sylvester ordering).

    ``H_n`` is the Sylvester Hadamard matrix (``H_1 = [1]``, ``H_{2k} = H_2 ⊗ H_k``), symmetric with
    ``H_nH_n = n·I``, so the transform is orthogonal and **involutive**: applying it twice returns
    ``x``. The fast transform (FWHT) is the ``log₂ n``-stage butterfly
    ``(a, b) → (a + b, a − b)``, ``O(n log n)`` per vector, implemented by reshapes on a copy
    (never in place). ``method="dense"`` multiplies by the cached ``H_n/√n`` instead, which is faster
    on CPU for small ``n`` (BLAS beats the reshape butterfly there; nn.md §C8 and
    ``benchmarks/linalg_primitives.py``). ``"auto"`` uses the faster of the two *measured on this host*:
    :func:`orthokit.linalg.dispatch.choose_hadamard_method` times both once per ``(n, rows bucket,
    dtype)`` and caches the choice (with probing off, ``ORTHOKIT_DISPATCH=fixed``: dense on CPU for
    ``n ≤ 512``, butterfly otherwise and off CPU); both give the same result within rounding
    (~1e-7 relative in float32). Used for incoherence rotations (QuaRot, Ashkboos et
    al. 2024; QuIP#, Tseng et al. 2024). Computed in ≥ float32, returned in the input dtype;
    differentiable (it is linear).

    Args:
        x: real floating tensor, finite; its size along ``dim`` must be a power of two.
        dim: the dimension to transform.
        method: ``"auto"``, ``"fwht"`` or ``"dense"``.

    Raises:
        ValueError: size not a power of two (non-power-of-two sizes would need a Hadamard matrix of
            that order, e.g. QuaRot's ``H_12 ⊗ H_{2^k}``; zero-padding is *not* orthogonal), bad ``dim``,
            unknown ``method``, non-finite input.

    Example:
        >>> x = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
        >>> hadamard_transform(x)
        tensor([0.5000, 0.5000, 0.5000, 0.5000], dtype=torch.float64)
        >>> bool(torch.allclose(hadamard_transform(hadamard_transform(x)), x))
        True
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.is_complex() or not x.is_floating_point():
        raise ValueError(f"x must be a real floating tensor, got dtype {x.dtype}")
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension")
    if isinstance(dim, bool) or not isinstance(dim, int) or not -x.dim() <= dim < x.dim():
        raise ValueError(f"dim={dim!r} is out of range for a tensor with {x.dim()} dims")
    n = x.shape[dim]
    if not _is_pow2(n):
        raise ValueError(f"hadamard_transform needs a power-of-two size along dim {dim}, got {n}")
    if method not in ("auto", "fwht", "dense"):
        raise ValueError(f"method must be 'auto', 'fwht' or 'dense', got {method!r}")
    check_finite(x, "x")
    cd = compute_dtype(x.dtype)
    y = x.to(cd).movedim(dim, -1)
    if method == "auto":
        method = dispatch.choose_hadamard_method(y.device, n, y.numel() // n, cd)
    if method == "dense":
        out = y @ _sylvester(n, cd, str(y.device))
    else:
        out = _fwht_last(y)
    return out.movedim(-1, dim).to(x.dtype)
