r"""Sparse coding by hard thresholding in an orthogonal basis.

For an orthogonal dictionary ``D`` (``DᵀD = I``) the ``s``-sparse coding problem

.. math:: \min_{\|x\|_0 \le s} \|y - D x\|_2^2 = \|y\|^2 - \|x\|^2 + \|D^\top y - x\|^2

is solved exactly by keeping the ``s`` largest-magnitude entries of ``c = Dᵀy`` (Parseval), and the penalized
form ``min ‖y − Dx‖² + τ²‖x‖₀`` by keeping every ``|c_i| ≥ τ`` (hard thresholding; Donoho & Johnstone 1994). No
OMP or iterative solver is needed — this is the low implementation cost that motivates orthogonal dictionary
learning (Xue & Lau, arXiv 2103.01484, Sec. I).

Example:
    >>> import torch
    >>> from orthokit.dictionary.sparse import hard_threshold, sparse_code
    >>> C = torch.tensor([[3.0, -0.1], [-5.0, 0.2], [1.0, -0.3]])      # [d=3, n=2], columns are samples
    >>> hard_threshold(C, sparsity=1)
    tensor([[ 0.0000,  0.0000],
            [-5.0000,  0.0000],
            [ 0.0000, -0.3000]])
    >>> hard_threshold(C, threshold=2.0)
    tensor([[ 3.,  0.],
            [-5.,  0.],
            [ 0.,  0.]])
    >>> D = torch.eye(3)
    >>> torch.equal(sparse_code(D, C, sparsity=3), C)
    True
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["check_code_args", "hard_threshold", "sparse_code", "reconstruct"]


def check_code_args(sparsity: object, threshold: object, d: int) -> None:
    """Exactly one of ``sparsity`` (int in ``[0, d]``) and ``threshold`` (finite float ``≥ 0``) must be given."""
    if (sparsity is None) == (threshold is None):
        raise ValueError(
            "give exactly one of sparsity= (atoms kept per sample) or threshold= (|coefficient| cut)"
        )
    if sparsity is not None:
        if isinstance(sparsity, bool) or not isinstance(sparsity, int):
            raise TypeError(f"sparsity must be an int, got {type(sparsity).__name__}")
        if not 0 <= sparsity <= d:
            raise ValueError(f"sparsity must lie in [0, d={d}], got {sparsity}")
    else:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise TypeError(f"threshold must be a float, got {type(threshold).__name__}")
        if not math.isfinite(threshold) or threshold < 0:
            raise ValueError(f"threshold must be a finite float >= 0, got {threshold}")


def hard_threshold(C: Tensor, *, sparsity: int | None = None, threshold: float | None = None) -> Tensor:
    """Hard thresholding of coefficients ``C`` ``[d, n]`` column by column (columns are samples).

    Args:
        C: ``[d, n]`` real floating coefficients (e.g. ``DᵀY``), finite.
        sparsity: keep the ``sparsity`` largest ``|C_ij|`` of each column (ties broken by ``torch.topk``).
        threshold: keep every entry with ``|C_ij| ≥ threshold``.

    Returns:
        A new ``[d, n]`` tensor, zero outside the kept support.

    Raises:
        ValueError / TypeError: both or neither of ``sparsity`` / ``threshold``, out-of-range values, a non-2-D or
        non-finite ``C``.
    """
    if not isinstance(C, Tensor) or not C.is_floating_point():
        raise TypeError(f"C must be a real floating torch.Tensor [d, n], got {type(C).__name__}")
    if C.ndim != 2:
        raise ValueError(f"C must be 2-D [d, n] (columns are samples), got shape {tuple(C.shape)}")
    check_code_args(sparsity, threshold, C.shape[0])
    if not bool(torch.isfinite(C).all()):
        raise ValueError("C contains NaN or inf")
    if threshold is not None:
        return torch.where(C.abs() >= threshold, C, torch.zeros_like(C))
    assert sparsity is not None
    if sparsity == C.shape[0]:
        return C.clone()
    mask = torch.zeros_like(C, dtype=torch.bool)
    if sparsity > 0:
        idx = C.abs().topk(sparsity, dim=0).indices
        mask.scatter_(0, idx, True)
    return torch.where(mask, C, torch.zeros_like(C))


def sparse_code(
    D: Tensor, Y: Tensor, *, sparsity: int | None = None, threshold: float | None = None
) -> Tensor:
    """Codes ``X = H(DᵀY)`` of ``Y`` ``[d, n]`` in the orthogonal basis ``D`` ``[d, d]`` (see :func:`hard_threshold`).

    ``D`` is assumed orthogonal (that is what makes hard thresholding optimal); it is not re-checked here. ``D`` must
    be real floating; ``Y`` (any real dtype) is cast to ``D``'s dtype.
    """
    _check_matrix(D, "D", floating=True)
    _check_matrix(Y, "Y", floating=False)
    if D.shape[0] != D.shape[1]:
        raise ValueError(f"D must be a square [d, d] dictionary, got shape {tuple(D.shape)}")
    if Y.shape[0] != D.shape[0]:
        raise ValueError(f"Y must be [d={D.shape[0]}, n] (columns are samples), got shape {tuple(Y.shape)}")
    C = D.T @ Y.to(D.dtype)
    if not bool(torch.isfinite(C).all()):
        raise ValueError(f"Y is too large: DᵀY overflows {D.dtype}")
    return hard_threshold(C, sparsity=sparsity, threshold=threshold)


def _check_matrix(M: object, name: str, *, floating: bool) -> None:
    """``M`` must be a finite 2-D real tensor (floating when ``floating``)."""
    if not isinstance(M, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(M).__name__}")
    if M.is_complex() or M.dtype == torch.bool or (floating and not M.is_floating_point()):
        kind = "a real floating" if floating else "a real"
        raise TypeError(f"{name} must be {kind} tensor, got dtype {M.dtype}")
    if M.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(M.shape)}")
    if not bool(torch.isfinite(M).all()):
        raise ValueError(f"{name} contains NaN or inf")


def reconstruct(D: Tensor, X: Tensor) -> Tensor:
    """``D X``: signals ``[d, n]`` from codes ``X`` ``[d, n]``, both real floating (computed in their promoted
    dtype, e.g. float64 for a float32 ``D`` and float64 codes)."""
    _check_matrix(D, "D", floating=True)
    _check_matrix(X, "X", floating=True)
    if D.shape[1] != X.shape[0]:
        raise ValueError(f"D [d, d] and X [d, n] do not fit: {tuple(D.shape)} and {tuple(X.shape)}")
    dt = torch.promote_types(D.dtype, X.dtype)
    return D.to(dt) @ X.to(dt)
