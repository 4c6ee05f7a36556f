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

Both accept every registered projection method object (``orthokit.projection.PROJECTIONS``: GPM, SGP, OGD, FOT,
GU, OSFT, ... — or a bare :class:`SubspaceMemory`). The callback applies the method's memory itself, so it needs a
method whose optimizer is the plain :class:`Projected` (all but HLOP and OGPSA, whose ``wrap()`` adds per-step
logic); for those it raises a one-line ``TypeError`` pointing to :func:`projected_optimizer_for_trainer`, which
calls the method's own ``wrap()``.

Checkpoints: the callback writes the method's state (bases, embedding rows, counters) to
``checkpoint-N/orthokit_projection.pt`` in ``on_save`` and restores it in ``on_train_begin`` when the Trainer
resumes (``trainer.train(resume_from_checkpoint=...)``), so a fresh process resumes bit-identically without
re-running ``after_task``. With :func:`projected_optimizer_for_trainer` the memory travels inside ``optimizer.pt``.

Coverage: when training starts with a non-empty memory, a one-time ``UserWarning`` lists the trainable
parameters that are neither protected nor frozen (free embeddings / norm gains are where an LLM forgets).

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

import inspect
import os
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback, get_scheduler

from orthokit.integrations.hf_optim import optimizer_for_trainer
from orthokit.projection._wrapper import WrappedOptimizer, check_where_mode
from orthokit.projection.memory import SubspaceMemory, warn_uncovered
from orthokit.projection.projected import Projected
from orthokit.projection.registry import ProjectionMethod

__all__ = [
    "ProjectionCallback",
    "projected_optimizer_for_trainer",
    "optimizer_for_trainer",
    "PROJECTION_FILE",
]

PROJECTION_FILE = "orthokit_projection.pt"
_FORMAT = "orthokit.projection/1"


def _check_object(projection: Any) -> None:
    if not isinstance(projection, (ProjectionMethod, SubspaceMemory)):
        raise TypeError(
            "projection must be a registered projection method object (orthokit.projection.PROJECTIONS: GPM, "
            f"SGP, ...) or a SubspaceMemory, got {type(projection).__name__}"
        )


def _plain_wrap(projection: ProjectionMethod) -> bool:
    """Whether the method's optimizer is the plain ``Projected`` of its memory (the callback can replay it)."""
    return type(projection).wrap is ProjectionMethod.wrap and isinstance(projection.memory, SubspaceMemory)


def _resolve(
    projection: Any, mode: str | None
) -> tuple[SubspaceMemory, str, float | None, list[nn.Parameter]]:
    """``(memory, mode, scale_alpha, frozen)`` of a method whose optimizer is a plain Projected, or a memory."""
    _check_object(projection)
    if isinstance(projection, ProjectionMethod):
        if not _plain_wrap(projection):
            name = type(projection).__name__
            raise TypeError(
                f"ProjectionCallback cannot apply {name}: its wrap() adds per-step logic the callback cannot "
                f"replay; use projected_optimizer_for_trainer(model, {name.lower()}_object, ...) and "
                "Trainer(optimizers=(opt, sched))"
            )
        mem = projection.memory
        return mem, mode or projection.mode, projection.scale_alpha, projection.frozen_parameters()
    return projection, mode or "hard", None, []


def _state_of(projection: ProjectionMethod | SubspaceMemory) -> dict[str, Any]:
    if isinstance(projection, SubspaceMemory):
        return {"memory": projection.state_dict()}
    return projection.state_dict()


def _load_into(projection: ProjectionMethod | SubspaceMemory, state: dict[str, Any]) -> None:
    if isinstance(projection, SubspaceMemory):
        if "memory" not in state:
            raise ValueError("no 'memory' entry")
        projection.load_state_dict(state["memory"])
    else:
        projection.load_state_dict(state)


def _trainer_resume_folder() -> str | None:
    """The ``resume_from_checkpoint`` folder of the ``Trainer`` call on the stack, if any (transformers passes it
    down its training loop as a local but does not store it in ``TrainingArguments``)."""
    frame = inspect.currentframe()
    try:
        while frame is not None:
            loc = frame.f_locals
            value = loc.get("resume_from_checkpoint")
            if isinstance(value, str) and "self" in loc and type(loc["self"]).__name__.endswith("Trainer"):
                return value
            frame = frame.f_back
    finally:
        del frame
    return None


