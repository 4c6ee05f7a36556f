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

Example:
    >>> opt = Projected(torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1), memory)
    >>> loss.backward(); opt.step(); opt.zero_grad()
    >>> sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=100)   # or on opt.optimizer
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from orthokit.projection.memory import SubspaceMemory

__all__ = ["Projected"]


class Projected(torch.optim.Optimizer):
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
        check_finite: raise ``ValueError`` (before anything is modified) when a gradient is NaN/inf.

    It behaves like an optimizer: ``param_groups``/``state``/``defaults`` are the inner optimizer's (so LR
    schedulers work on either object), ``zero_grad``, ``add_param_group``, and ``state_dict`` contains the
    inner state and the memory (``load_state_dict`` restores both).

    Example:
        >>> mem = SubspaceMemory(model, layers=nn.Linear)
        >>> mem.collect_activations(model, old_task_batches, threshold=0.97)
        >>> opt = Projected(torch.optim.SGD(model.parameters(), lr=0.01), mem)

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
        check_finite: bool = True,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if isinstance(optimizer, Projected):
            raise TypeError("optimizer is already Projected; wrap the inner optimizer once")
        if not isinstance(memory, SubspaceMemory):
            raise TypeError(f"memory must be a SubspaceMemory, got {type(memory).__name__}")
        if mode not in ("hard", "scaled"):
            raise ValueError(f"mode must be 'hard' or 'scaled', got {mode!r}")
        if where not in ("update", "gradient"):
            raise ValueError(f"where must be 'update' or 'gradient', got {where!r}")
        if scale_alpha is not None and (mode != "scaled" or scale_alpha < 0):
            raise ValueError("scale_alpha is only meaningful with mode='scaled' and must be >= 0")
        self.optimizer = optimizer
        self.memory = memory
        self.mode = mode
        self.scale_alpha = scale_alpha
        self.where = where
        self.check_finite = check_finite
        # the bookkeeping torch.optim.Optimizer.__init__ would create (hooks, profiling), without new groups
        self._optimizer_step_pre_hooks = OrderedDict()
        self._optimizer_step_post_hooks = OrderedDict()
        self._optimizer_state_dict_pre_hooks = OrderedDict()
        self._optimizer_state_dict_post_hooks = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()
        self._optimizer_load_state_dict_post_hooks = OrderedDict()
        self._patch_step_function()
        self._warned_capturable_if_run_uncaptured = True

    # -- delegated optimizer surface ------------------------------------------------------------------------
    @property  # type: ignore[override]
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.optimizer.param_groups = value

    @property  # type: ignore[override]
    def state(self) -> Any:
        return self.optimizer.state

    @state.setter
    def state(self, value: Any) -> None:
        self.optimizer.state = value

    @property  # type: ignore[override]
    def defaults(self) -> dict[str, Any]:
        return self.optimizer.defaults

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self.optimizer.defaults = value

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group to the inner optimizer."""
        self.optimizer.add_param_group(param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the gradients (inner optimizer's ``zero_grad``)."""
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def __repr__(self) -> str:
        return (
            f"Projected(mode={self.mode!r}, where={self.where!r}, scale_alpha={self.scale_alpha}, "
            f"optimizer={self.optimizer!r})"
        )

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    # -- state -------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """``{"optimizer": inner state_dict, "memory": memory state_dict, "projected": settings}``."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "memory": self.memory.state_dict(),
            "projected": {"mode": self.mode, "scale_alpha": self.scale_alpha, "where": self.where},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; a plain inner-optimizer state dict (no ``"memory"``) loads the inner
        optimizer only."""
        if "memory" in state_dict and "optimizer" in state_dict:
            self.memory.load_state_dict(state_dict["memory"])
            self.optimizer.load_state_dict(state_dict["optimizer"])
            cfg = state_dict.get("projected", {})
            self.mode = cfg.get("mode", self.mode)
            self.scale_alpha = cfg.get("scale_alpha", self.scale_alpha)
            self.where = cfg.get("where", self.where)
        else:
            self.optimizer.load_state_dict(state_dict)

    # -- stepping ----------------------------------------------------------------------------------------------
    def _check_grads(self) -> None:
        names = self.memory._param_names
        params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return
        # fast path: one fused 2-norm per device/dtype group and a single host sync (NaN/inf propagate; a
        # huge-but-finite gradient may overflow the norm, so flagged tensors are re-checked exactly)
        try:
            norms = torch._foreach_norm([p.grad for p in params], 2)
            ok = torch.isfinite(torch.stack([n.float().to(norms[0].device) for n in norms])).tolist()
        except (RuntimeError, NotImplementedError):  # e.g. sparse gradients: check one by one
            ok = [False] * len(params)
        if all(ok):
            return
        for p, good in zip(params, ok):
            if good:
                continue
            g = p.grad.coalesce().values() if p.grad.is_sparse else p.grad
            finite = torch.isfinite(g)
            if not bool(finite.all()):
                n = int((~finite).sum())
                raise ValueError(
                    f"non-finite gradient ({n} NaN/inf values) in parameter "
                    f"{names.get(id(p), tuple(p.shape))!r}; no update was applied"
                )

    def _optimized(self) -> set[int]:
        return {id(p) for g in self.optimizer.param_groups for p in g["params"]}

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> Any:  # type: ignore[override]
        """Run the inner step and project (see class docstring). Returns the closure's loss, if any."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.check_finite:
            self._check_grads()
        if self.memory.is_empty:
            self.optimizer.step()
            return loss
        in_opt = self._optimized()
        protected = self.memory.protected_parameters()
        params = [p for p in protected if id(p) in in_opt and p.requires_grad]
        if protected and not any(id(p) in in_opt for p in protected):
            raise ValueError(
                "none of the memory's protected parameters is optimized by the wrapped optimizer — were the "
                "memory and the optimizer built on different models (e.g. a copy)?"
            )
        if self.where == "gradient":
            grads: dict[nn.Parameter, torch.Tensor] = {}
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                grads[p] = p.grad
            self.memory.project_(grads, mode=self.mode, scale_alpha=self.scale_alpha)
            self.optimizer.step()
            return loss
        old = {p: p.detach().clone() for p in params}
        self.optimizer.step()
        deltas = {p: p.detach() - o for p, o in old.items()}
        self.memory.project_(deltas, mode=self.mode, scale_alpha=self.scale_alpha)
        for p, d in deltas.items():
            p.copy_(old[p].add_(d))
        return loss
