"""ARO — Adaptively Rotated Optimization (Gong, Zazo, Luo, Wang, Hensman, Ma; Microsoft Research;
arXiv:2602.09006).

ARO performs normed steepest descent in a rotated coordinate frame whose rotation is re-estimated from the
momentum every step ("norm-informed" rotation policy); Muon, SOAP and SPlus are special cases::

    M ← βM + (1−β)G
    R_t = orth( M · f(R_{t−1}ᵀ M)ᵀ )               (R ∈ O(s), s = min(m, n); QR with positive diag(R))
    ΔW = R_t · f(R_tᵀ M);     W ← W(1 − ηλ) − η·ΔW

``f`` is the base projection of the rotated momentum: ``"sign"`` (SignGD, RMS 1) or ``"sinkhorn"`` (SinkGD:
alternating row/column ℓ₂ normalization to row norms ``sqrt(n)`` and column norms ``sqrt(s)``, RMS ≈ 1; the
paper reports ARO-Sinkhorn as the strongest). Both give Adam-like update RMS ≈ 1, so Adam-like learning rates
apply. If ``f`` were the identity, ``R_t`` would be the polar/left-singular frame and the method reduces to a
rotated SGD; with ``f = polar`` it is rotation-invariant and reduces to Muon (paper Appendix A).

Source caveats: the abstract fixes the idea and results (1.3–1.35× over AdamW, 1.1–1.15× over orthogonalized
methods up to 8B activated parameters). The update equations follow the secondary transcription at
junaidaliop.github.io/zij/math/aro; the paper's shifted Cholesky-QR (a GPU speed trick) is replaced by
Householder QR, and we rotate on the smaller side (``s = min(m, n)``, transposing tall matrices) to bound the
``s×s`` state — both are our choices.
"""

from __future__ import annotations

import torch

__all__ = ["ARO_BASE_PROJECTIONS", "aro_base_projection", "aro_rotation_step"]

ARO_BASE_PROJECTIONS = ("sign", "sinkhorn")


def aro_base_projection(
    x: torch.Tensor, kind: str = "sign", iters: int = 5, eps: float = 1e-8
) -> torch.Tensor:
    """ARO's base projection ``f`` (applied in the rotated frame).

    ``"sign"``: ``sign(X)``. ``"sinkhorn"``: ``iters`` rounds of ``X ← sqrt(n)·X/‖X_{i,:}‖`` then
    ``X ← sqrt(r)·X/‖X_{:,j}‖`` for ``X ∈ R^{r×n}`` (SinkGD multi-normalization), ending with unit column RMS.

    Example:
        >>> y = aro_base_projection(torch.randn(8, 16), "sinkhorn")
        >>> torch.allclose(y.pow(2).mean(0), torch.ones(16), atol=1e-4)
        True
    """
    if kind == "sign":
        return torch.sign(x)
    if kind != "sinkhorn":
        raise ValueError(f"ARO base projection must be one of {ARO_BASE_PROJECTIONS}, got {kind!r}")
    r, n = x.shape[-2], x.shape[-1]
    y = x
    for _ in range(iters):
        y = y * (n**0.5 / (torch.linalg.vector_norm(y, dim=-1, keepdim=True) + eps))
        y = y * (r**0.5 / (torch.linalg.vector_norm(y, dim=-2, keepdim=True) + eps))
    return y


def _qr_positive(a: torch.Tensor) -> torch.Tensor:
    q, r = torch.linalg.qr(a)
    d = torch.sign(r.diagonal(dim1=-2, dim2=-1))
    d = torch.where(d == 0, torch.ones_like(d), d)
    return q * d.unsqueeze(-2)


def aro_rotation_step(
    m: torch.Tensor, rot: torch.Tensor, kind: str = "sign"
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""One ARO direction: new rotation ``R_t = orth(M f(R_{t-1}ᵀM)ᵀ)`` and update ``ΔW = R_t f(R_tᵀ M)``.

    Args:
        m: momentum ``[..., m, n]``.
        rot: previous rotation ``[..., s, s]`` with ``s = min(m, n)`` (identity at step 0); the problem is
            transposed when ``m > n`` so that the rotation acts on the smaller side.
        kind: base projection, see :func:`aro_base_projection`.

    Returns:
        ``(delta, rot_new)``; ``rot_new`` is orthogonal (QR with positive ``diag(R)``).

    Example:
        >>> M = torch.randn(6, 10); R = torch.eye(6)
        >>> d, R2 = aro_rotation_step(M, R)
        >>> torch.allclose(R2.T @ R2, torch.eye(6), atol=1e-5)
        True

    Ref: arXiv:2602.09006 (equations per the transcription noted in the module docstring).
    """
    transpose = m.shape[-2] > m.shape[-1]
    x = m.mT if transpose else m  # [.., s, big]
    s = x.shape[-2]
    if rot.shape[-2:] != (s, s):
        raise ValueError(f"ARO rotation has shape {tuple(rot.shape)}, expected [..., {s}, {s}]")
    rw = rot.to(x.dtype)
    cross = x @ aro_base_projection(rw.mT @ x, kind).mT  # [.., s, s]
    r_new = _qr_positive(cross)
    delta = r_new @ aro_base_projection(r_new.mT @ x, kind)
    delta = delta.mT if transpose else delta
    return delta, r_new.to(rot.dtype)
