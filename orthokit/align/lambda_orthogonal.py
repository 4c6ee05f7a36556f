r"""λ-orthogonality (Ricci et al., NeurIPS 2025, arXiv 2509.16664): an affine map kept within λ of orthogonal.

Ricci, Biondi, Pernici, Patras, Del Bimbo, "λ-Orthogonality Regularization for Compatible Representation
Learning" (official code: github.com/miccunifi/lambda_orthogonality) learn an *affine* map between two
representation spaces while relaxing, rather than imposing, orthogonality: the map may deviate from an
orthogonal one by a tolerance λ and is penalized only beyond it.

Definition used here. A ``m×n`` matrix ``W`` is **λ-orthogonal** when ``‖G − I‖_F ≤ λ``, where ``G`` is the
Gram matrix of its smaller side (``WWᵀ`` if ``m ≤ n``, else ``WᵀW``; the two agree for square ``W``). In
singular values: ``Σᵢ (σᵢ² − 1)² ≤ λ²`` over the ``min(m, n)`` singular values, so λ = 0 is exactly the
(semi-)orthogonal set. With ``norm="spectral"`` the tolerance is ``max_i |σᵢ² − 1| ≤ λ`` instead (every
singular value in the band ``[√(1−λ), √(1+λ)]``). The paper's exact formula could not be checked against its
text or code (neither is in this project's reference store); see ``docs/align/maps.md`` § Fidelity.

Example:
    >>> import torch
    >>> from orthokit.align.lambda_orthogonal import lambda_orthogonality_penalty
    >>> Q = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))[0]
    >>> float(lambda_orthogonality_penalty(Q, 0.0)) < 1e-20
    True
    >>> float(lambda_orthogonality_penalty(1.1 * Q, 0.1))  # ‖1.21·I − I‖_F = 0.42 → (0.42 − 0.1)²
    0.1024
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["lambda_orthogonality_penalty", "lambda_orthogonality_gap"]

_NORMS = ("fro", "spectral")


def _check_w(W: object, name: str = "W") -> Tensor:
    if not isinstance(W, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(W).__name__}")
    if W.dim() != 2:
        raise ValueError(f"{name} must be a 2-D matrix, got shape {tuple(W.shape)}")
    if not W.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got dtype {W.dtype}")
    return W


def _check_lam(lam: object) -> float:
    if isinstance(lam, bool) or not isinstance(lam, (int, float)):
        raise TypeError(f"lam must be a real number, got {type(lam).__name__}")
    lam = float(lam)
    if not math.isfinite(lam) or lam < 0:
        raise ValueError(f"lam must be a finite number >= 0, got {lam}")
    return lam


def lambda_orthogonality_gap(W: Tensor, *, norm: str = "fro") -> Tensor:
    r"""Distance of ``W`` from (semi-)orthogonality: ``‖G − I‖`` with ``G`` the smaller-side Gram matrix.

    ``norm="fro"``: ``‖G − I‖_F = (Σᵢ (σᵢ² − 1)²)^{1/2}``; ``norm="spectral"``: ``max_i |σᵢ² − 1|``.
    ``W`` is λ-orthogonal exactly when this is ``≤ λ``. Differentiable; the gradient at an exactly
    orthogonal ``W`` (where the Frobenius norm is not differentiable) is taken as zero.

    Args:
        W: ``m×n`` floating matrix.
        norm: ``"fro"`` (default) or ``"spectral"``.

    Returns:
        Scalar tensor in ``W``'s dtype.

    Example:
        >>> import torch
        >>> round(float(lambda_orthogonality_gap(2 * torch.eye(3))), 6)  # ‖4I − I‖_F = 3√3
        5.196152
        >>> float(lambda_orthogonality_gap(2 * torch.eye(3), norm="spectral"))
        3.0
    """
    W = _check_w(W)
    if norm not in _NORMS:
        raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}")
    m, n = W.shape
    G = W @ W.mT if m <= n else W.mT @ W
    D = G - torch.eye(G.shape[0], dtype=G.dtype, device=G.device)
    if norm == "spectral":
        return torch.linalg.matrix_norm(D, ord=2)
    sq = (D * D).sum()
    # sqrt has an infinite derivative at 0; clamp so that an exactly orthogonal W gets a zero gradient
    safe = torch.where(sq > 0, sq, torch.ones_like(sq))
    return torch.where(sq > 0, safe.sqrt(), torch.zeros_like(sq))


def lambda_orthogonality_penalty(W: Tensor, lam: float, *, norm: str = "fro") -> Tensor:
    r"""λ-orthogonality penalty ``max(0, ‖G − I‖ − λ)²`` (zero exactly on the λ-orthogonal set).

    ``G`` is the Gram matrix of ``W``'s smaller side (``WWᵀ`` for ``m ≤ n``, ``WᵀW`` otherwise), so the
    penalty depends only on the singular values: for ``norm="fro"`` it is zero iff
    ``Σᵢ (σᵢ² − 1)² ≤ λ²``. The squared hinge is continuously differentiable (its gradient is zero inside
    the tolerance and grows linearly with the violation), so it can be added to any training loss with a
    weight, or used as an exact-penalty constraint. Source: Ricci et al., NeurIPS 2025 (arXiv 2509.16664),
    "λ-orthogonality regularization"; the Frobenius form and the squared hinge are this library's choice
    (the paper's exact formula was not available to check — ``docs/align/maps.md`` § Fidelity).

    Args:
        W: ``m×n`` floating matrix (e.g. an ``nn.Linear`` weight; orientation does not matter).
        lam: tolerance λ ≥ 0; ``lam=0`` penalizes any deviation from (semi-)orthogonality.
        norm: ``"fro"`` (default) or ``"spectral"`` (every ``σᵢ²`` within ``[1−λ, 1+λ]``).

    Returns:
        Scalar tensor (differentiable w.r.t. ``W``) in ``W``'s dtype.

    Example:
        >>> import torch
        >>> W = torch.eye(3, dtype=torch.float64).requires_grad_()
        >>> p = lambda_orthogonality_penalty(1.05 * W, 0.5)  # gap 0.1025·√3 = 0.178 < 0.5
        >>> p.backward(); float(p.detach()), float(W.grad.abs().max())
        (0.0, 0.0)
    """
    lam = _check_lam(lam)
    gap = lambda_orthogonality_gap(W, norm=norm)
    return torch.relu(gap - lam) ** 2
