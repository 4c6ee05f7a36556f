"""Shared base of the backward-compatible training methods (``COMPAT_METHODS``): one interface, checked inputs.

Every method is an ``nn.Module`` built as ``Method(backbone, feat_dim=, n_classes=, old_dim=, old_prototypes=,
old_model=, **cfg)`` and exposes ``loss(x, y)`` (the whole training objective of one batch),
``new_features(x)`` (new/new retrieval), ``compatible_features(x)`` (the new-model query compared with an OLD
gallery) and ``extra_parameters()`` (trainable parameters beyond the backbone and one plain
``feat_dim → n_classes`` linear classifier without bias).

Frozen parts: ``old_prototypes`` is stored as a buffer (never a parameter, so no optimizer sees it) and
``old_model`` is frozen (``requires_grad_(False)``) and kept in ``eval()`` mode even when the method is put in
``train()`` mode; its features are computed under ``torch.no_grad()``.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from orthokit.align.independent import Independent
    >>> m = Independent(nn.Linear(6, 4), feat_dim=4, n_classes=3, old_dim=4)
    >>> m.new_features(torch.randn(5, 6)).shape, m.extra_parameters()
    (torch.Size([5, 4]), 0)
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CompatMethod", "check_label_smoothing", "check_weight", "cross_entropy"]


def _check_dim(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def check_weight(value: Any, name: str, *, allow_zero: bool = True) -> float:
    """A finite real ``>= 0`` (``> 0`` when ``allow_zero`` is False) loss weight or hyper-parameter."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value}")
    return v


def check_label_smoothing(value: Any) -> float:
    """Label smoothing in ``[0, 1)`` (``check_weight`` plus the upper bound)."""
    ls = check_weight(value, "label_smoothing")
    if ls >= 1:
        raise ValueError(f"label_smoothing must be < 1, got {value}")
    return ls


