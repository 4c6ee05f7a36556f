"""The projection-method registry and the small protocol every method follows.

Every method lives in one file of ``orthokit/projection`` and registers a class with
``@register_projection(name, subspace=..., optimizer_agnostic=..., guarantee=..., paper=...)``. The class is
constructed as ``Method(model, layers=None, **hyperparameters)`` and exposes:

* ``.memory`` — its :class:`~orthokit.projection.memory.SubspaceMemory`;
* ``.after_task(batches, **kw)`` — update the memory from the finished task's data;
* ``.wrap(optimizer)`` — the optimizer to train the next task with (usually
  :class:`~orthokit.projection.projected.Projected`);
* ``.state_dict()`` / ``.load_state_dict(d)``.

Capabilities recorded at registration (the conformance tests read them):

* ``subspace``: ``"activation"`` | ``"gradient"`` | ``"weight"`` — what the memory stores;
* ``optimizer_agnostic``: ``True`` when the guarantee holds for any wrapped optimizer;
* ``guarantee``: ``"exact"`` (old-task outputs on stored inputs are unchanged up to rounding),
  ``"first_order"`` (unchanged to first order) or ``"soft"`` (only reduced);
* ``paper``: citation string.

Every method's ``wrap`` returns a :class:`~orthokit.projection._wrapper.WrappedOptimizer` (see that module for the
protocol). Why two levels (``Method(model, ...)`` + ``.wrap(optimizer)`` instead of one wrapper class): the method
object outlives optimizers — it holds the memory across tasks (``after_task`` between them), while a fresh
optimizer is usually built per task (GPM's protocol) — see docs/projection/design.md.

Example:
    >>> import torch
    >>> from orthokit.projection import PROJECTIONS
    >>> "gpm" in PROJECTIONS.names(subspace="activation")
    True
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    >>> gpm = PROJECTIONS.get("gpm")(model, threshold=0.97)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from orthokit._registry import Registry
from orthokit.projection._wrapper import WrappedOptimizer

__all__ = [
    "PROJECTIONS",
    "register_projection",
    "ProjectionMethod",
    "REQUIRED_CAPABILITIES",
    "one_d_parameters",
    "FREEZE_1D",
]

PROJECTIONS: Registry[Any] = Registry("projection method")
REQUIRED_CAPABILITIES = ("subspace", "optimizer_agnostic", "guarantee", "paper")


def register_projection(name: str, *, aliases: tuple[str, ...] = (), **capabilities: Any) -> Any:
    """Class decorator registering a projection method in :data:`PROJECTIONS`.

    Raises ``ValueError`` when one of :data:`REQUIRED_CAPABILITIES` is missing or has an invalid value.

    Example:
        >>> @register_projection("mine", subspace="activation", optimizer_agnostic=True,
        ...                      guarantee="exact", paper="Me et al., 2026")  # doctest: +SKIP
        ... class Mine(ProjectionMethod): ...
        >>> register_projection("mine", subspace="activation", guarantee="exact")
        Traceback (most recent call last):
        ...
        ValueError: projection method 'mine' must declare capabilities ['optimizer_agnostic', 'paper']
    """
    missing = [c for c in REQUIRED_CAPABILITIES if c not in capabilities]
    if missing:
        raise ValueError(f"projection method {name!r} must declare capabilities {missing}")
    if capabilities["subspace"] not in ("activation", "gradient", "weight"):
        raise ValueError(f"subspace must be activation/gradient/weight, got {capabilities['subspace']!r}")
    if capabilities["guarantee"] not in ("exact", "first_order", "soft"):
        raise ValueError(f"guarantee must be exact/first_order/soft, got {capabilities['guarantee']!r}")
    return PROJECTIONS.register(name, aliases=aliases, **capabilities)


FREEZE_1D = ("norm", "all", "none")
_NORM_TYPES: tuple[type[torch.nn.Module], ...] = (
    torch.nn.modules.batchnorm._NormBase,
    torch.nn.LayerNorm,
    torch.nn.GroupNorm,
    *((torch.nn.RMSNorm,) if hasattr(torch.nn, "RMSNorm") else ()),
)


def one_d_parameters(model: torch.nn.Module, memory: Any, policy: str) -> list[torch.nn.Parameter]:
    """The 1-D parameters GPM-style methods freeze after the first task.

    ``policy="norm"``: the affine parameters of normalisation layers (BatchNorm/LayerNorm/GroupNorm/RMSNorm) —
    what GPM's reference code freezes (``grad.fill_(0)`` on the shared trunk's 1-D parameters for ``task_id > 0``;
    their trunks' 1-D parameters are exactly the BatchNorm affines). ``"all"``: every 1-D parameter of the model
    except the biases the memory already projects (``bias="augment"``) — also per-task heads' biases.
    ``"none"``: nothing.

    Example:
        >>> from orthokit.projection.memory import SubspaceMemory
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
        >>> mem = SubspaceMemory(net, layers="0")
        >>> [tuple(p.shape) for p in one_d_parameters(net, mem, "norm")]
        [(4,), (4,)]
        >>> len(one_d_parameters(net, mem, "all"))    # BN weight/bias and the bias of layer "2"
        3
    """
    if policy not in FREEZE_1D:
        raise ValueError(f"freeze_1d must be 'norm', 'all' or 'none', got {policy!r}")
    if policy == "none":
        return []
    if policy == "norm":
        out: list[torch.nn.Parameter] = []
        for m in model.modules():
            # by type, or by class name for norms that subclass nn.Module directly (LlamaRMSNorm, T5LayerNorm)
            if isinstance(m, _NORM_TYPES) or type(m).__name__.endswith("Norm"):
                out += [p for p in m.parameters(recurse=False) if p.dim() == 1]
        return out
    covered = set()
    for name in memory.layer_names:
        lay = memory.layer(name)
        if lay.bias_mode == "augment":
            covered.add(id(lay.module.bias))
    return [p for p in model.parameters() if p.dim() == 1 and id(p) not in covered]


class ProjectionMethod:
    """Base class: holds ``self.memory`` and implements the state/wrap plumbing shared by all methods.

    Subclasses set ``self.memory`` in ``__init__`` and implement :meth:`after_task`; most keep the default
    :meth:`wrap` (``Projected(optimizer, self.memory, mode=self.mode, ...)``).
    """

    memory: Any
    mode: str = "hard"
    scale_alpha: float | None = None

    def after_task(self, batches: Iterable[Any]) -> dict[str, int]:
        """Update the memory from the data of the task that just finished (subclasses may add explicit
        keyword-only overrides; unknown keywords raise ``TypeError``)."""
        raise NotImplementedError

    def frozen_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters the wrapper keeps fixed once the memory holds a basis (default: none)."""
        return []

    def wrap(
        self, optimizer: torch.optim.Optimizer, *, where: str = "update", check_finite: bool = True
    ) -> WrappedOptimizer:
        """Wrap ``optimizer`` so its applied update respects the memory (:class:`Projected`)."""
        from orthokit.projection.projected import Projected

        return Projected(
            optimizer,
            self.memory,
            mode=self.mode,
            scale_alpha=self.scale_alpha,
            where=where,
            frozen=self.frozen_parameters(),
            check_finite=check_finite,
        )

    def state_dict(self) -> dict[str, Any]:
        """The memory's state (bases, importances, counters)."""
        return {"memory": self.memory.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        if "memory" not in state:
            raise ValueError("state dict has no 'memory' entry")
        self.memory.load_state_dict(state["memory"])

    def summary(self) -> list[Any]:
        """Per-layer ``k/n`` of the memory."""
        return self.memory.summary()
