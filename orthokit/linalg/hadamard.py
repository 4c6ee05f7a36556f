"""Orthonormal fast Hadamard transform for every supported order (Paley core ⊗ Sylvester; butterfly, dense,
Kronecker-blocked GEMMs or an optional CUDA kernel, with an exact autograd) and Hadamard matrices."""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from orthokit.linalg import dispatch
from orthokit.linalg._checks import check_finite, compute_dtype

__all__ = ["hadamard_transform", "hadamard_matrix", "hadamard_construction"]

# method="auto" asks orthokit.linalg.dispatch.choose_hadamard_method, which times the CPU candidates (dense
# x @ H, the butterfly, the Kronecker-blocked GEMMs) once per (n, rows bucket, dtype) and caches the choice;
# where the crossovers lie depends on the host (BLAS, cores, cache sizes). See hadamard_transform.


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


def _prime_power(q: int) -> tuple[int, int] | None:
    """``(p, k)`` with ``q = p^k``, ``p`` prime, ``k ≥ 1``; ``None`` if ``q`` is not a prime power."""
    if q < 2:
        return None
    p = next((f for f in range(2, math.isqrt(q) + 1) if q % f == 0), q)
    k, m = 0, q
    while m % p == 0:
        m //= p
        k += 1
    return (p, k) if m == 1 else None


