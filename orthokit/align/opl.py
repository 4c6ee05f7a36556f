r"""Orthogonal Projection Loss (OPL; Ranasinghe, Naseer, Hayat, Khan, Khan, ICCV 2021, arXiv 2103.14021).

OPL pushes penultimate features of one class together and features of different classes towards orthogonality.
With ``f̂ᵢ = fᵢ/‖fᵢ‖`` the L2-normalized features of a batch and labels ``yᵢ``:

.. math::

    s = \operatorname{mean}_{i\ne j,\; y_i=y_j} \langle \hat f_i,\hat f_j\rangle, \qquad
    d = \operatorname{mean}_{y_i\ne y_j} \langle \hat f_i,\hat f_j\rangle, \qquad
    \mathcal L_{\mathrm{OPL}} = (1 - s) + \gamma\, d .

Both means divide by (count + 1e-6) exactly as the authors' ``loss.py`` (``kahnchana/opl``, commit
``0953e5f``), and the negative term has **no** absolute value there (the code carries a "TODO: removed abs");
``abs_negative=True`` uses ``mean |⟨f̂ᵢ,f̂ⱼ⟩|`` instead, as the repository's earlier ``cifar/losses.py`` (commit
``15b9615``) did, which makes ``0`` the global minimum (reached exactly when every class collapses onto one direction and the class directions are mutually
orthogonal). The paper trains with ``CE + λ·OPL``, λ = 1, γ = 0.5: :func:`cross_entropy_with_opl`.

Example:
    >>> import torch
    >>> from orthokit.align.opl import OrthogonalProjectionLoss
    >>> labels = torch.tensor([0, 0, 1, 1, 2])
    >>> feats = torch.eye(3, dtype=torch.float64)[labels] * 4.0   # one orthogonal direction per class, any scale
    >>> float(OrthogonalProjectionLoss()(feats, labels))  # 0 but for the 1e-6 count regularizer: 1 − 4/(4 + 1e-6)
    2.4999993...e-07
    >>> float(OrthogonalProjectionLoss()(torch.ones(5, 3), labels)) > 0.4   # all features collinear
    True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from orthokit.align.registry import ALIGN_LOSSES

__all__ = ["OrthogonalProjectionLoss", "opl_terms", "cross_entropy_with_opl"]

_EPS = 1e-6  # the reference's count regularizer in both means


def finite_features_guard(out: Tensor, features: Tensor, who: str) -> None:
    """Raise a one-line ``ValueError`` when ``features`` hold NaN/inf, detected through ``out``.

    Non-finite features always make these losses' and heads' outputs non-finite (normalization turns ±inf into
    NaN), so the finite case costs one reduction of ``out`` (a scalar loss or ``[B, C]`` logits) instead of a
    full ``torch.isfinite(features)`` pass, which on a 256×512 CPU batch costs 20–60 % of a forward; the
    features are inspected only when ``out`` is not finite.
    """
    total = out.detach() if out.dim() == 0 else out.detach().sum()
    if not bool(torch.isfinite(total)):
        bad = int((~torch.isfinite(features.detach())).sum())
        if bad:
            raise ValueError(f"{who}: features contain {bad} non-finite value(s) (NaN or inf)")


def _check(features: Tensor, labels: Tensor) -> None:
    if not isinstance(features, Tensor) or not isinstance(labels, Tensor):
        raise TypeError("OPL: features and labels must be tensors")
    if features.dim() != 2 or not features.is_floating_point():
        raise ValueError(
            f"OPL: features must be a floating [batch, dim] tensor, got shape {tuple(features.shape)}"
        )
    if labels.dim() != 1 or labels.shape[0] != features.shape[0]:
        raise ValueError(
            f"OPL: labels must be a [batch] tensor matching features, got {tuple(labels.shape)} for "
            f"{features.shape[0]} features"
        )
    if labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"OPL: labels must be integer class ids, got {labels.dtype}")


def opl_terms(features: Tensor, labels: Tensor, *, abs_negative: bool = False) -> tuple[Tensor, Tensor]:
    """The two batch means of OPL: ``(s, d)`` = mean cosine over same-label pairs ``i ≠ j`` and over
    different-label pairs (``|cos|`` when ``abs_negative``). Differentiable; the loss is ``(1 − s) + γ d``.

    Example:
        >>> import torch
        >>> s, d = opl_terms(torch.eye(2)[[0, 0, 1]], torch.tensor([0, 0, 1]))
        >>> round(float(s), 4), round(float(d), 4)
        (1.0, 0.0)
    """
    _check(features, labels)
    f = F.normalize(features, p=2, dim=1)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    pos = (same & ~eye).to(f.dtype)
    neg = (~same).to(f.dtype)
    dot = f @ f.T
    s = (pos * dot).sum() / (pos.sum() + _EPS)
    d = (neg * (dot.abs() if abs_negative else dot)).sum() / (neg.sum() + _EPS)
    return s, d


@ALIGN_LOSSES.register("opl", aliases=("orthogonal_projection_loss",), kind="loss")
class OrthogonalProjectionLoss(nn.Module):
    """Orthogonal Projection Loss ``(1 − s) + γ d`` on L2-normalized features (see the module docstring).

    Args:
        gamma: weight of the different-class term (paper and code default 0.5).
        abs_negative: use ``mean |cos|`` over different-class pairs (the repository's earlier CIFAR code)
            instead of the signed mean of the released ``loss.py`` (default ``False`` = the released code).

    ``forward(features [B, D], labels [B]) -> scalar``. A batch with no same-label pair has ``s = 0`` and one
    with a single class has ``d = 0`` (the reference's ``+1e-6`` denominators). Features holding NaN/inf raise
    a one-line ``ValueError``.
    """

    def __init__(self, gamma: float = 0.5, *, abs_negative: bool = False) -> None:
        super().__init__()
        if not isinstance(gamma, (int, float)) or isinstance(gamma, bool) or not gamma == gamma:
            raise TypeError(f"OPL: gamma must be a real number, got {gamma!r}")
        if gamma < 0:
            raise ValueError(f"OPL: gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)
        self.abs_negative = bool(abs_negative)

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        s, d = opl_terms(features, labels, abs_negative=self.abs_negative)
        loss = (1.0 - s) + self.gamma * d
        finite_features_guard(loss, features, "OPL")
        return loss

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, abs_negative={self.abs_negative}"


def cross_entropy_with_opl(
    logits: Tensor,
    features: Tensor,
    labels: Tensor,
    *,
    weight: float = 1.0,
    gamma: float = 0.5,
    abs_negative: bool = False,
) -> Tensor:
    """The paper's training objective ``CE(logits, y) + λ·OPL(features, y)`` (λ = ``weight``, default 1 as
    the paper; ``features`` are the penultimate features the classifier reads).

    Example:
        >>> import torch
        >>> logits, feats, y = torch.randn(6, 3), torch.randn(6, 8), torch.tensor([0, 1, 2, 0, 1, 2])
        >>> bool(cross_entropy_with_opl(logits, feats, y) > 0)
        True
    """
    if weight < 0:
        raise ValueError(f"cross_entropy_with_opl: weight must be >= 0, got {weight}")
    opl = OrthogonalProjectionLoss(gamma, abs_negative=abs_negative)(features, labels)
    return F.cross_entropy(logits, labels) + weight * opl
