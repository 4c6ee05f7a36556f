r"""OCA: Orthogonal Compatible Aligned representations (an orthogonal transformation layer feeds the classifier).

Ricci, Biondi, Pernici, Del Bimbo, "Backward-Compatible Aligned Representations via an Orthogonal Transformation
Layer", ECCV Workshops 2024 (arXiv 2408.08793; official code ``z3n0e/OCA``: ``models/resnet.py`` ``ResNet_OCA``,
``trainers/OCA_trainer.py``). The backbone emits ``d_old + k`` dimensions, L2-normalized: ``f̂ = φ(x)/‖φ(x)‖``.

* the first ``d_old`` coordinates ``f̂_old`` are the backward-compatible feature (searched against the old
  gallery);
* the whole ``f̂`` goes through an orthogonal layer ``O`` (``x ↦ Q x + b``, ``Q ∈ O(d_old + k)``) into the new
  classifier ``W``, so the classifier sees the feature up to an isometry and the extra ``k`` dimensions are free
  to carry what the old space cannot;
* loss (OCA_trainer.py):

.. math::

    L = 5\,\mathrm{CE}(W O(\hat f), y) + 10\,\mathrm{CE}(\widehat{f_{old}} P^\top, y)
        + 5\,\big(1 - \cos(P_y, \widehat{f_{old}})\big),

  with ``P`` the frozen old prototypes and ``\widehat{f_{old}} = f̂_old/‖f̂_old‖``; the second term is BCT's
  influence loss, the third pulls the compatible part onto its class prototype.

The orthogonal layer uses ``torch.nn.utils.parametrizations.orthogonal`` (matrix-exponential map of a skew
matrix), as the reference code does: ``Q`` is orthogonal to float precision after every optimizer step, and the
same parametrization keeps parity with the reference training dynamics. The reference layer is an
``nn.Linear`` *with bias*, i.e. an isometry plus a translation (pitfall F10); ``bias=True`` (default) keeps it,
``bias=False`` makes ``O`` a linear orthogonal map.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from orthokit.align.oca import OCA
    >>> _ = torch.manual_seed(0)
    >>> P = torch.nn.functional.normalize(torch.randn(4, 3), dim=1)
    >>> m = OCA(nn.Linear(6, 5), feat_dim=5, n_classes=4, old_dim=3, old_prototypes=P)   # k = 2 extra dims
    >>> x = torch.randn(8, 6)
    >>> m.new_features(x).shape, m.compatible_features(x).shape, m.extra_parameters()   # 5·5 + 5
    (torch.Size([8, 5]), torch.Size([8, 3]), 30)
    >>> Q = m.orthogonal_matrix()
    >>> bool(torch.allclose(Q @ Q.T, torch.eye(5), atol=1e-5))
    True
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import orthogonal

from orthokit.align._compat_common import CompatMethod, check_label_smoothing, check_weight, cross_entropy
from orthokit.align.bct import bct_influence_loss
from orthokit.align.registry import COMPAT_METHODS

__all__ = ["OCA"]


@COMPAT_METHODS.register(
    "oca", extra_dims=True, needs_old_classifier=True, compatible=True, orthogonal_layers=True
)
class OCA(CompatMethod):
    """OCA (Ricci et al., ECCV-W 2024): normalized ``d_old + k`` feature, orthogonal layer before the classifier.

    Args:
        backbone: ``x -> [B, feat_dim]``, ``feat_dim = old_dim + k`` (``k >= 0``; the paper uses 128 + 32).
        feat_dim: backbone output width.
        n_classes: classes of the new training set.
        old_dim: old feature width.
        old_prototypes: ``[n_classes, old_dim]`` frozen prototypes ``P`` (required).
        old_model: unused by the loss (accepted for the shared interface; stored frozen if given).
        bias: the orthogonal layer has a bias (reference code: yes).
        ce_weight: weight of the new-classifier cross-entropy (reference: 5).
        influence_weight: weight of the BCT influence loss on ``f̂_old`` (reference: 10).
        cosine_weight: weight of ``1 − cos(P_y, f̂_old)`` (reference: 5).
        label_smoothing: label smoothing of both cross-entropies (reference config: 0.1).
    """

    needs_prototypes = True

    def __init__(
        self,
        backbone: nn.Module,
        *,
        feat_dim: int,
        n_classes: int,
        old_dim: int,
        old_prototypes: Tensor | None = None,
        old_model: nn.Module | None = None,
        bias: bool = True,
        ce_weight: float = 5.0,
        influence_weight: float = 10.0,
        cosine_weight: float = 5.0,
        label_smoothing: float = 0.1,
    ) -> None:
        weights = (
            check_weight(ce_weight, "ce_weight"),
            check_weight(influence_weight, "influence_weight"),
            check_weight(cosine_weight, "cosine_weight"),
        )
        ls = check_label_smoothing(label_smoothing)
        if isinstance(feat_dim, int) and isinstance(old_dim, int) and feat_dim < old_dim:
            raise ValueError(f"OCA needs feat_dim = old_dim + k >= old_dim, got {feat_dim} < {old_dim}")
        super().__init__(
            backbone,
            feat_dim=feat_dim,
            n_classes=n_classes,
            old_dim=old_dim,
            old_prototypes=old_prototypes,
            old_model=old_model,
        )
        self.ce_weight, self.influence_weight, self.cosine_weight = weights
        self.label_smoothing = ls
        self.extra_dims = feat_dim - old_dim
        self.orth = orthogonal(nn.Linear(feat_dim, feat_dim, bias=bool(bias)))
        self.classifier = nn.Linear(feat_dim, n_classes, bias=False)

    def orthogonal_matrix(self) -> Tensor:
        """The current ``Q`` of the orthogonal layer (``[feat_dim, feat_dim]``, ``QQᵀ = I``)."""
        return self.orth.weight

    def new_features(self, x: Tensor) -> Tensor:
        """``f̂ = normalize(φ(x))``, ``[B, old_dim + k]`` (the reference's new/new feature)."""
        return F.normalize(self._raw_features(self._check_x(x)), dim=1)

    def compatible_features(self, x: Tensor) -> Tensor:
        """``f̂[:, :old_dim]``, the backward-compatible part (what ml-fct's truncation compares)."""
        return self.new_features(x)[:, : self.old_dim]

    def classifier_features(self, x: Tensor) -> Tensor:
        """``O(f̂)``, the orthogonally transformed feature the new classifier reads."""
        return self.orth(self.new_features(x))

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        """``ce·CE(W O(f̂)) + infl·CE(normalize(f̂_old) Pᵀ) + cos·mean(1 − cos(P_y, f̂_old))``."""
        x, y = self._check_batch(x, y)  # before any forward: a bad batch touches no state
        f = self.new_features(x)
        P = self._prototypes().to(f.dtype)
        old_part = F.normalize(f[:, : self.old_dim], dim=1)
        loss = f.new_zeros(())
        if self.ce_weight:
            loss = loss + self.ce_weight * cross_entropy(
                self.classifier(self.orth(f)), y, self.label_smoothing
            )
        if self.influence_weight:
            loss = loss + self.influence_weight * bct_influence_loss(
                old_part, P, y, label_smoothing=self.label_smoothing
            )
        if self.cosine_weight:
            cos = F.cosine_similarity(P[y], old_part, dim=1)
            loss = loss + self.cosine_weight * (1.0 - cos).mean()
        return loss
