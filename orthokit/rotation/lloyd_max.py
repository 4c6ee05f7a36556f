r"""Lloyd–Max scalar quantizers: MSE-optimal ``2^bits``-level codebooks for a sample or a known marginal.

A Lloyd–Max quantizer (Lloyd 1957/1982, Max 1960) with levels ``c_0 < … < c_{L-1}`` maps ``x`` to the nearest
level; the decision thresholds are the midpoints ``t_i = (c_i + c_{i+1})/2``. It is MSE-optimal when every level
is the conditional mean of its cell, ``c_i = E[X | t_{i-1} < X ≤ t_i]``. Alternating the two conditions
(thresholds ← midpoints, levels ← cell means) is Lloyd's method I; on a sample it is 1-D k-means.

Three designs are offered, all computed in float64:

* :func:`fit_lloyd_max` — on a sample (what TurboESM, arXiv 2603.26110, calibrates per layer/head with k-means);
* :func:`lloyd_max_gaussian` — for ``N(0, 1)``, with the closed-form cell mean
  ``E[X | a < X ≤ b] = (φ(a) − φ(b)) / (Φ(b) − Φ(a))``; 1 bit gives ``±√(2/π)``, 2 bits ``±0.4528, ±1.5104``
  (Max 1960, Table I);
* :func:`lloyd_max_sphere` — for one coordinate of a uniformly random unit vector of ``S^{d−1}`` scaled by
  ``√d`` (unit variance), density ``∝ (1 − t²/d)^{(d−3)/2}`` on ``|t| < √d``: the Beta marginal TurboQuant
  (Zandieh et al., arXiv 2504.19874) designs its codebooks for, since a random rotation of a vector makes its
  normalized coordinates follow it. It tends to the Gaussian design as ``d → ∞``. Cell masses and first moments
  come from a fine-grid cumulative trapezoid of the density (error ``O(h²)``, ``h = 2√d/2^17``).

Codes are ``uint8`` (``bits ≤ 8``); :meth:`LloydMaxQuantizer.residual_scale` is ``E|X − Q(X)|`` on a sample,
the magnitude TurboESM's 1-bit residual-sign correction adds back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

__all__ = ["LloydMaxQuantizer", "fit_lloyd_max", "lloyd_max_gaussian", "lloyd_max_sphere"]


def _check_bits(bits: object, where: str) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise TypeError(f"{where}: bits must be an int in 1..8, got {bits!r}")
    if not 1 <= bits <= 8:
        raise ValueError(f"{where}: bits must be in 1..8, got {bits}")
    return bits


def _check_iters(iters: object, where: str) -> int:
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(f"{where}: iters must be a positive int, got {iters!r}")
    return iters


@dataclass(frozen=True)
class LloydMaxQuantizer:
    """A scalar codebook: ``levels`` (ascending, float64, ``2^bits`` entries), nearest-level encoding.

    Example:
        >>> import torch
        >>> q = LloydMaxQuantizer(torch.tensor([-1.0, 1.0], dtype=torch.float64))
        >>> q.bits, q.encode(torch.tensor([-0.3, 0.2, 5.0])).tolist()
        (1, [0, 1, 1])
        >>> q.decode(torch.tensor([1, 0], dtype=torch.uint8)).tolist()
        [1.0, -1.0]
    """

    levels: Tensor

    def __post_init__(self) -> None:
        lv = self.levels
        if not isinstance(lv, Tensor) or lv.dim() != 1:
            raise TypeError(f"LloydMaxQuantizer: levels must be a 1-D tensor, got {type(lv).__name__}")
        n = lv.numel()
        if n < 2 or n > 256 or n & (n - 1):
            raise ValueError(f"LloydMaxQuantizer: levels must have 2^bits entries (2..256), got {n}")
        lv = lv.detach().to(torch.float64).cpu()
        if not bool(torch.isfinite(lv).all()) or not bool((lv[1:] > lv[:-1]).all()):
            raise ValueError("LloydMaxQuantizer: levels must be finite and strictly increasing")
        object.__setattr__(self, "levels", lv)

    @property
    def bits(self) -> int:
        """Bits per code, ``log2(len(levels))``."""
        return int(self.levels.numel()).bit_length() - 1

    @property
    def thresholds(self) -> Tensor:
        """Decision thresholds: midpoints of consecutive levels (float64, ``2^bits − 1`` entries)."""
        return 0.5 * (self.levels[1:] + self.levels[:-1])

    def encode(self, x: Tensor) -> Tensor:
        """Index of the nearest level for every entry of ``x`` (``uint8``, same shape); ties go up."""
        t = self.thresholds.to(device=x.device, dtype=x.dtype if x.dtype == torch.float64 else torch.float32)
        return torch.bucketize(x.to(t.dtype).contiguous(), t, right=True).to(torch.uint8)

    def decode(self, codes: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """The levels named by ``codes`` (any integer dtype), as ``dtype``."""
        if codes.dtype.is_floating_point or codes.dtype == torch.bool:
            raise TypeError(f"LloydMaxQuantizer.decode: codes must be an integer tensor, got {codes.dtype}")
        return self.levels.to(device=codes.device, dtype=dtype)[codes.long()]

    def quantize(self, x: Tensor) -> Tensor:
        """``decode(encode(x))`` in ``x``'s dtype."""
        return self.decode(self.encode(x), dtype=x.dtype)

    def residual_scale(self, sample: Tensor) -> float:
        """``mean |x − Q(x)|`` over ``sample`` (float64): the magnitude of a 1-bit residual-sign correction."""
        s = sample.detach().reshape(-1).to(torch.float64).cpu()
        return float((s - self.quantize(s)).abs().mean())

    def state_dict(self) -> dict[str, Any]:
        """``{"levels": Tensor}``; restore with :meth:`from_state_dict`."""
        return {"levels": self.levels.clone()}

    @classmethod
    def from_state_dict(cls, d: dict[str, Any]) -> LloydMaxQuantizer:
        """Inverse of :meth:`state_dict`."""
        if not isinstance(d, dict) or "levels" not in d:
            raise ValueError("LloydMaxQuantizer.from_state_dict: d must be a dict with a 'levels' tensor")
        return cls(d["levels"])


