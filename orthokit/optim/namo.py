"""NAMO and NAMO-D — "Adam Improves Muon: Adaptive Moment Estimation with Orthogonalized Momentum"
(Zhang, Liu, Schaeffer; arXiv:2602.17080).

NAMO keeps Muon's direction ``O = polar(M)`` and multiplies it by one Adam-type adaptive scalar built from
norms (noise adaptation at the level of the whole matrix)::

    M ← μ₁ M + (1−μ₁) G
    v ← μ₂ v + (1−μ₂) ‖G‖_F²                                   (scalar)
    α = sqrt(1−μ₂ᵗ)/(1−μ₁ᵗ) · ‖M‖_F / (sqrt(v) + ε)
    W ← W − η α (O + λ W)                                      (weight decay folded into the scaled step)

``α ≤ ~1``: it is 1 when the gradient is noiseless and constant, and shrinks when ``‖E G‖ ≪ sqrt(E‖G‖²)``.

NAMO-D right-multiplies ``O`` by a clamped diagonal matrix instead (one adaptive scale per column)::

    v_j ← μ₂ v_j + (1−μ₂) ‖G_{:,j}‖²
    d_j = sqrt(1−μ₂ᵗ)/(1−μ₁ᵗ) · ‖M_{:,j}‖ / (sqrt(v_j) + ε)
    d_j ← clamp(d_j, c·d̄, d̄/c),   d̄ = mean_j d_j,   c ∈ (0, 1]
    W ← W − η (O·diag(d) + d̄ λ W)

Sources and caveats: the paper's abstract fixes the structure (scalar / right-multiplied clamped diagonal,
extra clamping hyperparameter). The exact equations above follow secondary transcriptions of the paper
(junaidaliop.github.io/zij/math/namo for NAMO; emergentmind "Diagonal NAMO" for the column statistics and
the clamping "toward the average"); the primary PDF text was not available to us, so the clamp interval
``[c·d̄, d̄/c]`` is our reading (``c = 1`` recovers a NAMO-like scalar step ``d̄·O``, ``c → 0`` an unclamped
diagonal). NVIDIA Emerging-Optimizers (``moment2_method="namo"``) instead uses the Nesterov input in the
numerator and no bias correction.
"""

from __future__ import annotations

import torch

from orthokit.optim._normalizers import fro_norm, work_dtype

__all__ = ["namo_scale", "namo_d_diagonal"]


def _bias(step: int, beta1: float, beta2: float) -> float:
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    for name, b in (("beta1", beta1), ("beta2", beta2)):
        if not 0.0 <= b < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {b}")
    return (1.0 - beta2**step) ** 0.5 / (1.0 - beta1**step)


def namo_scale(
    m: torch.Tensor,
    g: torch.Tensor,
    v: torch.Tensor,
    step: int,
    beta1: float,
    beta2: float,
    eps: float = 1e-8,
) -> torch.Tensor:
    r"""NAMO's adaptive scalar ``α_t`` per matrix (updates the scalar state ``v`` in place).

    .. math::
        v \leftarrow \mu_2 v + (1-\mu_2)\|G\|_F^2,\qquad
        \alpha = \frac{\sqrt{1-\mu_2^t}}{1-\mu_1^t}\,\frac{\|M\|_F}{\sqrt{v}+\epsilon}

    Args:
        m: momentum ``[..., r, c]`` (already updated with ``G``).
        g: gradient, same shape.
        v: float32/float64 state ``[..., 1, 1]``.
        step: 1-based step count.
        beta1, beta2: ``μ₁`` (momentum) and ``μ₂`` (second moment).
        eps: stabilizer.

    Returns:
        ``α`` of shape ``[..., 1, 1]`` in ``v.dtype``.

    Example:
        >>> g = torch.randn(4, 3); m = 0.1 * g; v = torch.zeros(1, 1)
        >>> float(namo_scale(m, g, v, step=1, beta1=0.9, beta2=0.99))  # noiseless first step: α = 1
        0.99999...

    Ref: arXiv:2602.17080.
    """
    c = _bias(step, beta1, beta2)
    if v.shape != (*m.shape[:-2], 1, 1):
        raise ValueError(f"NAMO state has shape {tuple(v.shape)}, expected {(*m.shape[:-2], 1, 1)}")
    v.mul_(beta2).add_(fro_norm(g).to(v.dtype).square(), alpha=1.0 - beta2)
    return c * fro_norm(m).to(v.dtype) / (v.sqrt() + eps)


def namo_d_diagonal(
    m: torch.Tensor,
    g: torch.Tensor,
    v: torch.Tensor,
    step: int,
    beta1: float,
    beta2: float,
    clamp: float = 0.5,
    eps: float = 1e-8,
) -> torch.Tensor:
    r"""NAMO-D's clamped diagonal ``d ∈ R^n`` (one entry per column; updates ``v ∈ R^{1×n}`` in place).

    .. math::
        v_j \leftarrow \mu_2 v_j + (1-\mu_2)\|G_{:,j}\|^2,\quad
        d_j = \frac{\sqrt{1-\mu_2^t}}{1-\mu_1^t}\frac{\|M_{:,j}\|}{\sqrt{v_j}+\epsilon},\quad
        d_j \leftarrow \min(\max(d_j, c\bar d), \bar d / c)

    Args:
        m, g: momentum and gradient ``[..., r, n]``.
        v: float32/float64 state ``[..., 1, n]``.
        step: 1-based step count.
        beta1, beta2: moment coefficients.
        clamp: ``c ∈ (0, 1]``; 1 gives equal entries (scalar step), small ``c`` a nearly unclamped diagonal.
        eps: stabilizer.

    Returns:
        ``d`` of shape ``[..., 1, n]`` — the update is ``O * d`` (``O·diag(d)``).

    Example:
        >>> g = torch.randn(6, 4); d = namo_d_diagonal(0.1 * g, g, torch.zeros(1, 4), 1, 0.9, 0.99, clamp=1.0)
        >>> torch.allclose(d, d.mean())
        True

    Ref: arXiv:2602.17080 (NAMO-D); equations per the secondary transcription noted in the module docstring.
    """
    if not 0.0 < clamp <= 1.0:
        raise ValueError(f"NAMO-D clamp must be in (0, 1], got {clamp}")
    c = _bias(step, beta1, beta2)
    if v.shape != (*m.shape[:-2], 1, m.shape[-1]):
        raise ValueError(
            f"NAMO-D state has shape {tuple(v.shape)}, expected {(*m.shape[:-2], 1, m.shape[-1])}"
        )
    wd = v.dtype if v.dtype in (torch.float32, torch.float64) else work_dtype(m.dtype)
    col_g = g.to(wd).square().sum(dim=-2, keepdim=True)
    v.mul_(beta2).add_(col_g, alpha=1.0 - beta2)
    d = c * torch.linalg.vector_norm(m.to(wd), dim=-2, keepdim=True) / (v.sqrt() + eps)
    dbar = d.mean(dim=-1, keepdim=True)
    return torch.minimum(torch.maximum(d, clamp * dbar), dbar / clamp)
