r"""BCT: backward-compatible training with the frozen old classifier as an "influence loss".

Shen, Xiong, Xia, Soatto, "Towards Backward-Compatible Representation Learning", CVPR 2020 (arXiv 2003.11942).
The new model ``φ_new`` is trained with its own classifier *and* with the old model's classifier ``w_old``
(frozen) applied to the new feature:

.. math::

    L = \mathrm{CE}(w_{new}\,φ_{new}(x), y) + λ\,\mathrm{CE}(w_{old}\,φ_{new}(x), y), \qquad λ = 1,

so the new feature must stay classifiable by the old classifier, i.e. live in the old feature space. Classes the
old model never saw get a synthesized old-classifier row: the (L2-normalized) mean of the *old* model's features
of that class (:func:`synthesize_prototypes`; paper §3.3). When the new feature is wider than the old one
(``feat_dim > old_dim``), the influence loss reads the first ``old_dim`` coordinates, which is also how the
ml-fct evaluation compares a wide query with an old gallery (truncation to ``min(d_q, d_g)``).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from orthokit.align.bct import BCT, synthesize_prototypes
    >>> _ = torch.manual_seed(0)
    >>> old_feats, labels = torch.randn(40, 3), torch.arange(40) % 4       # old model's features, 4 classes
    >>> W_old = torch.randn(2, 3)                                          # old classifier saw classes 0, 1
    >>> P = synthesize_prototypes(old_feats, labels, W_old, n_classes=4)
    >>> bool(torch.equal(P[:2], W_old)), [round(float(n), 4) for n in P[2:].norm(dim=1)]
    (True, [1.0, 1.0])
    >>> m = BCT(nn.Linear(5, 3), feat_dim=3, n_classes=4, old_dim=3, old_prototypes=P)
    >>> m.loss(torch.randn(8, 5), torch.arange(8) % 4).ndim, m.extra_parameters()
    (0, 0)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from orthokit.align._compat_common import CompatMethod, check_label_smoothing, check_weight, cross_entropy
from orthokit.align.registry import COMPAT_METHODS

__all__ = ["BCT", "synthesize_prototypes", "bct_influence_loss"]


def synthesize_prototypes(
    old_features: Tensor,
    labels: Tensor,
    old_classifier_weight: Tensor | None,
    n_classes: int,
    *,
    normalize_features: bool = True,
    match_norm: bool = False,
) -> Tensor:
    """Old-classifier rows for every class of the new training set (BCT §3.3).

    Rows ``0 … n_old−1`` are the old classifier's rows (``old_classifier_weight``, ``[n_old, old_dim]``; the
    classes the old model was trained on are assumed to be labelled ``0 … n_old−1``); every other class ``c``
    gets ``normalize(mean{normalize(old_features[i]) : labels[i] = c})``, the L2-normalized mean of the
    L2-normalized *old-model* features of that class (its spherical centroid: the direction cosine retrieval
    ranks by). ``old_classifier_weight=None`` synthesizes every row this way, which is what the ml-fct/OCA/BT²
    code's "pseudo classifier" does (the mean of its normalized old features), up to the final normalization.

    Args:
        old_features: ``[N, old_dim]`` features of the OLD model on (part of) the new training set.
        labels: ``[N]`` integer labels in ``[0, n_classes)``.
        old_classifier_weight: ``[n_old, old_dim]`` old classifier weight (``nn.Linear.weight``), or ``None``.
        n_classes: number of classes of the new training set (``>= n_old``).
        normalize_features: L2-normalize each old feature before averaging (default). ``False`` averages the
            raw features (measured on MNIST: the raw-mean prototype of digits 5–9 retrieves its own digit from
            an old gallery 83 % of the time, the normalized-mean one 100 %; ``docs/align/compat.md``).
        match_norm: rescale the synthesized rows to the mean norm of the old classifier's rows (default
            ``False``: unit norm, as BCT states).

    Returns:
        ``[n_classes, old_dim]`` tensor in ``old_features``' dtype, detached.

    Raises:
        ValueError: shapes disagree, a label is out of range, or a class needing a synthesized row has no
            sample in ``old_features``.
    """
    if not isinstance(old_features, Tensor) or old_features.ndim != 2 or not old_features.is_floating_point():
        raise ValueError("old_features must be a 2-D floating tensor [N, old_dim]")
    if (
        not isinstance(labels, Tensor)
        or labels.ndim != 1
        or labels.is_floating_point()
        or labels.is_complex()
    ):
        raise ValueError("labels must be a 1-D integer tensor [N]")
    if labels.shape[0] != old_features.shape[0]:
        raise ValueError(
            f"labels has {labels.shape[0]} entries but old_features has {old_features.shape[0]} rows"
        )
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1:
        raise ValueError(f"n_classes must be a positive int, got {n_classes!r}")
    d = old_features.shape[1]
    if old_classifier_weight is None:
        W = old_features.new_zeros(0, d)
    else:
        if not isinstance(old_classifier_weight, Tensor) or old_classifier_weight.ndim != 2:
            raise ValueError("old_classifier_weight must be a 2-D tensor [n_old, old_dim] or None")
        if old_classifier_weight.shape[1] != d:
            raise ValueError(
                f"old_classifier_weight has {old_classifier_weight.shape[1]} columns but old_features has {d}"
            )
        W = old_classifier_weight.detach().to(old_features.dtype)
    n_old = W.shape[0]
    if n_old > n_classes:
        raise ValueError(f"old_classifier_weight has {n_old} rows, more than n_classes={n_classes}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes})")
    feats = F.normalize(old_features.detach(), dim=1) if normalize_features else old_features.detach()
    rows = [W]
    for c in range(n_old, n_classes):
        mask = labels == c
        if not bool(mask.any()):
            raise ValueError(f"class {c} has no old feature to synthesize its prototype from")
        rows.append(F.normalize(feats[mask].mean(dim=0), dim=0).unsqueeze(0))
    P = torch.cat(rows, dim=0)
    if match_norm and 0 < n_old < n_classes:
        P[n_old:] = P[n_old:] * W.norm(dim=1).mean()
    return P


def bct_influence_loss(
    features: Tensor, prototypes: Tensor, labels: Tensor, *, label_smoothing: float = 0.0
) -> Tensor:
    """BCT influence loss ``CE(features[:, :old_dim] · prototypesᵀ, labels)`` (mean over the batch).

    Args:
        features: ``[B, d]`` new features, ``d >= old_dim`` (the first ``old_dim`` coordinates are used).
        prototypes: ``[n_classes, old_dim]`` frozen old-classifier rows (no bias).
        labels: ``[B]`` integer labels.
        label_smoothing: label smoothing of the cross-entropy.

    Example:
        >>> import torch
        >>> P = torch.eye(2)
        >>> round(float(bct_influence_loss(torch.tensor([[3.0, 0.0]]), P, torch.tensor([0]))), 4)  # log(1+e⁻³)
        0.0486
    """
    k = prototypes.shape[1]
    if features.ndim != 2 or features.shape[1] < k:
        raise ValueError(f"features must be [B, d] with d >= old_dim={k}, got {tuple(features.shape)}")
    return cross_entropy(features[:, :k] @ prototypes.to(features.dtype).T, labels, label_smoothing)


@COMPAT_METHODS.register("bct", extra_dims=False, needs_old_classifier=True, compatible=True)
class BCT(CompatMethod):
    """BCT (Shen et al., CVPR 2020): ``CE(new classifier) + λ·CE(old prototypes on the new feature)``.

    Args:
        backbone: ``x -> [B, feat_dim]`` (the new model's trunk), ``feat_dim >= old_dim``.
        feat_dim: backbone output width.
        n_classes: classes of the new training set.
        old_dim: old feature width.
        old_prototypes: ``[n_classes, old_dim]`` frozen old-classifier rows (required; new classes via
            :func:`synthesize_prototypes`).
        old_model: unused by the loss (accepted for the shared interface; stored frozen if given).
        influence_weight: λ (paper: 1).
        label_smoothing: label smoothing of both cross-entropies (paper: none; ml-fct configs: 0.1).
        normalize: L2-normalize the backbone feature before both classifiers (the ml-fct models'
            ``norm_feature=True``; paper and default: ``False``).
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
        influence_weight: float = 1.0,
        label_smoothing: float = 0.0,
        normalize: bool = False,
    ) -> None:
        w = check_weight(influence_weight, "influence_weight")
        ls = check_label_smoothing(label_smoothing)
        if isinstance(feat_dim, int) and isinstance(old_dim, int) and feat_dim < old_dim:
            raise ValueError(f"BCT needs feat_dim >= old_dim, got feat_dim={feat_dim} < old_dim={old_dim}")
        super().__init__(
            backbone,
            feat_dim=feat_dim,
            n_classes=n_classes,
            old_dim=old_dim,
            old_prototypes=old_prototypes,
            old_model=old_model,
        )
        self.influence_weight = w
        self.label_smoothing = ls
        self.normalize = bool(normalize)
        self.classifier = nn.Linear(feat_dim, n_classes, bias=False)

    def new_features(self, x: Tensor) -> Tensor:
        """The backbone feature (L2-normalized when ``normalize=True``), ``[B, feat_dim]``."""
        f = self._raw_features(self._check_x(x))
        return F.normalize(f, dim=1) if self.normalize else f

    def compatible_features(self, x: Tensor) -> Tensor:
        """The first ``old_dim`` coordinates of :meth:`new_features` (the part the influence loss trains)."""
        return self.new_features(x)[:, : self.old_dim]

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        """``CE(W_new f, y) + λ·CE(P f[:, :old_dim], y)``."""
        x, y = self._check_batch(x, y)  # before any forward: a bad batch touches no state
        f = self.new_features(x)
        loss = cross_entropy(self.classifier(f), y, self.label_smoothing)
        if self.influence_weight:
            loss = loss + self.influence_weight * bct_influence_loss(
                f, self._prototypes(), y, label_smoothing=self.label_smoothing
            )
        return loss
