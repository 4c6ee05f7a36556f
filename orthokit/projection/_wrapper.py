"""``WrappedOptimizer``: the one protocol every orthokit projection optimizer wrapper follows.

A projection wrapper is a ``torch.optim.Optimizer`` built **on top of** an existing optimizer. The protocol
(every wrapper in ``orthokit.projection`` — :class:`~orthokit.projection.projected.Projected`,
:class:`~orthokit.projection.gu.GeometricUnlearning`, and the wrappers of the other methods — follows it):

1. **Construction**: ``Wrapper(optimizer, <model or memory>, *, keyword_only=...)``. The inner optimizer is
   always the first argument, the object that defines what is protected (the model or a
   :class:`~orthokit.projection.memory.SubspaceMemory`) the second. Every other argument is keyword-only and
   explicit: there is no ``**kwargs`` swallowing, so a misspelt option raises ``TypeError`` naming it.
2. **It is an Optimizer**: ``isinstance(w, torch.optim.Optimizer)``; ``param_groups``, ``state``, ``defaults``,
   ``zero_grad`` and ``add_param_group`` are the inner optimizer's (same objects), so
   ``torch.optim.lr_scheduler.*`` built on the wrapper changes the inner learning rate.
3. **Vocabulary**: ``where="update" | "gradient"`` — where the projection is applied (to the applied parameter
   change after the inner step, or to ``p.grad`` before it); ``mode="hard" | "scaled"`` — how (remove the
   protected component, or shrink it by per-direction importances); ``check_finite`` — refuse (``ValueError``,
   nothing modified) a step whose gradients contain NaN/inf. A wrapper that does not support one of them does
   not accept it (``TypeError`` as for any unknown keyword).
4. **State**: ``state_dict()`` is the inner optimizer's torch-shaped dict (``"state"``, ``"param_groups"``)
   plus exactly one extra key, ``"projection"``, whose leaves are only tensors, numbers, strings, booleans or
   ``None`` (bases, importances, counters, settings — never raw data batches or callables).
   ``load_state_dict`` validates the ``"projection"`` entry before touching anything and restores both.
5. **Pickle**: the wrapper pickles (no local classes, no lambdas stored); step hooks and LR-scheduler patches
   on ``step`` are runtime-only and are dropped, like ``torch.optim.Optimizer`` does.

Subclasses implement :meth:`WrappedOptimizer._apply_step` (the projected step; the base :meth:`step` runs the
closure and the finiteness check first) and, when they carry state, :meth:`projection_state_dict` /
:meth:`load_projection_state_dict`.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from orthokit.projection._wrapper import WrappedOptimizer
    >>> model = nn.Linear(3, 2)
    >>> opt = WrappedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    >>> sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    >>> model(torch.ones(1, 3)).sum().backward(); opt.step(); sched.step()
    >>> opt.optimizer.param_groups[0]["lr"]
    0.05
    >>> sorted(opt.state_dict())
    ['param_groups', 'projection', 'state']
"""

from __future__ import annotations

import numbers
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import torch

__all__ = ["WrappedOptimizer", "check_projection_state", "check_where_mode", "WHERE_CHOICES", "MODE_CHOICES"]

WHERE_CHOICES = ("update", "gradient")
MODE_CHOICES = ("hard", "scaled")
_HOOK_ATTRS = (
    "_optimizer_step_pre_hooks",
    "_optimizer_step_post_hooks",
    "_optimizer_state_dict_pre_hooks",
    "_optimizer_state_dict_post_hooks",
    "_optimizer_load_state_dict_pre_hooks",
    "_optimizer_load_state_dict_post_hooks",
)


def check_projection_state(obj: Any, path: str = "projection") -> None:
    """Raise ``TypeError`` unless ``obj`` is nested dicts/lists/tuples of tensors, numbers, str, bool or None.

    Example:
        >>> check_projection_state({"basis": torch.eye(2), "k": 2, "mode": "hard"})
        >>> check_projection_state({"f": print})
        Traceback (most recent call last):
        ...
        TypeError: projection['f'] is a builtin_function_or_method; projection state may only hold tensors, numbers, strings, booleans or None
    """
    if obj is None or isinstance(obj, (torch.Tensor, str, bool, numbers.Number, torch.dtype)):
        return
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{path} has a key of type {type(k).__name__}; keys must be str or int")
            check_projection_state(v, f"{path}[{k!r}]")
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_projection_state(v, f"{path}[{i}]")
        return
    raise TypeError(
        f"{path} is a {type(obj).__name__}; projection state may only hold tensors, numbers, strings, "
        "booleans or None"
    )


