r"""Representational capacity: how far an embedding matrix is from orthogonal (ε) and how many
ε-near-orthogonal directions its width can hold.

Guha, "Representational Capacity: Geometric Limits on Feature Representation in Transformer Language Models"
(arXiv 2606.02765; official code ``github.com/Alex-Guha/representational-capacity`` at commit ``ef4a6e2``):

* **ε from the embedding matrix.** The rows of ``E`` (``[k, d]``, one token per row) are normalized and the
  cosine of every pair ``i ≠ j`` is taken; ``ε = μ + 2σ`` of that distribution (``repr_cap_table.py``:
  "accepted deviation epsilon = mu + 2*sigma"; ``μ + 3σ`` is the paper's "exaggerated" variant). Models with
  ``ε ≥ 0.1`` have no near-orthogonal structure and their capacity is "indeterminate".
* **Adjusted capacity.** Fitted to optimized (minimum-coherence) packings, the accepted deviation of ``k``
  vectors in ``d`` dimensions is ``ε = √(C · ln(k^a / d)^b / d^c)`` with ``C = 0.45809143``,
  ``a = 1.0668005``, ``b = 1.44738666``, ``c = 0.97197234`` (``representational_capacity.py``); its inverse
  ``k = ⌈(d · exp((ε² d^c / C)^{1/b}))^{1/a}⌉`` is the capacity. It depends on ``k/d``, not ``k`` alone.
* **Johnson–Lindenstrauss baseline.** ``ε = √(C_JL · ln k / d)``, i.e. ``k = exp(d ε² / C_JL)``. The paper fits
  ``C_JL`` to random Gaussian packings; its value is not printed in the code, so :data:`JL_C` = 3.0295 is our
  least-squares refit of that model to the authors' ``random_packing.json`` (MAPE 1.3 %) — a reconstruction.
  The paper's one-parameter ``k/d`` law ``ε = √(C ln(k/d) / d)`` is ``formula="ratio"`` with :data:`RATIO_C` =
  1.2934, likewise our refit to their ``optimized_packing.json`` (MAPE 7.9 %; the same data gives the published
  four constants back to 6 digits, MAPE 5.4 %, while the JL form fits it with MAPE 975 %).

The mean and standard deviation are exact over all ``k(k−1)`` ordered pairs without forming the ``k × k``
matrix: with unit rows ``u_i``, ``Σ_{i≠j} cos_ij = ‖Σ u_i‖² − k`` and ``Σ_{i≠j} cos²_ij = ‖UᵀU‖_F² − k``
(float64, ``O(k d²)``). The histogram is built in row chunks (exact) or on a seeded row subsample.

Example:
    >>> import torch
    >>> from orthokit.diagnostics.capacity import estimate_epsilon, capacity
    >>> E = torch.linalg.qr(torch.randn(64, 64, dtype=torch.float64))[0]   # 64 orthonormal rows
    >>> est = estimate_epsilon(E)
    >>> est.eps < 1e-7, est.capacity >= 64                  # ε = 0 up to the closed form's rounding
    (True, True)
    >>> capacity(384, 0.05) > capacity(384, 0.04) > 384
    True
"""

from __future__ import annotations

import builtins
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from orthokit.diagnostics.registry import DIAGNOSTICS

__all__ = [
    "ADJUSTED_CONSTANTS",
    "JL_C",
    "RATIO_C",
    "INDETERMINATE_EPS",
    "CosineHistogram",
    "EpsilonEstimate",
    "cosine_histogram",
    "cosine_moments",
    "estimate_epsilon",
    "capacity",
    "log_capacity",
    "jl_capacity",
    "required_epsilon",
    "null_abs_cos_quantile",
]