class ProjectionCallback(TrainerCallback):
    """Keep the Trainer's parameter updates out of (or scaled inside) ``memory``'s protected subspaces.

    Math: with ``W_old`` captured in ``on_pre_optimizer_step`` and ``W_new`` after ``optimizer.step()``, sets
    ``W ← W_old + P(W_new − W_old)`` where ``P(Δ) = Δ(I − MMᵀ)`` (hard) or ``Δ(I − MΛMᵀ)`` (scaled, SGP).

    Args:
        projection: a registered method object (``GPM``, ``SGP``, ``OGD``, ``FOT``, ``GUProjection``,
            ``OSFTProjection`` — its memory, mode and frozen parameters are used) or a :class:`SubspaceMemory`
            (built on the same model the Trainer trains). ``HLOP`` / ``OGPSAProjection`` raise ``TypeError``
            (use :func:`projected_optimizer_for_trainer`).
        mode: ``"hard"`` or ``"scaled"`` (default: the method's, ``"hard"`` for a bare memory).
        scale_alpha: see :class:`~orthokit.projection.Projected`.
        where: ``"update"`` (default) or ``"gradient"``.
        check_finite: raise ``ValueError`` on NaN/inf gradients of protected parameters before the step.
        warn_uncovered: warn once at ``on_train_begin`` (non-empty memory) about trainable parameters that are
            neither protected nor frozen.
        save: write the method's state to ``checkpoint-N/orthokit_projection.pt`` in ``on_save`` and restore
            it when the Trainer resumes (``on_train_begin`` with ``state.global_step > 0``: from
            ``args.resume_from_checkpoint`` when it is a folder, else the folder given to ``train()``, else
            ``output_dir/checkpoint-<global_step>``; none holding a saved memory raises ``ValueError``).
            A saved state that does not fit the method (other layers, dimensions, embeddings option or method
            class) raises ``ValueError`` naming the file. :meth:`save_to` / :meth:`load_from` do the same by hand.

    Example:
        >>> trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[ProjectionCallback(gpm)])  # doctest: +SKIP
        >>> trainer.train(resume_from_checkpoint=True)   # restores gpm's memory from the checkpoint  # doctest: +SKIP

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
        warn_uncovered: bool = True,
        save: bool = True,
    ) -> None:
        memory, mode, method_alpha, frozen = _resolve(projection, mode)
        check_where_mode(where, mode)
        self.projection = projection
        self.warn_uncovered = warn_uncovered
        self.save = save
        self.memory = memory
        self.mode = mode
        self.scale_alpha = scale_alpha if scale_alpha is not None else method_alpha
        self.where = where
        self.frozen = frozen
        self.check_finite = check_finite
        self._snapshot: dict[nn.Parameter, torch.Tensor] | None = None
        self._loaded = False  # load_from() ran: on_train_begin does not look for a checkpoint again

    def _params(self) -> list[nn.Parameter]:
        return [p for p in self.memory.protected_parameters() if p.requires_grad]

    def _refresh_frozen(self) -> None:
        if isinstance(self.projection, ProjectionMethod):
            self.frozen = self.projection.frozen_parameters()

    # -- checkpoints -------------------------------------------------------------------------------------------
    def save_to(self, folder: str | os.PathLike[str]) -> str:
        """Write the method's (or memory's) state to ``folder/orthokit_projection.pt`` (atomic); returns the path."""
        path = os.path.join(os.fspath(folder), PROJECTION_FILE)
        payload = {
            "format": _FORMAT,
            "kind": type(self.projection).__name__,
            "state": _state_of(self.projection),
        }
        tmp = path + ".tmp"
        torch.save(payload, tmp)
        os.replace(tmp, path)
        return path

    def load_from(self, folder: str | os.PathLike[str]) -> None:
        """Restore :meth:`save_to` output from ``folder`` (``ValueError`` naming the file when it does not fit;
        nothing is modified then)."""
        path = os.path.join(os.fspath(folder), PROJECTION_FILE)
        if not os.path.isfile(path):
            raise ValueError(f"no projection state at {path}")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - report any unreadable file as one clear error
            raise ValueError(
                f"{path}: not a readable orthokit projection state ({type(e).__name__}: {e})"
            ) from e
        if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
            raise ValueError(f"{path}: not an orthokit projection state (format {_FORMAT!r} expected)")
        kind = type(self.projection).__name__
        if payload.get("kind") != kind:
            raise ValueError(f"{path}: saved by a {payload.get('kind')}, this callback holds a {kind}")
        try:
            _load_into(self.projection, payload["state"])
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: the saved projection memory does not fit this {kind}: {e}") from e
        self._loaded = True
        self._refresh_frozen()

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Write the memory next to the checkpoint the Trainer just saved (main process only)."""
        if not self.save or not getattr(state, "is_world_process_zero", True):
            return
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if os.path.isdir(folder):
            self.save_to(folder)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Restore the memory when resuming; warn once about uncovered trainable parameters.

        The checkpoint folder is ``args.resume_from_checkpoint``, else the folder given to
        ``Trainer.train(resume_from_checkpoint=...)`` (transformers does not copy it into ``args``; it is read
        from the calling Trainer frame), else ``output_dir/checkpoint-<step>``. Resuming (step > 0) without a
        saved memory in any of them raises ``ValueError`` — continuing with this process's memory would give a
        different run — unless :meth:`load_from` was called first.
        """
        step = int(getattr(state, "global_step", 0) or 0)
        if self.save and step > 0 and not self._loaded:
            folders = []
            for resume in (getattr(args, "resume_from_checkpoint", None), _trainer_resume_folder()):
                if isinstance(resume, str) and os.path.isdir(resume) and resume not in folders:
                    folders.append(resume)
            folders.append(os.path.join(args.output_dir, f"checkpoint-{step}"))
            found = [f for f in folders if os.path.isfile(os.path.join(f, PROJECTION_FILE))]
            if not found:
                raise ValueError(
                    f"ProjectionCallback: resuming at step {step} but no {PROJECTION_FILE} in {folders}; call "
                    "callback.load_from(folder) before train() to restore one, or ProjectionCallback(..., "
                    "save=False) to train on with the memory built in this process"
                )
            self.load_from(found[0])
        self._refresh_frozen()
        if self.warn_uncovered and not self.memory.is_empty:
            model = kwargs.get("model") or self.memory.model
            warn_uncovered(self.memory.uncovered_parameters(self.frozen, model=model), "ProjectionCallback")
            self.warn_uncovered = False  # once

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
    lr: float | None = None,
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
        projection: any registered method object (``PROJECTIONS``: GPM, SGP, OGD, FOT, GU, OSFT, HLOP, OGPSA —
            methods with their own ``wrap()`` logic, HLOP and OGPSA, are wrapped by it) or a
            :class:`SubspaceMemory` (wrapped in :class:`Projected`).
        optimizer_cls: inner optimizer class (AdamW default; any ``torch.optim.Optimizer`` such as orthokit Muon).
        lr: inner learning rate; default: an orthokit optimizer's own default lr (Muon 0.02 — the
            Trainer-sized 5e-5 would leave an orthogonalized rule ~400× too slow), else 5e-5 (the Trainer's).
        weight_decay: inner optimizer setting; extra ``optimizer_kwargs`` are passed through.
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
    _check_object(projection)
    check_where_mode(where, mode)
    if lr is None:
        default = inspect.signature(optimizer_cls).parameters.get("lr")
        own = default.default if default is not None else inspect.Parameter.empty
        ours = getattr(optimizer_cls, "__module__", "").startswith("orthokit.")
        lr = float(own) if ours and isinstance(own, (int, float)) and not isinstance(own, bool) else 5e-5
    if isinstance(projection, ProjectionMethod) and not _plain_wrap(projection):
        if mode is not None or scale_alpha is not None:
            raise ValueError(
                f"mode/scale_alpha cannot be overridden for {type(projection).__name__} (its wrap() decides them)"
            )
        inner = optimizer_cls(groups, lr=lr, **optimizer_kwargs)
        opt = projection.wrap(inner, where=where)
    else:
        memory, mode, method_alpha, frozen = _resolve(projection, mode)
        alpha = scale_alpha if scale_alpha is not None else method_alpha
        inner = optimizer_cls(groups, lr=lr, **optimizer_kwargs)
        opt = Projected(inner, memory, mode=mode, scale_alpha=alpha, where=where, frozen=frozen)
    sched = get_scheduler(
        scheduler, optimizer=opt, num_warmup_steps=warmup_steps, num_training_steps=num_training_steps
    )
    return opt, sched
