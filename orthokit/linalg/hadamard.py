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


# ------------------------------------------------------------------------------------------ the transform
#: the "kron" method splits H_{2^b} into Sylvester factors of at most 2**KRON_MAX_LOG2 rows, as equal as possible
#: (larger first). 64 measured best on the 2-core dev VM (AMD EPYC, AVX2, 1 thread, fp32, 4096 rows; ms):
#: n=1024 (32,32) 14-24 vs (8,8,16) 20; n=4096 (64,64) 123 vs (16,16,16) 180-250 vs (32,128) 310;
#: n=16384 (32,32,16) 100-150 vs (128,128) 340 (one-off prototype timings on a busy host; the method-level
#: comparison is benchmarks/results/rotation_speed.md).
KRON_MAX_LOG2 = 6
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
    plain GEMM ``(R·…, f_m) @ F_m`` for the last axis.
    """
    R, n = y.shape
    lead = 1
    for F in facs:
        f = F.shape[0]
        rest = n // (lead * f)
        y = y.reshape(-1, f) @ F if rest == 1 else torch.matmul(F.T, y.reshape(R * lead, f, rest))
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
      ``2n²`` — on CPU BLAS this beats both the Python-level butterfly and the dense product from
      ``n ≈ 256`` on (``benchmarks/results/rotation_speed.md``);
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