def cross_entropy(logits: Tensor, y: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy with optional label smoothing (``(1−s)·NLL + s·mean_c(−log p_c)``, as ml-fct)."""
    return F.cross_entropy(logits, y, label_smoothing=label_smoothing)


class CompatMethod(nn.Module):
    """Base class: validates the shared constructor arguments and the per-batch inputs.

    Subclasses set :attr:`classifier` (``nn.Linear(feat_dim, n_classes, bias=False)``) and implement
    ``loss``, ``new_features`` and ``compatible_features``.
    """

    #: the method cannot run without ``old_prototypes``
    needs_prototypes: bool = False
    #: the method cannot run without ``old_model``
    needs_old_model: bool = False

    def __init__(
        self,
        backbone: nn.Module,
        *,
        feat_dim: int,
        n_classes: int,
        old_dim: int,
        old_prototypes: Tensor | None = None,
        old_model: nn.Module | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"{name}: backbone must be an nn.Module, got {type(backbone).__name__}")
        self.feat_dim = _check_dim(feat_dim, "feat_dim")
        self.n_classes = _check_dim(n_classes, "n_classes")
        self.old_dim = _check_dim(old_dim, "old_dim")
        if self.n_classes < 2:
            raise ValueError(f"{name}: n_classes must be >= 2, got {n_classes}")
        if old_prototypes is None:
            if self.needs_prototypes:
                raise ValueError(
                    f"{name} needs old_prototypes [n_classes, old_dim] (see bct.synthesize_prototypes)"
                )
        else:
            if not isinstance(old_prototypes, Tensor):
                raise TypeError(f"old_prototypes must be a torch.Tensor, got {type(old_prototypes).__name__}")
            if tuple(old_prototypes.shape) != (self.n_classes, self.old_dim):
                raise ValueError(
                    f"old_prototypes must have shape [n_classes, old_dim] = [{self.n_classes}, {self.old_dim}],"
                    f" got {tuple(old_prototypes.shape)}"
                )
            if not old_prototypes.is_floating_point() or not bool(torch.isfinite(old_prototypes).all()):
                raise ValueError("old_prototypes must be a finite floating tensor")
        if old_model is None:
            if self.needs_old_model:
                raise ValueError(
                    f"{name} needs old_model (x -> [B, old_dim] features of the frozen old model)"
                )
        else:
            if not isinstance(old_model, nn.Module):
                raise TypeError(f"old_model must be an nn.Module, got {type(old_model).__name__}")
            shared = {id(p) for p in backbone.parameters()} & {id(p) for p in old_model.parameters()}
            if shared:
                raise ValueError(
                    "old_model shares parameters with backbone; freezing it would freeze the new model too "
                    "(pass a copy: copy.deepcopy(old_model))"
                )
        # validation done: only now touch state
        self.backbone = backbone
        if old_prototypes is not None:
            self.register_buffer("old_prototypes", old_prototypes.detach().clone())
        else:
            self.old_prototypes: Tensor | None = None
        self.old_model = old_model
        if old_model is not None:
            old_model.requires_grad_(False)
            old_model.eval()

    # ----------------------------------------------------------------- mode handling
    def train(self, mode: bool = True) -> CompatMethod:
        """Set training mode on everything but the frozen ``old_model`` (always ``eval``)."""
        super().train(mode)
        if self.old_model is not None:
            self.old_model.eval()
        return self

    # ----------------------------------------------------------------- checked pieces
    def _raw_features(self, x: Tensor) -> Tensor:
        f = self.backbone(x)
        if not isinstance(f, Tensor) or f.shape != (x.shape[0], self.feat_dim):
            shape = tuple(f.shape) if isinstance(f, Tensor) else type(f).__name__
            raise ValueError(
                f"backbone must return [B={x.shape[0]}, feat_dim={self.feat_dim}] features, got {shape}"
            )
        return f

    def _old_features(self, x: Tensor) -> Tensor:
        assert self.old_model is not None
        with torch.no_grad():
            g = self.old_model(x)
        if not isinstance(g, Tensor) or g.ndim != 2 or g.shape[1] != self.old_dim:
            shape = tuple(g.shape) if isinstance(g, Tensor) else type(g).__name__
            raise ValueError(f"old_model must return [B, old_dim={self.old_dim}] features, got {shape}")
        return g.detach()

    def _check_labels(self, y: Any, batch: int) -> Tensor:
        if not isinstance(y, Tensor) or y.ndim != 1 or y.dtype not in (torch.int64, torch.int32):
            desc = f"{y.dtype} {tuple(y.shape)}" if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(f"labels y must be a 1-D integer tensor, got {desc}")
        if y.shape[0] != batch:
            raise ValueError(f"labels y has {y.shape[0]} entries for a batch of {batch}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.n_classes):
            raise ValueError(
                f"labels y must lie in [0, {self.n_classes}), got [{int(y.min())}, {int(y.max())}]"
            )
        return y.long()

    def _prototypes(self) -> Tensor:
        if self.old_prototypes is None:
            raise ValueError(f"{type(self).__name__} was built without old_prototypes")
        return self.old_prototypes

    # ----------------------------------------------------------------- interface
    def loss(self, x: Tensor, y: Tensor) -> Tensor:  # pragma: no cover - abstract
        """The whole training objective for one batch (scalar)."""
        raise NotImplementedError

    def new_features(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        """The new model's feature (new/new retrieval)."""
        raise NotImplementedError

    def compatible_features(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        """New-model query feature compared with the OLD gallery."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """Alias of :meth:`new_features` (so the method can be passed where a feature extractor is expected)."""
        return self.new_features(x)

    def frozen_modules(self) -> list[nn.Module]:
        """The frozen models this method was given (``old_model``; BT² adds ``independent_model``).

        They are excluded from :meth:`extra_parameters` by identity and kept in ``eval`` by :meth:`train`.
        """
        return [self.old_model] if self.old_model is not None else []

    def extra_parameters(self) -> int:
        """Trainable parameters beyond the backbone and one plain ``feat_dim × n_classes`` linear classifier.

        Counts stored trainable elements (for a ``torch`` orthogonal parametrization of an ``n×n`` weight that
        is the ``n²`` elements of its unconstrained ``original``, although the manifold has ``n(n−1)/2``
        degrees of freedom). The parameters of the backbone, the classifier and the frozen models of
        :meth:`frozen_modules` are excluded by identity (whatever their attribute names); the
        ``old_prototypes`` buffer is not a parameter.
        """
        skip = {id(p) for p in self.backbone.parameters()}
        skip |= {id(p) for p in self.classifier.parameters()}
        for mod in self.frozen_modules():
            skip |= {id(p) for p in mod.parameters()}
        return sum(p.numel() for p in self.parameters() if p.requires_grad and id(p) not in skip)

    def _check_x(self, x: Any) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim < 1 or x.shape[0] == 0:
            raise ValueError(f"x must be a non-empty batch, got shape {tuple(x.shape)}")
        return x

    def _check_batch(self, x: Any, y: Any) -> tuple[Tensor, Tensor]:
        """Validate a training batch BEFORE any forward pass: ``x`` a non-empty tensor batch, ``y`` ``[B]``
        integer labels in ``[0, n_classes)``. Every ``loss`` calls this first, so a bad batch raises without
        touching state (no BatchNorm running statistic of the backbone is updated)."""
        x = self._check_x(x)
        return x, self._check_labels(y, x.shape[0])
