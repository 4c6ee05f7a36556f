r"""Equiangular Basis Vectors (EBV; Shen, Sun, Wei, CVPR 2023, "Equiangular Basis Vectors", arXiv 2303.11637).

EBV replaces a learned classifier by ``N`` fixed unit vectors ``e_c ∈ R^d`` (one per class) that are nearly
orthogonal: ``max_{a≠b} |⟨e_a,e_b⟩| ≤ α``. They are generated once, before training, by the paper's procedure
(official code ``msfuxian/EBV``, the PyTorch generator ``generate_EBV.py`` and the MindSpore ``EBV`` cell):
start from row-normalized Gaussian vectors and run plain SGD (lr 1e-3) on

.. math:: \mathcal L(E) = \sum_{a \ne b} \operatorname{relu}\big(|\langle e_a,e_b\rangle| - \alpha\big),

re-normalizing the rows before every step, until ``max |cos| ≤ α`` (here: the official loop run with its
threshold at ``α − 1e-4``, since it stops within ``+1e-4`` of the threshold; so the result is ``≤ α``). Training then uses cosine logits with a
temperature, ``logit_c = ⟨x/‖x‖, e_c⟩ / τ`` (τ = 0.07), and cross-entropy — the network learns to point each
feature at its class's fixed vector.

For ``N ≤ d`` any α > 0 is reachable (orthonormal sets exist); for ``N > d`` no set does better than the Welch
bound ``max |cos| ≥ sqrt((N − d) / (d (N − 1)))`` (:func:`welch_bound`), so a smaller α is refused up front.

Example:
    >>> import torch
    >>> from orthokit.align.ebv import EquiangularBasisVectors
    >>> ebv = EquiangularBasisVectors(10, 16, max_cos=0.05, seed=0)
    >>> ebv.achieved_max_cos <= 0.05
    True
    >>> feats, y = torch.randn(4, 16), torch.tensor([0, 3, 9, 3])
    >>> ebv(feats).shape, bool(ebv.loss(feats, y) > 0)
    (torch.Size([4, 10]), True)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from orthokit.align.opl import finite_features_guard
from orthokit.align.registry import ALIGN_LOSSES

__all__ = ["EquiangularBasisVectors", "generate_ebv", "welch_bound", "max_abs_cosine"]

_PATIENCE = 200  # generation steps without a new best max |cos| before the step size halves


def welch_bound(n: int, dim: int) -> float:
    """Lower bound on ``max_{a≠b} |cos(e_a, e_b)|`` for ``n`` unit vectors in ``R^dim`` (Welch 1974):
    ``sqrt((n − dim) / (dim (n − 1)))`` when ``n > dim``, else 0.

    Example:
        >>> welch_bound(10, 16), round(welch_bound(100, 10), 4)
        (0.0, 0.3015)
    """
    if n <= dim:
        return 0.0
    return math.sqrt((n - dim) / (dim * (n - 1)))


def max_abs_cosine(vectors: Tensor) -> float:
    """``max_{a≠b} |cos(v_a, v_b)|`` over the rows of ``vectors`` (computed in float64).

    Example:
        >>> max_abs_cosine(torch.eye(3))
        0.0
    """
    if not isinstance(vectors, Tensor) or vectors.dim() != 2 or vectors.shape[0] < 2:
        raise ValueError("max_abs_cosine: vectors must be a [n >= 2, dim] tensor")
    v = F.normalize(vectors.detach().to(torch.float64), dim=1)
    c = (v @ v.T).abs()
    c.fill_diagonal_(0.0)
    return float(c.max())


def _check_int(name: str, v: object, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"EBV: {name} must be an int, got {type(v).__name__}")
    if v < lo:
        raise ValueError(f"EBV: {name} must be >= {lo}, got {v}")
    return v


def generate_ebv(
    n: int, dim: int, *, max_cos: float = 0.002, steps: int = 100_000, lr: float = 1e-3, seed: int = 0
) -> tuple[Tensor, int]:
    """Generate ``n`` unit vectors in ``R^dim`` with ``max |cos| ≤ max_cos`` by the paper's procedure.

    Float64 on the CPU from ``torch.Generator().manual_seed(seed)``, so the result depends on ``seed`` only.
    Returns ``(vectors [n, dim] float64, steps used)``.

    Raises:
        ValueError: ``max_cos`` below the Welch bound (unreachable), or not reached within ``steps``.

    Example:
        >>> E, used = generate_ebv(5, 8, max_cos=0.01)
        >>> max_abs_cosine(E) <= 0.01 and used > 0
        True
    """
    n, dim, steps = _check_int("n_classes", n, 2), _check_int("dim", dim, 1), _check_int("steps", steps, 1)
    seed = _check_int("seed", seed, 0)
    if not isinstance(max_cos, (int, float)) or not 0.0 < max_cos < 1.0:
        raise ValueError(f"EBV: max_cos must be in (0, 1), got {max_cos!r}")
    if not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"EBV: lr must be > 0, got {lr!r}")
    wb = welch_bound(n, dim)
    if max_cos < wb:
        raise ValueError(
            f"EBV: max_cos={max_cos} is below the Welch bound {wb:.4f} for {n} vectors in dimension {dim}; "
            "no set of unit vectors reaches it (raise max_cos or dim)"
        )
    # The official loop hinges at its threshold t and stops once max |cos| ≤ t + 1e-4 (an exact stop at t
    # chatters: each SGD step overshoots by ~lr). Running it with t = α − 1e-4 keeps the same dynamics and
    # guarantees max |cos| ≤ α; 1e-6 more keeps the float32 copy below α too.
    hinge = max(max_cos - 1e-4, 0.5 * max_cos)
    target = max_cos - 1e-6
    g = torch.Generator().manual_seed(int(seed))
    E = F.normalize(torch.randn(n, dim, generator=g, dtype=torch.float64), dim=1)
    off = ~torch.eye(n, dtype=torch.bool)
    mx, best, since, step = float("inf"), float("inf"), 0, float(lr)
    for it in range(steps + 1):
        E = F.normalize(E, dim=1)
        C = E @ E.T
        A = C.abs()
        mx = float(A[off].max())
        if mx <= target:
            return E, it
        if it == steps:
            break
        # deviation: halve the step after `_PATIENCE` steps without a new best max (the official fixed
        # step cycles around small thresholds when few vectors violate it; see the Fidelity notes)
        if mx < best - 1e-9:
            best, since = mx, 0
        else:
            since += 1
            if since >= _PATIENCE:
                step, since = step * 0.5, 0
        # d/dE Σ_{a≠b} relu(|C_ab| − α) = 2 · (sign(C) ⊙ [|C| > α] ⊙ off) E   (C symmetric)
        M = torch.where((A > hinge) & off, torch.sign(C), torch.zeros_like(C))
        E = E - step * (2.0 * (M @ E))
    raise ValueError(
        f"EBV: reached max |cos| = {mx:.5f} > max_cos={max_cos} after {steps} steps for {n} vectors in "
        f"dimension {dim} (Welch bound {wb:.4f}); raise steps, lr or max_cos"
    )


@ALIGN_LOSSES.register("ebv", aliases=("equiangular_basis_vectors",), kind="head")
class EquiangularBasisVectors(nn.Module):
    """Fixed near-orthogonal class vectors (a buffer) and the EBV head/loss (see the module docstring).

    Args:
        n_classes: number of classes ``N`` (≥ 2).
        dim: feature dimension ``d``.
        max_cos: the threshold α on ``max |cos|`` between two class vectors (official default 0.002).
        steps: maximum generation steps (official 100000; generation stops as soon as α is reached).
        seed: generation seed; the vectors are a function of ``(n_classes, dim, max_cos, lr, seed)`` only.
        tau: logit temperature τ (official 0.07).
        lr: generation step size (official 1e-3).
        dtype: dtype of the stored vectors (default: torch's default dtype).
        check_finite: raise a one-line ``ValueError`` when the features hold NaN/inf (default on; it reduces the
            logits and inspects the features only when that sum is not finite: ~10 % of a 256×512, 10-class CPU
            forward, which is a single small matmul — turn it off where inputs are known to be finite).

    Attributes: ``basis`` ``[N, d]`` buffer (unit rows), ``achieved_max_cos`` (float), ``generation_steps``.
    ``forward(features [B, d]) -> logits [B, N]``; ``loss(features, labels)`` = cross-entropy of those logits.
    """

    basis: Tensor

    def __init__(
        self,
        n_classes: int,
        dim: int,
        *,
        max_cos: float = 0.002,
        steps: int = 100_000,
        seed: int = 0,
        tau: float = 0.07,
        lr: float = 1e-3,
        dtype: torch.dtype | None = None,
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        self.check_finite = bool(check_finite)
        if not isinstance(tau, (int, float)) or not tau > 0:
            raise ValueError(f"EBV: tau must be > 0, got {tau!r}")
        E, used = generate_ebv(n_classes, dim, max_cos=max_cos, steps=steps, lr=lr, seed=seed)
        self.n_classes, self.dim, self.max_cos, self.tau = n_classes, dim, float(max_cos), float(tau)
        self.seed, self.generation_steps = int(seed), used
        self.register_buffer("basis", F.normalize(E, dim=1).to(dtype or torch.get_default_dtype()))
        self.achieved_max_cos = max_abs_cosine(self.basis)

    @property
    def welch_bound(self) -> float:
        """The Welch lower bound on ``max |cos|`` for this ``(n_classes, dim)``."""
        return welch_bound(self.n_classes, self.dim)

    def forward(self, features: Tensor) -> Tensor:
        if not isinstance(features, Tensor) or features.dim() != 2 or features.shape[1] != self.dim:
            shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise ValueError(f"EBV: features must be [batch, {self.dim}], got {shape}")
        if not features.is_floating_point():
            raise TypeError(f"EBV: features must be a floating tensor, got {features.dtype}")
        logits = F.normalize(features, dim=1) @ self.basis.to(features.dtype).T / self.tau
        if self.check_finite:
            finite_features_guard(logits, features, "EBV")
        return logits

    def loss(self, features: Tensor, labels: Tensor) -> Tensor:
        """Cross-entropy of the EBV logits against integer ``labels``."""
        return F.cross_entropy(self(features), labels)

    def extra_repr(self) -> str:
        return (
            f"n_classes={self.n_classes}, dim={self.dim}, max_cos={self.max_cos}, tau={self.tau}, "
            f"seed={self.seed}, achieved_max_cos={self.achieved_max_cos:.2e}"
        )