#: (C, a, b, c) of the paper's fully parameterized fit ``ε = √(C ln(k^a/d)^b / d^c)`` (official code).
ADJUSTED_CONSTANTS: tuple[float, float, float, float] = (0.45809143, 1.0668005, 1.44738666, 0.97197234)
#: JL constant in ``ε = √(C ln k / d)``: our least-squares refit to the authors' random-packing data.
JL_C: float = 3.0295
#: constant of the paper's one-parameter ``k/d`` law ``ε = √(C ln(k/d) / d)``: our refit to their optimized packings.
RATIO_C: float = 1.2934
#: the paper's cut-off: ``ε ≥ 0.1`` means no near-orthogonal structure (capacity indeterminate).
INDETERMINATE_EPS: float = 0.1

_FORMULAS = ("adjusted", "ratio", "jl")
_METHODS = ("mean_std", "quantile", "null_quantile")


# ------------------------------------------------------------------------------------------------ checks
def _unit_rows(E: Tensor, name: str = "E", dtype: torch.dtype = torch.float64) -> Tensor:
    if not isinstance(E, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(E).__name__}")
    if E.ndim != 2:
        raise ValueError(f"{name} must be 2-D [k, d] (one vector per row), got shape {tuple(E.shape)}")
    if not E.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got {E.dtype}")
    if E.shape[0] < 2 or E.shape[1] < 1:
        raise ValueError(f"{name} needs at least 2 rows and 1 column, got shape {tuple(E.shape)}")
    if not bool(torch.isfinite(E).all()):
        bad = torch.nonzero(~torch.isfinite(E).all(dim=1)).flatten()[:5].tolist()
        raise ValueError(f"{name} has non-finite entries (rows {bad}{'...' if len(bad) == 5 else ''})")
    X = E.detach().to(dtype)
    # scale-safe: divide each row by its max-abs before the norm, so rows of magnitude 1e200 do not overflow
    # and rows of 1e-170 do not underflow to a "zero" norm (a cosine is scale-invariant per row)
    m = X.abs().amax(dim=1)
    zero = torch.nonzero(m == 0).flatten()
    if zero.numel():
        rows = zero[:5].tolist()
        raise ValueError(
            f"{name} has {zero.numel()} zero row(s) (rows {rows}{'...' if zero.numel() > 5 else ''}); "
            "a cosine is undefined for them — drop them first"
        )
    X = X / m[:, None]
    return X / torch.linalg.vector_norm(X, dim=1, keepdim=True)


def _subsample(U: Tensor, sample: int | None, seed: int) -> Tensor:
    if sample is None or sample >= U.shape[0]:
        return U
    if not isinstance(sample, int) or isinstance(sample, bool) or sample < 2:
        raise ValueError(f"sample must be an int >= 2 or None, got {sample!r}")
    g = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(U.shape[0], generator=g)[:sample]
    return U[idx.sort().values]


# ------------------------------------------------------------------------------------------------ moments
def cosine_moments(E: Tensor) -> tuple[float, float, int]:
    r"""Exact mean and (population) standard deviation of the cosines of all pairs ``i ≠ j`` of rows of ``E``,
    and the number of unordered pairs, in float64 without forming the ``k × k`` Gram matrix.

    Uses ``Σ_{i≠j} cos = ‖Σ_i u_i‖² − k`` and ``Σ_{i≠j} cos² = ‖UᵀU‖_F² − k`` for the unit rows ``u_i``.

    Example:
        >>> import torch
        >>> from orthokit.diagnostics.capacity import cosine_moments
        >>> mean, std, pairs = cosine_moments(torch.eye(3, dtype=torch.float64))
        >>> (mean, std, pairs)
        (0.0, 0.0, 3)
    """
    U = _unit_rows(E)
    k = U.shape[0]
    m = k * (k - 1)
    s1 = float(U.sum(dim=0).square().sum()) - k
    G = U.T @ U
    s2 = float(G.square().sum()) - k
    mean = s1 / m
    var = max(s2 / m - mean * mean, 0.0)
    return mean, math.sqrt(var), m // 2


