"""Orthonormal fast Walsh–Hadamard transform (Sylvester ordering)."""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from orthokit.linalg import dispatch
from orthokit.linalg._checks import check_finite, compute_dtype

__all__ = ["hadamard_transform", "hadamard_matrix"]

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


def hadamard_matrix(
    n: int, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> torch.Tensor:
    r"""The orthonormal Sylvester–Hadamard matrix ``H_n/√n`` (``H_{2k} = [[H_k, H_k], [H_k, −H_k]]``).

    Symmetric, orthogonal and involutive: ``(H_n/√n)² = I``. ``n`` must be a power of two.

    Example:
        >>> hadamard_matrix(2, dtype=torch.float64) * 2 ** 0.5
        tensor([[ 1.,  1.],
                [ 1., -1.]], dtype=torch.float64)
    """
    if isinstance(n, bool) or not isinstance(n, int) or not _is_pow2(n):
        raise ValueError(f"Hadamard size must be a power of two, got {n!r}")
    return _sylvester(n, dtype, str(torch.device(device))).clone()


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
