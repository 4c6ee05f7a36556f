"""``OrthogonalOptimizer`` — the runtime every orthogonalized optimizer in orthokit is built on.

A variant subclasses :class:`OrthogonalOptimizer`, validates its flat kwargs, and implements
:meth:`OrthogonalOptimizer.transforms` returning its chain of :mod:`orthokit.optim.transforms`. The base class
handles everything else, identically for every variant:

* parameter groups (each group is run through its own chain, hyperparameters read from the group, so
  ``torch.optim.lr_scheduler`` and per-group overrides work; tensor ``lr`` is supported);
* ``algorithm="adamw"`` groups (embeddings, heads, norms, biases) run a bias-corrected AdamW chain inside the SAME
  optimizer — this is how :func:`orthokit.optim.hybrid` returns one optimizer with one ``state_dict``, and where
  parameters that cannot be orthogonalized go with ``fallback="adamw"`` (the default; so ``Cls(model.parameters())``
  and ``transformers.Trainer(optimizer_cls_and_kwargs=...)`` work — :mod:`orthokit.optim._fallback`);
* matrix views of non-2-D parameters (conv kernels flattened to ``(out, in·kh·kw)``, 3-D expert stacks as
  batches, fused QKV split into row blocks via the group key ``split``);
* gradient checks: sparse/complex gradients raise ``ValueError`` naming the parameter; non-finite gradients raise
  :class:`NonFiniteGradientError` (or, with ``skip_nonfinite=True``, the whole step is skipped with a warning)
  BEFORE any state is touched;
* lazy per-parameter state in ``optimizer.state[p]`` (torch-compatible ``state_dict``);
* the final ``p ← p − lr·update`` with ``torch._foreach_*`` kernels (a trailing ``scale_by_shape`` is fused into
  it as per-scale ``alpha``);
* DDP sharding of the orthogonalization (``distributed=True|"auto"``, see :mod:`orthokit.optim.distributed`).

Example:
    >>> import torch
    >>> from orthokit.optim import Muon
    >>> w = torch.nn.Parameter(torch.randn(8, 4))
    >>> opt = Muon([w], lr=0.02)
    >>> w.grad = torch.randn(8, 4); opt.step()
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from orthokit.optim._fallback import FallbackConfig, log_fallback, split_fallback
from orthokit.optim.transforms import MatrixView, Transform, adam, decoupled_weight_decay, scale_by_shape

__all__ = ["OrthogonalOptimizer", "NonFiniteGradientError", "NonFiniteUpdateError", "ALGORITHMS"]

logger = logging.getLogger("orthokit.optim")

ALGORITHMS: tuple[str, ...] = ("ortho", "adamw")

# AdamW defaults used by ``algorithm="adamw"`` groups that do not set them (Keller's MuonWithAuxAdam / Moonlight).
ADAMW_GROUP_DEFAULTS: dict[str, Any] = {"betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.0}


class NonFiniteGradientError(ValueError):
    """Raised by ``step()`` when a gradient contains NaN/inf (no parameter or state was modified)."""


class NonFiniteUpdateError(FloatingPointError):
    """Raised by ``step()`` when finite gradients produced a NaN/inf update; parameters and state are restored."""


def _check_lr(lr: Any, what: str = "lr") -> None:
    """``lr`` must be a finite float >= 0 or a 1-element tensor holding one (``ValueError``/``TypeError``)."""
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError(f"tensor {what} must have exactly one element, got shape {tuple(lr.shape)}")
        v = float(lr.item())
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"{what} must be a finite number >= 0, got {v}")
        return
    if isinstance(lr, bool) or not isinstance(lr, (int, float)):
        raise TypeError(f"{what} must be a float or a 1-element tensor, got {type(lr).__name__}")
    if not (math.isfinite(lr) and lr >= 0):
        raise ValueError(f"{what} must be a finite number >= 0, got {lr}")


def check_finite_hyperparameter(name: str, value: Any) -> None:
    """Every float hyperparameter of a group must be finite (``ValueError`` naming it); tensors: their value.

    Example:
        >>> check_finite_hyperparameter("eps", 1e-8)
        >>> check_finite_hyperparameter("eps", float("inf"))
        Traceback (most recent call last):
        ...
        ValueError: eps must be finite, got inf
    """
    if isinstance(value, Tensor) and value.numel() == 1:
        value = float(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if isinstance(value, (tuple, list)):
        for v in value:
            check_finite_hyperparameter(name, v)


class OrthogonalOptimizer(torch.optim.Optimizer):
    """Base class of orthokit's orthogonalized optimizers (see module docstring).

    Subclasses must implement :meth:`transforms` and may extend :meth:`validate_group`.

    Args:
        params: parameters, ``(name, parameter)`` pairs (names then appear in errors and ``describe``), or param
            group dicts. Group keys understood by the base class: ``lr``, ``weight_decay``, ``algorithm``
            (``"ortho"`` default or ``"adamw"``), ``betas``/``eps`` (AdamW groups), ``split`` (int, number of equal
            row blocks orthogonalized separately, e.g. 3 for fused QKV), ``flatten`` (``None`` auto: 3-D params are
            batches of matrices, ≥4-D are flattened to ``(out, rest)``; ``True``: always flatten; ``False``:
            always batch over leading dims), ``layout`` (``"out_in"`` default, nn.Linear; ``"in_out"`` for 2-D
            weights stored transposed such as HuggingFace ``Conv1D`` — only the shape scale changes), ``batched``.
        defaults: the subclass's default hyperparameters.
        skip_nonfinite: skip (with a warning) instead of raising on non-finite gradients.
        distributed: ``False``, ``True`` (requires an initialized process group) or ``"auto"`` (on when
            ``torch.distributed`` is initialized with world size > 1).
        process_group: process group for ``distributed`` (default: the world group).
        fallback: ``"adamw"`` (default): parameters that cannot be orthogonalized because of their shape go to a
            real ``algorithm="adamw"`` group tagged ``role="fallback"`` (:mod:`orthokit.optim._fallback`);
            ``"error"`` raises naming the parameter. ``fallback_lr`` (``None``: the group's lr if
            ``scale="match_rms_adamw"``, else 3e-4), ``fallback_betas``, ``fallback_eps``:
            its AdamW settings; ``fallback_weight_decay`` (``None``: the source group's ``weight_decay``).
    """

    def __init__(
        self,
        params: Iterable[Any],
        defaults: dict[str, Any],
        *,
        skip_nonfinite: bool = False,
        distributed: bool | str = False,
        process_group: Any = None,
        fallback: str = "adamw",
        fallback_lr: float | Tensor | None = None,
        fallback_betas: tuple[float, float] = (0.9, 0.95),
        fallback_eps: float = 1e-8,
        fallback_weight_decay: float | None = None,
    ) -> None:
        if not isinstance(skip_nonfinite, bool):
            raise TypeError(f"skip_nonfinite must be a bool, got {type(skip_nonfinite).__name__}")
        fb = FallbackConfig(fallback, fallback_lr, fallback_betas, fallback_eps, fallback_weight_decay)
        fb.validate()
        self.fallback = fb
        self._fallback_log: list[tuple[int, int]] | None = []  # collected during __init__, logged once
        defaults = dict(defaults)
        defaults.setdefault("algorithm", "ortho")
        defaults.setdefault("split", 1)
        defaults.setdefault("flatten", None)
        defaults.setdefault("batched", True)
        self.skip_nonfinite = skip_nonfinite
        self._views: dict[Tensor, MatrixView] = {}
        self._names: dict[Tensor, str] = {}
        from orthokit.optim.distributed import resolve_dist_context

        self.dist_context = resolve_dist_context(distributed, process_group)
        super().__init__(params, defaults)
        pending, self._fallback_log = self._fallback_log, None
        if pending:
            log_fallback(type(self).__name__, sum(n for n, _ in pending), sum(e for _, e in pending))

    _EXTRA_STATE = ("skip_nonfinite", "_views", "_names", "dist_context", "_routes", "transactional")
    _EXTRA_STATE += ("fallback", "_fallback_log")

    def __getstate__(self) -> dict[str, Any]:
        """torch's picklable state plus orthokit's (views, names, flags) so ``copy.deepcopy``/pickle round-trip."""
        d = super().__getstate__()
        for k in self._EXTRA_STATE:
            if k in self.__dict__:
                d[k] = self.__dict__[k]
        return d

    # ------------------------------------------------------------------ subclass API
    def transforms(self, group: dict[str, Any]) -> Sequence[Transform]:
        """The chain applied to the ``algorithm="ortho"`` params of ``group`` (read hyperparameters from it)."""
        raise NotImplementedError(f"{type(self).__name__} must implement transforms(group)")

    def adamw_transforms(self, group: dict[str, Any]) -> Sequence[Transform]:
        """The chain for ``algorithm="adamw"`` groups: bias-corrected Adam + decoupled weight decay."""
        return [adam(), decoupled_weight_decay()]

    def validate_group(self, group: dict[str, Any]) -> None:
        """Validate one param group's hyperparameters (``ValueError``/``TypeError`` naming the problem).

        Base checks: ``lr`` finite >= 0, ``weight_decay`` finite >= 0, every other float hyperparameter finite,
        ``algorithm``, AdamW ``betas``/``eps``, ``split``, ``layout``, ``flatten``.
        """
        _check_lr(group["lr"])
        for k, v in group.items():
            if k not in ("params", "param_names", "lr"):
                check_finite_hyperparameter(k, v)
        wd = group.get("weight_decay", 0.0)
        if isinstance(wd, Tensor):
            wd = float(wd.item())
        if isinstance(wd, bool) or not isinstance(wd, (int, float)) or not wd >= 0:
            raise ValueError(f"weight_decay must be a finite float >= 0, got {group.get('weight_decay')!r}")
        if group["algorithm"] not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {group['algorithm']!r}")
        if group["algorithm"] == "adamw":
            b = group["betas"]
            if not (isinstance(b, (tuple, list)) and len(b) == 2 and all(0.0 <= float(x) < 1.0 for x in b)):
                raise ValueError(f"AdamW betas must be two floats in [0, 1), got {b!r}")
            if not float(group["eps"]) > 0:
                raise ValueError(f"AdamW eps must be > 0, got {group['eps']!r}")
        split = group.get("split", 1)
        if isinstance(split, bool) or not isinstance(split, int) or split < 1:
            raise ValueError(f"split must be a positive int, got {split!r}")
        if group.get("layout", "out_in") not in ("out_in", "in_out"):
            raise ValueError(f"layout must be 'out_in' or 'in_out', got {group.get('layout')!r}")
        if group.get("flatten") not in (None, True, False):
            raise ValueError(f"flatten must be None, True or False, got {group.get('flatten')!r}")

    # ------------------------------------------------------------------ groups & views
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (torch semantics) and validate it; AdamW groups must set ``lr`` explicitly."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        if param_group.get("algorithm", self.defaults.get("algorithm")) == "adamw":
            if "lr" not in param_group:
                raise ValueError("a param group with algorithm='adamw' must set its own 'lr'")
            for k, v in ADAMW_GROUP_DEFAULTS.items():
                param_group.setdefault(k, v)
        n_groups = len(self.param_groups)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        fb = self.__dict__.get("fallback") or FallbackConfig()
        new_names: dict[Tensor, str] = {}
        new_views: dict[Tensor, MatrixView] = {}
        try:
            extra, moved, moved_numel = None, 0, 0
            if group["algorithm"] == "ortho" and fb.mode == "adamw":
                extra, moved, moved_numel = split_fallback(group, fb)
            for g in (group, extra) if extra is not None else (group,):
                if g is extra:
                    self.param_groups.append(g)  # params already checked by torch as part of `group`
                gi, names = len(self.param_groups) - 1, g.get("param_names")
                self.validate_group(g)
                for i, p in enumerate(g["params"]):
                    name = names[i] if names is not None else f"param_groups[{gi}][{i}]"
                    new_names[p] = name
                    if p.is_complex():
                        raise ValueError(
                            f"parameter {name!r} is complex; orthokit optimizers support real parameters only"
                        )
                    if g["algorithm"] == "ortho":
                        new_views[p] = self._make_view(p, g, name)
        except BaseException:
            del self.param_groups[n_groups:]  # a rejected group leaves the optimizer as it was
            raise
        self._names.update(new_names)
        self._views.update(new_views)
        if moved:
            log = self.__dict__.get("_fallback_log")
            if log is not None:
                log.append((moved, moved_numel))
            else:
                log_fallback(type(self).__name__, moved, moved_numel)

    def _make_view(self, p: Tensor, group: dict[str, Any], name: str) -> MatrixView:
        shape = tuple(p.shape)
        if p.dim() < 2:
            raise ValueError(
                f"parameter {name!r} has shape {shape}: orthogonalized updates need >= 2-D parameters; "
                "route 1-D parameters (norms, biases) to AdamW (orthokit.optim.hybrid does this)"
            )
        flatten = group.get("flatten")
        if p.dim() == 2:
            mats, m, n = 1, shape[0], shape[1]
        elif flatten is True or (flatten is None and p.dim() >= 4):
            mats, m, n = 1, shape[0], math.prod(shape[1:])
        else:
            mats, m, n = math.prod(shape[:-2]), shape[-2], shape[-1]
        transposed = group.get("layout", "out_in") == "in_out"
        if transposed and p.dim() != 2:
            raise ValueError(
                f"parameter {name!r}: layout='in_out' is only supported for 2-D weights, got {shape}"
            )
        split = group.get("split", 1)
        if split > 1 and transposed:
            raise ValueError(
                f"parameter {name!r}: split is not supported with layout='in_out' (blocks would be column blocks)"
            )
        if split > 1:
            if m % split:
                raise ValueError(f"parameter {name!r}: {m} rows cannot be split into {split} equal blocks")
            mats, m = mats * split, m // split
        if m == 0 or n == 0 or mats == 0:
            raise ValueError(f"parameter {name!r} has an empty matrix view of shape {shape}")
        return MatrixView(shape, mats, m, n, transposed)

    #: top-level ``state_dict`` key naming the optimizer class (torch's ``load_state_dict`` ignores extra keys).
    STATE_DICT_KEY = "orthokit"

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """torch's ``state_dict`` plus ``{"orthokit": {"class": <class name>, "format": 1}}``."""
        sd = super().state_dict()
        sd[self.STATE_DICT_KEY] = {"class": type(self).__name__, "format": 1}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch semantics, validated first; afterwards matrix views are rebuilt from the loaded groups.

        Raises ``ValueError`` — and modifies nothing — when the checkpoint was saved by a different optimizer
        class, has different group sizes, when a loaded group's ``split``/``flatten``/``layout`` does not fit a
        parameter, or when a saved state tensor's shape differs from what this optimizer creates for its
        parameter (the message names the parameter and the state key). Checkpoints without the class key
        (saved by plain torch or older orthokit) are accepted if their shapes match.
        """
        if not isinstance(state_dict, dict) or "param_groups" not in state_dict or "state" not in state_dict:
            raise ValueError("state_dict must be a dict with 'state' and 'param_groups' (from state_dict())")
        meta = state_dict.get(self.STATE_DICT_KEY)
        if isinstance(meta, dict) and meta.get("class") not in (None, type(self).__name__):
            raise ValueError(
                f"state_dict was saved by optimizer class {meta.get('class')!r}, cannot load it into "
                f"{type(self).__name__}"
            )
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"state_dict has {len(saved_groups)} param group(s), this optimizer has {len(self.param_groups)}"
            )
        views: dict[Tensor, MatrixView] = {}
        for gi, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(
                    f"param group {gi}: state_dict has {len(saved['params'])} parameter(s), this optimizer has "
                    f"{len(group['params'])}"
                )
            merged = {**group, **{k: v for k, v in saved.items() if k != "params"}}
            merged["params"] = group["params"]
            self.validate_group(merged)
            if merged["algorithm"] == "ortho":
                for p in group["params"]:
                    views[p] = self._make_view(p, merged, self.param_name(p))
            _check_saved_shapes(self, merged, saved, state_dict["state"], views)
        super().load_state_dict(state_dict)
        self._views.update(views)
        self.__dict__.pop("_chains", None)

    def matrix_view(self, p: Tensor) -> MatrixView:
        """The ``[mats, m, n]`` view the orthogonalizer uses for ``p`` (``ValueError`` for non-ortho params)."""
        try:
            return self._views[p]
        except KeyError:
            raise ValueError(
                f"parameter {self.param_name(p)!r} is not in an orthogonalized param group"
            ) from None

    def param_name(self, p: Tensor) -> str:
        """The name given for ``p`` (via ``(name, param)`` pairs or :func:`hybrid`), else its group position."""
        return self._names.get(p, f"<unnamed parameter of shape {tuple(p.shape)}>")

    # ------------------------------------------------------------------ step
    def _gather_work(self) -> list[tuple[dict[str, Any], list[Tensor]]]:
        work = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                work.append((group, params))
        return work

    def _check_grads(self, work: list[tuple[dict[str, Any], list[Tensor]]]) -> bool:
        """Validate gradients; return False when the step must be skipped (non-finite + skip_nonfinite)."""
        grads: list[Tensor] = []
        owners: list[Tensor] = []
        for _, params in work:
            for p in params:
                g = p.grad
                if g.is_sparse:
                    raise ValueError(f"parameter {self.param_name(p)!r} has a sparse gradient (unsupported)")
                if g.is_complex():
                    raise ValueError(f"parameter {self.param_name(p)!r} has a complex gradient (unsupported)")
                if g.shape != p.shape:
                    raise ValueError(
                        f"parameter {self.param_name(p)!r}: gradient shape {tuple(g.shape)} != "
                        f"parameter shape {tuple(p.shape)}"
                    )
                grads.append(g)
                owners.append(p)
        norms = torch._foreach_norm(grads)
        if bool(torch.stack([n.float() for n in norms]).isfinite().all()):
            return True
        bad = [self.param_name(p) for p, g in zip(owners, grads) if not bool(torch.isfinite(g).all())]
        if not bad:  # the norm overflowed but every entry is finite
            return True
        msg = f"non-finite gradient (NaN or inf) in parameter(s) {', '.join(map(repr, bad))}"
        if self.skip_nonfinite:
            warnings.warn(f"{msg}; optimizer step skipped", RuntimeWarning, stacklevel=3)
            logger.warning("%s; optimizer step skipped", msg)
            return False
        raise NonFiniteGradientError(
            f"{msg}; no parameter or state was modified (pass skip_nonfinite=True to skip)"
        )

    def chain(self, group: dict[str, Any]) -> list[Transform]:
        """The transforms for ``group`` (AdamW chain for ``algorithm="adamw"``), bound to this optimizer.

        A fresh chain is built on every call; :meth:`step` caches one per param group and rebuilds it only when
        a hyperparameter other than ``lr`` changes (``lr`` is read from the group at update time).
        """
        ts = list(self.adamw_transforms(group) if group["algorithm"] == "adamw" else self.transforms(group))
        for t in ts:
            t.bind(self)
        return ts

    def _cached_chain(self, gi: int, group: dict[str, Any]) -> tuple[list[Transform], scale_by_shape | None]:
        """``(chain, fused trailing scale_by_shape or None)`` for group ``gi``, rebuilt when hyperparameters change."""
        sig = _group_signature(group)
        cache = self.__dict__.setdefault("_chains", {})
        hit = cache.get(gi)
        if hit is not None and hit[0] == sig:
            return hit[1], hit[2]
        chain = self.chain(group)
        # Fusion: a trailing scale_by_shape (followed only by transforms that pass updates through, e.g. weight
        # decay) is folded into the final foreach add as per-scale alphas — one pass over the updates less.
        fused: scale_by_shape | None = None
        if not isinstance(group["lr"], Tensor):
            for k in range(len(chain) - 1, -1, -1):
                if isinstance(chain[k], scale_by_shape):
                    fused = chain.pop(k)  # type: ignore[assignment]
                    break
                if not getattr(chain[k], "passthrough", False):
                    break
        cache[gi] = (sig, chain, fused)
        return chain, fused

    def _run_group(
        self, gi: int, group: dict[str, Any], params: list[Tensor]
    ) -> tuple[list[Tensor], scale_by_shape | None]:
        """Run group ``gi``'s chain; return its final updates (parameters untouched unless a transform says so)."""
        chain, fused = self._cached_chain(gi, group)
        states = [self.state[p] for p in params]
        for p, st in zip(params, states):
            if not st:
                for t in chain:
                    st.update(t.init(p, group))
        for t in chain:  # chains are cached across steps: transforms holding per-step scratch reset it here
            begin = getattr(t, "begin_step", None)
            if begin is not None:
                begin()
        updates: list[Tensor] = [p.grad for p in params]  # type: ignore[misc]
        taps = self.__dict__.get("_taps")
        for t in chain:
            new = t.update(updates, states, params, group)
            if taps:
                for tap in list(taps.values()):
                    tap(t, updates, new, params)
            updates = new
        return updates, fused

    def _commit_group(
        self, group: dict[str, Any], params: list[Tensor], updates: list[Tensor], fused: scale_by_shape | None
    ) -> None:
        lr = group["lr"]
        if isinstance(lr, Tensor):
            torch._foreach_sub_(params, torch._foreach_mul(updates, lr))
        elif lr != 0 and fused is None:
            torch._foreach_add_(params, updates, alpha=-lr)
        elif lr != 0:
            by_factor: dict[float, tuple[list[Tensor], list[Tensor]]] = {}
            for p, u, f in zip(params, updates, fused.factors(params)):
                ps, us = by_factor.setdefault(f, ([], []))
                ps.append(p)
                us.append(u)
            for f, (ps, us) in by_factor.items():
                torch._foreach_add_(ps, us, alpha=-lr * f)

    def register_update_tap(self, fn: Any) -> Any:
        """Call ``fn(transform, inputs, outputs, params)`` after every transform of every step (inspection only:
        ``fn`` must not modify the tensors). Used by the conformance suite to look at the orthogonalized
        direction before a method's rescaling. Returns a handle with ``.remove()``.

        Example:
            >>> import torch
            >>> from orthokit.optim import Muon
            >>> w = torch.nn.Parameter(torch.randn(6, 4)); w.grad = torch.randn(6, 4)
            >>> opt = Muon([w]); seen = []
            >>> h = opt.register_update_tap(lambda t, i, o, p: seen.append(t.name))
            >>> opt.step(); h.remove(); seen
            ['momentum', 'orthogonalize', 'decoupled_weight_decay']
        """
        from collections import OrderedDict

        from torch.utils.hooks import RemovableHandle

        taps = self.__dict__.setdefault("_taps", OrderedDict())
        handle = RemovableHandle(taps)
        taps[handle.id] = fn
        return handle

    # ------------------------------------------------------------------ transactional step
    def defer_param_op(self, fn: Any) -> bool:
        """Queue ``fn()`` (an in-place parameter change such as weight decay) to run at commit time.

        Returns False when no step is in progress (the caller should then apply it immediately). Transforms
        use this so that parameters change only after every group's update is known to be finite.
        """
        pending = self.__dict__.get("_pending_param_ops")
        if pending is None:
            return False
        pending.append(fn)
        return True

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        """Perform one optimization step (``closure`` re-evaluates the loss, torch semantics).

        Transactional: gradients are checked first (one host sync); every group's update is then computed with
        parameter writes deferred; if a transform raises, or an update is non-finite although the gradients
        were finite, parameters and optimizer state are restored exactly and the error is raised
        (:class:`NonFiniteUpdateError`; with ``skip_nonfinite=True`` the step is skipped with a warning).
        Set ``optimizer.transactional = False`` to drop the snapshot (one copy of the state per step).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = self._gather_work()
        if not work or not self._check_grads(work):
            return loss
        index = {id(g): i for i, g in enumerate(self.param_groups)}
        iwork = [(index[id(g)], g, ps) for g, ps in work]
        transactional = getattr(self, "transactional", True)
        snap = _snapshot(self, iwork) if transactional else None
        pending: list[Any] = []
        self.__dict__["_pending_param_ops"] = pending
        try:
            results = []
            for gi, group, params in iwork:
                updates, fused = self._run_group(gi, group, params)
                results.append((group, params, updates, fused))
            bad = _nonfinite_updates(self, results)
        except BaseException:
            self.__dict__["_pending_param_ops"] = None
            if snap is not None:
                _restore(snap)
            raise
        self.__dict__["_pending_param_ops"] = None
        if bad:
            if snap is not None:
                _restore(snap)
            msg = (
                f"non-finite update or state (NaN or inf; a finite gradient too large for the state's dtype "
                f"overflows) for parameter(s) {', '.join(bad)} from finite gradients"
            )
            if self.skip_nonfinite:
                warnings.warn(f"{msg}; optimizer step skipped", RuntimeWarning, stacklevel=2)
                logger.warning("%s; optimizer step skipped", msg)
                return loss
            state_note = "parameters and state restored" if snap is not None else "transactional=False"
            raise NonFiniteUpdateError(f"{msg}; {state_note}")
        for fn in pending:
            fn()
        for group, params, updates, fused in results:
            self._commit_group(group, params, updates, fused)
        return loss


def _check_saved_shapes(
    opt: OrthogonalOptimizer,
    group: dict[str, Any],
    saved: dict[str, Any],
    saved_state: dict[Any, Any],
    views: dict[Tensor, MatrixView],
) -> None:
    """Compare every saved state tensor with the one this optimizer would create for its parameter."""
    old_views = dict(opt._views)
    opt._views.update(views)
    try:
        chain = opt.chain(group)
        for pid, p in zip(saved["params"], group["params"]):
            st = saved_state.get(pid)
            if not st:
                continue
            with torch.random.fork_rng(devices=[]):
                expected: dict[str, Any] = {}
                for t in chain:
                    expected.update(t.init(p, group))
            for k, v in st.items():
                if k not in expected:
                    raise ValueError(
                        f"parameter {opt.param_name(p)!r}: saved state has key {k!r} that "
                        f"{type(opt).__name__} does not use (expected keys {sorted(expected)})"
                    )
                e = expected[k]
                if isinstance(e, Tensor) and isinstance(v, Tensor) and tuple(e.shape) != tuple(v.shape):
                    raise ValueError(
                        f"parameter {opt.param_name(p)!r}: saved state {k!r} has shape {tuple(v.shape)}, "
                        f"expected {tuple(e.shape)} (parameter shape {tuple(p.shape)})"
                    )
    finally:
        opt._views.clear()
        opt._views.update(old_views)


def _snapshot(
    opt: OrthogonalOptimizer, work: list[tuple[int, dict[str, Any], list[Tensor]]]
) -> dict[str, Any]:
    """What a failed step must restore: the state dicts (their tensors cloned) and, for groups whose chain
    has a transform that may write parameters in place (``touches_params``, True unless a transform says
    otherwise), the parameters. The first step of a parameter (empty state) costs nothing."""
    snap_state: list[tuple[dict[str, Any], dict[str, Any]]] = []
    src: list[Tensor] = []
    snap_params: list[tuple[Tensor, Tensor]] = []
    for gi, group, params in work:
        chain, _ = opt._cached_chain(gi, group)
        touches = any(getattr(t, "touches_params", True) for t in chain)
        for p in params:
            st = opt.state[p]
            snap_state.append((st, dict(st)))
            src.extend(v for v in st.values() if isinstance(v, Tensor))
            if touches:
                snap_params.append((p, p.detach().clone()))
    dst = [t.clone() for t in src]
    return {"state": snap_state, "tensors": list(zip(src, dst)), "params": snap_params}


def _restore(snap: dict[str, Any]) -> None:
    for orig, copy in snap["tensors"]:
        orig.copy_(copy)
    for st, saved in snap["state"]:
        st.clear()
        st.update(saved)
    for p, b in snap["params"]:
        p.copy_(b)


def _nonfinite_updates(
    opt, results: list[tuple[dict[str, Any], list[Tensor], list[Tensor], Any]]
) -> list[str]:
    """Names of parameters whose final update, or whose new optimizer state, is not finite (one host sync on
    the happy path). Checking the state too catches a finite gradient too large for the state's dtype (an
    Adam second moment of a 1e20 fp32 gradient overflows to inf and would freeze that entry forever)."""
    items: list[tuple[Tensor, Tensor, str]] = []
    for _, ps, us, _ in results:
        for p, u in zip(ps, us):
            items.append((p, u, "update"))
            for k, v in opt.state[p].items():
                if isinstance(v, Tensor) and v.is_floating_point() and v.numel() > 0:
                    items.append((p, v, f"state {k!r}"))
    if not items:
        return []
    norms = torch._foreach_norm([t for _, t, _ in items])
    if bool(torch.stack([n.float() for n in norms]).isfinite().all()):
        return []
    return [f"{opt.param_name(p)} ({what})" for p, t, what in items if not bool(torch.isfinite(t).all())]


def _freeze(v: Any) -> Any:
    if isinstance(v, Tensor):
        return ("tensor", id(v))
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    try:
        hash(v)
    except TypeError:
        return ("id", id(v))
    return v


def _group_signature(group: dict[str, Any]) -> tuple[Any, ...]:
    """Hyperparameters a chain is built from: everything but ``params``/``param_names``/``lr`` (``lr`` is read
    from the group at update time, so LR schedulers do not force a rebuild); a float ``lr`` and a tensor ``lr``
    fuse differently, so the lr *kind* is part of the signature."""
    return (
        isinstance(group["lr"], Tensor),
        tuple(sorted((k, _freeze(v)) for k, v in group.items() if k not in ("params", "param_names", "lr"))),
    )
