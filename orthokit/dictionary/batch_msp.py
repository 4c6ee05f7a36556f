r"""Batch orthogonal dictionary learning by ℓp-norm maximization with the MSP iteration (Zhai et al. 2020).

The batch baseline of online orthogonal DL: with all samples ``Y`` ``[d, n]`` at hand,

.. math:: \max_{D \in O(d)} \; \|D^\top Y\|_p^p ,

solved by the "matching, stretching, projection" fixed point ``D ← polar(∇_D ‖DᵀY‖_p^p)
= polar(Y (sign(X) ⊙ |X|^{p−1})ᵀ)``, ``X = DᵀY``: Frank–Wolfe over the spectral-norm ball with step 1, whose
iterates are orthogonal. ``p = 4`` is Zhai et al.'s ℓ4 objective (default); ``p = 3`` the ℓ3 variant of
Shen, Xue et al. (UAI 2020), the same objective as the online learner's default. Each iteration reads every
sample, so the learner must hold the whole data set: memory grows with ``n``.

Example:
    >>> import torch
    >>> from orthokit.dictionary.batch_msp import BatchMSP
    >>> from orthokit.dictionary.metrics import atom_recovery, planted_data
    >>> Y, D0 = planted_data(8, 3000, theta=0.2, seed=0)
    >>> msp = BatchMSP(8, seed=0).fit(Y, n_iter=50)
    >>> atom_recovery(msp.dictionary, D0)["max_angle_deg"] < 5
    True
    >>> msp.objective_history[-1] >= msp.objective_history[0]       # the objective never decreases
    True

References:
    Y. Zhai, Z. Yang, Z. Liao, J. Wright, Y. Ma, "Complete Dictionary Learning via ℓ4-Norm Maximization over the
    Orthogonal Group", JMLR 21 (2020), arXiv 1906.02435, Algorithm 1 (MSP). Y. Shen, Y. Xue, J. Zhang,
    K. B. Letaief, V. Lau, "Complete Dictionary Learning via ℓp-Norm Maximization", UAI 2020.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from orthokit.dictionary._common import (
    StoredDictionaryLearner,
    check_data,
    check_power,
    haar_orthogonal,
    lp_gradient,
    lp_objective,
    orthogonal_polar,
    pow2_scale,
)
from orthokit.dictionary.registry import DICT_LEARNERS

__all__ = ["BatchMSP"]


@DICT_LEARNERS.register("batch_msp", aliases=("msp", "l4_msp"), online=False, exact_orthogonal=True)
class BatchMSP(StoredDictionaryLearner):
    """Batch ℓp-norm maximization over the orthogonal group by the MSP fixed point (Zhai et al. 2020).

    Args:
        d: signal dimension.
        power: ``p`` (default 4, the paper's ℓ4; 3 for the ℓ3 variant).
        seed: seed of the Haar-random initialization (Zhai et al. initialize at random on ``O(d)``).
        dtype: state dtype.
    """

    name = "batch_msp"
    online = False

    def __init__(
        self, d: int, *, power: float = 4.0, seed: int = 0, dtype: torch.dtype = torch.float64
    ) -> None:
        super().__init__(d, dtype=dtype)
        self.power = check_power(power)
        self._D = haar_orthogonal(self.d, seed=seed, dtype=self.dtype)
        self.objective_history: list[float] = []
        self.scale_exponent_ = 0
        self.n_iter_ = 0

    def step(self, Y: Tensor) -> BatchMSP:
        """One MSP iteration on the full data ``Y`` ``[d, n]``; the state is untouched if ``Y`` is invalid.

        ``polar(∇f)`` is invariant to a positive scale of ``Y`` (``∇f`` is ``p−1``-homogeneous), so the gradient is
        taken on ``Y`` rescaled by an exact power of two (:func:`~orthokit.dictionary._common.pow2_scale`): no
        overflow at ``|Y| ~ 1e200`` (the raw gradient would be ``~1e800``) and no underflow to a zero gradient at
        ``1e-200``."""
        Yc = check_data(Y, self.d, self.dtype)
        Ys, _ = pow2_scale(Yc)
        G = lp_gradient(self._D, Ys, self.power)
        if not bool(torch.isfinite(G).all()):  # max |Ys| < 1: only reachable through a non-finite dictionary
            raise ValueError("Y gives a non-finite gradient; state left untouched")
        self._note_peak(Yc, G)
        self._D = orthogonal_polar(G, keep=self._D)
        self.n_iter_ += 1
        return self

    def fit(self, Y: Tensor, *, n_iter: int = 100, tol: float = 1e-9) -> BatchMSP:
        """Run MSP on ``Y`` ``[d, n]`` for at most ``n_iter`` iterations, stopping when the relative objective
        increase falls below ``tol``. Records :attr:`objective_history` (one value per iterate).

        Scale-safe: ``Y`` is rescaled once by the exact power of two ``2^{−e}`` the step uses
        (:func:`~orthokit.dictionary._common.pow2_scale`, ``max |Y·2^{−e}|`` in ``[0.5, 1)``), and the loop runs on
        the rescaled data. The iterates are bit-identical to stepping on ``Y`` (the MSP step is scale-invariant),
        the stopping rule sees a finite objective at any ``|Y|`` (no underflow to 0 at ``1e-300``, no ``inf`` at
        ``1e200``), and :attr:`objective_history` is ``f`` of the rescaled data, i.e. ``2^{−ep} f(D; Y)``
        (``e`` is kept in :attr:`scale_exponent_`)."""
        Yc = check_data(Y, self.d, self.dtype)
        if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 1:
            raise ValueError(f"n_iter must be a positive int, got {n_iter!r}")
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
            raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
        Ys, e = pow2_scale(Yc)
        self.objective_history = [lp_objective(self._D, Ys, self.power)]
        self.scale_exponent_ = e
        for _ in range(n_iter):
            self.step(Ys)
            f = lp_objective(self._D, Ys, self.power)
            prev = self.objective_history[-1]
            self.objective_history.append(f)
            if abs(f - prev) <= tol * max(abs(prev), 1e-300):
                break
        self.n_samples_seen = Yc.shape[1]
        return self
