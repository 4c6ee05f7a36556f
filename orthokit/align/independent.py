"""Independent training: the new model learns with cross-entropy only (the baseline that is NOT compatible).

This is the "independent" row of every backward-compatibility table (Shen et al., CVPR 2020, Table 1; OCA and
BT² repositories, ``train_independent.py`` / ``train_backbone.py``): a backbone and a plain linear classifier
trained with cross-entropy, no knowledge of the old model. Its query feature is its own feature, so searching an
old gallery with it compares two unrelated spaces (BT²'s README reports new/old top-1 0.8 % on CIFAR-100).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from orthokit.align.independent import Independent
    >>> _ = torch.manual_seed(0)
    >>> m = Independent(nn.Linear(8, 6), feat_dim=6, n_classes=4, old_dim=6)
    >>> x, y = torch.randn(10, 8), torch.randint(0, 4, (10,))
    >>> m.loss(x, y).ndim, m.compatible_features(x).shape, m.extra_parameters()
    (0, torch.Size([10, 6]), 0)
"""

from __future__ import annotations

from torch import Tensor, nn

from orthokit.align._compat_common import CompatMethod, check_label_smoothing, cross_entropy
from orthokit.align.registry import COMPAT_METHODS

__all__ = ["Independent"]


@COMPAT_METHODS.register("independent", extra_dims=False, needs_old_classifier=False, compatible=False)
class Independent(CompatMethod):
    """Cross-entropy on a plain linear classifier; ``compatible_features = new_features`` (not compatible).

    Args:
        backbone: ``x -> [B, feat_dim]`` (the new model's trunk).
        feat_dim: backbone output width.
        n_classes: number of classes of the new training set.
        old_dim: old feature width (kept for the shared interface; unused).
        old_prototypes: ignored (accepted for the shared interface).
        old_model: ignored (accepted for the shared interface; stored frozen if given).
        label_smoothing: label smoothing of the cross-entropy (default 0).
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
        label_smoothing: float = 0.0,
    ) -> None:
        ls = check_label_smoothing(label_smoothing)
        super().__init__(
            backbone,
            feat_dim=feat_dim,
            n_classes=n_classes,
            old_dim=old_dim,
            old_prototypes=old_prototypes,
            old_model=old_model,
        )
        self.label_smoothing = ls
        self.classifier = nn.Linear(feat_dim, n_classes, bias=False)

    def new_features(self, x: Tensor) -> Tensor:
        """The backbone feature ``[B, feat_dim]``."""
        return self._raw_features(self._check_x(x))

    def compatible_features(self, x: Tensor) -> Tensor:
        """The same feature as :meth:`new_features` (independent training makes no compatibility effort)."""
        return self.new_features(x)

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        """``CE(classifier(φ(x)), y)``."""
        x, y = self._check_batch(x, y)  # before any forward: a bad batch touches no state
        f = self.new_features(x)
        return cross_entropy(self.classifier(f), y, self.label_smoothing)
