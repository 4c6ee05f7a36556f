r"""Shared pieces of the orthogonal dictionary learners: input checks, the exactly orthogonal polar factor, the
``ℓp`` objective and its gradient, and the base class every registered learner derives from.

Conventions (every learner in :data:`~orthokit.dictionary.registry.DICT_LEARNERS`):

* data ``Y`` is ``[d, n]`` — **columns are samples** (the papers' ``Y = D X`` convention);
* the dictionary ``D`` is ``d × d`` with orthonormal columns (atoms), codes are ``X = H(Dᵀ Y)`` for a hard
  thresholding ``H`` (see :mod:`orthokit.dictionary.sparse`), reconstructions are ``D X``;
* learner state is kept in ``dtype`` (float64 by default); inputs of any real floating dtype are cast to it.

Example:
    >>> import torch
    >>> from orthokit.dictionary._common import haar_orthogonal, orthogonal_polar
    >>> Q = haar_orthogonal(8, seed=0)
    >>> bool(torch.allclose(Q.T @ Q, torch.eye(8, dtype=torch.float64)))
    True
    >>> P = orthogonal_polar(torch.zeros(3, 3, dtype=torch.float64))   # rank-deficient: still orthogonal
    >>> float((P.T @ P - torch.eye(3, dtype=torch.float64)).abs().max()) < 1e-12
    True
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from orthokit.dictionary.sparse import check_code_args, hard_threshold

__all__ = [
    "OrthogonalDictionaryLearner",
    "check_data",
    "check_dim",
    "haar_orthogonal",
    "lp_objective",
    "lp_gradient",
    "orthogonal_polar",
    "orthogonality_error",
    "pow2_scale",
]

_DTYPES = (torch.float32, torch.float64)


def check_dim(d: object) -> int:
    """Validate the signal dimension ``d`` (a positive int)."""
    if isinstance(d, bool) or not isinstance(d, int):
        raise TypeError(f"d must be a positive int, got {type(d).__name__}")
    if d < 1:
        raise ValueError(f"d must be a positive int, got {d}")
    return d


def check_dtype(dtype: object) -> torch.dtype:
    """Validate the state dtype (float32 or float64)."""
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    return dtype  # type: ignore[return-value]


def check_data(Y: object, d: int, dtype: torch.dtype, name: str = "Y", *, min_cols: int = 1) -> Tensor:
    """Validate a data batch ``Y`` of shape ``[d, n]`` (columns are samples), finite, real floating; returns it
    cast to ``dtype`` (a copy when the dtype changes, never modified in place)."""
    if not isinstance(Y, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [d, n], got {type(Y).__name__}")
    if not Y.is_floating_point():
        raise TypeError(f"{name} must be a real floating tensor, got dtype {Y.dtype}")
    if Y.ndim != 2:
        raise ValueError(f"{name} must be 2-D [d, n] (columns are samples), got shape {tuple(Y.shape)}")
    if Y.shape[0] != d:
        hint = " (pass Y.T: columns are samples)" if Y.ndim == 2 and Y.shape[1] == d else ""
        raise ValueError(f"{name} must have d={d} rows [d, n], got shape {tuple(Y.shape)}{hint}")
    if Y.shape[1] < min_cols:
        raise ValueError(f"{name} must have at least {min_cols} column(s) (samples), got {Y.shape[1]}")
    if not bool(torch.isfinite(Y).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return Y.detach().to(dtype)


def check_seed(seed: object, name: str = "seed", *, allow_none: bool = True) -> int | None:
    """Validate a random seed: an int (``None`` too when ``allow_none``)."""
    if seed is None and allow_none:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int):
        kind = "an int or None" if allow_none else "an int"
        raise TypeError(f"{name} must be {kind}, got {type(seed).__name__} {seed!r}")
    return seed


def pow2_scale(Y: Tensor) -> tuple[Tensor, int]:
    """``(Y · 2^{−e}, e)`` with ``max |Y · 2^{−e}|`` in ``[0.5, 1)`` (``e = 0`` for a zero ``Y``).

    Scaling by a power of two is exact in binary floating point (no rounding, barring subnormal results), so the
    scaled tensor carries the same digits; computations that are invariant to a positive scale (polar factors,
    norm ratios, top-``s`` supports) run on it without overflow at ``|Y| ~ 1e200`` or underflow at ``1e-200``."""
    m = float(Y.abs().max()) if Y.numel() else 0.0
    if m == 0.0 or not math.isfinite(m):
        return Y, 0
    e = math.frexp(m)[1]
    return times_pow2(Y, -e), e


def times_pow2(X: Tensor, k: int) -> Tensor:
    """``X · 2^k``, exact; in steps of at most ``2^{±100}`` (``2^{149}`` is no float32, ``2^{1074}`` no float64)."""
    while k:
        step = max(-100, min(100, k))
        X = X * math.ldexp(1.0, step)
        k -= step
    return X


def haar_orthogonal(d: int, seed: int | None = 0, dtype: torch.dtype = torch.float64) -> Tensor:
    """A Haar-distributed random orthogonal ``d × d`` matrix (QR of a Gaussian with ``diag R > 0``, Mezzadri 2007);
    ``seed=None`` draws from torch's global generator."""
    from orthokit.linalg.qr import qr_basis

    check_dim(d)
    seed = check_seed(seed)
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    Z = torch.randn(d, d, generator=g, dtype=torch.float64)
    Q = qr_basis(Z)
    assert isinstance(Q, Tensor)
    return Q.to(dtype)