def _core(c: int) -> tuple[str, int] | None:
    """The Paley construction of order ``c`` (``("paley1", q)`` / ``("paley2", q)``), or ``None``.

    Over a prime field first (Paley I, then II: the constructions of every order supported before prime powers
    were added, so those matrices are unchanged), then over ``GF(p^k)``, ``k ≥ 2`` (Paley I, then II).
    """
    q1, q2 = c - 1, (c // 2 - 1 if c % 2 == 0 else 0)
    for prime_only in (True, False):
        ok = _is_prime if prime_only else (lambda q: (pk := _prime_power(q)) is not None and pk[0] > 2)
        if q1 >= 3 and q1 % 4 == 3 and ok(q1):
            return ("paley1", q1)
        if q2 >= 5 and q2 % 4 == 1 and ok(q2):
            return ("paley2", q2)
    return None


def _plan(n: int) -> tuple[str, int, int] | None:
    """``(kind, q, core order c)`` with ``n = c·2^b`` and the smallest core ``c``; ``None`` if unsupported.

    ``kind`` is ``"sylvester"`` (``c = 1``), ``"paley1"`` or ``"paley2"`` (see :func:`_core` for the order of
    preference at one ``c``).
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


def _irreducible(p: int, k: int) -> list[int]:
    """Coefficients ``f_0 … f_{k−1}`` of the first monic irreducible ``x^k + f_{k−1}x^{k−1} + … + f_0`` over
    ``GF(p)`` (search in lexicographic order of the coefficient digits, ``f_0 ≠ 0``): a polynomial of degree ``k``
    is irreducible iff no monic polynomial of degree ``1 … ⌊k/2⌋`` divides it (trial division)."""

    def divides(g: list[int], f: list[int]) -> bool:  # g, f: coefficients, lowest first, both monic
        r = list(f)
        for top in range(len(r) - 1, len(g) - 2, -1):
            c = r[top] % p
            if c:
                for t in range(len(g)):
                    r[top - len(g) + 1 + t] -= c * g[t]
        return all(v % p == 0 for v in r[: len(g) - 1])

    for code in range(p**k):
        low = [(code // p**t) % p for t in range(k)]
        if low[0] == 0:
            continue
        f = [*low, 1]
        if not any(
            divides([*((m // p**t) % p for t in range(d)), 1], f)
            for d in range(1, k // 2 + 1)
            for m in range(p**d)
        ):
            return low
    raise AssertionError(f"no irreducible polynomial of degree {k} over GF({p})")  # pragma: no cover


def _field_digits(q: int) -> tuple[int, int, torch.Tensor]:
    """``(p, k, D)``: element ``e`` of ``GF(q)``, ``q = p^k``, is the polynomial with coefficients ``D[e]`` (its
    base-``p`` digits, lowest first); addition is digit-wise mod ``p``."""
    pk = _prime_power(q)
    assert pk is not None
    p, k = pk
    e = torch.arange(q, dtype=torch.int64)
    D = torch.stack([(e // p**t) % p for t in range(k)], dim=1)
    return p, k, D


def _quadratic_character(q: int) -> torch.Tensor:
    """``χ`` over ``GF(q)`` (``q`` an odd prime power), int8 of length ``q`` indexed by element code: ``χ(0) = 0``,
    ``1`` on the nonzero squares, ``−1`` elsewhere. The squares are enumerated: ``x²`` for every ``x``, computed as
    a polynomial product reduced modulo the monic irreducible of :func:`_irreducible` (vectorized over ``x``)."""
    p, k, D = _field_digits(q)
    if k == 1:
        sq = (D[:, 0] * D[:, 0]) % p
    else:
        f = _irreducible(p, k)
        r = torch.zeros(q, 2 * k - 1, dtype=torch.int64)
        for i in range(k):
            for j in range(k):
                r[:, i + j] += D[:, i] * D[:, j]
        r %= p
        for top in range(2 * k - 2, k - 1, -1):  # x^top ≡ −(f_0 + … + f_{k−1}x^{k−1})·x^{top−k}
            c = r[:, top].clone()
            r[:, top] = 0
            for t in range(k):
                r[:, top - k + t] -= c * f[t]
            r %= p
        sq = (r[:, :k] * torch.tensor([p**t for t in range(k)], dtype=torch.int64)).sum(dim=1)
    chi = torch.full((q,), -1, dtype=torch.int8)
    chi[sq] = 1
    chi[0] = 0
    return chi


def _jacobsthal(q: int) -> torch.Tensor:
    """``Q[i, j] = χ(x_j − x_i)`` (int8, ``q × q``) with the quadratic character χ of ``GF(q)``, ``q`` an odd prime
    power, elements ordered by their code (:func:`_field_digits`; for a prime ``q`` the residues ``0 … q−1``).

    Vectorized: the code of ``x_j − x_i`` is built digit by digit (``O(q²)`` vectorized work in row blocks, no
    Python loop over entries)."""
    p, k, D = _field_digits(q)
    chi = _quadratic_character(q)
    D32 = D.to(torch.int32)
    out = torch.empty(q, q, dtype=torch.int8)
    step = max(1, (1 << 20) // q)  # row blocks: O(2^20) int32 temporaries, not O(q²)
    for r in range(0, q, step):
        idx = torch.zeros(min(step, q - r), q, dtype=torch.int32)
        for t in range(k):
            idx += ((D32[None, :, t] - D32[r : r + step, None, t]) % p) * p**t
        out[r : r + step] = chi[idx]
    return out


def _paley1(q: int) -> torch.Tensor:
    """Paley I, order ``q + 1`` (``q ≡ 3 mod 4``): ``H = I + S``, ``S = [[0, 1ᵀ], [−1, Q]]`` skew, int8 ±1.

    ``SSᵀ = qI`` (``Q1 = 0``, ``QQᵀ = qI − J``), so ``HHᵀ = I + S + Sᵀ + SSᵀ = (q + 1)I``.
    """
    H = torch.zeros(q + 1, q + 1, dtype=torch.int8)
    H[0, 1:] = 1
    H[1:, 0] = -1
    H[1:, 1:] = _jacobsthal(q)
    H.diagonal().add_(1)
    return H


def _paley2(q: int) -> torch.Tensor:
    """Paley II, order ``2(q + 1)`` (``q ≡ 1 mod 4``), int8 ±1.

    ``C = [[0, 1ᵀ], [1, Q]]`` is a symmetric conference matrix (``C² = qI``); each ``±1`` entry becomes
    ``±[[1, 1], [1, −1]]`` and each zero (the diagonal) ``[[1, −1], [−1, −1]]``:
    ``H = C ⊗ A + I ⊗ B`` with ``AAᵀ = BBᵀ = 2I`` and ``ABᵀ`` skew, so ``HHᵀ = 2(q + 1)I``.
    """
    C = torch.zeros(q + 1, q + 1, dtype=torch.int8)
    C[0, 1:] = 1
    C[1:, 0] = 1
    C[1:, 1:] = _jacobsthal(q)
    A = torch.tensor([[1, 1], [1, -1]], dtype=torch.int8)
    B = torch.tensor([[1, -1], [-1, -1]], dtype=torch.int8)
    return torch.kron(C, A) + torch.kron(torch.eye(q + 1, dtype=torch.int8), B)


@lru_cache(maxsize=16)
def _integer_hadamard(n: int) -> torch.Tensor:
    """The ±1 (int8) Hadamard matrix ``core ⊗ Sylvester(2^b)`` of a supported non-power-of-two ``n``."""
    plan = _plan(n)
    assert plan is not None and plan[0] != "sylvester"
    kind, q, c = plan
    core = _paley1(q) if kind == "paley1" else _paley2(q)
    h = torch.ones(1, 1, dtype=torch.int8)
    base = torch.tensor([[1, 1], [1, -1]], dtype=torch.int8)
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
        f"no Hadamard construction for order {n} (supported: 2^a·m with m = 1, m = q+1 for an odd prime "
        f"power q ≡ 3 mod 4, or m = 2(q+1) for an odd prime power q ≡ 1 mod 4); nearest supported orders: {near}; "
        f"a block-diagonal of smaller Hadamard matrices is the orthogonal fallback (zero-padding is not)"
    )


def hadamard_construction(n: int) -> str:
    r"""Which construction :func:`hadamard_matrix` uses for order ``n``.

    ``n = c·2^b`` with the smallest core order ``c`` that has a construction: ``"sylvester(n)"`` for powers of
    two, otherwise ``"paley1(q=…)"`` (``c = q + 1``, ``q ≡ 3 mod 4``) or ``"paley2(q=…)"`` (``c = 2(q + 1)``,
    ``q ≡ 1 mod 4``), ``q`` an odd prime power (``GF(q)`` arithmetic for ``q = p^k``, ``k ≥ 2``), followed by
    ``" ⊗ sylvester(2^b)"`` when ``b > 0``. At one ``c``, a prime ``q`` is preferred (Paley I, then II), then a
    prime power (Paley I, then II): every order supported before prime powers were added keeps its matrix when
    its smallest core is unchanged. Orders whose smallest core became a prime-power one (below 3000: 104, 200, 208,
    400, 416, 488, 800, 832, 976, 1448, 1600, 1664, 1952, 2504, 2664, 2720, 2896; and e.g. 11008 = 344·32, before
    5504·2) now get that smaller core. Newly supported below 1200: 52, 100, 244, 340, 344, 580, 680, 688, 724,
    1060, 1160. Still unsupported multiples of 4 below 200: 92, 116, 156, 172, 184, 188 (Williamson-type tables).

    Raises:
        TypeError: ``n`` is not an int.
        ValueError: ``n < 1``, or no construction (e.g. 172 = 4·43: 43, 85 and 171 = 9·19 are no such q);
            the message names the nearest supported orders.

    Example:
        >>> hadamard_construction(8), hadamard_construction(12), hadamard_construction(24)
        ('sylvester(8)', 'paley1(q=11)', 'paley1(q=11) ⊗ sylvester(2)')
        >>> hadamard_construction(36), hadamard_construction(52), hadamard_construction(11008)
        ('paley2(q=17)', 'paley2(q=25)', 'paley1(q=343) ⊗ sylvester(32)')
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
    ``H_12``, ``H_20``, ``H_28`` …): Paley I for ``c = q + 1`` (``q ≡ 3 mod 4``, ``I + S`` with the
    skew ``S = [[0, 1ᵀ], [−1, Q]]`` from the quadratic-character Jacobsthal matrix ``Q[i, j] = χ(x_j − x_i)``),
    Paley II for ``c = 2(q + 1)`` (``q ≡ 1 mod 4``, the symmetric conference matrix with ``2×2`` blocks), ``q`` an
    odd prime power: ``GF(p^k)`` is ``GF(p)[x]`` modulo the first monic irreducible of degree ``k`` (found by
    search), ``χ(x) = 1`` on the nonzero squares (enumerated). The smallest such ``c`` is used
    (:func:`hadamard_construction` names it). These are orthogonal but in general neither symmetric nor
    involutive. Built exactly in integers (vectorized), scaled in float64, then cast to ``dtype``.

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


