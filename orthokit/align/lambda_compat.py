r"""λ-orthogonal compatibility: an affine new→old map kept within λ of orthogonal, trained with the new model.

Ricci, Biondi, Pernici, Patras, Del Bimbo, "λ-Orthogonality Regularization for Compatible Representation
Learning", NeurIPS 2025 (arXiv 2509.16664; code ``miccunifi/lambda_orthogonality``, not in this project's
reference store). The new model keeps its own representation ``f = φ(x)`` (new/new retrieval uses it
unchanged); compatibility with the old gallery comes from an *affine* map ``B(f) = W f + c`` into the old space
(``W: d → d_old``) that is free to adapt to the training distribution but is penalized once it leaves the
λ-neighbourhood of the (semi-)orthogonal matrices, so ``B`` stays close to an isometry and does not distort what
the new model learned.

Objective of one batch (all terms optional through their weights):

.. math::

    L = \mathrm{CE}(W_{cls} f, y)
      + α\,\mathrm{SupCon}_{new→old}\big(\widehat{B f}, \widehat{φ_{old}(x)}, y; τ\big)
      + β\,\mathrm{CE}(B f\, P^\top, y)
      + γ\,\max(0, \|G(W) - I\|_F - λ)^2,

* ``SupCon_{new→old}``: supervised contrastive loss (Khosla et al., 2020, ``L_out``) with the mapped new
  features as anchors and the frozen old model's features of the same batch as keys; every old feature with
  the anchor's label is a positive (needs ``old_model``);
* the BCT influence term with the frozen old prototypes ``P`` (needs ``old_prototypes``);
* the λ-orthogonality penalty :func:`orthokit.align.lambda_orthogonal.lambda_orthogonality_penalty` on ``W``
  (``G`` the Gram matrix of its smaller side).

Which alignment terms the paper combines, and their weights, could not be checked against its text or code;
this module's choice is stated in ``docs/align/compat.md`` (Fidelity).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from orthokit.align.lambda_compat import LambdaOrthogonal
    >>> _ = torch.manual_seed(0)
    >>> old = nn.Linear(5, 3)
    >>> m = LambdaOrthogonal(nn.Linear(5, 4), feat_dim=4, n_classes=2, old_dim=3, old_model=old, lam=0.1)
    >>> x = torch.randn(6, 5)
    >>> m.new_features(x).shape, m.compatible_features(x).shape, m.extra_parameters()   # W 3·4 + c 3
    (torch.Size([6, 4]), torch.Size([6, 3]), 15)
    >>> float(m.orthogonality_gap()) < 1e-5       # W starts semi-orthogonal
    True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from orthokit.align._compat_common import CompatMethod, check_label_smoothing, check_weight, cross_entropy
from orthokit.align.bct import bct_influence_loss
from orthokit.align.lambda_orthogonal import lambda_orthogonality_gap, lambda_orthogonality_penalty
from orthokit.align.registry import COMPAT_METHODS

__all__ = ["LambdaOrthogonal", "cross_model_supcon"]


def cross_model_supcon(anchors: Tensor, keys: Tensor, labels: Tensor, *, temperature: float = 0.1) -> Tensor:
    r"""Supervised contrastive loss of ``anchors`` against ``keys`` of another model (same batch, same order).

    ``ℓ_i = −(1/|P(i)|) Σ_{j∈P(i)} log softmax_j(⟨â_i, k̂_j⟩/τ)`` with ``P(i) = {j : y_j = y_i}`` (``i`` itself
    included: its own old feature is always a positive); returns ``mean_i ℓ_i``. Both inputs are L2-normalized.

    Args:
        anchors: ``[B, d]`` (e.g. mapped new features).
        keys: ``[B, d]`` (e.g. frozen old features of the same samples).
        labels: ``[B]`` integer labels.
        temperature: τ > 0.

    Example:
        >>> import torch
        >>> k = torch.eye(2)
        >>> round(float(cross_model_supcon(k, k, torch.tensor([0, 1]), temperature=1.0)), 4)  # log(1+e⁻¹)
        0.3133
    """
    if anchors.ndim != 2 or keys.shape != anchors.shape:
        raise ValueError(
            f"anchors and keys must both be [B, d], got {tuple(anchors.shape)} and {tuple(keys.shape)}"
        )
    tau = check_weight(temperature, "temperature", allow_zero=False)
    a = F.normalize(anchors, dim=1)
    k = F.normalize(keys.to(anchors.dtype), dim=1)
    logp = torch.log_softmax(a @ k.T / tau, dim=1)
    pos = (labels.view(-1, 1) == labels.view(1, -1)).to(logp.dtype)
    return (-(pos * logp).sum(dim=1) / pos.sum(dim=1)).mean()


@COMPAT_METHODS.register(
    "lambda_orthogonal",
    extra_dims=False,
    needs_old_classifier=False,
    compatible=True,
    orthogonal_layers=False,
)
class LambdaOrthogonal(CompatMethod):
    """λ-orthogonality (Ricci et al., NeurIPS 2025): new feature kept, affine map ``B`` to the old space.

    Args:
        backbone: ``x -> [B, feat_dim]`` (the new model's trunk).
        feat_dim: backbone output width.
        n_classes: classes of the new training set.
        old_dim: old feature width (``B`` maps ``feat_dim → old_dim``).
        old_prototypes: ``[n_classes, old_dim]`` frozen prototypes; enables the influence term.
        old_model: the frozen old model; enables the contrastive alignment term. At least one of the two.
        lam: tolerance λ of the penalty (``‖G − I‖_F ≤ λ`` is free).
        penalty_weight: γ, weight of the λ-orthogonality penalty.
        align_weight: α, weight of the cross-model supervised contrastive term.
        influence_weight: β, weight of the BCT influence term.
        temperature: τ of the contrastive term (default 0.5: on the conformance suite's synthetic problem
            τ = 0.2…1.0 all satisfied new/old > old/old on 6 of 6 seeds and 0.5 had the widest margin, while
            SupCon's usual 0.1 failed one seed; the paper's value could not be checked).
        label_smoothing: label smoothing of the cross-entropies.
        train_backbone: the alignment terms also train the backbone (default). ``False`` detaches ``f`` in
            them, so ``B`` is fitted to a new model trained by cross-entropy alone (post-hoc adaptation).
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        feat_dim: int,
        n_classes: int,
        old_dim: int,
        old_prototypes: Tensor | None = None,
        old_model: nn.Module | None = None,
        lam: float = 0.1,
        penalty_weight: float = 1.0,
        align_weight: float = 1.0,
        influence_weight: float = 1.0,
        temperature: float = 0.5,
        label_smoothing: float = 0.0,
        train_backbone: bool = True,
    ) -> None:
        self.lam = check_weight(lam, "lam")
        weights = (
            check_weight(penalty_weight, "penalty_weight"),
            check_weight(align_weight, "align_weight"),
            check_weight(influence_weight, "influence_weight"),
        )
        tau = check_weight(temperature, "temperature", allow_zero=False)
        ls = check_label_smoothing(label_smoothing)
        if old_prototypes is None and old_model is None:
            raise ValueError(
                "LambdaOrthogonal needs old_model (contrastive alignment) or old_prototypes (influence)"
            )
        super().__init__(
            backbone,
            feat_dim=feat_dim,
            n_classes=n_classes,
            old_dim=old_dim,
            old_prototypes=old_prototypes,
            old_model=old_model,
        )
        self.penalty_weight, self.align_weight, self.influence_weight = weights
        self.temperature = tau
        self.label_smoothing = ls
        self.train_backbone = bool(train_backbone)
        self.classifier = nn.Linear(feat_dim, n_classes, bias=False)
        self.map = nn.Linear(feat_dim, old_dim, bias=True)
        with torch.no_grad():
            nn.init.orthogonal_(self.map.weight)
            self.map.bias.zero_()

    @property
    def W(self) -> Tensor:
        """The linear part of ``B`` as a ``[feat_dim, old_dim]`` matrix (rows map: ``B(f) = f W + c``)."""
        return self.map.weight.T

    @torch.no_grad()
    def orthogonality_gap(self) -> Tensor:
        """``‖G(W) − I‖_F`` (detached): ``B`` is λ-orthogonal when this is ``≤ lam``."""
        return lambda_orthogonality_gap(self.map.weight.detach())

    def new_features(self, x: Tensor) -> Tensor:
        """The backbone feature ``f``, ``[B, feat_dim]`` (preserved: no map applied)."""
        return self._raw_features(self._check_x(x))

    def compatible_features(self, x: Tensor) -> Tensor:
        """``B(f) = W f + c``, ``[B, old_dim]``: the new query expressed in the old space."""
        return self.map(self.new_features(x))

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        """``CE(W_cls f) + α·SupCon(B f, φ_old) + β·CE(B f Pᵀ) + γ·max(0, ‖G − I‖_F − λ)²``."""
        x, y = self._check_batch(x, y)  # before any forward: a bad batch touches no state
        f = self.new_features(x)
        loss = cross_entropy(self.classifier(f), y, self.label_smoothing)
        mapped = self.map(f if self.train_backbone else f.detach())
        if self.align_weight and self.old_model is not None:
            g = self._old_features(x)
            loss = loss + self.align_weight * cross_model_supcon(mapped, g, y, temperature=self.temperature)
        if self.influence_weight and self.old_prototypes is not None:
            loss = loss + self.influence_weight * bct_influence_loss(
                mapped, self.old_prototypes, y, label_smoothing=self.label_smoothing
            )
        if self.penalty_weight:
            loss = loss + self.penalty_weight * lambda_orthogonality_penalty(self.map.weight, self.lam)
        return loss
