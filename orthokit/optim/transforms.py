"""Composable update transforms — optax-style building blocks executed inside a ``torch.optim.Optimizer``.

A transform is a small object with two methods that operate on LISTS of tensors (one entry per parameter of a
param group that has a gradient), so ``torch._foreach_*`` kernels and batching of same-shape matrices are natural:

* ``init(param, group) -> dict[str, Tensor]`` — the state entries this transform needs for ``param``; they are
  stored in ``optimizer.state[param]`` so ``state_dict()``/``load_state_dict()`` work exactly like torch's.
* ``update(updates, states, params, group) -> list[Tensor]`` — map the incoming updates (initially the gradients)
  to new updates. ``states[i]`` is ``optimizer.state[params[i]]``; ``group`` is the param group (read the
  hyperparameters from it, so LR schedulers and per-group overrides just work).

Ownership rule (what makes the chain safe): the tensors in ``updates`` may ALIAS ``p.grad`` or optimizer state (a
momentum buffer). A transform must therefore never modify an incoming update in place; it either returns new
tensors or modifies tensors it created itself in this step. This is exactly what avoids torch.optim.Muon's
bf16 bug where ``grad.bfloat16()`` aliased the momentum buffer and ``div_`` normalized the state every step
(reference notes §2; pytorch/pytorch#190597).

An optimizer is a chain: ``momentum → orthogonalize → (normalizers) → scale_by_shape → decoupled_weight_decay``,
after which the base class applies ``p ← p − lr·update``. See ``docs/optim/framework.md``.

Example:
    >>> import torch
    >>> from orthokit.optim import transforms as T
    >>> chain = [T.momentum(0.95, nesterov=True), T.scale_by_shape("keller")]
    >>> [t.name for t in chain]
    ['momentum', 'scale_by_shape']
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from orthokit.linalg._hw import cpu_has_fast_bf16

if TYPE_CHECKING:  # pragma: no cover
    from orthokit.optim.base import OrthogonalOptimizer

__all__ = [
    "Transform",
    "MatrixView",
    "SCALE_MODES",
    "shape_scale",
    "momentum",
    "orthogonalize",
    "scale_by_shape",
    "decoupled_weight_decay",
    "adam",
    "resolve_ns_dtype",
    "cpu_has_fast_bf16",
    "CPU_BF16_MIN_DIM",
    "resolve_polar_method",
]

SCALE_MODES: tuple[str, ...] = ("keller", "match_rms_adamw", "spectral", "none")
MOMENTUM_CONVENTIONS: tuple[str, ...] = ("ema", "sum")


@dataclass(frozen=True)
class MatrixView:
    """How a parameter is seen as a batch of matrices ``[mats, m, n]`` by the orthogonalizer.

    ``m`` is the fan-out (rows, output features), ``n`` the fan-in (columns). Reshaping the (contiguous) update
    with ``u.reshape(mats, m, n)`` gives the matrices; this covers plain 2-D weights ``(1, out, in)``, conv kernels
    flattened to ``(1, out, in·kh·kw)``, 3-D expert stacks ``(E, m, n)`` and fused QKV weights split into row blocks
    ``(3, out/3, in)``. ``transposed=True`` marks weights stored as ``(in, out)`` (HuggingFace ``Conv1D``): the
    matrices keep their storage layout (the polar factor is transpose-equivariant) and :attr:`fan_out` /
    :attr:`fan_in` give the semantic sizes used for shape scaling.

    Example:
        >>> MatrixView(shape=(64, 3, 3, 3), mats=1, m=64, n=27).n
        27
    """

    shape: tuple[int, ...]
    mats: int
    m: int
    n: int
    transposed: bool = False

    @property
    def fan_out(self) -> int:
        """Output features of each matrix (``m``, or ``n`` for ``transposed`` in×out storage like HF ``Conv1D``)."""
        return self.n if self.transposed else self.m

    @property
    def fan_in(self) -> int:
        """Input features of each matrix (``n``, or ``m`` for ``transposed`` storage)."""
        return self.m if self.transposed else self.n

    def as_matrices(self, t: Tensor) -> Tensor:
        """``t`` (shaped like the parameter) reshaped to ``[mats, m, n]``."""
        return t.reshape(self.mats, self.m, self.n)


def shape_scale(mode: str, m: int, n: int) -> float:
    """The lr multiplier for an orthogonalized ``m×n`` (fan_out × fan_in) update.

    * ``"keller"``: ``sqrt(max(1, m/n))`` (Jordan et al. 2024, torch.optim.Muon ``adjust_lr_fn="original"``);
    * ``"match_rms_adamw"``: ``0.2·sqrt(max(m, n))`` — update RMS ≈ 0.2·lr so AdamW's lr/wd transfer
      (Liu et al. 2025, Moonlight, arXiv:2502.16982);
    * ``"spectral"``: ``sqrt(m/n)`` — update spectral norm = lr·sqrt(fan_out/fan_in) (Dion's ``spectral_norm``);
    * ``"none"``: 1.

    Example:
        >>> shape_scale("keller", 3072, 768), round(shape_scale("match_rms_adamw", 768, 3072), 4)
        (2.0, 11.0851)
    """
    if mode == "keller":
        return math.sqrt(max(1.0, m / n))
    if mode == "match_rms_adamw":
        return 0.2 * math.sqrt(max(m, n))
    if mode == "spectral":
        return math.sqrt(m / n)
    if mode == "none":
        return 1.0
    raise ValueError(f"unknown scale mode {mode!r}; valid: {', '.join(SCALE_MODES)}")


class Transform:
    """Base class of an update transform (see module docstring for the contract).

    Subclasses set ``name`` and ``state_keys`` and override :meth:`init` / :meth:`update`. :meth:`bind` is called
    by the optimizer before every :meth:`update` and gives access to the optimizer (matrix views, parameter
    names, distributed context).
    """

    name: str = "transform"
    state_keys: tuple[str, ...] = ()
    optimizer: OrthogonalOptimizer | None = None
    #: whether :meth:`update` may write parameters in place (then a transactional step snapshots them). True
    #: unless a transform declares otherwise; weight decay defers its write through the optimizer instead.
    touches_params: bool = True

    def bind(self, optimizer: OrthogonalOptimizer) -> None:
        """Attach the owning optimizer (called by the optimizer; no need to call it yourself)."""
        self.optimizer = optimizer

    def init(self, param: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        """State entries for a parameter seen for the first time (default: none)."""
        return {}

    def update(
        self, updates: list[Tensor], states: list[dict[str, Any]], params: list[Tensor], group: dict[str, Any]
    ) -> list[Tensor]:
        """Return the transformed updates (must not modify ``updates`` in place)."""
        raise NotImplementedError(f"{type(self).__name__} must implement update()")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def _view(self, p: Tensor) -> MatrixView:
        if self.optimizer is None:
            if p.dim() < 2:
                raise ValueError(f"{self.name} needs a matrix parameter, got shape {tuple(p.shape)}")
            return MatrixView(tuple(p.shape), 1, p.shape[0], math.prod(p.shape[1:]))
        return self.optimizer.matrix_view(p)


class momentum(Transform):
    r"""Heavy-ball / Nesterov momentum with an explicit buffer convention.

    * ``convention="ema"`` (torch, Keller): :math:`M ← μM + (1−μ)G`; Nesterov input :math:`U = (1−μ)G + μM`.
    * ``convention="sum"`` (Moonlight, Dion, ROOT): :math:`M ← μM + G`; Nesterov input :math:`U = G + μM`.
    * ``nesterov=False``: :math:`U = M` (returned as an alias of the buffer — later transforms must not modify it).

    After Frobenius normalization both conventions give the same orthogonalized update, but buffer magnitudes
    differ by (1−μ), so checkpoints are not interchangeable (reference notes §1.1).

    Args:
        beta: momentum coefficient μ ∈ [0, 1).
        nesterov: use the Nesterov look-ahead input.
        convention: ``"ema"`` or ``"sum"``.
        key: the state key of the buffer.

    Example:
        >>> import torch
        >>> t = momentum(0.9, nesterov=False)
        >>> g = [torch.ones(2, 2)]; st = [t.init(g[0], {})]
        >>> round(t.update(g, st, g, {})[0][0, 0].item(), 6)
        0.1
    """

    name = "momentum"
    touches_params = False

    def __init__(
        self, beta: float, nesterov: bool = True, convention: str = "ema", key: str = "momentum_buffer"
    ) -> None:
        if not 0.0 <= float(beta) < 1.0:
            raise ValueError(f"momentum beta must be in [0, 1), got {beta}")
        if convention not in MOMENTUM_CONVENTIONS:
            raise ValueError(f"momentum convention must be one of {MOMENTUM_CONVENTIONS}, got {convention!r}")
        self.beta = float(beta)
        self.nesterov = bool(nesterov)
        self.convention = convention
        self.key = key
        self.state_keys = (key,)

    def init(self, param: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        return {self.key: torch.zeros_like(param, memory_format=torch.preserve_format)}

    def update(
        self, updates: list[Tensor], states: list[dict[str, Any]], params: list[Tensor], group: dict[str, Any]
    ) -> list[Tensor]:
        bufs = [s[self.key] for s in states]
        b = self.beta
        if self.convention == "ema":
            torch._foreach_lerp_(bufs, updates, 1.0 - b)
            if self.nesterov:
                return list(torch._foreach_lerp(updates, bufs, b))
            return bufs
        torch._foreach_mul_(bufs, b)
        torch._foreach_add_(bufs, updates)
        if self.nesterov:
            return list(torch._foreach_add(updates, bufs, alpha=b))
        return bufs

    def __repr__(self) -> str:
        return f"momentum(beta={self.beta}, nesterov={self.nesterov}, convention={self.convention!r})"


#: kept for backward compatibility: the CPU dtype is now measured per shape class
#: (:mod:`orthokit.linalg.dispatch`); matrices below ``dispatch.TINY_ENTRIES`` entries always iterate in fp32.
CPU_BF16_MIN_DIM = 128


def resolve_ns_dtype(
    ns_dtype: torch.dtype | str | None, device: torch.device, shape: Sequence[int] | None = None
) -> torch.dtype | None:
    """Iteration dtype of the orthogonalizer.

    ``"auto"`` → bfloat16 on CUDA/XPU/MPS (like torch.optim.Muon and Keller's Muon). On CPU the faster of
    float32 and bfloat16 *as measured on this host* for the shape class of ``shape`` (``[..., m, n]``; probed
    once per process and cached, :func:`orthokit.linalg.dispatch.choose_dtype`; ``ORTHOKIT_CPU_BF16=0|1``
    overrides; tiny or unknown shapes → float32). ``None`` → the update's own dtype. A ``torch.dtype`` or its
    name (``"bfloat16"``) → that dtype (explicit choices are never second-guessed).

    Example:
        >>> resolve_ns_dtype("auto", torch.device("cpu"), (64, 64))
        torch.float32
        >>> resolve_ns_dtype("bfloat16", torch.device("cpu"), (768, 768))
        torch.bfloat16
    """
    if ns_dtype is None:
        return None
    if isinstance(ns_dtype, torch.dtype):
        return ns_dtype
    if ns_dtype == "auto":
        from orthokit.linalg.dispatch import choose_dtype

        return choose_dtype(device, None if shape is None else tuple(shape))
    try:
        dt = getattr(torch, str(ns_dtype))
    except AttributeError:
        dt = None
    if not isinstance(dt, torch.dtype) or not dt.is_floating_point:
        raise ValueError(f"ns_dtype must be 'auto', None or a floating torch dtype, got {ns_dtype!r}")
    return dt


def resolve_polar_method(method: str) -> tuple[str, dict[str, Any]]:
    """Map an orthogonalizer name to ``(orthokit.polar method, options)``.

    ``method`` is either a polar method (``"polar_express"``, ``"newton_schulz"``, ``"svd"``, ``"eigh"``,
    ``"qr"``) or a Newton–Schulz schedule name (``"keller"``, ``"quintic"``, ``"deepseek_v4"``,
    ``"polar_express_8"``) which selects ``method="newton_schulz", schedule=<name>``. Schedules whose scalar map
    leaves (0, 1.5] when σ is 2⁻⁸ above 1 (``"cans"``, ``"cubic5"``) are refused
    (:mod:`orthokit.optim._schedule_safety`), as are schedules marked unsafe.

    Example:
        >>> resolve_polar_method("keller")
        ('newton_schulz', {'schedule': 'keller'})
    """
    from orthokit.linalg.polar import POLAR_METHODS
    from orthokit.linalg.schedules import SCHEDULES, get_schedule

    if not isinstance(method, str):
        raise TypeError(f"orthogonalizer name must be a string, got {type(method).__name__}")
    if method in POLAR_METHODS:
        return method, {}
    key = method.strip().lower().replace("-", "_")
    if key in SCHEDULES:
        get_schedule(key)  # raises for schedules marked unsafe
        from orthokit.optim._schedule_safety import check_optimizer_schedule

        check_optimizer_schedule(key)  # raises for schedules that diverge just above σ = 1 (cans, cubic5)
        return "newton_schulz", {"schedule": key}
    from orthokit.optim._schedule_safety import safe_optimizer_schedules

    raise ValueError(
        f"unknown orthogonalizer {method!r}; valid polar methods: {', '.join(POLAR_METHODS.names())}; "
        f"Newton-Schulz schedules safe in an optimizer: {', '.join(safe_optimizer_schedules())}"
    )


def _is_dtensor(t: Tensor) -> bool:
    return type(t).__name__ == "DTensor"


class orthogonalize(Transform):
    r"""Replace each (matrix view of an) update by its polar factor :math:`\mathrm{polar}(U) ≈ U_s V_sᵀ`.

    Same-shape matrices of the param group are stacked into ONE batched ``orthokit.polar`` call (``batched=True``)
    — the result equals the per-parameter reference path (``batched=False``). Parameters with more than two dims
    are viewed as ``[mats, m, n]`` via the optimizer's :meth:`matrix_view` (conv kernels flattened to
    ``(out, in·kh·kw)``, 3-D expert stacks batched, fused QKV split into row blocks). With the optimizer's
    ``distributed`` mode on, whole matrices are assigned round-robin by size to ranks, each rank orthogonalizes
    its share, and results are broadcast from their owner (``orthokit.optim.distributed``).

    Args:
        method: orthokit polar method (``"polar_express"`` default; ``"newton_schulz"``, ``"svd"``, ...) or a
            Newton–Schulz schedule name (``"keller"``, ``"quintic"``, ...; see :func:`resolve_polar_method`).
        steps: iteration count (``None`` → the method's default).
        dtype: iteration dtype (``"auto"``, ``None`` or a torch dtype; see :func:`resolve_ns_dtype`).
        batched: stack same-shape matrices into one call.

    References: Jordan et al. 2024 (Muon); Amsel et al. 2025, arXiv:2505.16932 (Polar Express).

    Example:
        >>> import torch
        >>> t = orthogonalize("svd")
        >>> O = t.update([torch.randn(5, 3)], [{}], [torch.zeros(5, 3)], {})[0]
        >>> torch.allclose(O.T @ O, torch.eye(3), atol=1e-5)
        True
    """

    name = "orthogonalize"
    touches_params = False

    def __init__(
        self,
        method: str = "polar_express",
        steps: int | None = None,
        dtype: torch.dtype | str | None = "auto",
        batched: bool = True,
    ) -> None:
        self._polar_method, self._polar_options = resolve_polar_method(method)
        if steps is not None and (
            not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps < 100
        ):
            raise ValueError(f"ns_steps must be an int in [1, 100) or None, got {steps!r}")
        resolve_ns_dtype(dtype, torch.device("cpu"))  # validates
        self.method = method
        self.steps = steps
        self.dtype = dtype
        self.batched = bool(batched)

    def _polar(self, X: Tensor) -> Tensor:
        from orthokit.linalg.polar import polar

        dt = resolve_ns_dtype(self.dtype, X.device, X.shape)
        return polar(X, method=self._polar_method, steps=self.steps, dtype=dt, **self._polar_options)

    def compute(self, updates: Sequence[Tensor], views: Sequence[MatrixView]) -> list[Tensor]:
        """Orthogonalize ``updates`` (local, no communication); output ``i`` has ``updates[i]``'s shape/dtype."""
        out: list[Tensor | None] = [None] * len(updates)
        if not self.batched:
            for i, (u, v) in enumerate(zip(updates, views)):
                out[i] = self._polar(v.as_matrices(u)).reshape(v.shape)
            return out  # type: ignore[return-value]
        buckets: dict[tuple[Any, ...], list[int]] = defaultdict(list)
        for i, (u, v) in enumerate(zip(updates, views)):
            buckets[(v.m, v.n, u.dtype, u.device)].append(i)
        for idx in buckets.values():
            mats = [views[i].as_matrices(updates[i]) for i in idx]
            X = mats[0] if len(mats) == 1 else torch.cat(mats, dim=0)
            O = self._polar(X)
            for i, o in zip(idx, O.split([views[i].mats for i in idx], dim=0)):
                out[i] = o.reshape(views[i].shape)
        return out  # type: ignore[return-value]

    def update(
        self, updates: list[Tensor], states: list[dict[str, Any]], params: list[Tensor], group: dict[str, Any]
    ) -> list[Tensor]:
        views = [self._view(p) for p in params]
        opt = self.optimizer
        ctx = opt.dist_context if opt is not None else None
        if ctx is None and updates and _is_dtensor(updates[0]):
            from orthokit.optim.distributed import context_from_dtensor

            ctx = context_from_dtensor(updates[0])  # FSDP2 parameters: gather, orthogonalize, reshard
        if ctx is not None:
            from orthokit.optim.distributed import sharded_orthogonalize

            return sharded_orthogonalize(self, updates, views, ctx)
        return self.compute(updates, views)

    def __repr__(self) -> str:
        return (
            f"orthogonalize(method={self.method!r}, steps={self.steps}, dtype={self.dtype!r}, "
            f"batched={self.batched})"
        )


class scale_by_shape(Transform):
    """Multiply each update by :func:`shape_scale` of its matrix view's ``(fan_out, fan_in)``.

    The scale uses the per-matrix fan-out/fan-in of the view: conv kernels use ``n = in·kh·kw`` (not Keller's
    last-two-dims quirk, reference notes §3), split QKV blocks use ``m = out/3``.

    Example:
        >>> import torch
        >>> scale_by_shape("keller").update([torch.ones(8, 2)], [{}], [torch.ones(8, 2)], {})[0][0, 0].item()
        2.0
    """

    name = "scale_by_shape"
    touches_params = False

    def __init__(self, mode: str = "keller") -> None:
        if mode not in SCALE_MODES:
            raise ValueError(f"unknown scale mode {mode!r}; valid: {', '.join(SCALE_MODES)}")
        self.mode = mode

    def update(
        self, updates: list[Tensor], states: list[dict[str, Any]], params: list[Tensor], group: dict[str, Any]
    ) -> list[Tensor]:
        if self.mode == "none":
            return updates
        return list(torch._foreach_mul(updates, self.factors(params)))

    def factors(self, params: Sequence[Tensor]) -> list[float]:
        """The per-parameter multipliers (used by the optimizer to fuse the scale into the final update)."""
        out = []
        for p in params:
            v = self._view(p)
            out.append(shape_scale(self.mode, v.fan_out, v.fan_in))
        return out

    def __repr__(self) -> str:
        return f"scale_by_shape({self.mode!r})"


class decoupled_weight_decay(Transform):
    r"""Decoupled weight decay with the UNADJUSTED lr: :math:`W ← W(1 − ηλ)` (in place on the parameters).

    Reads ``lr`` and ``weight_decay`` (λ) from the group; updates pass through unchanged. Placed last so that the
    base class then applies :math:`W ← W − η·U` (Loshchilov & Hutter 2019; torch.optim.Muon; Moonlight). Inside
    an optimizer step the multiply is deferred to the commit (after every update is known to be finite), so a
    failed step leaves the parameters untouched; called directly it applies at once.

    Example:
        >>> import torch
        >>> p = [torch.ones(2, 2)]
        >>> _ = decoupled_weight_decay().update(p, [{}], p, {"lr": 0.1, "weight_decay": 0.5})
        >>> p[0][0, 0].item()
        0.949999988079071
    """

    name = "decoupled_weight_decay"
    touches_params = False
    passthrough = True  # returns its input updates unchanged (lets the optimizer fuse a preceding scale)

    def __init__(self, key: str = "weight_decay") -> None:
        self.key = key

    def update(
        self, updates: list[Tensor], states: list[dict[str, Any]], params: list[Tensor], group: dict[str, Any]
    ) -> list[Tensor]:
        wd = group.get(self.key, 0.0)
        if isinstance(wd, Tensor) or wd != 0:
            factor = 1 - group["lr"] * wd
            ps = list(params)
            opt = self.optimizer
            if opt is None or not opt.defer_param_op(lambda: torch._foreach_mul_(ps, factor)):
                torch._foreach_mul_(ps, factor)
        return updates


class adam(Transform):
    r"""Bias-corrected Adam direction (the AdamW path of hybrid optimizers).

    .. math:: m ← β_1 m + (1−β_1) g,\quad v ← β_2 v + (1−β_2) g^2,\quad
              u = \frac{m/(1−β_1^t)}{\sqrt{v/(1−β_2^t)} + ε}

    Reads ``betas`` and ``eps`` from the group; with :class:`decoupled_weight_decay` and the base class's
    ``p ← p − lr·u`` this is torch.optim.AdamW (Loshchilov & Hutter 2019, arXiv:1711.05101).
    State: ``exp_avg``, ``exp_avg_sq``, ``step`` (float32 0-d tensor, like torch).

    Example:
        >>> import torch
        >>> t = adam(); g = [torch.full((2,), 3.0)]; st = [t.init(g[0], {})]
        >>> t.update(g, st, g, {"betas": (0.9, 0.999), "eps": 1e-8})[0]
        tensor([1.0000, 1.0000])
    """

    name = "adam"
    touches_params = False
    state_keys = ("step", "exp_avg", "exp_avg_sq")

    def init(self, param: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        return {
            "step": torch.tensor(0.0, dtype=torch.float32),
            "exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format),
            "exp_avg_sq": torch.zeros_like(param, memory_format=torch.preserve_format),
        }

    def update(
        self, updates: list[Tensor], states: list[dict[str, Any]], params: list[Tensor], group: dict[str, Any]
    ) -> list[Tensor]:
        b1, b2 = group["betas"]
        eps = group["eps"]
        m = [s["exp_avg"] for s in states]
        v = [s["exp_avg_sq"] for s in states]
        steps = [s["step"] for s in states]
        torch._foreach_add_(steps, 1.0)
        torch._foreach_lerp_(m, updates, 1.0 - b1)
        torch._foreach_mul_(v, b2)
        torch._foreach_addcmul_(v, updates, updates, 1.0 - b2)
        ts = [float(t.item()) for t in steps]
        bc1 = [1.0 - b1**t for t in ts]
        bc2_sqrt = [math.sqrt(1.0 - b2**t) for t in ts]
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, bc2_sqrt)
        torch._foreach_add_(denom, eps)
        torch._foreach_mul_(denom, bc1)
        return list(torch._foreach_div(m, denom))
