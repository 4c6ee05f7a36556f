r"""BT²: backward-compatible training with basis transformations that add a few extra dimensions.

Zhou, Li, Shrivastava, Zhao, Torralba, Tian, Lim, "BT²: Backward-compatible Training with Basis Transformation",
ICCV 2023 (arXiv 2211.03989). A *basis transformation* (BT) is a learnable orthonormal map: it keeps every bit of
information of its input. BT² uses two of them to splice a backward-compatible part and a "new" part into one
representation that is only ``k`` dimensions wider than the new model's (paper Fig. 1; official code
``YifeiZhou02/BT-2`` ``models/resnet.py`` ``ResNet_ortho``, restated in ``z3n0e/OCA`` ``ResNet_BT2``).

Structure, with ``r = φ(x) ∈ R^{d}`` the backbone feature (``d = feat_dim``), ``d_old`` the old width and ``k``
the extra dimensions:

* new branch ``b = r/‖r‖``, read by the new classifier and (optionally) matched to an independently trained new
  model's feature ``φ'_new`` by cosine;
* old branch ``a = normalize(A · relu(r) + c)`` (``A: d → d_old``, with bias);
* splice: ``z = [normalize(a_{1:k}),\; O_p(C · b)] ∈ R^{k + d}`` with ``O_p ∈ O(d)``, ``C = 2``;
* compatible part ``h = O_old(z_{1:d_old})`` with ``O_old ∈ O(d_old)``, trained against the old space;
* new feature ``φ_new = [h,\; z_{d_old+1:k+d}] ∈ R^{d + k}``; its first ``d_old`` coordinates are ``h``.

Loss (OCA repo ``trainers/BT2_trainer.py`` with the ``cifar100_BT2.yaml`` weights; λ₁ = 1, λ₂ = 10, λ₃ = 5):

.. math::

    L = \mathrm{CE}(W b, y) + λ_2\,\mathrm{CE}(\hat h P^\top, y) + λ_3\,(1 - \cos(φ_{old}, h))
        + λ_1\,(1 - \cos(φ'_{new}, b)).

The last term needs an independently trained new model (``independent_model=``); without it the term is dropped
and ``b`` is trained by the classifier alone. The ``λ₃`` term needs ``old_model``. Both orthonormal layers use
``torch.nn.utils.parametrizations.orthogonal`` as the reference code does.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from orthokit.align.bt2 import BT2
    >>> _ = torch.manual_seed(0)
    >>> P = torch.nn.functional.normalize(torch.randn(4, 6), dim=1)
    >>> m = BT2(nn.Linear(5, 6), feat_dim=6, n_classes=4, old_dim=6, old_prototypes=P, extra_dims=2)
    >>> x = torch.randn(3, 5)
    >>> m.new_features(x).shape, m.compatible_features(x).shape   # d + k, d_old
    (torch.Size([3, 8]), torch.Size([3, 6]))
    >>> m.extra_parameters()   # A (6·6 + 6) + O_p (6·6) + O_old (6·6)
    114
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import orthogonal

from orthokit.align._compat_common import CompatMethod, check_label_smoothing, check_weight, cross_entropy
from orthokit.align.bct import bct_influence_loss
from orthokit.align.registry import COMPAT_METHODS

__all__ = ["BT2"]


@COMPAT_METHODS.register(
    "bt2", extra_dims=True, needs_old_classifier=True, compatible=True, orthogonal_layers=True
)
class BT2(CompatMethod):
    """BT² (Zhou et al., ICCV 2023): two orthonormal basis transformations splice old-compatible and new parts.

    Args:
        backbone: ``x -> [B, feat_dim]`` (the new model's trunk; ``feat_dim = d``).
        feat_dim: backbone output width ``d``; the new feature has ``d + extra_dims`` dimensions.
        n_classes: classes of the new training set.
        old_dim: old feature width ``d_old`` (needs ``extra_dims <= old_dim <= feat_dim + extra_dims``).
        old_prototypes: ``[n_classes, old_dim]`` frozen prototypes ``P`` (required).
        old_model: the frozen old model; enables the ``λ₃`` cosine term (recommended).
        extra_dims: ``k`` (reference: 32).
        C: scale of the new branch before ``O_p`` (reference config: 2).
        ce_weight: weight of the new-classifier cross-entropy (reference: 1).
        influence_weight: λ₂, BCT influence loss on ``ĥ`` (reference: 10).
        old_cosine_weight: λ₃, ``1 − cos(φ_old, h)`` (reference: 5; needs ``old_model``).
        new_cosine_weight: λ₁, ``1 − cos(φ'_new, b)`` (reference: 1; needs ``independent_model``).
        label_smoothing: label smoothing of both cross-entropies (reference config: 0.1).
        independent_model: an independently trained new model ``x -> [B, feat_dim]`` (frozen), or ``None``.
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
        extra_dims: int = 32,
        C: float = 2.0,
        ce_weight: float = 1.0,
        influence_weight: float = 10.0,
        old_cosine_weight: float = 5.0,
        new_cosine_weight: float = 1.0,
        label_smoothing: float = 0.1,
        independent_model: nn.Module | None = None,
    ) -> None:
        weights = (
            check_weight(ce_weight, "ce_weight"),
            check_weight(influence_weight, "influence_weight"),
            check_weight(old_cosine_weight, "old_cosine_weight"),
            check_weight(new_cosine_weight, "new_cosine_weight"),
        )
        scale = check_weight(C, "C", allow_zero=False)
        ls = check_label_smoothing(label_smoothing)
        if isinstance(extra_dims, bool) or not isinstance(extra_dims, int) or extra_dims < 1:
            raise ValueError(f"extra_dims must be an int >= 1, got {extra_dims!r}")
        if isinstance(old_dim, int) and isinstance(feat_dim, int):
            if extra_dims > old_dim:
                raise ValueError(f"extra_dims={extra_dims} must be <= old_dim={old_dim}")
            if old_dim > feat_dim + extra_dims:
                raise ValueError(
                    f"old_dim={old_dim} must be <= feat_dim + extra_dims = {feat_dim + extra_dims}"
                )
        if independent_model is not None:
            if not isinstance(independent_model, nn.Module):
                raise TypeError(
                    f"independent_model must be an nn.Module, got {type(independent_model).__name__}"
                )
            if {id(p) for p in backbone.parameters()} & {id(p) for p in independent_model.parameters()}:
                raise ValueError("independent_model shares parameters with backbone (pass a frozen copy)")
        super().__init__(
            backbone,
            feat_dim=feat_dim,
            n_classes=n_classes,
            old_dim=old_dim,
            old_prototypes=old_prototypes,
            old_model=old_model,
        )
        self.ce_weight, self.influence_weight, self.old_cosine_weight, self.new_cosine_weight = weights
        self.C = scale
        self.label_smoothing = ls
        self.extra_dims = extra_dims
        self.old_branch = nn.Linear(feat_dim, old_dim, bias=True)
        self.ortho_p = orthogonal(nn.Linear(feat_dim, feat_dim, bias=False))
        self.ortho_old = orthogonal(nn.Linear(old_dim, old_dim, bias=False))
        self.classifier = nn.Linear(feat_dim, n_classes, bias=False)
        self.independent_model = independent_model
        if independent_model is not None:
            independent_model.requires_grad_(False)
            independent_model.eval()

    def train(self, mode: bool = True) -> BT2:
        """Training mode for the trainable parts; the frozen old and independent models stay in ``eval``."""
        super().train(mode)
        if self.independent_model is not None:
            self.independent_model.eval()
        return self

    def frozen_modules(self) -> list[nn.Module]:
        """``old_model`` and ``independent_model`` (those given): frozen, excluded from the extra parameters."""
        mods = super().frozen_modules()
        return mods + ([self.independent_model] if self.independent_model is not None else [])

    def orthogonal_matrices(self) -> dict[str, Tensor]:
        """The two basis transformations: ``{"O_p": [d, d], "O_old": [d_old, d_old]}``."""
        return {"O_p": self.ortho_p.weight, "O_old": self.ortho_old.weight}

    def _parts(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(b, h, new_feature)`` for a batch."""
        r = self._raw_features(self._check_x(x))
        b = F.normalize(r, dim=1)
        a = F.normalize(self.old_branch(F.relu(r)), dim=1)
        z = torch.cat([F.normalize(a[:, : self.extra_dims], dim=1), self.ortho_p(self.C * b)], dim=1)
        h = self.ortho_old(z[:, : self.old_dim])
        return b, h, torch.cat([h, z[:, self.old_dim :]], dim=1)

    def new_features(self, x: Tensor) -> Tensor:
        """``φ_new = [h, z_{d_old+1:}]``, ``[B, feat_dim + extra_dims]`` (the reference's new/new feature)."""
        return self._parts(x)[2]

    def compatible_features(self, x: Tensor) -> Tensor:
        """``h``, the first ``old_dim`` coordinates of :meth:`new_features`."""
        return self._parts(x)[1]

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        """``ce·CE(W b) + λ₂·CE(ĥ Pᵀ) + λ₃·(1 − cos(φ_old, h)) + λ₁·(1 − cos(φ'_new, b))``."""
        x, y = self._check_batch(x, y)  # before any forward: a bad batch touches no state
        b, h, _ = self._parts(x)
        h_hat = F.normalize(h, dim=1)
        loss = b.new_zeros(())
        if self.ce_weight:
            loss = loss + self.ce_weight * cross_entropy(self.classifier(b), y, self.label_smoothing)
        if self.influence_weight:
            P = self._prototypes()
            loss = loss + self.influence_weight * bct_influence_loss(
                h_hat, P, y, label_smoothing=self.label_smoothing
            )
        if self.old_cosine_weight and self.old_model is not None:
            g = F.normalize(self._old_features(x).to(h.dtype), dim=1)
            loss = loss + self.old_cosine_weight * (1.0 - (g * h_hat).sum(dim=1).mean())
        if self.new_cosine_weight and self.independent_model is not None:
            with torch.no_grad():
                p = self.independent_model(x)
            if not isinstance(p, Tensor) or p.ndim != 2 or p.shape[1] != self.feat_dim:
                shape = tuple(p.shape) if isinstance(p, Tensor) else type(p).__name__
                raise ValueError(
                    f"independent_model must return [B, feat_dim={self.feat_dim}] features, got {shape}"
                )
            p = F.normalize(p.detach().to(b.dtype), dim=1)
            loss = loss + self.new_cosine_weight * (1.0 - (p * b).sum(dim=1).mean())
        return loss
