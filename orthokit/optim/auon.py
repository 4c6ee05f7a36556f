"""AuON and Hybrid-AuON (Maity, arXiv:2509.24320) — "alternative unit-norm momentum updates".

AuON replaces Muon's semi-orthogonalization by a linear-time normalization (no matmuls): the Nesterov
momentum is Frobenius-normalized and divided by a hyperbolic-cosine RMS::

    M ← μ M + (1−μ) G ;  U = (1−μ) G + μ M
    Ĝ = U / (‖U‖_F + 1e-7)
    r = sqrt( mean_ij cosh(γ Ĝ_ij)² )
    O = Ĝ / (r + 1e-8) ;   W ← W(1 − ηλ) − η·sqrt(max(1, m/n))·O

(paper form as transcribed by junaidaliop.github.io/zij and the repository's older ``Auon_Adam_train.py``;
``γ = 1``). The current repository code (``github.com/ryyzn9/AuON`` ``auon/optimizer.py``) differs:
``γ = 1.5`` and the update is ``U / (r + 1e-8)`` — the *unnormalized* momentum — with no shape factor;
that is ``normalize=False, gamma=1.5, adjust_lr=None`` here.

Hybrid-AuON applies Newton–Schulz to ``U`` first — "a single Newton–Schulz iteration" in the paper's v1
abstract (``ns_steps=1`` here), 5 steps in the current code — and then the same cosh divisor.

**What the cosh factor does in practice.** With ``Σ Ĝ_ij² = 1`` and ``N = mn`` entries,
``mean cosh(γĜ)² = 1 + γ²/N + O(γ⁴/N²)`` (Taylor: ``cosh²x = 1 + x² + x⁴/3 + …``), so ``r − 1 ≈ γ²/(2N)``:
1.9e-6 for 768×768 (γ = 1.5), 0.018 for 8×8. At realistic sizes AuON is therefore Frobenius-normalized
Nesterov SGD (paper form) / plain Nesterov SGD (code form), and Hybrid-AuON is Muon without a shape factor;
the "trust region" brake only acts on tiny matrices. :func:`cosh_rms` lets the benchmark report ``r``.
"""

from __future__ import annotations

import torch

from orthokit.optim._normalizers import fro_norm, work_dtype

__all__ = ["cosh_rms", "auon_normalize"]


def cosh_rms(x: torch.Tensor, gamma: float = 1.0, eps: float = 1e-7) -> torch.Tensor:
    r"""AuON's hyperbolic-cosine RMS ``r = sqrt(mean_ij cosh(γ X_ij / (‖X‖_F + eps))²)`` per matrix.

    Always ``≥ 1``; ``r − 1 ≈ γ² / (2mn)`` for spread-out matrices.

    Args:
        x: ``[..., m, n]``.
        gamma: sharpness ``γ`` (paper 1.0, current code 1.5).
        eps: added to the Frobenius norm.

    Returns:
        ``r`` with shape ``[..., 1, 1]`` (float32, or float64 for float64 input).

    Example:
        >>> r = cosh_rms(torch.randn(768, 768), gamma=1.5)
        >>> 0 < float(r) - 1 < 1e-5
        True

    Ref: arXiv:2509.24320.
    """
    if x.dim() < 2:
        raise ValueError(f"cosh_rms expects [..., m, n], got shape {tuple(x.shape)}")
    xf = x.to(work_dtype(x.dtype))
    xh = xf / (fro_norm(xf) + eps)
    return torch.cosh(gamma * xh).square().mean(dim=(-2, -1), keepdim=True).sqrt()


def auon_normalize(u: torch.Tensor, gamma: float = 1.0, normalize: bool = True) -> torch.Tensor:
    r"""AuON's direction: ``Û / (r + 1e-8)`` with ``Û = U/(‖U‖_F + 1e-7)`` (``normalize=True``, paper) or
    ``Û = U`` (``normalize=False``, current repository code), ``r`` = :func:`cosh_rms` of ``U``.

    Args:
        u: Nesterov momentum (AuON) or its Newton–Schulz image (Hybrid-AuON), ``[..., m, n]``.
        gamma: cosh sharpness.
        normalize: Frobenius-normalize before dividing by ``r``.

    Returns:
        Same shape and dtype as ``u``; with ``normalize=True`` its Frobenius norm is ``1/r ≤ 1``.

    Example:
        >>> y = auon_normalize(torch.randn(64, 64))
        >>> 0.999 < float(y.norm()) < 1.0
        True

    Ref: arXiv:2509.24320; github.com/ryyzn9/AuON.
    """
    r = cosh_rms(u, gamma)
    uf = u.to(r.dtype)
    if normalize:
        uf = uf / (fro_norm(uf) + 1e-7)
    return (uf / (r + 1e-8)).to(u.dtype)