def _lloyd_on_sorted(x: Tensor, levels: Tensor, iters: int, tol: float) -> Tensor:
    """Lloyd iterations on a sorted float64 sample via prefix sums (each step O(L log n))."""
    n = x.numel()
    csum = torch.cat([x.new_zeros(1), x.cumsum(0)])
    for _ in range(iters):
        thr = 0.5 * (levels[1:] + levels[:-1])
        idx = torch.searchsorted(x, thr, right=True)
        bounds = torch.cat([idx.new_zeros(1), idx, idx.new_full((1,), n)])
        cnt = (bounds[1:] - bounds[:-1]).to(torch.float64)
        sums = csum[bounds[1:]] - csum[bounds[:-1]]
        new = torch.where(cnt > 0, sums / cnt.clamp_min(1.0), levels)
        new, _ = torch.sort(new)
        done = float((new - levels).abs().max()) <= tol * max(1.0, float(levels.abs().max()))
        levels = new
        if done:
            break
    return levels


def _dedupe(levels: Tensor) -> Tensor:
    """Separate equal levels (from a sample with fewer distinct values than levels) by the smallest step."""
    lv = levels.clone()
    span = float(lv[-1] - lv[0]) if lv.numel() > 1 else 0.0
    eps = max(span, 1.0) * 1e-9
    for i in range(1, lv.numel()):
        if lv[i] <= lv[i - 1]:
            lv[i] = lv[i - 1] + eps
    return lv


def fit_lloyd_max(sample: Tensor, bits: int, *, iters: int = 300, tol: float = 1e-12) -> LloydMaxQuantizer:
    """Lloyd–Max codebook for an empirical sample (1-D k-means in float64, quantile initialisation).

    Deterministic: levels start at the ``(i + ½)/L`` sample quantiles and follow Lloyd's iteration until the
    largest move is below ``tol`` (relative) or ``iters`` steps. An empty cell keeps its level.

    Raises:
        TypeError: ``sample`` not a floating tensor; ``bits`` not an int.
        ValueError: ``bits`` outside 1..8, fewer than 2 finite values, non-finite values.

    Example:
        >>> import torch
        >>> x = torch.cat([torch.full((10,), -2.0), torch.full((10,), 3.0)])
        >>> fit_lloyd_max(x, 1).levels.tolist()
        [-2.0, 3.0]
    """
    bits = _check_bits(bits, "fit_lloyd_max")
    iters = _check_iters(iters, "fit_lloyd_max")
    if not isinstance(sample, Tensor) or not sample.dtype.is_floating_point:
        raise TypeError(f"fit_lloyd_max: sample must be a floating tensor, got {type(sample).__name__}")
    x = sample.detach().reshape(-1).to(torch.float64).cpu()
    if x.numel() < 2:
        raise ValueError(f"fit_lloyd_max: sample needs at least 2 values, got {x.numel()}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("fit_lloyd_max: sample has non-finite values")
    x, _ = torch.sort(x)
    L = 1 << bits
    q = (torch.arange(L, dtype=torch.float64) + 0.5) / L
    levels = torch.quantile(x, q) if x.numel() <= 16_000_000 else x[(q * (x.numel() - 1)).long()]
    levels = _dedupe(levels)
    levels = _lloyd_on_sorted(x, levels, iters, tol)
    return LloydMaxQuantizer(_dedupe(levels))


def _phi(t: Tensor) -> Tensor:
    return torch.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)


def _Phi(t: Tensor) -> Tensor:
    return 0.5 * torch.erfc(-t / math.sqrt(2.0))


