"""``Projected``: wrap any ``torch.optim.Optimizer`` so that its **applied update** avoids a protected subspace.

Why the update and not the gradient (reference §1.4, §12.6): for an adaptive optimizer (Adam/AdamW, Muon, ...)
the step is a nonlinear function of the gradient history — Adam divides elementwise by ``√v̂ + ε``, Muon
orthogonalises the momentum — so projecting the gradient *before* the step does not keep the step orthogonal, and
decoupled weight decay moves protected directions by itself. ``where="update"`` (default) therefore snapshots the
protected parameters, lets the inner optimizer step, and replaces the parameter change ``ΔW`` by its projection:

    ``W ← W_old + P(ΔW)``,   ``P(ΔW) = ΔW (I − M Mᵀ)``  (hard)  or  ``ΔW (I − M Λ Mᵀ)``  (scaled, SGP)

for activation bases (and the analogous flattened / two-sided maps for gradient / weight bases, see
:class:`~orthokit.projection.memory.SubspaceMemory`). This includes the weight-decay part of ``ΔW``. The inner
optimizer's state (momentum, second moments) is left as computed — only the applied update is constrained, the
guarantee ``ΔW M = 0`` holds at every step regardless of the state. ``where="gradient"`` projects ``p.grad`` in
place before the inner step: exact for plain SGD without momentum or weight decay (then both choices coincide
mathematically), approximate otherwise; it is offered for parity with GPM/SGP's reference code.

Gradient accumulation needs nothing special (projection happens once per ``step()`` on the accumulated result);
under DDP every rank holds the same basis and sees the same all-reduced gradients, so every rank applies the same
projected update. An empty memory makes ``step()`` exactly the inner optimizer's step (bit-identical).

Reference: Saha et al., GPM, ICLR 2021 (gradient projection with SGD); Saha & Roy, SGP, AAAI 2023 (scaled
projection); OSFT (arXiv 2504.07097) / mini_trainer PR #16 re-project after ``optimizer.step()``.

It follows the wrapper protocol of :mod:`orthokit.projection._wrapper` (``Projected(optimizer, memory, *, ...)``,
an ``Optimizer`` whose ``param_groups``/``state`` are the inner ones, ``state_dict()`` = inner dict + ``"projection"``).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from orthokit.projection import Projected, SubspaceMemory
    >>> torch.manual_seed(0) and None
    >>> model = nn.Linear(6, 3)
    >>> x_old = torch.randn(20, 2) @ torch.randn(2, 6)           # old inputs span 2 of 6 dimensions
    >>> memory = SubspaceMemory(model)
    >>> memory.collect_activations(model, [x_old], threshold=0.9999)
    {'': 3}
    >>> opt = Projected(torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1), memory)
    >>> sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=100)
    >>> before = model(x_old).detach()
    >>> for _ in range(5):
    ...     opt.zero_grad(); model(torch.randn(8, 6)).pow(2).sum().backward(); opt.step(); sched.step()
    >>> bool(torch.allclose(model(x_old), before, atol=1e-5))
    True
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from orthokit.projection._wrapper import WrappedOptimizer, check_where_mode
from orthokit.projection.memory import SubspaceMemory, warn_uncovered

__all__ = ["Projected"]


class Projected(WrappedOptimizer):
    """Optimizer wrapper whose applied update is orthogonal to (or scaled inside) ``memory``'s subspaces.

    Args:
        optimizer: any ``torch.optim.Optimizer`` (SGD, AdamW, orthokit Muon, ...), already built on the model's
            parameters.
        memory: the :class:`SubspaceMemory` holding the protected bases.
        mode: ``"hard"`` — remove the component in the subspace (GPM); ``"scaled"`` — remove ``λ_i`` of it along
            basis direction ``i`` (SGP).
        scale_alpha: for ``mode="scaled"``: ``None`` uses the memory's accumulated SGP importances; a float
            recomputes ``λ = (α+1)σ/(ασ + max σ)`` from the stored singular values.
        where: ``"update"`` (default, exact for every optimizer, includes weight decay) or ``"gradient"``
            (project ``p.grad`` before the inner step; exact for plain SGD only).
        frozen: parameters that must not change at all once the memory holds a basis (GPM freezes
            BatchNorm/1-D parameters after the first task): with ``where="update"`` they are restored after the inner step (exact, weight decay
            included); with ``where="gradient"`` their gradient is zeroed (the reference code's
            ``grad.fill_(0)``; decoupled weight decay can still move them).
        check_finite: raise ``ValueError`` (before anything is modified) when a gradient is NaN/inf.
        warn_uncovered: on the first step with a non-empty memory, warn once (``UserWarning``, naming up to 10)
            about optimized parameters that are neither protected by ``memory`` nor ``frozen`` — e.g. free
            embeddings or norm gains of an LLM, through which old-task outputs drift.

    It behaves like an optimizer: ``param_groups``/``state``/``defaults`` are the inner optimizer's (so LR
    schedulers work on either object), ``zero_grad``, ``add_param_group``; ``state_dict`` is the inner
    optimizer's plus ``"projection"`` = ``{"memory": ..., "settings": ..., "frozen": [names]}``.

    Reference: GPM (Saha, Garg & Roy, ICLR 2021); SGP (Saha & Roy, AAAI 2023).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        memory: SubspaceMemory,
        *,
        mode: str = "hard",
        scale_alpha: float | None = None,
        where: str = "update",
        frozen: Iterable[nn.Parameter] = (),
        check_finite: bool = True,
        warn_uncovered: bool = True,
    ) -> None:
        super().__init__(optimizer, check_finite=check_finite)
        if not isinstance(warn_uncovered, bool):
            raise TypeError(f"warn_uncovered must be a bool, got {type(warn_uncovered).__name__}")
        if not isinstance(memory, SubspaceMemory):
            raise TypeError(f"memory must be a SubspaceMemory, got {type(memory).__name__}")
        check_where_mode(where, mode)
        if scale_alpha is not None and (mode != "scaled" or scale_alpha < 0):
            raise ValueError("scale_alpha is only meaningful with mode='scaled' and must be >= 0")
        frozen = list(frozen)
        for p in frozen:
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"frozen must hold parameters, got {type(p).__name__}")
        self.memory = memory
        self.mode = mode
        self.scale_alpha = scale_alpha
        self.where = where
        self.frozen = frozen
        self.warn_uncovered = warn_uncovered
        self._coverage_checked = False

    def __repr__(self) -> str:
        return (
            f"Projected(mode={self.mode!r}, where={self.where!r}, scale_alpha={self.scale_alpha}, "
            f"frozen={len(self.frozen)}, optimizer={self.optimizer!r})"
        )

    # -- state -------------------------------------------------------------------------------------------------
    def projection_state_dict(self) -> dict[str, Any]:
        """``{"memory": memory.state_dict(), "settings": {...}, "frozen": [parameter names]}``."""
        names = self.memory._param_names
        return {
            "memory": self.memory.state_dict(),
            "settings": {"mode": self.mode, "scale_alpha": self.scale_alpha, "where": self.where},
            "frozen": [names.get(id(p), "?") for p in self.frozen],
        }

    def load_projection_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the memory and settings (validated before anything changes)."""
        if "memory" not in state:
            raise ValueError("projection state has no 'memory' entry")
        cfg = dict(state.get("settings", {}))
        unknown = sorted(set(cfg) - {"mode", "scale_alpha", "where"})
        if unknown:
            raise ValueError(f"projection settings has unknown keys {unknown}")
        check_where_mode(cfg.get("where", self.where), cfg.get("mode", self.mode))
        self.memory.load_state_dict(state["memory"])
        self.mode = cfg.get("mode", self.mode)
        self.scale_alpha = cfg.get("scale_alpha", self.scale_alpha)
        self.where = cfg.get("where", self.where)

    # -- stepping ----------------------------------------------------------------------------------------------
    def _named_params(self) -> dict[int, str]:
        return self.memory._param_names

    def _optimized(self) -> set[int]:
        return {id(p) for g in self.optimizer.param_groups for p in g["params"]}

    def _apply_step(self) -> None:
        if self.memory.is_empty:  # nothing protected yet (first task): exactly the inner step
            self.optimizer.step()
            return
        frozen = [p for p in self.frozen if p.requires_grad]
        in_opt = self._optimized()
        protected = self.memory.protected_parameters()
        params = [p for p in protected if id(p) in in_opt and p.requires_grad]
        if protected and not any(id(p) in in_opt for p in protected):
            raise ValueError(
                "none of the memory's protected parameters is optimized by the wrapped optimizer — were the "
                "memory and the optimizer built on different models (e.g. a copy)?"
            )
        frozen = [p for p in frozen if id(p) in in_opt]
        if getattr(self, "warn_uncovered", True) and not getattr(
            self, "_coverage_checked", False
        ):  # old pickles
            self._coverage_checked = True
            ids = {id(p) for p in protected} | {id(p) for p in frozen}
            names = self.memory._param_names
            uncovered = [
                names.get(id(p), str(tuple(p.shape)))
                for g in self.optimizer.param_groups
                for p in g["params"]
                if p.requires_grad and id(p) not in ids
            ]
            warn_uncovered(uncovered, "Projected", stacklevel=4)
        if self.where == "gradient":
            grads: dict[nn.Parameter, torch.Tensor] = {}
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                grads[p] = p.grad
            if grads:
                self.memory.project_(grads, mode=self.mode, scale_alpha=self.scale_alpha)
            for p in frozen:
                if p.grad is not None:
                    p.grad.zero_()
            self.optimizer.step()
            return
        old = {p: p.detach().clone() for p in params}
        kept = [(p, p.detach().clone()) for p in frozen]
        self.optimizer.step()
        deltas = {p: p.detach() - o for p, o in old.items()}
        if deltas:
            self.memory.project_(deltas, mode=self.mode, scale_alpha=self.scale_alpha)
        for p, d in deltas.items():
            p.copy_(old[p].add_(d))
        for p, o in kept:
            p.copy_(o)
