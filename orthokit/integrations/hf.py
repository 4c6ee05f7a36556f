"""Hugging Face ``transformers`` integration for :mod:`orthokit.projection`.

Two ways to protect a subspace while training with ``transformers.Trainer``:

1. :class:`ProjectionCallback` — no change to how the Trainer builds its optimizer. In
   ``on_pre_optimizer_step`` (fires **after gradient clipping**, right before ``optimizer.step()``; transformers
   PR #33444) it snapshots the protected parameters, and in ``on_optimizer_step`` (after the step, before
   ``zero_grad``; PR #31095) it replaces each parameter change ``ΔW`` by its projection — the same
   update-space guarantee as :class:`~orthokit.projection.Projected` (exact for AdamW incl. weight decay).
   With ``where="gradient"`` it instead projects ``p.grad`` in ``on_pre_optimizer_step`` (GPM-style; exact for
   plain SGD only). Note that clipping has already used the *unprojected* gradient norm.
2. :func:`projected_optimizer_for_trainer` — builds ``(Projected(AdamW), scheduler)`` for
   ``Trainer(optimizers=(opt, sched))``; the optimizer itself projects, so it also works outside the Trainer.

Under DeepSpeed ZeRO-3 / FSDP parameters are sharded and these hooks see shards; they are not supported there
(reference §12.8). DDP works (every rank holds the same basis and the same reduced gradients).

Example:
    >>> import torch
    >>> from transformers import GPT2Config, GPT2LMHeadModel
    >>> from orthokit.projection import GPM
    >>> from orthokit.integrations.hf import ProjectionCallback, projected_optimizer_for_trainer
    >>> cfg = GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=32, n_positions=16)
    >>> model = GPT2LMHeadModel(cfg)
    >>> gpm = GPM(model, layers=["transformer.h.0.mlp.c_fc"], threshold=0.99)
    >>> added = gpm.after_task([{"input_ids": torch.randint(0, 32, (4, 16))}])
    >>> callback = ProjectionCallback(gpm)   # Trainer(..., callbacks=[callback])
    >>> opt, sched = projected_optimizer_for_trainer(model, gpm, lr=1e-4, num_training_steps=10)
    >>> type(opt).__name__
    'Projected'
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback, get_scheduler

from orthokit.projection._wrapper import WrappedOptimizer, check_where_mode
from orthokit.projection.memory import SubspaceMemory
from orthokit.projection.projected import Projected
from orthokit.projection.registry import ProjectionMethod

__all__ = ["ProjectionCallback", "projected_optimizer_for_trainer"]


def _resolve(
    projection: Any, mode: str | None
) -> tuple[SubspaceMemory, str, float | None, list[nn.Parameter]]:
    """``(memory, mode, scale_alpha, frozen)`` of a registered method object (GPM, SGP, ...) or a memory."""
    if isinstance(projection, ProjectionMethod):
        mem = projection.memory
        if not isinstance(mem, SubspaceMemory):
            raise TypeError(
                f"{type(projection).__name__} does not keep a SubspaceMemory; use its wrap() instead"
            )
        return mem, mode or projection.mode, projection.scale_alpha, projection.frozen_parameters()
    if isinstance(projection, SubspaceMemory):
        return projection, mode or "hard", None, []
    raise TypeError(
        "projection must be a registered projection method object (GPM, SGP, ...) or a SubspaceMemory, got "
        f"{type(projection).__name__}"
    )


class ProjectionCallback(TrainerCallback):
    """Keep the Trainer's parameter updates out of (or scaled inside) ``memory``'s protected subspaces.

    Math: with ``W_old`` captured in ``on_pre_optimizer_step`` and ``W_new`` after ``optimizer.step()``, sets
    ``W ← W_old + P(W_new − W_old)`` where ``P(Δ) = Δ(I − MMᵀ)`` (hard) or ``Δ(I − MΛMᵀ)`` (scaled, SGP).

    Args:
        projection: a registered method object (``GPM``, ``SGP``, ... — its memory, mode and frozen 1-D
            parameters are used) or a :class:`SubspaceMemory` (built on the same model the Trainer trains).
        mode: ``"hard"`` or ``"scaled"`` (default: the method's, ``"hard"`` for a bare memory).
        scale_alpha: see :class:`~orthokit.projection.Projected`.
        where: ``"update"`` (default) or ``"gradient"``.
        check_finite: raise ``ValueError`` on NaN/inf gradients of protected parameters before the step.

    Example:
        >>> trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[ProjectionCallback(mem)])  # doctest: +SKIP

    Reference: GPM (Saha et al., ICLR 2021); HF callback events: transformers PR #33444 / #31095.
    """

    def __init__(
        self,
        projection: ProjectionMethod | SubspaceMemory,
        *,
        mode: str | None = None,
        scale_alpha: float | None = None,
        where: str = "update",
        check_finite: bool = True,
    ) -> None:
        memory, mode, method_alpha, frozen = _resolve(projection, mode)
        check_where_mode(where, mode)
        self.memory = memory
        self.mode = mode
        self.scale_alpha = scale_alpha if scale_alpha is not None else method_alpha
        self.where = where
        self.frozen = frozen
        self.check_finite = check_finite
        self._snapshot: dict[nn.Parameter, torch.Tensor] | None = None

    def _params(self) -> list[nn.Parameter]:
        return [p for p in self.memory.protected_parameters() if p.requires_grad]

    @torch.no_grad()
    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Snapshot (``where="update"``) or project gradients (``where="gradient"``)."""
        self._snapshot = None
        if self.memory.is_empty:
            return
        params = self._params() + [p for p in self.frozen if p.requires_grad]
        if self.check_finite:
            names = self.memory._param_names
            for p in params:
                if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
                    raise ValueError(f"non-finite gradient in protected parameter {names.get(id(p), '?')!r}")
        if self.where == "gradient":
            grads = {}
            frozen = {id(p) for p in self.frozen}
            for p in params:
                if id(p) in frozen:
                    if p.grad is not None:
                        p.grad.zero_()
                    continue
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                grads[p] = p.grad
            self.memory.project_(grads, mode=self.mode, scale_alpha=self.scale_alpha)
        else:
            self._snapshot = {p: p.detach().clone() for p in params}

    @torch.no_grad()
    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Project the parameter change made by ``optimizer.step()``."""
        if self._snapshot is None:
            return
        old = self._snapshot
        self._snapshot = None
        frozen = {id(p) for p in self.frozen}
        deltas = {p: p.detach() - o for p, o in old.items() if id(p) not in frozen}
        self.memory.project_(deltas, mode=self.mode, scale_alpha=self.scale_alpha)
        for p, d in deltas.items():
            p.copy_(old[p].add_(d))
        for p, o in old.items():
            if id(p) in frozen:
                p.copy_(o)


def projected_optimizer_for_trainer(
    model: nn.Module,
    projection: ProjectionMethod | SubspaceMemory,
    *,
    optimizer_cls: type[torch.optim.Optimizer] = torch.optim.AdamW,
    lr: float = 5e-5,
    weight_decay: float = 0.0,
    num_training_steps: int | None = None,
    scheduler: str = "linear",
    warmup_steps: int = 0,
    mode: str | None = None,
    scale_alpha: float | None = None,
    where: str = "update",
    **optimizer_kwargs: Any,
) -> tuple[WrappedOptimizer, Any]:
    """Build ``(Projected(optimizer), lr_scheduler)`` for ``Trainer(optimizers=(opt, sched))``.

    Parameters are grouped like the Trainer does: weight decay on ≥ 2-D parameters, none on biases and norm
    weights (1-D). The scheduler comes from ``transformers.get_scheduler(scheduler, ...)`` on the wrapper (which
    *is* a ``torch.optim.Optimizer`` sharing the inner ``param_groups``).

    Args:
        model: the model being trained (trainable parameters only are optimized).
        projection: a registered method object (``GPM``, ``SGP``, ...: its ``wrap`` builds the wrapper) or a
            :class:`SubspaceMemory` (wrapped in :class:`Projected`).
        optimizer_cls: inner optimizer class (AdamW default; any ``torch.optim.Optimizer`` such as orthokit Muon).
        lr, weight_decay: inner optimizer settings; extra ``optimizer_kwargs`` are passed through.
        num_training_steps: total steps for the scheduler (required unless ``scheduler="constant"``).
        scheduler, warmup_steps: ``transformers.get_scheduler`` arguments.
        mode, scale_alpha, where: see :class:`~orthokit.projection.Projected` (``mode``/``scale_alpha``
            default to the method's).

    Example:
        >>> opt, sched = projected_optimizer_for_trainer(model, mem, lr=1e-4, num_training_steps=1000)  # doctest: +SKIP
        >>> trainer = Trainer(model=model, args=args, train_dataset=ds, optimizers=(opt, sched))  # doctest: +SKIP
    """
    if num_training_steps is None and scheduler != "constant":
        raise ValueError("num_training_steps is required for scheduler != 'constant'")
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [
        g
        for g in ({"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0})
        if g["params"]
    ]
    if not groups:
        raise ValueError("the model has no trainable parameters")
    inner = optimizer_cls(groups, lr=lr, **optimizer_kwargs)
    memory, mode, method_alpha, frozen = _resolve(projection, mode)
    alpha = scale_alpha if scale_alpha is not None else method_alpha
    opt = Projected(inner, memory, mode=mode, scale_alpha=alpha, where=where, frozen=frozen)
    sched = get_scheduler(
        scheduler, optimizer=opt, num_warmup_steps=warmup_steps, num_training_steps=num_training_steps
    )
    return opt, sched