# ------------------------------------------------------------------------------------------------ histogram
@dataclass(frozen=True)
class CosineHistogram:
    """Histogram of the pairwise cosines ``cos(e_i, e_j)``, ``i < j`` (diagonal excluded).

    ``counts`` (int64, ``[bins]``) over ``edges`` (float64, ``[bins + 1]``); ``mean``/``std`` are exact over every
    pair of the full matrix (not just the sample); ``n_pairs`` is the number of pairs histogrammed, ``sampled``
    the number of rows used (``k`` when exact).
    """

    counts: Tensor
    edges: Tensor
    mean: float
    std: float
    n_pairs: int
    k: int
    d: int
    sampled: int

    @property
    def centers(self) -> Tensor:
        """Bin centers (float64)."""
        return 0.5 * (self.edges[1:] + self.edges[:-1])

    def abs_quantile(self, q: float) -> float:
        """The ``q``-quantile of ``|cos|`` read off the histogram.

        The histogram is folded onto ``|cos|`` (a bin ``[a, b]`` below 0 becomes ``[−b, −a]``; a bin straddling
        0 is split at 0) and the piecewise-uniform distribution inverted exactly. Needs a symmetric ``range``
        ``(−r, r)``: with any other range the cosines outside it were clamped into the end bins and ``|cos|`` is
        not recoverable (ValueError).
        """
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0.0 < q < 1.0:
            raise ValueError(f"q must be in (0, 1), got {q!r}")
        lo, hi = float(self.edges[0]), float(self.edges[-1])
        if not math.isclose(lo, -hi, rel_tol=1e-12, abs_tol=1e-15):
            raise ValueError(
                f"abs_quantile needs a histogram over a symmetric range (-r, r), got range ({lo}, {hi}): "
                "cosines outside it were clamped into the end bins, so |cos| cannot be read off"
            )
        w = self.counts.to(torch.float64)
        if float(w.sum()) == 0:
            raise ValueError("the histogram is empty; no quantile")
        a, b = self.edges[:-1], self.edges[1:]
        # fold: [a, b] -> [|.|] pieces; a straddling bin [a < 0 < b] gives [0, -a] and [0, b] pro rata
        neg, pos = b <= 0, a >= 0
        mid = ~(neg | pos)
        width = b - a
        lows = torch.cat([(-b)[neg], a[pos], torch.zeros_like(a[mid]), torch.zeros_like(a[mid])])
        highs = torch.cat([(-a)[neg], b[pos], (-a)[mid], b[mid]])
        mass = torch.cat([w[neg], w[pos], w[mid] * (-a[mid]) / width[mid], w[mid] * b[mid] / width[mid]])
        # CDF of a mixture of uniforms: piecewise linear between the sorted endpoints, its slope changing by
        # +mass/len at each interval's start and −mass/len at its end (O(bins log bins))
        dens = mass / mass.sum() / (highs - lows)
        knots, where = torch.unique(torch.cat([lows, highs]), return_inverse=True)
        dslope = torch.zeros_like(knots).index_add_(0, where, torch.cat([dens, -dens]))
        slope = torch.cumsum(dslope, 0)[:-1]
        cdf = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(slope * torch.diff(knots), 0)])
        target = torch.tensor(float(q), dtype=torch.float64)
        j = int(torch.searchsorted(cdf, target).clamp(1, len(knots) - 1))
        c0, c1 = float(cdf[j - 1]), float(cdf[j])
        t = (float(q) - c0) / (c1 - c0) if c1 > c0 else 0.0
        return float(knots[j - 1]) + t * float(knots[j] - knots[j - 1])