def check_codes(C: Tensor, name: str = "Y") -> Tensor:
    """``C = DᵀY`` must be finite: for an orthogonal ``D`` it overflows only when ``Y`` is near the float limit."""
    if not bool(torch.isfinite(C).all()):
        big = torch.finfo(C.dtype).max
        raise ValueError(
            f"{name} is too large: DᵀY overflows {C.dtype} (max {big:.3g}); rescale the data — state left untouched"
        )
    return C


def orthogonal_polar(G: Tensor, keep: Tensor | None = None) -> Tensor:
    """The orthogonal polar factor ``U Vᵀ`` of a square ``G = U Σ Vᵀ``, computed in float64 and returned in
    ``G``'s dtype; exactly orthogonal even when ``G`` is rank-deficient (then one of the maximizers of
    ``⟨S, G⟩`` over the orthogonal group is returned). Uses :func:`orthokit.linalg.polar` (``method="svd"``) and
    completes the rank-deficient case from the full SVD. For ``G = 0`` every orthogonal matrix is a maximizer:
    ``keep`` (the caller's current orthogonal matrix, so that an all-zero batch does not move it) is returned when
    given."""
    from orthokit.linalg.polar import polar

    if keep is not None and not bool(G.any()):
        return keep.clone()
    Gd = G.to(torch.float64)
    P = polar(Gd, method="svd")
    eye = torch.eye(G.shape[-1], dtype=torch.float64, device=G.device)
    if float((P.T @ P - eye).abs().max()) > 1e-10:  # rank-deficient: polar() returns the partial isometry
        U, _, Vh = torch.linalg.svd(Gd)
        P = U @ Vh
    return P.to(G.dtype)


def orthogonality_error(D: Tensor) -> float:
    """``max |DᵀD − I|`` in float64."""
    Dd = D.to(torch.float64)
    return float((Dd.T @ Dd - torch.eye(D.shape[1], dtype=torch.float64, device=D.device)).abs().max())


def lp_objective(D: Tensor, Y: Tensor, p: float) -> float:
    """The sample-mean ``ℓp`` objective ``f(D) = (1/n) Σ_j ‖Dᵀ y_j‖_p^p``."""
    return float((D.T @ Y).abs().pow(p).sum() / Y.shape[1])


def lp_gradient(D: Tensor, Y: Tensor, p: float) -> Tensor:
    """Gradient of :func:`lp_objective` in ``D``: ``(p/n) · Y · (sign(X) ⊙ |X|^{p−1})ᵀ`` with ``X = DᵀY``."""
    X = D.T @ Y
    return (p / Y.shape[1]) * (Y @ (X.sign() * X.abs().pow(p - 1)).T)


def check_power(p: object) -> float:
    """Validate the ``ℓp`` exponent (a float ``> 2``; 3 and 4 are the published choices)."""
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise TypeError(f"power must be a number > 2, got {type(p).__name__}")
    if not math.isfinite(p) or p <= 2:
        raise ValueError(f"power must be a finite number > 2 (3 or 4 in the papers), got {p}")
    return float(p)


