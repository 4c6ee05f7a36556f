r"""Diagnostics for rotations and quantization: kurtosis, outlier ratio, QSUR, angular and relative error.

All metrics compute in float64 on a detached copy and never modify their input.

* :func:`kurtosis` — Pearson's (non-excess) kurtosis ``m₄/m₂²`` with population moments (``= 3`` for a Gaussian,
  ``= 1`` for ±1 signs, ``≫ 3`` for outlier channels); per channel or pooled. Same definition as
  ``scipy.stats.kurtosis(fisher=False, bias=True)``; ``excess=True`` subtracts 3 (Fisher).
* :func:`outlier_ratio` — ``max|x| / rms(x)`` (nn.md §C9: MiniLM activations 26.8 → 6.0 after a Hadamard rotation).
  A rotation preserves the rms, so this is exactly the factor by which the absmax quantization step shrinks.
* :func:`log_qsur` — the log of OSTQuant's *quantization space utilization rate* (Hu et al., ICLR 2025,
  arXiv 2501.13987). With activations ``x ~ N(0, Σ)`` (centred), ``Σ = VΛVᵀ`` and a rotation ``R`` (rows
  ``x ↦ xR``, covariance ``RᵀΣR``), the data ellipsoid at Mahalanobis radius ``χ`` has volume ``κ_d ∏_i χ√λ_i``
  (``κ_d = π^{d/2}/Γ(d/2 + 1)``, the unit-ball volume) and a per-tensor uniform quantizer must cover the cube of
  half-width ``χ·max_j √(RᵀΣR)_jj``, volume ``(2χ)^d max_j (RᵀΣR)_jj^{d/2}``. ``χ`` cancels:

  ``log QSUR = log κ_d − d·log 2 + ½ Σ_i log λ_i − (d/2)·log max_j (RᵀΣR)_jj``.

  ``constant=False`` drops ``log κ_d − d log 2`` (nn.md §C4's form; only differences between rotations matter).
  Since ``max_j (RᵀΣR)_jj ≥ tr Σ / d``, the best rotation reaches ``(d/2)·log(GM(λ)/AM(λ))`` (+ constant) and
  :func:`log_qsur_max` ``= log κ_d − d log 2`` (a ball inscribed in a cube) needs also equal eigenvalues (a
  scaling). The mean term of the paper (``|μ_j|`` added to the half-width) does not cancel ``χ`` and is left out;
  ``center=False`` uses the raw second moment ``E[xᵀx]`` instead, which charges the mean as spread.
* :func:`angular_error` — ``∠(x, q)`` in radians per vector (Zadeh & Constantinides, arXiv 2605.07662, nn.md §C7),
  computed as ``2·atan2(‖x̂ − q̂‖, ‖x̂ + q̂‖)`` (Kahan's formula: accurate for tiny angles where ``acos`` is not).
* :func:`relative_error` — ``‖q − x‖ / ‖x‖`` over the whole tensor or per vector.

Example:
    >>> import torch
    >>> from orthokit.rotation.metrics import kurtosis, outlier_ratio, relative_error
    >>> from orthokit.rotation.hadamard import HadamardRotation
    >>> x = torch.randn(512, 64, dtype=torch.float64)
    >>> x[:, 3] *= 30                                                  # one outlier channel
    >>> r = HadamardRotation(64, seed=0)
    >>> outlier_ratio(x) > 5 * outlier_ratio(r.apply(x)), kurtosis(x) > 10 > kurtosis(r.apply(x))
    (True, True)
    >>> relative_error(x, x * 1.01)
    0.01
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from orthokit.linalg._checks import check_finite
from orthokit.rotation.base import Rotation, check_orthogonal

__all__ = ["kurtosis", "outlier_ratio", "log_qsur", "log_qsur_max", "angular_error", "relative_error"]


def _as64(x: object, name: str, min_dim: int = 1) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.is_complex() or not x.is_floating_point():
        raise ValueError(f"{name} must be a real floating tensor, got dtype {x.dtype}")
    if x.dim() < min_dim or x.numel() == 0:
        raise ValueError(
            f"{name} must be non-empty with at least {min_dim} dim(s), got shape {tuple(x.shape)}"
        )
    check_finite(x, name)
    return x.detach().to(device="cpu", dtype=torch.float64)


def _dim(dim: object, ndim: int) -> int | None:
    if dim is None:
        return None
    if isinstance(dim, bool) or not isinstance(dim, int) or not -ndim <= dim < ndim:
        raise ValueError(f"dim={dim!r} is out of range for a tensor with {ndim} dims")
    return dim


def kurtosis(x: Tensor, *, per_channel: bool = False, excess: bool = False) -> Tensor | float:
    """Pearson kurtosis ``E[(x−μ)⁴] / E[(x−μ)²]²`` (population moments), pooled or per channel.

    Args:
        x: ``(..., d)`` activations; leading dims are tokens.
        per_channel: ``True``: a ``(d,)`` tensor, the kurtosis of each channel over all tokens; ``False``: one
            float over all entries (centred at the global mean).
        excess: subtract 3 (Fisher's definition, 0 for a Gaussian).

    Constant channels (zero variance) give ``nan``, like SciPy.

    Example:
        >>> x = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
        >>> kurtosis(x), kurtosis(x, per_channel=True).tolist()
        (1.0, [1.0, 1.0])
    """
    x64 = _as64(x, "x")
    y = x64.reshape(-1, x64.shape[-1]) if per_channel else x64.reshape(-1, 1)
    c = y - y.mean(dim=0)
    m2 = (c * c).mean(dim=0)
    m4 = (c**4).mean(dim=0)
    k = torch.where(m2 > 0, m4 / (m2 * m2), torch.full_like(m2, math.nan)) - (3.0 if excess else 0.0)
    return k if per_channel else float(k[0])


def outlier_ratio(x: Tensor, *, dim: int | None = None) -> Tensor | float:
    """``max|x| / rms(x)`` over all entries (``dim=None``, a float) or along ``dim`` (a tensor).

    Equals ``1`` for a flat vector and ``√n`` for a one-hot one; an all-zero slice gives ``nan``.

    Example:
        >>> outlier_ratio(torch.tensor([3.0, 0.0, 0.0, 0.0])), outlier_ratio(torch.ones(2, 4), dim=-1).tolist()
        (2.0, [1.0, 1.0])
    """
    x64 = _as64(x, "x")
    d = _dim(dim, x64.dim())
    if d is None:
        rms = float(x64.pow(2).mean().sqrt())
        return float(x64.abs().max()) / rms if rms > 0 else math.nan
    rms = x64.pow(2).mean(dim=d).sqrt()
    mx = x64.abs().amax(dim=d)
    return torch.where(rms > 0, mx / rms, torch.full_like(rms, math.nan))


def log_qsur_max(d: int) -> float:
    """``log κ_d − d·log 2`` with ``κ_d = π^{d/2}/Γ(d/2+1)``: the largest :func:`log_qsur` (ball inside a cube).

    Example:
        >>> round(math.exp(log_qsur_max(2)), 6) == round(math.pi / 4, 6)
        True
    """
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise ValueError(f"d must be a positive int, got {d!r}")
    return 0.5 * d * math.log(math.pi) - math.lgamma(0.5 * d + 1) - d * math.log(2.0)


def log_qsur(
    x: Tensor | None = None,
    *,
    cov: Tensor | None = None,
    rotation: Rotation | Tensor | None = None,
    center: bool = True,
    constant: bool = True,
) -> float:
    """Log quantization space utilization rate of activations ``x`` (or a covariance) after ``rotation``.

    Args:
        x: ``(..., d)`` activations (leading dims are samples); exactly one of ``x`` / ``cov``.
        cov: a ``(d, d)`` symmetric positive semi-definite covariance instead of samples.
        rotation: ``R`` applied as ``x ↦ xR`` (a :class:`~orthokit.rotation.base.Rotation` or an orthogonal
            ``(d, d)`` tensor); ``None`` = identity.
        center: subtract the sample mean (``x`` only); ``False`` uses the raw second moment.
        constant: include ``log κ_d − d log 2`` (then the value is ``≤`` :func:`log_qsur_max` ``(d)``).

    Returns:
        ``log QSUR`` (module docstring); ``-inf`` when the covariance is singular (e.g. fewer samples than ``d``).

    Example:
        >>> cov = torch.diag(torch.tensor([4.0, 1.0], dtype=torch.float64))
        >>> round(log_qsur(cov=cov, constant=False), 6) == round(0.5 * math.log(4.0) - math.log(4.0), 6)
        True
    """
    if (x is None) == (cov is None):
        raise ValueError("log_qsur needs exactly one of x (samples) or cov (a covariance)")
    if x is not None:
        x64 = _as64(x, "x")
        y = x64.reshape(-1, x64.shape[-1])
        if center:
            y = y - y.mean(dim=0)
        sigma = y.T @ y / y.shape[0]
    else:
        sigma = _as64(cov, "cov", 2)
        if sigma.dim() != 2 or sigma.shape[0] != sigma.shape[1]:
            raise ValueError(f"cov must be a square (d, d) matrix, got shape {tuple(sigma.shape)}")
        if not torch.allclose(
            sigma, sigma.T, rtol=1e-8, atol=1e-12 * float(sigma.abs().max().clamp_min(1e-300))
        ):
            raise ValueError("cov must be symmetric")
    d = sigma.shape[0]
    if rotation is not None:
        if isinstance(rotation, Rotation):
            if rotation.n != d:
                raise ValueError(f"rotation has size {rotation.n}, expected d={d}")
            r = rotation.matrix(torch.float64)
        elif isinstance(rotation, Tensor):
            r = check_orthogonal(rotation, d, name="rotation")
        else:
            raise TypeError(f"rotation must be a Rotation, a Tensor or None, got {type(rotation).__name__}")
        sigma = r.T @ sigma @ r
    sigma = 0.5 * (sigma + sigma.T)
    lam = torch.linalg.eigvalsh(sigma)
    tol = d * torch.finfo(torch.float64).eps * float(lam.abs().max().clamp_min(1e-300))
    if float(lam.min()) <= tol:
        return -math.inf
    diag_max = float(torch.diagonal(sigma).max())
    val = 0.5 * float(torch.log(lam).sum()) - 0.5 * d * math.log(diag_max)
    return val + (log_qsur_max(d) if constant else 0.0)


def _pair(x: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
    x64, q64 = _as64(x, "x"), _as64(q, "q")
    if x64.shape != q64.shape:
        raise ValueError(f"x and q must have the same shape, got {tuple(x64.shape)} and {tuple(q64.shape)}")
    return x64, q64


def angular_error(x: Tensor, q: Tensor, *, dim: int = -1) -> Tensor:
    """Angle ``∠(x, q)`` in radians between corresponding vectors along ``dim`` (``nan`` where either is zero).

    Example:
        >>> angular_error(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]])).item() == math.pi / 4
        True
    """
    x64, q64 = _pair(x, q)
    d = _dim(dim, x64.dim())
    assert d is not None
    nx = x64.norm(dim=d, keepdim=True)
    nq = q64.norm(dim=d, keepdim=True)
    xu, qu = x64 / nx, q64 / nq
    ang = 2.0 * torch.atan2((xu - qu).norm(dim=d), (xu + qu).norm(dim=d))
    bad = (nx.squeeze(d) == 0) | (nq.squeeze(d) == 0)
    return torch.where(bad, torch.full_like(ang, math.nan), ang)


def relative_error(x: Tensor, q: Tensor, *, dim: int | None = None) -> Tensor | float:
    """``‖q − x‖ / ‖x‖``: Frobenius over all entries (``dim=None``, a float) or per vector along ``dim``.

    Example:
        >>> relative_error(torch.tensor([3.0, 4.0]), torch.tensor([3.0, 3.0]))
        0.2
    """
    x64, q64 = _pair(x, q)
    d = _dim(dim, x64.dim())
    if d is None:
        nx = float(x64.norm())
        return float((q64 - x64).norm()) / nx if nx > 0 else math.nan
    nx = x64.norm(dim=d)
    return torch.where(nx > 0, (q64 - x64).norm(dim=d) / nx, torch.full_like(nx, math.nan))