def lloyd_max_gaussian(bits: int, *, iters: int = 2000, tol: float = 1e-11) -> LloydMaxQuantizer:
    r"""Lloyd–Max codebook for the standard normal (closed-form cell means, float64).

    ``E[X | a < X ≤ b] = (φ(a) − φ(b)) / (Φ(b) − Φ(a))``; Max (1960) Table I values are reproduced
    (1 bit: ``±√(2/π)``; 2 bits: ``±0.4528, ±1.5104``; 3 bits: ``±0.2451, ±0.7560, ±1.3440, ±2.1520``).

    Example:
        >>> q = lloyd_max_gaussian(1)
        >>> round(float(q.levels[1]), 6), round((2 / 3.141592653589793) ** 0.5, 6)
        (0.797885, 0.797885)
    """
    bits = _check_bits(bits, "lloyd_max_gaussian")
    iters = _check_iters(iters, "lloyd_max_gaussian")
    return LloydMaxQuantizer(_gaussian_levels(bits, iters, float(tol)).clone())


@lru_cache(maxsize=64)
def _gaussian_levels(bits: int, iters: int, tol: float) -> Tensor:
    L = 1 << bits
    # Panter–Dite start: the high-resolution optimal level density ∝ f^{1/3}, i.e. N(0, 3) quantiles
    levels = math.sqrt(3.0) * torch.special.ndtri((torch.arange(L, dtype=torch.float64) + 0.5) / L)
    inf = torch.tensor([math.inf], dtype=torch.float64)
    for _ in range(iters):
        thr = 0.5 * (levels[1:] + levels[:-1])
        a = torch.cat([-inf, thr])
        b = torch.cat([thr, inf])
        mass = _Phi(b) - _Phi(a)
        new = (_phi(a) - _phi(b)) / mass
        done = float((new - levels).abs().max()) <= tol
        levels = new
        if done:
            break
    return levels


def _sphere_grid(dim: int, points: int = 1 << 17) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Grid ``t`` on ``[−√d, √d]``: normalized CDF, first-moment prefix integral, and CDF of ``f^{1/3}``."""
    r = math.sqrt(dim)
    t = torch.linspace(-r, r, points + 1, dtype=torch.float64)
    a = 0.5 * (dim - 3)
    f = (1.0 - (t / r) ** 2).clamp_min(0.0) ** a if a != 0 else torch.ones_like(t)
    h = t[1] - t[0]
    F = torch.cat([t.new_zeros(1), torch.cumsum(0.5 * h * (f[1:] + f[:-1]), 0)])
    tf = t * f
    M = torch.cat([t.new_zeros(1), torch.cumsum(0.5 * h * (tf[1:] + tf[:-1]), 0)])
    Z = F[-1]
    c = f ** (1.0 / 3.0)
    G = torch.cat([t.new_zeros(1), torch.cumsum(0.5 * h * (c[1:] + c[:-1]), 0)])
    return t, F / Z, M / Z, G / G[-1]


def _interp(x: Tensor, xs: Tensor, ys: Tensor) -> Tensor:
    i = torch.searchsorted(xs, x).clamp(1, xs.numel() - 1)
    x0, x1 = xs[i - 1], xs[i]
    w = (x - x0) / (x1 - x0)
    return ys[i - 1] + w * (ys[i] - ys[i - 1])


def lloyd_max_sphere(bits: int, dim: int, *, iters: int = 2000, tol: float = 1e-11) -> LloydMaxQuantizer:
    r"""Lloyd–Max codebook for a coordinate of a uniform unit vector in ``R^dim``, scaled by ``√dim``.

    Density ``∝ (1 − t²/d)^{(d−3)/2}`` on ``(−√d, √d)`` (the Beta marginal of TurboQuant, arXiv 2504.19874),
    unit variance; ``dim ≥ 3``. It approaches :func:`lloyd_max_gaussian` as ``dim`` grows.

    Raises:
        ValueError: ``dim`` not an int ≥ 3; ``bits`` outside 1..8.

    Example:
        >>> q = lloyd_max_sphere(1, 64)
        >>> 0.79 < float(q.levels[1]) < 0.81
        True
    """
    bits = _check_bits(bits, "lloyd_max_sphere")
    iters = _check_iters(iters, "lloyd_max_sphere")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 3:
        raise ValueError(f"lloyd_max_sphere: dim must be an int >= 3, got {dim!r}")
    return LloydMaxQuantizer(_sphere_levels(bits, dim, iters, float(tol)).clone())


@lru_cache(maxsize=64)
def _sphere_levels(bits: int, dim: int, iters: int, tol: float) -> Tensor:
    t, F, M, G = _sphere_grid(dim)
    r = math.sqrt(dim)
    # Panter–Dite start: quantiles of the normalized f^{1/3} (the high-resolution optimum); results are memoized
    L = 1 << bits
    levels = _dedupe(_interp((torch.arange(L, dtype=torch.float64) + 0.5) / L, G, t))
    lo = torch.tensor([-r], dtype=torch.float64)
    hi = torch.tensor([r], dtype=torch.float64)
    for _ in range(iters):
        thr = 0.5 * (levels[1:] + levels[:-1])
        edges = torch.cat([lo, thr, hi])
        Fe, Me = _interp(edges, t, F), _interp(edges, t, M)
        mass = Fe[1:] - Fe[:-1]
        new = torch.where(mass > 0, (Me[1:] - Me[:-1]) / mass.clamp_min(1e-300), levels)
        done = float((new - levels).abs().max()) <= tol
        levels = new
        if done:
            break
    return levels