def cosine_histogram(
    E: Tensor,
    bins: int = 400,
    *,
    range: tuple[float, float] = (-1.0, 1.0),  # noqa: A002 - mirrors numpy/torch naming
    sample: int | None = None,
    seed: int = 0,
    chunk: int = 2048,
) -> CosineHistogram:
    """Histogram of the cosine similarity of every pair of distinct rows of ``E`` (``[k, d]``).

    The diagonal (``cos(e_i, e_i) = 1``) is excluded and each unordered pair counted once. Rows are processed in
    blocks of ``chunk`` (float32 products of the float64-normalized rows; at most ``chunk × k`` cosines in
    memory), so a 30522 × 384 vocabulary never builds its 30522² Gram matrix. ``sample=m`` histograms only the
    pairs among ``m`` rows drawn without replacement with ``seed`` (``m(m−1)/2`` pairs); the reported mean and
    std stay exact over all pairs (:func:`cosine_moments`).

    Args:
        E: ``[k, d]`` finite floating matrix with no zero row (one vector per row).
        bins: number of equal-width bins over ``range``.
        range: histogram range (cosines outside are clamped into the end bins).
        sample: rows to subsample (``None``: exact, all rows).
        seed: seed of the row subsample.
        chunk: rows per block.

    Example:
        >>> import torch
        >>> from orthokit.diagnostics.capacity import cosine_histogram
        >>> h = cosine_histogram(torch.eye(4, dtype=torch.float64), bins=4)
        >>> h.counts.tolist(), h.n_pairs          # six pairs, all with cosine 0 (bin [0, 0.5))
        ([0, 0, 6, 0], 6)
    """
    if not isinstance(bins, int) or isinstance(bins, bool) or bins < 1:
        raise ValueError(f"bins must be a positive int, got {bins!r}")
    lo, hi = float(range[0]), float(range[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"range must be two finite numbers lo < hi, got {range!r}")
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    U = _unit_rows(E)
    k, d = U.shape
    mean, std, _ = cosine_moments(E)
    S = _subsample(U, sample, seed).to(torch.float32)
    m = S.shape[0]
    counts = torch.zeros(bins, dtype=torch.int64)
    width = (hi - lo) / bins
    for start in builtins.range(0, m, chunk):
        blk = (
            S[start : start + chunk] @ S[start:].T
        )  # rows start.., columns start.. (upper triangle lives here)
        r = torch.arange(blk.shape[0])[:, None]
        c = torch.arange(blk.shape[1])[None, :]
        vals = blk[c > r]
        idx = ((vals.to(torch.float64) - lo) / width).floor().clamp_(0, bins - 1).to(torch.int64)
        counts += torch.bincount(idx, minlength=bins)
    edges = torch.linspace(lo, hi, bins + 1, dtype=torch.float64)
    return CosineHistogram(counts, edges, mean, std, m * (m - 1) // 2, k, d, m)


# ------------------------------------------------------------------------------------------------ capacity
def _check_d_eps(d: int, eps: float) -> None:
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise ValueError(f"d must be a positive int (the width), got {d!r}")
    if (
        isinstance(eps, bool)
        or not isinstance(eps, (int, float))
        or not math.isfinite(eps)
        or not 0 <= eps <= 1
    ):
        raise ValueError(f"eps must be a finite number in [0, 1], got {eps!r}")


def log_capacity(d: int, eps: float, *, formula: str = "adjusted", floor_d: bool = True) -> float:
    """Natural log of :func:`capacity` (before rounding up), finite where ``capacity`` overflows float64."""
    _check_d_eps(d, eps)
    if formula == "adjusted":
        C, a, b, c = ADJUSTED_CONSTANTS
        logk = (math.log(d) + (eps * eps * d**c / C) ** (1.0 / b)) / a
    elif formula == "ratio":
        logk = math.log(d) + d * eps * eps / RATIO_C
    elif formula == "jl":
        logk = d * eps * eps / JL_C
    else:
        raise ValueError(f"formula must be one of {', '.join(_FORMULAS)}, got {formula!r}")
    return max(logk, math.log(d)) if floor_d else logk


def capacity(d: int, eps: float, *, formula: str = "adjusted", floor_d: bool = True) -> float:
    r"""How many ``eps``-near-orthogonal directions fit in ``d`` dimensions (float; ``inf`` past float64).

    ``formula="adjusted"`` (default, the paper's): ``⌈(d · exp((ε² d^c / C)^{1/b}))^{1/a}⌉`` with
    :data:`ADJUSTED_CONSTANTS`. ``formula="ratio"``: the paper's one-parameter ``k/d`` law, ``d · exp(d ε² / C)``
    with :data:`RATIO_C`. ``formula="jl"``: the Johnson–Lindenstrauss count ``exp(d ε² / C_JL)``
    (:func:`jl_capacity`). ``floor_d=True`` returns at least ``d`` — ``d`` exactly orthogonal directions always
    exist, while the fitted formula (fitted for ``k > d``) gives ``d^{1/a} < d`` at ``ε = 0``; ``floor_d=False``
    returns the bare formula (the official ``max_k``).

    Example:
        >>> from orthokit.diagnostics.capacity import capacity
        >>> capacity(64, 0.0), capacity(64, 0.0, floor_d=False)
        (64.0, 50.0)
    """
    lk = log_capacity(d, eps, formula=formula, floor_d=floor_d)
    if lk > 709.0:
        return math.inf
    val = math.exp(lk)
    return float(math.ceil(val - 1e-9 * val)) if formula == "adjusted" else val


def jl_capacity(d: int, eps: float, *, c: float = JL_C) -> float:
    """Johnson–Lindenstrauss count ``exp(d ε² / c)`` of ``eps``-near-orthogonal random directions in ``d`` dims
    (the inverse of ``ε = √(c ln k / d)``; ``inf`` past float64).

    Example:
        >>> import math
        >>> from orthokit.diagnostics.capacity import jl_capacity
        >>> math.isclose(jl_capacity(100, 0.3, c=3.0), math.exp(3.0))
        True
    """
    _check_d_eps(d, eps)
    if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or c <= 0:
        raise ValueError(f"c must be a positive finite number, got {c!r}")
    e = d * eps * eps / c
    return math.inf if e > 709.0 else math.exp(e)


def required_epsilon(k: int, d: int, *, formula: str = "adjusted") -> float:
    """The accepted deviation ``ε`` at which ``k`` directions fit in ``d`` dims (inverse of :func:`capacity`):
    ``√(C ln(k^a/d)^b / d^c)`` (adjusted; 0 when ``k^a ≤ d``), ``√(C ln(k/d) / d)`` (ratio; 0 when ``k ≤ d``) or
    ``√(C_JL ln k / d)`` (jl).

    Example:
        >>> from orthokit.diagnostics.capacity import required_epsilon
        >>> round(required_epsilon(32000, 4096), 4)     # optimized packings of the paper: measured 0.0250
        0.0247
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    _check_d_eps(d, 0.0)
    if formula == "adjusted":
        C, a, b, c = ADJUSTED_CONSTANTS
        t = a * math.log(k) - math.log(d)
        return math.sqrt(C * t**b / d**c) if t > 0 else 0.0
    if formula == "ratio":
        return math.sqrt(RATIO_C * math.log(k / d) / d) if k > d else 0.0
    if formula == "jl":
        return math.sqrt(JL_C * math.log(k) / d)
    raise ValueError(f"formula must be one of {', '.join(_FORMULAS)}, got {formula!r}")


def null_abs_cos_quantile(d: int, q: float = 0.95) -> float:
    """The ``q``-quantile of ``|cos|`` between two independent uniformly random directions in ``R^d``:
    ``cos² ~ Beta(1/2, (d−1)/2)``, inverted by bisection on the regularized incomplete beta (mpmath).

    Example:
        >>> from orthokit.diagnostics.capacity import null_abs_cos_quantile
        >>> round(null_abs_cos_quantile(2, 0.5), 6)     # d = 2: angle uniform, median |cos| = cos(π/4)
        0.707107
    """
    import mpmath

    if isinstance(d, bool) or not isinstance(d, int) or d < 2:
        raise ValueError(f"d must be an int >= 2, got {d!r}")
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must be in (0, 1), got {q!r}")
    a, b = mpmath.mpf(1) / 2, mpmath.mpf(d - 1) / 2
    lo, hi = mpmath.mpf(0), mpmath.mpf(1)
    for _ in range(80):
        mid = (lo + hi) / 2
        if mpmath.betainc(a, b, 0, mid, regularized=True) < q:
            lo = mid
        else:
            hi = mid
    return float(mpmath.sqrt((lo + hi) / 2))


# ------------------------------------------------------------------------------------------------ epsilon
@dataclass(frozen=True)
class EpsilonEstimate:
    """ε of an embedding matrix with what it was read from; ``float(est)`` is ``est.eps``.

    ``capacity`` / ``jl_capacity`` are :func:`capacity` (adjusted, floored at ``d``) and :func:`jl_capacity` at
    ``(d, eps)``; ``estimatable`` is the paper's ``eps < 0.1`` (otherwise its capacity is "indeterminate").
    """

    eps: float
    method: str
    mean: float
    std: float
    k: int
    d: int
    n_pairs: int
    capacity: float
    jl_capacity: float
    estimatable: bool

    def __float__(self) -> float:
        return self.eps

    @property
    def k_over_d(self) -> float:
        """Vectors per dimension of the measured matrix."""
        return self.k / self.d


@DIAGNOSTICS.register("epsilon", input="embedding", higher_is="deviation", paper="arXiv 2606.02765")
def estimate_epsilon(
    E: Tensor,
    method: str = "mean_std",
    *,
    n_sigma: float = 2.0,
    q: float = 0.95,
    bins: int = 20000,
    sample: int | None = None,
    seed: int = 0,
) -> EpsilonEstimate:
    r"""Accepted deviation from orthogonality ``ε`` of the rows of ``E`` (Guha, arXiv 2606.02765).

    Methods:

    * ``"mean_std"`` (default, the paper's): ``ε = μ + n_sigma · σ`` of the cosines of all pairs ``i ≠ j``
      (``n_sigma=2`` "reasonable", ``3`` "exaggerated"); exact over all pairs, no sampling.
    * ``"quantile"``: the ``q``-quantile of ``|cos|`` over the pairs (from a ``bins``-bin histogram on
      ``[-1, 1]``; honours ``sample``/``seed``). Not in the paper.
    * ``"null_quantile"``: the ``q``-quantile of ``|cos|`` for uniformly random directions in ``R^d``
      (:func:`null_abs_cos_quantile`) — a data-free reference ε for the width. Not in the paper.

    Example:
        >>> import torch
        >>> from orthokit.diagnostics.capacity import estimate_epsilon
        >>> E = torch.randn(2000, 256, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        >>> est = estimate_epsilon(E)              # random: μ ≈ 0, σ ≈ 1/√256, so ε ≈ 2/16
        >>> abs(est.eps - 0.125) < 0.005, est.estimatable
        (True, False)
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {', '.join(_METHODS)}, got {method!r}")
    if isinstance(n_sigma, bool) or not isinstance(n_sigma, (int, float)) or not math.isfinite(n_sigma):
        raise ValueError(f"n_sigma must be a finite number, got {n_sigma!r}")
    if not isinstance(q, (int, float)) or not 0.0 < q < 1.0:
        raise ValueError(f"q must be in (0, 1), got {q!r}")
    mean, std, pairs = cosine_moments(E)
    k, d = E.shape
    if method == "mean_std":
        eps = mean + float(n_sigma) * std
    elif method == "quantile":
        h = cosine_histogram(E, bins=bins, sample=sample, seed=seed)
        eps, pairs = h.abs_quantile(float(q)), h.n_pairs
    else:
        if d < 2:
            raise ValueError(f"method='null_quantile' needs d >= 2, got d={d}")
        eps = null_abs_cos_quantile(int(d), float(q))
    eps = min(max(eps, 0.0), 1.0)
    return EpsilonEstimate(
        eps=eps,
        method=method,
        mean=mean,
        std=std,
        k=int(k),
        d=int(d),
        n_pairs=int(pairs),
        capacity=capacity(int(d), eps),
        jl_capacity=jl_capacity(int(d), eps),
        estimatable=eps < INDETERMINATE_EPS,
    )
