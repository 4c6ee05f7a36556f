"""Cayley transform between skew-symmetric matrices and rotations, and its inverse."""

from __future__ import annotations

import math

import torch

from orthokit.linalg._checks import check_finite, check_matrix, compute_dtype

__all__ = ["cayley", "inverse_cayley"]


def _square(x: torch.Tensor, name: str) -> None:
    check_matrix(x, name)
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"{name} must be square [..., n, n], got shape {tuple(x.shape)}")
    check_finite(x, name)


def cayley(A: torch.Tensor, *, project: bool = False, atol: float | None = None) -> torch.Tensor:
    r"""Cayley transform ``Q = (I − A)⁻¹ (I + A)`` of a skew-symmetric ``A`` (``so(n) → SO(n)``).

    For ``Aᵀ = −A`` the matrix ``I − A`` is always invertible (eigenvalues ``1 − iλ``), the two
    factors commute, and ``Q`` is orthogonal with ``det Q = +1``. A plane in which ``A`` acts as
    ``λJ`` is rotated by ``θ = 2·atan(λ)``, so ``Q ≈ exp(2A)`` for small ``A`` and angle π is
    reached only as ``λ → ∞`` (Cayley, 1846; used by OFT — Qiu et al., NeurIPS 2023 — and
    OrthoMerge, arXiv 2602.05943). Note the conventions differ across libraries: torch's
    ``orthogonal(..., "cayley")`` uses ``A/2``; PEFT OFT uses ``(I − A)(I + A)⁻¹ = cayley(−A)``.

    Computed with ``torch.linalg.solve(I − A, I + A)`` (no explicit inverse) in ≥ float32, returned in
    the input dtype; differentiable.

    Args:
        A: ``[..., n, n]`` skew-symmetric real tensor, finite.
        project: use the skew part ``(A − Aᵀ)/2`` instead of validating skew-symmetry.
        atol: tolerance on ``max|A + Aᵀ| / max(1, max|A|)`` (default ``64·eps(dtype)·√n``).

    Raises:
        ValueError: non-square, non-finite, or not skew-symmetric (when ``project=False``).

    Example:
        >>> A = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)   # λ = 1 → θ = π/2
        >>> cayley(A).round(decimals=12)
        tensor([[ 0., -1.],
                [ 1.,  0.]], dtype=torch.float64)
    """
    _square(A, "A")
    n = A.shape[-1]
    cd = compute_dtype(A.dtype)
    a = A.to(cd)
    if project:
        a = 0.5 * (a - a.mT)
    else:
        tol = 64.0 * float(torch.finfo(A.dtype).eps) * math.sqrt(n) if atol is None else float(atol)
        ad = a.detach()
        err = float((ad + ad.mT).abs().max()) / max(1.0, float(ad.abs().max()))
        if err > tol:
            raise ValueError(
                f"A is not skew-symmetric: max|A + Aᵀ| / max(1, max|A|) = {err:.3e} > tol {tol:.3e} "
                f"(pass project=True to use (A − Aᵀ)/2)"
            )
    eye = torch.eye(n, dtype=cd, device=a.device)
    return torch.linalg.solve(eye - a, eye + a).to(A.dtype)


def inverse_cayley(
    Q: torch.Tensor, *, check: bool = True, max_cond: float | None = None, atol: float | None = None
) -> torch.Tensor:
    r"""Inverse Cayley transform ``A = (Q − I)(Q + I)⁻¹`` (``SO(n) → so(n)``), so ``cayley(A) = Q``.

    Defined when ``Q`` has no eigenvalue ``−1``. For orthogonal ``Q`` with rotation angles ``θ_j``,
    ``Q + I`` has singular values ``2|cos(θ_j/2)|`` and ``A`` acts as ``tan(θ_j/2)·J`` in plane
    ``j``: the map blows up as an angle approaches π and does not exist for reflections
    (``det Q = −1`` always has eigenvalue −1). This is the failure mode reported for OrthoMerge's
    ``Cayley⁻¹(R_t)`` on Procrustes outputs (see ``merge.md`` §3.8); here it raises instead of
    returning huge/NaN coordinates. Use :func:`orthokit.linalg.logm_orthogonal` (well defined up to
    π) or ``procrustes(..., rotation_only=True)`` instead.

    Computed as ``solve(Q + I, Q − I, left=False)`` in ≥ float32 (no explicit inverse), skew-symmetrized,
    returned in the input dtype; differentiable.

    Args:
        Q: ``[..., n, n]`` orthogonal matrices, finite.
        check: validate orthogonality (``max|QᵀQ − I| ≤ atol``) and conditioning.
        max_cond: largest accepted ``κ = 2/σ_min(Q + I) = 1/min_j|cos(θ_j/2)|`` (the conditioning of
            ``Q + I`` relative to its largest possible norm 2; ``κ ≈ ‖A‖₂`` near π); default
            ``1/√eps`` of the compute dtype (6.7e7 in float64 ↔ angles up to ≈ π − 3e-8;
            2.9e3 in float32 ↔ ≈ π − 7e-4). Pass ``float("inf")`` to only reject exact singularity.
        atol: orthogonality tolerance (default ``max(64·eps·√n, √eps)``).

    Raises:
        ValueError: non-square/non-finite, not orthogonal, or ``Q + I`` (near-)singular — the message
            reports the condition number and the largest rotation angle.

    Example:
        >>> A = torch.tensor([[0.0, -0.5], [0.5, 0.0]], dtype=torch.float64)
        >>> bool(torch.allclose(inverse_cayley(cayley(A)), A))
        True
    """
    _square(Q, "Q")
    n = Q.shape[-1]
    cd = compute_dtype(Q.dtype)
    q = Q.to(cd)
    eye = torch.eye(n, dtype=cd, device=q.device)
    qp = q + eye
    if check:
        eps = float(torch.finfo(cd).eps)
        tol = (
            max(64.0 * float(torch.finfo(Q.dtype).eps) * math.sqrt(n), math.sqrt(eps))
            if atol is None
            else atol
        )
        qd = q.detach()
        err = float((qd.mT @ qd - eye).abs().max())
        if err > tol:
            raise ValueError(f"Q is not orthogonal: max|QᵀQ − I| = {err:.3e} > tol {tol:.3e}")
        limit = 1.0 / math.sqrt(eps) if max_cond is None else float(max_cond)
        smin = torch.linalg.svdvals(qp.detach())[..., -1]
        # σ_min(Q + I) = 2|cos(θ_max/2)|; 2/σ_min = 1/|cos(θ_max/2)| ≈ ‖A‖₂ near π
        cond = torch.where(
            smin > 0, 2.0 / smin.clamp_min(torch.finfo(cd).tiny), torch.full_like(smin, math.inf)
        )
        worst = float(cond.max())
        if not worst <= limit:
            angle = 2.0 * math.acos(min(1.0, float(smin.min()) / 2.0))
            raise ValueError(
                f"inverse_cayley: Q + I is ill-conditioned (κ = 2/σ_min(Q + I) = {worst:.3e} > max_cond {limit:.3e}); Q has an "
                f"eigenvalue near -1 (largest rotation angle ≈ π − {math.pi - angle:.2e} rad, or a reflection with "
                f"det = -1). The Cayley parametrization cannot represent it stably; use logm_orthogonal or "
                f"procrustes(..., rotation_only=True)"
            )
    a, info = torch.linalg.solve_ex(qp, q - eye, left=False)
    if bool((info != 0).any()):
        raise ValueError("inverse_cayley: Q + I is exactly singular (Q has eigenvalue -1)")
    return (0.5 * (a - a.mT)).to(Q.dtype)