# ------------------------------------------------------------------------------------------ the transform
#: the "kron" method splits H_{2^b} into Sylvester factors of at most 2**KRON_MAX_LOG2 rows, as equal as possible
#: (larger first). 64 measured best on the 2-core dev VM (AMD EPYC, AVX2, 1 thread, fp32, 4096 rows; ms):
#: n=1024 (32,32) 14-24 vs (8,8,16) 20; n=4096 (64,64) 123 vs (16,16,16) 180-250 vs (32,128) 310;
#: n=16384 (32,32,16) 100-150 vs (128,128) 340 (one-off prototype timings on a busy host; the method-level
#: comparison is benchmarks/results/rotation_speed.md).
KRON_MAX_LOG2 = 6
#: in the kron mode products, a factor whose trailing size ``rest`` (product of the later factors) is at most this
#: is applied by ``einsum`` instead of a batched ``F.T @ Y``. Measured (1 thread, fp32, ~1M-entry inputs, ms,
#: matmul vs einsum): f=12: rest 2 2.18/0.32, 8 0.49/0.27, 16 0.19/0.27; f=172: rest 2 30.9/0.78, 8 8.1/0.78,
#: 16 0.70/0.77; f=344: rest 2 68/1.4, 16 1.44/1.26; f=5504, rest 2, 8 rows: 5316/58 (the review's n=11008 case).
KRON_EINSUM_MAX_REST = 8
#: the "kron" and "fwht" kernels work on row chunks of at most this many entries (bounded temporaries: the
#: extra memory is O(chunk), the output O(input); also keeps a chunk's intermediates in cache).
CHUNK_ENTRIES = 1 << 18
#: the optional CUDA kernel (Dao-AILab ``fast-hadamard-transform``) handles power-of-two lengths up to this.
CUDA_EXT_MAX_N = 32768
#: values of ``method`` accepted by :func:`hadamard_transform`.
METHODS = ("auto", "fwht", "dense", "kron", "fast_hadamard_transform")
_CUDA_EXT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _split(n: int) -> tuple[str, int, int, int]:
    """``(kind, q, c, p)``: ``n = c·p`` with the Paley core order ``c`` (1 for Sylvester) and ``p = 2^b``."""
    plan = _plan(n)
    assert plan is not None
    kind, q, c = plan
    return kind, q, c, n // c