class OrthogonalDictionaryLearner:
    """Base class: a learner holding an orthogonal ``d × d`` dictionary.

    Subclasses implement :meth:`fit` (and :meth:`partial_fit` when online) and :attr:`dictionary`. The base class
    provides sparse coding by hard thresholding, reconstruction, the relative reconstruction error and the
    memory accounting used by the benchmark.
    """

    name: str = ""
    online: bool = False

    def __init__(self, d: int, *, dtype: torch.dtype = torch.float64) -> None:
        self.d = check_dim(d)
        self.dtype = check_dtype(dtype)
        self.n_samples_seen = 0
        self.peak_nbytes = 0

    # ----------------------------------------------------------------------------------- interface
    @property
    def dictionary(self) -> Tensor:
        """The ``d × d`` dictionary (orthonormal columns = atoms)."""
        raise NotImplementedError

    def fit(self, Y: Tensor, **kw: Any) -> OrthogonalDictionaryLearner:
        """Learn from the whole data set ``Y`` ``[d, n]``."""
        raise NotImplementedError

    def state_tensors(self) -> dict[str, Tensor]:
        """Every tensor the learner keeps between calls (its persistent state)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------- helpers
    def state_nbytes(self) -> int:
        """Bytes held by the learner's persistent state (sum over :meth:`state_tensors`)."""
        return sum(t.numel() * t.element_size() for t in self.state_tensors().values())

    def _note_peak(self, *working: Tensor) -> None:
        cur = self.state_nbytes() + sum(t.numel() * t.element_size() for t in working)
        self.peak_nbytes = max(self.peak_nbytes, cur)

    def transform(self, Y: Tensor, *, sparsity: int | None = None, threshold: float | None = None) -> Tensor:
        """Sparse codes ``X = H(DᵀY)`` ``[d, n]`` by hard thresholding: keep the ``sparsity`` largest ``|·|`` per
        column, or every entry with ``|·| ≥ threshold`` (exactly one of the two). For an orthogonal ``D`` the
        top-``s`` rule is the exact minimizer of ``‖Y − D X‖_F`` over ``s``-sparse columns."""
        check_code_args(sparsity, threshold, self.d)
        Yc = check_data(Y, self.d, self.dtype)
        return hard_threshold(check_codes(self.dictionary.T @ Yc), sparsity=sparsity, threshold=threshold)

    def reconstruct(
        self, Y: Tensor, *, sparsity: int | None = None, threshold: float | None = None
    ) -> Tensor:
        """``D · H(DᵀY)``: the sparse approximation of ``Y`` in the learned basis."""
        return self.dictionary @ self.transform(Y, sparsity=sparsity, threshold=threshold)

    def relative_error(
        self, Y: Tensor, *, sparsity: int | None = None, threshold: float | None = None
    ) -> float:
        """``‖Y − D H(DᵀY)‖_F / ‖Y‖_F`` (0 for a zero ``Y``). Both norms are taken after an exact power-of-two
        rescaling (:func:`pow2_scale`), so the ratio is right for ``|Y|`` anywhere in the floating range (their
        squares would overflow at ``1e200`` and underflow at ``1e-200``)."""
        Yc = check_data(Y, self.d, self.dtype)
        R = Yc - self.reconstruct(Yc, sparsity=sparsity, threshold=threshold)
        Ys, e = pow2_scale(Yc)
        den = float(torch.linalg.matrix_norm(Ys))
        if den == 0:
            return 0.0
        num = float(torch.linalg.matrix_norm(times_pow2(R, -e)))  # |R| ≤ 2|Y|: no overflow after scaling
        return num / den

    def __repr__(self) -> str:
        return f"{type(self).__name__}(d={self.d}, dtype={self.dtype}, n_samples_seen={self.n_samples_seen})"


class StoredDictionaryLearner(OrthogonalDictionaryLearner):
    """Base of the batch learners whose whole persistent state is the orthogonal dictionary ``self._D``."""

    _D: Tensor

    def state_tensors(self) -> dict[str, Tensor]:
        return {"dictionary": self._D}

    @property
    def dictionary(self) -> Tensor:
        """The current orthogonal dictionary (a copy)."""
        return self._D.clone()
