"""AdaMuon — adaptive Muon with an element-wise second moment on the orthogonal update (Si, Zhang, Shen;
arXiv:2507.11005).

Update for ``W ∈ R^{m×n}`` (official code ``github.com/Chongjie-Si/AdaMuon``, ``adamuon.py``)::

    M ← μ M + (1−μ) G ;  U = (1−μ) G + μ M               (EMA momentum, Nesterov)
    O ← polar(U)            [paper v2/v3: O ← polar(sign(U)), "sign-stabilized"]
    v ← β₂ v + (1−β₂) O ⊙ O                               (element-wise, v ∈ R^{m×n})
    O ← O / (sqrt(v / (1−β₂ᵗ)) + ε)
    O ← O · sqrt(min(m, n)) / (‖O‖_F + ε)                 (norm of a semi-orthogonal matrix)
    W ← W(1 − ηλ) − η·0.2·sqrt(max(m, n))·O               (⇒ update RMS 0.2·η, "RMS-aligned" with Adam)

The official code implements the paper's v1 (no sign step); the v2/v3 paper adds the sign stabilization,
available here as ``sign_stabilize=True``. Defaults of the official code: lr 0.02, wd 0.01, momentum 0.95,
β₂ 0.999, ε 1e-8. Reported: ">40% training efficiency over Adam in large-scale scenarios".
"""

from __future__ import annotations

import math

import torch

from orthokit.optim._normalizers import rescale_to_norm, second_moment_normalize

__all__ = ["adamuon_normalize", "sign_stabilize"]


def sign_stabilize(u: torch.Tensor) -> torch.Tensor:
    """AdaMuon v2's sign stabilization of the polar input: ``sign(U)`` (entries in {−1, 0, +1}).

    Example:
        >>> sign_stabilize(torch.tensor([[-0.3, 0.0, 2.0]]))
        tensor([[-1.,  0.,  1.]])
    """
    return torch.sign(u)


def adamuon_normalize(
    o: torch.Tensor, v: torch.Tensor, step: int, beta2: float = 0.999, eps: float = 1e-8
) -> torch.Tensor:
    r"""AdaMuon's element-wise second-moment normalization + RMS alignment (``v`` updated in place).

    .. math::
        v \leftarrow \beta_2 v + (1-\beta_2) O\odot O,\quad
        \tilde O = O / (\sqrt{v/(1-\beta_2^t)} + \epsilon),\quad
        O' = \tilde O\,\sqrt{\min(m,n)} / (\|\tilde O\|_F + \epsilon)

    Multiplying ``O'`` by ``0.2·sqrt(max(m, n))`` (the ``"match_rms_adamw"`` shape factor) gives an update
    with RMS exactly 0.2 — AdaMuon's "RMS-aligned" step.

    Args:
        o: orthogonalized update ``[..., m, n]``.
        v: float32/float64 state ``[..., m, n]`` (zeros at step 0).
        step: 1-based step count (bias correction).
        beta2: EMA coefficient (official 0.999).
        eps: stabilizer (official 1e-8).

    Example:
        >>> o = torch.linalg.qr(torch.randn(12, 5)).Q
        >>> out = adamuon_normalize(o, torch.zeros(12, 5), step=1)
        >>> round(float(out.norm()) ** 2, 3)  # min(m, n) = 5
        5.0

    Ref: arXiv:2507.11005; github.com/Chongjie-Si/AdaMuon.
    """
    if o.dim() < 2:
        raise ValueError(f"AdaMuon normalizes matrices [..., m, n], got shape {tuple(o.shape)}")
    if v.shape != o.shape:
        raise ValueError(f"AdaMuon second-moment state has shape {tuple(v.shape)}, expected {tuple(o.shape)}")
    y = second_moment_normalize(o, v, beta2, reduce_last=False, eps=eps, step=step)
    target = math.sqrt(min(o.shape[-2], o.shape[-1]))
    return rescale_to_norm(y, target, eps=eps).to(o.dtype)