@lru_cache(maxsize=16)
def _core_matrix(kind: str, q: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    """The orthonormal Paley core ``P_c/√c`` (``c = q + 1`` or ``2(q + 1)``), exact integers scaled in float64."""
    core = _paley1(q) if kind == "paley1" else _paley2(q)
    return (core.to(torch.float64) / math.sqrt(core.shape[0])).to(dtype=dtype, device=device)


@lru_cache(maxsize=8)
def _dense_matrix(n: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    """Cached ``H_n/√n`` for the dense method (built outside :func:`_sylvester`'s cache, so the dispatch probe's
    uncached ``_dense_matrix.__wrapped__`` leaves no ``n²`` matrix behind)."""
    if _is_pow2(n):
        return _sylvester.__wrapped__(n, dtype, device)
    return hadamard_matrix(n, dtype=dtype, device=device)


def _kron_log2(b: int) -> list[int]:
    """Exponents of the Sylvester factors of ``H_{2^b}`` for the kron method (sum ``b``, each ≤ KRON_MAX_LOG2)."""
    if b == 0:
        return []
    m = -(-b // KRON_MAX_LOG2)
    return [b // m + (1 if i < b % m else 0) for i in range(m)]


def _kron_factors(n: int, dtype: torch.dtype, device: str, transpose: bool) -> list[torch.Tensor]:
    """Orthonormal factors ``F_1, …, F_m`` with ``H_n/√n = F_1 ⊗ … ⊗ F_m`` (or of its transpose)."""
    kind, q, c, p = _split(n)
    facs = []
    if c > 1:
        core = _core_matrix(kind, q, dtype, device)
        facs.append(core.T if transpose else core)
    facs += [_sylvester(1 << k, dtype, device) for k in _kron_log2(p.bit_length() - 1)]
    return facs


def _mode_products(y: torch.Tensor, facs: list[torch.Tensor]) -> torch.Tensor:
    """``y @ (F_1 ⊗ … ⊗ F_m)`` for ``y`` of shape ``(R, n)``: one GEMM per factor, no ``n×n`` matrix.

    Row index ``i = (i_1, …, i_m)`` (``i_1`` slowest): factor ``k`` contracts axis ``k`` of the
    ``(R, f_1, …, f_m)`` view, as ``(F_kᵀ @ Y)`` on a ``(R·f_1⋯f_{k−1}, f_k, f_{k+1}⋯f_m)`` batch, or as one
    plain GEMM ``(R·…, f_m) @ F_m`` for the last axis. When the trailing size ``f_{k+1}⋯f_m`` is at most
    ``KRON_EINSUM_MAX_REST`` the batched ``F_kᵀ @ Y`` degenerates into many skinny GEMMs; ``einsum`` (one GEMM on
    a permuted copy) is used instead.
    """
    R, n = y.shape
    lead = 1
    for F in facs:
        f = F.shape[0]
        rest = n // (lead * f)
        if rest == 1:
            y = y.reshape(-1, f) @ F
        elif rest <= KRON_EINSUM_MAX_REST:
            y = torch.einsum("bfr,fg->bgr", y.reshape(R * lead, f, rest), F)
        else:
            y = torch.matmul(F.T, y.reshape(R * lead, f, rest))
        lead *= f
    return y.reshape(R, n)


def _fwht_last(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal Sylvester butterfly over the last (power-of-two) dim: ``log₂ n`` stages ``(a, b) → (a+b, a−b)``."""
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


def _cuda_ext() -> object | None:
    """The optional ``fast_hadamard_transform`` module (imported lazily, on first CUDA use), or ``None``."""
    import importlib

    try:
        return importlib.import_module("fast_hadamard_transform")
    except ImportError:
        return None


def _cuda_ext_usable(device: torch.device, n: int, dtype: torch.dtype) -> bool:
    """Whether the CUDA kernel can do the Sylvester part ``p`` of ``n = c·p`` (CUDA, p ≤ 32768, fp32/16/bf16)."""
    if device.type != "cuda" or dtype not in _CUDA_EXT_DTYPES:
        return False
    p = _split(n)[3]
    return 1 < p <= CUDA_EXT_MAX_N and _cuda_ext() is not None


def _rows_chunked(fn: object, y: torch.Tensor) -> torch.Tensor:
    R, n = y.shape
    rows = max(1, CHUNK_ENTRIES // n)
    if R <= rows:
        return fn(y)  # type: ignore[operator]
    out = torch.empty_like(y)
    for i in range(0, R, rows):
        out[i : i + rows] = fn(y[i : i + rows])  # type: ignore[operator]
    return out


def _apply_kernel(y: torch.Tensor, method: str, transpose: bool) -> torch.Tensor:
    """``y @ H`` (``transpose``: ``y @ Hᵀ``) for ``y`` of shape ``(R, n)``, ``method`` already resolved."""
    n = y.shape[-1]
    dev = str(y.device)
    if method == "dense":
        H = _dense_matrix(n, y.dtype, dev)
        return y @ (H.T if transpose else H)
    if method == "kron":
        facs = _kron_factors(n, y.dtype, dev, transpose)
        return _rows_chunked(lambda z: _mode_products(z, facs), y) if facs else y.clone()
    kind, q, c, p = _split(n)
    core = []
    if c > 1:
        P = _core_matrix(kind, q, y.dtype, dev)
        core = [P.T if transpose else P]
    if method == "fast_hadamard_transform":
        ext = _cuda_ext()
        z = _mode_products(y, core) if core else y
        return ext.hadamard_transform(z.reshape(-1, p), scale=1.0 / math.sqrt(p)).reshape(y.shape)  # type: ignore[union-attr]

    def fwht(z: torch.Tensor) -> torch.Tensor:  # core on the slow axis, butterfly on the 2^b axis
        if core:
            z = _mode_products(z, core)
        return _fwht_last(z.reshape(-1, p)).reshape(z.shape) if p > 1 else z.clone()

    return _rows_chunked(fwht, y)


class _HadamardFn(torch.autograd.Function):
    """``y = x @ M`` with ``M = H`` or ``Hᵀ``; backward ``g @ Mᵀ`` is the transposed transform (itself this
    Function, so double backward works); nothing is saved for backward (memory O(input))."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor, method: str, transpose: bool) -> torch.Tensor:  # type: ignore[override]
        ctx.method, ctx.transpose = method, transpose  # type: ignore[attr-defined]
        n = x.shape[-1]
        if x.numel() == 0:
            return x.clone()
        return _apply_kernel(x.reshape(-1, n), method, transpose).reshape(x.shape)

    @staticmethod
    def backward(ctx: object, g: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        return _HadamardFn.apply(g, ctx.method, not ctx.transpose), None, None  # type: ignore[attr-defined]


def _auto_method(device: torch.device, n: int, rows: int, dtype: torch.dtype) -> str:
    """``method="auto"``: the CUDA kernel where usable, else the measured/fixed choice of the dispatcher."""
    if _cuda_ext_usable(device, n, dtype):
        return "fast_hadamard_transform"
    return dispatch.choose_hadamard_method(device, n, rows, dtype)


def hadamard_transform(
    x: torch.Tensor, dim: int = -1, *, method: str = "auto", transpose: bool = False
) -> torch.Tensor:
    r"""Orthonormal Hadamard transform ``y = x·H_n/√n`` along ``dim`` (``transpose=True``: ``x·H_nᵀ/√n``).

    ``H_n`` is :func:`hadamard_matrix` ``(n)`` for every order it supports, ``n = c·2^b``:
    ``H_n = P_c ⊗ S_{2^b}`` with a Paley core ``P_c`` (``c = 1`` for powers of two) and the Sylvester matrix
    ``S_{2^b}`` (``S_1 = [1]``, ``S_{2k} = S_2 ⊗ S_k``). Writing the last axis as ``(c, 2^b)`` (core index
    slowest), ``x·(P ⊗ S) = Pᵀ·X·S`` per row: the ``2^b`` axis is transformed fast and the ``c`` axis is
    multiplied by the small dense core. For powers of two ``H`` is symmetric and the transform **involutive**
    (applying it twice returns ``x``); Paley cores are not symmetric, so there ``transpose=True`` is the
    inverse. Zero-padding is never used (it is not orthogonal); unsupported orders (e.g. 172) raise, naming
    the nearest supported ones.

    Methods (same result within rounding, ~1e-7 relative in float32):

    * ``"fwht"`` — the ``log₂ 2^b``-stage butterfly ``(a, b) → (a + b, a − b)``, ``O(n log n)`` per row, by
      reshapes on copies (never in place);
    * ``"dense"`` — one GEMM with the cached ``H_n/√n`` (``n²`` entries);
    * ``"kron"`` — ``S_{2^b} = S_{2^{a_1}} ⊗ … ⊗ S_{2^{a_m}}`` with blocks of at most 64 rows
      (``KRON_MAX_LOG2``): one small GEMM per factor, ``2n·(c + Σ 2^{a_i})`` flops per row instead of
      ``2n²`` — on CPU BLAS (1 thread) it beat the Python-level butterfly at every measured size and the dense
      product from ``n ≈ 256`` on (``benchmarks/results/rotation_speed.md``); a large Paley core ``c`` costs
      ``2n·c`` flops per row, so ``orthokit.rotation`` caps it (``MAX_CORE``);
    * ``"fast_hadamard_transform"`` — the optional CUDA kernel of Dao-AILab's ``fast-hadamard-transform``
      (imported lazily, never required) on the ``2^b ≤ 32768`` axis, CUDA tensors in fp32/fp16/bf16 only;
    * ``"auto"`` — that CUDA kernel when usable, otherwise
      :func:`orthokit.linalg.dispatch.choose_hadamard_method`, which times the candidates once per
      ``(device, n, rows bucket, dtype)`` and caches the choice (fixed rule with probing off,
      ``ORTHOKIT_DISPATCH=fixed``: dense on CPU for ``n ≤ 128``, kron otherwise and off CPU).

    Differentiable through a custom autograd function whose backward is the transposed transform (nothing
    saved, memory O(input); double backward works). Batched over all other dims; computed in ≥ float32,
    returned in the input dtype. Used for incoherence rotations (QuaRot, Ashkboos et al. 2024,
    arXiv 2404.00456; QuIP#, Tseng et al. 2024; SpinQuant R3/R4, Liu et al. 2024).

    Args:
        x: real floating tensor, finite; its size along ``dim`` must be a supported Hadamard order.
        dim: the dimension to transform.
        method: one of ``"auto"``, ``"fwht"``, ``"dense"``, ``"kron"``, ``"fast_hadamard_transform"``.
        transpose: apply ``Hᵀ`` instead of ``H`` (the inverse transform).

    Raises:
        TypeError: ``x`` not a tensor, ``transpose`` not a bool.
        ValueError: no Hadamard construction for the size (message names the nearest orders), bad ``dim``,
            unknown ``method`` (or ``"fast_hadamard_transform"`` requested without CUDA / the package),
            non-finite input.

    Example:
        >>> x = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
        >>> hadamard_transform(x)
        tensor([0.5000, 0.5000, 0.5000, 0.5000], dtype=torch.float64)
        >>> bool(torch.allclose(hadamard_transform(hadamard_transform(x)), x))
        True
        >>> z = torch.randn(3, 12, dtype=torch.float64)            # Paley order 12
        >>> y = hadamard_transform(z, method="kron")
        >>> bool(torch.allclose(y, z @ hadamard_matrix(12, dtype=torch.float64)))
        True
        >>> bool(torch.allclose(hadamard_transform(y, transpose=True), z))
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
    if not isinstance(transpose, bool):
        raise TypeError(f"transpose must be a bool, got {type(transpose).__name__}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}, got {method!r}")
    n = x.shape[dim]
    if n < 1:
        raise ValueError(f"hadamard_transform needs a positive size along dim {dim}, got {n}")
    if _plan(n) is None:
        raise ValueError(f"hadamard_transform: size {n} along dim {dim}: {_unsupported(n)}")
    check_finite(x, "x")
    return _transform(x, dim, method, transpose)


def _transform(x: torch.Tensor, dim: int, method: str, transpose: bool) -> torch.Tensor:
    """:func:`hadamard_transform` after validation, **without** the finiteness check: NaN/inf propagate as through
    any GEMM, and no host sync. Internal callers (``orthokit.rotation``'s ``Rotation.apply``) use it with a valid
    ``x`` whose size along ``dim`` is a supported order."""
    n = x.shape[dim]
    cd = compute_dtype(x.dtype)
    y = x.to(cd).movedim(dim, -1)
    if method == "auto":
        method = _auto_method(y.device, n, y.numel() // n, cd)
    elif method == "fast_hadamard_transform" and not _cuda_ext_usable(y.device, n, cd):
        raise ValueError(
            "method='fast_hadamard_transform' needs a CUDA tensor (fp32/fp16/bf16), a power-of-two factor "
            f"2 ≤ 2^b ≤ {CUDA_EXT_MAX_N} of the size and the package installed; got device {y.device.type}, "
            f"size {n}, dtype {cd}"
        )
    out = _HadamardFn.apply(y, method, transpose)
    return out.movedim(-1, dim).to(x.dtype)