def check_where_mode(where: str | None = None, mode: str | None = None) -> None:
    """Validate the shared ``where`` / ``mode`` vocabulary (``ValueError`` naming the argument)."""
    if where is not None and where not in WHERE_CHOICES:
        raise ValueError(f"where must be 'update' or 'gradient', got {where!r}")
    if mode is not None and mode not in MODE_CHOICES:
        raise ValueError(f"mode must be 'hard' or 'scaled', got {mode!r}")


class WrappedOptimizer(torch.optim.Optimizer):
    """Base class of projection optimizer wrappers (see the module docstring for the protocol).

    Args:
        optimizer: the inner ``torch.optim.Optimizer`` (already built on the model's parameters).
        check_finite: raise ``ValueError`` (before anything is modified) when a gradient is NaN/inf.

    The base class alone is a transparent wrapper: :meth:`step` is the inner optimizer's step.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, check_finite: bool = True) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer (first argument) must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        if isinstance(optimizer, WrappedOptimizer):
            raise TypeError(
                f"optimizer is already wrapped ({type(optimizer).__name__}); wrap the inner optimizer once"
            )
        if not isinstance(check_finite, bool):
            raise TypeError(f"check_finite must be a bool, got {type(check_finite).__name__}")
        self.optimizer = optimizer
        self.check_finite = check_finite
        self._init_runtime()

    def _init_runtime(self) -> None:
        # the bookkeeping torch.optim.Optimizer.__init__ would create (hooks, profiling), without new groups
        for attr in _HOOK_ATTRS:
            setattr(self, attr, OrderedDict())
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
        return f"{type(self).__name__}(optimizer={self.optimizer!r})"

    # -- pickling ----------------------------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for attr in (*_HOOK_ATTRS, "step"):  # runtime-only (an LR scheduler patches an instance `step`)
            state.pop(attr, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    # -- state -------------------------------------------------------------------------------------------------
    def projection_state_dict(self) -> dict[str, Any]:
        """The wrapper's own state (override; tensors/numbers/strings only)."""
        return {}

    def load_projection_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`projection_state_dict` output (override; validate before modifying)."""
        if state:
            raise ValueError(f"{type(self).__name__} has no projection state, got keys {sorted(state)}")

    def state_dict(self) -> dict[str, Any]:
        """The inner optimizer's ``state_dict`` plus one key ``"projection"`` (tensors/numbers/strings only)."""
        sd = dict(self.optimizer.state_dict())
        if "projection" in sd:
            raise ValueError("the inner optimizer's state_dict already has a 'projection' key")
        proj = self.projection_state_dict()
        check_projection_state(proj)
        sd["projection"] = proj
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output: validates, then loads the inner optimizer and the projection."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
        if "projection" not in state_dict:
            raise ValueError(
                f"state_dict has no 'projection' entry (keys {sorted(state_dict)}); it was not produced by "
                f"{type(self).__name__}.state_dict() — load a plain optimizer state with "
                "wrapper.optimizer.load_state_dict(...)"
            )
        proj = state_dict["projection"]
        if not isinstance(proj, Mapping):
            raise TypeError(f"state_dict['projection'] must be a dict, got {type(proj).__name__}")
        check_projection_state(proj)
        inner = {k: v for k, v in state_dict.items() if k != "projection"}
        self.optimizer.load_state_dict(inner)
        self.load_projection_state_dict(dict(proj))

    # -- stepping ----------------------------------------------------------------------------------------------
    def _named_params(self) -> dict[int, str]:
        return {}

    def _check_grads(self) -> None:
        """``ValueError`` naming the parameter when a gradient is NaN/inf (one fused norm on the fast path)."""
        params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return
        try:
            norms = torch._foreach_norm([p.grad for p in params], 2)
            ok = torch.isfinite(torch.stack([n.float().to(norms[0].device) for n in norms])).tolist()
        except (RuntimeError, NotImplementedError):  # e.g. sparse gradients: check one by one
            ok = [False] * len(params)
        if all(ok):
            return
        names = self._named_params()
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

    def _apply_step(self) -> None:
        """The (projected) step, called with gradients already checked. Default: the inner step."""
        self.optimizer.step()

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Run ``closure`` (if any), check gradients, then :meth:`_apply_step`. Returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.check_finite:
            self._check_grads()
        self._apply_step()
        return loss
