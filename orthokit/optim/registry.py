"""The optimizer registry: every orthogonalized optimizer registers itself here with its capabilities.

A variant is one file that defines a :class:`~orthokit.optim.base.OrthogonalOptimizer` subclass and decorates it
with :func:`register_optimizer`. The conformance suite (``tests/optim/test_conformance.py``) iterates
``OPTIMIZERS.names()`` and reads the capabilities to construct each optimizer, so registering is all a variant
needs to be tested for loss decrease, checkpoint resume, dtype handling, schedulers, non-finite gradients and the
batched-vs-reference equivalence.

Capabilities understood by the framework and the conformance suite:

* ``default_lr`` (float, required) — the **conformance-test lr**: a learning rate that makes the optimizer decrease
  the suite's small losses. It is *not* a user default (also readable as ``test_lr``): the user default is the
  ``lr`` of the class's constructor signature, and :func:`create_optimizer` / :func:`~orthokit.optim.hybrid` use
  that (:func:`constructor_defaults`), so ``create_optimizer(name, params)`` and ``Cls(params)`` are the same
  optimizer.
* ``state_keys`` (tuple of str) — the per-parameter state entries of a 2-D parameter after one step.
* ``supports_batched`` (bool, default True) — same-shape matrices can be stacked into one polar call.
* ``supports_distributed`` (bool, default False) — honours ``distributed=True`` (DDP sharded orthogonalization).
* ``deterministic`` (bool, default True) — two identical runs give identical results (False for randomized methods
  that do not take a generator/seed).
* ``extra_kwargs`` (dict) — constructor kwargs the conformance suite should pass (e.g. a rank for low-rank methods).
* ``direction`` (str) — what one step's direction is, for the purpose test
  (``tests/optim/test_conformance.py::test_direction_is_the_polar_factor``): ``"polar"`` (the polar factor of the
  momentum input, checked against float64 ``U Vᵀ``), or another word — ``"low_rank"`` (Dion), ``"polar_of_clipped"``
  (ROOT), ``"rotation"`` (ARO), ``"normalized"`` (AuON) — whose purpose is tested in the method's own file.
* ``direction_at`` (``"update"`` or ``"orthogonalize"``) — where the polar direction is read: the weight change
  (Muon-like) or the output of the chain's ``orthogonalize`` transform, before per-row/Adam-style rescaling.

Example:
    >>> import torch
    >>> from orthokit.optim import OPTIMIZERS, create_optimizer
    >>> "muon" in OPTIMIZERS
    True
    >>> opt = create_optimizer("muon", [torch.nn.Parameter(torch.randn(4, 3))], lr=0.02)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from orthokit._registry import Registry

__all__ = ["OPTIMIZERS", "register_optimizer", "get_optimizer", "create_optimizer", "constructor_defaults"]

OPTIMIZERS: Registry[Any] = Registry("optimizer")

_C = TypeVar("_C")


def register_optimizer(
    name: str,
    *,
    default_lr: float,
    aliases: tuple[str, ...] | list[str] = (),
    state_keys: tuple[str, ...] = (),
    supports_batched: bool = True,
    supports_distributed: bool = False,
    deterministic: bool = True,
    extra_kwargs: dict[str, Any] | None = None,
    **capabilities: Any,
) -> Callable[[_C], _C]:
    """Class decorator registering an optimizer under ``name`` with its capabilities.

    Args:
        name: canonical registry name (lower case, ``-`` and ``_`` are equivalent).
        default_lr: learning rate the conformance suite uses on its small problems (stored as ``default_lr`` and
            ``test_lr``; never used as a user default).
        aliases: alternative names.
        state_keys: per-parameter state entries created by one step on a 2-D parameter.
        supports_batched: whether the class honours ``batched=True`` (stacked polar calls).
        supports_distributed: whether the class honours ``distributed=True``.
        deterministic: whether two identical runs are bit-identical.
        extra_kwargs: extra constructor kwargs for the conformance suite.
        **capabilities: any further metadata (e.g. ``paper="arXiv:2502.16982"``).

    Example:
        >>> from orthokit.optim.base import OrthogonalOptimizer
        >>> @register_optimizer("my_muon_doc_example", default_lr=0.02)   # doctest: +SKIP
        ... class MyMuon(OrthogonalOptimizer): ...
    """
    if not isinstance(default_lr, (int, float)) or default_lr <= 0:
        raise ValueError(f"default_lr must be a positive number, got {default_lr!r}")
    caps = dict(
        default_lr=float(default_lr),
        test_lr=float(default_lr),
        state_keys=tuple(state_keys),
        supports_batched=bool(supports_batched),
        supports_distributed=bool(supports_distributed),
        deterministic=bool(deterministic),
        extra_kwargs=dict(extra_kwargs or {}),
        **capabilities,
    )
    return OPTIMIZERS.register(name, aliases=aliases, **caps)


def get_optimizer(name: str) -> Any:
    """The optimizer class registered as ``name`` (``ValueError`` listing valid names otherwise).

    Example:
        >>> get_optimizer("muon").__name__
        'Muon'
    """
    _load_builtins()
    return OPTIMIZERS.get(name)


def constructor_defaults(name_or_cls: str | type) -> dict[str, Any]:
    """The keyword defaults of an optimizer's constructor (``inspect.signature``): the one place user defaults
    live. Parameters without a default (``params``) and ``*args``/``**kwargs`` are left out.

    Example:
        >>> d = constructor_defaults("root")
        >>> d["lr"], d["scale"]
        (0.001, 'match_rms_adamw')
    """
    cls = get_optimizer(name_or_cls) if isinstance(name_or_cls, str) else name_or_cls
    if not isinstance(cls, type):
        raise TypeError(f"name_or_cls must be a registry name or a class, got {type(name_or_cls).__name__}")
    sig = inspect.signature(cls.__init__)
    return {
        k: v.default
        for k, v in sig.parameters.items()
        if v.default is not inspect.Parameter.empty
        and v.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }


def create_optimizer(name: str, params: Iterable[Any], **kwargs: Any) -> Any:
    """Construct the optimizer registered as ``name`` on ``params`` with flat ``kwargs``.

    Every hyperparameter not given takes the class constructor's default (``create_optimizer(name, params)`` is
    ``Cls(params)``); the registry's ``default_lr`` is the conformance-test lr and is not used here.

    Example:
        >>> import torch
        >>> opt = create_optimizer("root", [torch.nn.Parameter(torch.randn(4, 3))])
        >>> opt.param_groups[0]["lr"]   # ROOT's constructor default (the reference example's 1e-3)
        0.001
    """
    cls = get_optimizer(name)
    return cls(params, **kwargs)


def _load_builtins() -> None:
    # importing the package registers every shipped optimizer
    import orthokit.optim  # noqa: F401
