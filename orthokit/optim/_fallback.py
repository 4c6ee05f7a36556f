"""The AdamW fallback for parameters an orthogonalized update cannot handle because of their shape.

An orthogonalized rule needs a matrix. Parameters with fewer than 2 dims (biases, norm gains, scalars) and empty
parameters (a zero-size dimension) have none, so with ``fallback="adamw"`` (the default of every orthokit
optimizer) they are moved out of their ``algorithm="ortho"`` group into an ``algorithm="adamw"`` group of the SAME
optimizer — a real param group (LR schedulers scale it, ``state_dict`` round-trips it) tagged ``role="fallback"``.
``fallback="error"`` keeps the strict behaviour: the constructor raises naming the parameter.

Routing here is by **shape only**. Embedding tables and LM heads are 2-D, so they are orthogonalized; use
:func:`orthokit.optim.hybrid` (or :func:`orthokit.integrations.hf_optim.optimizer_for_trainer`) to route by
structure as Muon's authors recommend (Jordan et al. 2024; Liu et al. 2025, arXiv:2502.16982). The fallback is an
orthokit extension, not part of any paper's method: a paper's method only ever sees its matrices.

Learning rate of the fallback group (``fallback_lr=None``): the group's own ``lr`` when its ``scale`` is
``"match_rms_adamw"`` (updates are RMS-matched to AdamW, so one lr serves both — Moonlight), else 3e-4 (Keller's
auxiliary-Adam lr in ``MuonWithAuxAdam``; Muon's 0.02 would be ~60× too large for Adam). This is the rule
:func:`~orthokit.optim.hybrid` uses for its AdamW groups. Weight decay (``fallback_weight_decay=None``): the
group's own value — the Hugging Face convention is that the *caller* groups biases and norm weights with
``weight_decay=0.0`` (``Trainer`` does), and the fallback keeps that.

Example:
    >>> import torch
    >>> from orthokit.optim import Muon
    >>> model = torch.nn.Linear(4, 3)   # weight (3, 4) → Muon; bias (3,) → the AdamW fallback
    >>> opt = Muon(model.parameters(), lr=0.02)
    >>> [(g["algorithm"], g.get("role"), g["lr"], len(g["params"])) for g in opt.param_groups]
    [('ortho', None, 0.02, 1), ('adamw', 'fallback', 0.0003, 1)]
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from torch import Tensor

__all__ = [
    "FALLBACK_MODES",
    "DEFAULT_FALLBACK_LR",
    "FallbackConfig",
    "fallback_reason",
    "split_fallback",
    "log_fallback",
]

logger = logging.getLogger("orthokit.optim")

FALLBACK_MODES: tuple[str, ...] = ("adamw", "error")

#: AdamW lr of the fallback group when the orthogonalized group is not AdamW-scaled (Keller's auxiliary Adam).
DEFAULT_FALLBACK_LR = 3e-4


@dataclass(frozen=True)
class FallbackConfig:
    """The ``fallback*`` constructor options of an :class:`~orthokit.optim.base.OrthogonalOptimizer`.

    Args:
        mode: ``"adamw"`` (non-matrix parameters go to an internal AdamW group) or ``"error"`` (raise).
        lr: AdamW lr of the fallback group (``None``: the group's lr if ``scale="match_rms_adamw"``, else 3e-4).
        betas, eps: AdamW hyperparameters ((0.9, 0.95) and 1e-8, as :func:`~orthokit.optim.hybrid`).
        weight_decay: decoupled weight decay (``None``: the source group's ``weight_decay``).

    Example:
        >>> FallbackConfig("adamw", lr=1e-3).validate()
        >>> FallbackConfig("sgd").validate()
        Traceback (most recent call last):
        ...
        ValueError: fallback must be one of ('adamw', 'error'), got 'sgd'
    """

    mode: str = "adamw"
    lr: float | Tensor | None = None
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float | None = None

    def validate(self) -> None:
        """``ValueError``/``TypeError`` naming the bad ``fallback*`` option (nothing else is checked here)."""
        if self.mode not in FALLBACK_MODES:
            raise ValueError(f"fallback must be one of {FALLBACK_MODES}, got {self.mode!r}")
        if self.lr is not None:
            from orthokit.optim.base import _check_lr

            _check_lr(self.lr, "fallback_lr")
        b = self.betas
        if not (
            isinstance(b, (tuple, list))
            and len(b) == 2
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0.0 <= x < 1.0 for x in b)
        ):
            raise ValueError(f"fallback_betas must be two floats in [0, 1), got {b!r}")
        e = self.eps
        if isinstance(e, bool) or not isinstance(e, (int, float)) or not (math.isfinite(e) and e > 0):
            raise ValueError(f"fallback_eps must be a finite float > 0, got {e!r}")
        wd = self.weight_decay
        if wd is not None and (
            isinstance(wd, bool) or not isinstance(wd, (int, float)) or not (math.isfinite(wd) and wd >= 0)
        ):
            raise ValueError(f"fallback_weight_decay must be a finite float >= 0 or None, got {wd!r}")


def fallback_reason(p: Tensor) -> str | None:
    """Why ``p`` cannot be orthogonalized because of its shape (``None`` when it can).

    Example:
        >>> import torch
        >>> fallback_reason(torch.zeros(3)), fallback_reason(torch.zeros(0, 4)), fallback_reason(torch.zeros(2, 2))
        ('1-D parameter', 'empty parameter', None)
    """
    if p.dim() < 2:
        return f"{p.dim()}-D parameter"
    if p.numel() == 0:
        return "empty parameter"
    return None


def _fallback_lr(group: dict[str, Any], cfg: FallbackConfig) -> float | Tensor:
    lr = cfg.lr
    if lr is None:
        lr = group["lr"] if group.get("scale") == "match_rms_adamw" else DEFAULT_FALLBACK_LR
    return lr.detach().clone() if isinstance(lr, Tensor) else lr


def _as_fallback(group: dict[str, Any], cfg: FallbackConfig) -> None:
    """Turn ``group`` (in place) into an AdamW fallback group."""
    group["lr"] = _fallback_lr(group, cfg)
    group["algorithm"] = "adamw"
    group["betas"] = tuple(cfg.betas)
    group["eps"] = cfg.eps
    if cfg.weight_decay is not None:
        group["weight_decay"] = cfg.weight_decay
    group["role"] = "fallback"


def split_fallback(group: dict[str, Any], cfg: FallbackConfig) -> tuple[dict[str, Any] | None, int, int]:
    """Move the non-matrix parameters of an ``algorithm="ortho"`` ``group`` to an AdamW fallback group.

    ``group`` has been through ``torch.optim.Optimizer.add_param_group`` (params a list, names in
    ``param_names``, defaults filled). When every parameter falls back, ``group`` itself is converted in place
    (no empty orthogonalized group is left behind) and ``None`` is returned; otherwise ``group`` keeps its
    matrices and the new fallback group (its other hyperparameters copied) is returned for the caller to append.

    Returns:
        ``(new_group_or_None, number_of_parameters_moved, number_of_elements_moved)``.

    Example:
        >>> import torch
        >>> g = {"params": [torch.zeros(3, 2), torch.zeros(3)], "lr": 0.02, "weight_decay": 0.1, "scale": "keller"}
        >>> new, n, numel = split_fallback(g, FallbackConfig())
        >>> len(g["params"]), new["algorithm"], new["lr"], new["weight_decay"], n, numel
        (1, 'adamw', 0.0003, 0.1, 1, 3)
    """
    params = group["params"]
    names = group.get("param_names")
    moved = [i for i, p in enumerate(params) if fallback_reason(p) is not None]
    if not moved:
        return None, 0, 0
    numel = sum(params[i].numel() for i in moved)
    if len(moved) == len(params):
        _as_fallback(group, cfg)
        return None, len(moved), numel
    keep = [i for i in range(len(params)) if i not in set(moved)]
    new = {k: v for k, v in group.items() if k not in ("params", "param_names")}
    new["params"] = [params[i] for i in moved]
    group["params"] = [params[i] for i in keep]
    if names is not None:
        new["param_names"] = [names[i] for i in moved]
        group["param_names"] = [names[i] for i in keep]
    _as_fallback(new, cfg)
    return new, len(moved), numel


def log_fallback(owner: str, n: int, numel: int) -> None:
    """The one INFO line an optimizer emits when ``n`` parameters (``numel`` elements) went to the fallback."""
    logger.info(
        "%s: %d parameter(s) (%s elements) cannot be orthogonalized (fewer than 2 dims or empty) and use the "
        "AdamW fallback group(s) (fallback='adamw'; fallback='error' raises instead; orthokit.optim.hybrid "
        "routes embeddings and heads to AdamW too)",
        owner,
        n,
        f"{numel:,}",
    )
