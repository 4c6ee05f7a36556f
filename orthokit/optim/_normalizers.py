"""Generic, pure tensor helpers shared by the orthogonalized-optimizer variants.

Everything here acts on a (batched) matrix ``X`` of shape ``[..., m, n]`` — the layout of
``nn.Linear.weight`` (``m = fan_out``, ``n = fan_in``) — and treats leading dims as a batch of
independent matrices. Statistics are computed in at least float32 whatever the input dtype.

* :func:`fro_norm` — per-matrix Frobenius norm ``‖X‖_F`` (keepdim, float32+).
* :func:`rescale_to_norm` — ``X · target / (‖X‖_F + eps)``.
* :func:`second_moment_normalize` — the Adam-type second-moment step used after orthogonalization by
  NorMuon (one statistic per row, arXiv:2510.05491) and AdaMuon (one per entry, arXiv:2507.11005):
  ``v ← β₂ v + (1−β₂)·mean_R(X⊙X)``, ``X ← X / (sqrt(v / bc) + eps)`` with optional bias correction
  ``bc = 1 − β₂ᵗ``.
* :func:`soft_threshold` / :func:`abs_quantile` — proximal outlier split used by ROOT (arXiv:2511.20626).
* :func:`max_abs` / :func:`safe_norm` — overflow-free norms: the matrix is divided by its largest entry before
  anything is squared, and the norm comes back in float64 (a finite fp32 gradient of 1e20 entries has a squared
  norm ~1e40·mn, beyond float32's 3.4e38).
* :class:`StepStage`, :class:`staged_momentum`, :class:`commit_stage` — a two-phase step for the transform chain:
  state writes (momentum buffers, statistics, factors) and in-place parameter factors (weight decay) are *staged*
  while the update is computed, and written only by :class:`commit_stage` once every update and every staged
  value is finite. A step that cannot be computed raises :class:`StepComputationError` and leaves parameters and
  state exactly as they were.

Example:
    >>> import torch
    >>> from orthokit.optim._normalizers import fro_norm, rescale_to_norm
    >>> x = torch.randn(3, 4, 5)
    >>> y = rescale_to_norm(x, 2.0)
    >>> torch.allclose(fro_norm(y).flatten(), torch.full((3,), 2.0), atol=1e-5)
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from orthokit.optim.transforms import Transform

__all__ = [
    "work_dtype",
    "fro_norm",
    "rescale_to_norm",
    "second_moment_normalize",
    "soft_threshold",
    "abs_quantile",
    "check_unit_interval",
    "check_positive",
    "state_dtype",
    "max_abs",
    "safe_norm",
    "StepComputationError",
    "StepStage",
    "staged_momentum",
    "commit_stage",
    "prescale",
]


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half/bfloat16/float32 inputs, float64 stays float64 (statistics precision)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def fro_norm(x: torch.Tensor) -> torch.Tensor:
    """Per-matrix Frobenius norm ``‖X‖_F`` over the last two dims, shape ``[..., 1, 1]``, float32 or float64.

    Args:
        x: tensor ``[..., m, n]``.

    Example:
        >>> fro_norm(torch.ones(2, 3)).item()  # sqrt(6)
        2.449489...
    """
    if x.dim() < 2:
        raise ValueError(f"fro_norm expects a [..., m, n] tensor, got shape {tuple(x.shape)}")
    return torch.linalg.vector_norm(x.to(work_dtype(x.dtype)), dim=(-2, -1), keepdim=True)


def rescale_to_norm(x: torch.Tensor, target: float | torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """``X · target / (‖X‖_F + eps)`` per matrix (out of place, returns ``x.dtype``).

    Used to restore the Frobenius norm of an orthogonalized update after a diagonal rescaling
    (NorMuon: ``target = ‖O‖_F`` before the rescale; AdaMuon: ``target = sqrt(min(m, n))``, the norm of a
    semi-orthogonal matrix).

    Args:
        x: ``[..., m, n]``.
        target: scalar or tensor broadcastable to ``[..., 1, 1]``.
        eps: added to the norm (zero matrices stay zero).
    """
    n = fro_norm(x)
    return (x.to(n.dtype) * (target / (n + eps))).to(x.dtype)


def second_moment_normalize(
    x: torch.Tensor,
    v: torch.Tensor,
    beta2: float,
    *,
    reduce_last: bool,
    eps: float,
    step: int | None = None,
) -> torch.Tensor:
    r"""Adam-type second-moment normalization of an (orthogonalized) update; updates ``v`` in place.

    .. math::
        v \leftarrow \beta_2 v + (1-\beta_2)\,\mathrm{mean}_R(X\odot X),\qquad
        X \leftarrow X / (\sqrt{v / (1-\beta_2^t)} + \epsilon)

    where ``mean_R`` is the mean over the last dim (``reduce_last=True``: one statistic per row,
    i.e. per output neuron — NorMuon) or the identity (elementwise — AdaMuon). The bias correction
    ``1 − β₂ᵗ`` is applied only when ``step`` (``t ≥ 1``) is given (NorMuon's official code has none,
    AdaMuon's has it).

    Args:
        x: update ``[..., m, n]``.
        v: state, float32/float64, shape ``[..., m, 1]`` (``reduce_last``) or ``[..., m, n]``.
        beta2: EMA coefficient in [0, 1).
        reduce_last: per-row statistic if True, per-entry if False.
        eps: added to ``sqrt(v)``.
        step: 1-based step count for bias correction, or ``None``.

    Returns:
        The normalized update in ``v.dtype`` (callers cast back).

    Example:
        >>> o = torch.randn(4, 6); v = torch.zeros(4, 1)
        >>> y = second_moment_normalize(o, v, 0.95, reduce_last=True, eps=1e-10)
        >>> torch.allclose(v, 0.05 * o.pow(2).mean(-1, keepdim=True))
        True

    Refs: NorMuon (Li et al., arXiv:2510.05491); AdaMuon (Si et al., arXiv:2507.11005).
    """
    if not 0.0 <= beta2 < 1.0:
        raise ValueError(f"beta2 must be in [0, 1), got {beta2}")
    xf = x.to(v.dtype)
    sq = xf * xf
    if reduce_last:
        sq = sq.mean(dim=-1, keepdim=True)
    if sq.shape != v.shape:
        raise ValueError(f"second-moment state has shape {tuple(v.shape)}, expected {tuple(sq.shape)}")
    v.mul_(beta2).add_(sq, alpha=1.0 - beta2)
    denom = v
    if step is not None:
        if step < 1:
            raise ValueError(f"step must be >= 1 for bias correction, got {step}")
        denom = v / (1.0 - beta2**step)
    return xf / (denom.sqrt() + eps)


def soft_threshold(x: torch.Tensor, tau: float | torch.Tensor) -> torch.Tensor:
    r"""Elementwise soft-thresholding (proximal operator of ``τ‖·‖₁``): ``sign(x)·max(|x| − τ, 0)``.

    ``x − soft_threshold(x, τ) = clamp(x, −τ, τ)`` — the "inlier" part ROOT orthogonalizes.

    Example:
        >>> soft_threshold(torch.tensor([-3.0, -0.5, 0.2, 2.0]), 1.0)
        tensor([-2.,  0.,  0.,  1.])
    """
    negative = bool((tau < 0).any()) if isinstance(tau, torch.Tensor) else tau < 0
    if negative:
        raise ValueError("soft_threshold needs tau >= 0")
    return torch.sign(x) * torch.clamp(x.abs() - tau, min=0)


def abs_quantile(x: torch.Tensor, q: float) -> torch.Tensor:
    """Per-matrix ``q``-quantile of ``|X|`` (lower order statistic ``k = ceil(q·N)``), shape ``[..., 1, 1]``.

    Uses ``kthvalue`` (no size limit, unlike ``torch.quantile``); for ``q = 1`` it is ``max |X|``.

    Args:
        x: ``[..., m, n]``.
        q: quantile in (0, 1].

    Example:
        >>> abs_quantile(torch.arange(1.0, 11.0).view(2, 5), 0.9).item()
        9.0
    """
    if not 0.0 < q <= 1.0:
        raise ValueError(f"quantile q must be in (0, 1], got {q}")
    if x.dim() < 2:
        raise ValueError(f"abs_quantile expects [..., m, n], got shape {tuple(x.shape)}")
    flat = x.abs().reshape(*x.shape[:-2], -1).to(work_dtype(x.dtype))
    n = flat.shape[-1]
    k = min(max(math.ceil(q * n), 1), n)
    return flat.kthvalue(k, dim=-1).values[..., None, None]


def check_unit_interval(name: str, value: object, *, closed_right: bool = False) -> float:
    """Validate a coefficient in ``[0, 1)`` (or ``[0, 1]``); return it as float, else raise ``ValueError``.

    Example:
        >>> check_unit_interval("beta2", 0.95)
        0.95
    """
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        v = float(value)  # type: ignore[arg-type]
        ok = 0.0 <= v <= 1.0 if closed_right else 0.0 <= v < 1.0
    if not ok:
        interval = "[0, 1]" if closed_right else "[0, 1)"
        raise ValueError(f"{name} must be a float in {interval}, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def check_positive(name: str, value: object) -> float:
    """Validate a float ``> 0``; return it, else raise ``ValueError``.

    Example:
        >>> check_positive("eps", 1e-8)
        1e-08
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value) > 0:
        raise ValueError(f"{name} must be a float > 0, got {value!r}")
    return float(value)


def state_dtype(param_dtype: torch.dtype) -> torch.dtype:
    """dtype of statistics state (second moments, factors): float64 for float64 params, else float32."""
    return work_dtype(param_dtype)


def max_abs(x: torch.Tensor) -> torch.Tensor:
    """Per-matrix ``max |X_ij|`` as float64, shape ``[..., 1, 1]``; 1 where the matrix is all zero.

    Dividing by it before squaring keeps every intermediate in range (entries of ``X / max_abs(X)`` lie in
    ``[-1, 1]``).

    Example:
        >>> max_abs(torch.tensor([[1.0, -3.0], [0.0, 2.0]], dtype=torch.float64)).item()
        3.0
        >>> max_abs(torch.zeros(2, 2)).item()  # all-zero matrix: 1, so dividing by it is harmless
        1.0
    """
    if x.dim() < 2:
        raise ValueError(f"max_abs expects a [..., m, n] tensor, got shape {tuple(x.shape)}")
    a = x.detach().abs().amax(dim=(-2, -1), keepdim=True).to(torch.float64)
    return torch.where(a > 0, a, torch.ones_like(a))


def safe_norm(
    x: torch.Tensor, dim: int | tuple[int, ...] = (-2, -1), scale: torch.Tensor | None = None
) -> Tensor:
    """Euclidean norm of ``x`` over ``dim`` (keepdim) in float64, without overflow for huge finite entries.

    ``‖X‖ = a·‖X/a‖`` with ``a = max_abs(X)`` per matrix (or the given ``scale``): the inner norm is ≤ sqrt(size)
    and is taken in ``x``'s working precision (float32 for fp32/bf16/fp16, float64 for float64).

    Example:
        >>> x = torch.full((4, 4), 1e20)
        >>> torch.linalg.vector_norm(x).item(), safe_norm(x).item()
        (inf, 4e+20)
    """
    a = max_abs(x) if scale is None else scale
    xs = x.to(work_dtype(x.dtype)) / a.to(work_dtype(x.dtype))
    return torch.linalg.vector_norm(xs, dim=dim, keepdim=True).to(torch.float64) * a


class StepComputationError(ValueError):
    """Raised by ``step()`` when an update cannot be computed in finite arithmetic (no parameter or state was
    modified)."""


class StepStage:
    """Deferred writes of one optimizer step (shared by the transforms of one chain).

    ``stage(target, value)`` records that ``target`` (a state tensor) must become ``value``;
    ``scale_param(p, factor)`` records ``p ← p·factor`` (weight decay). :class:`commit_stage` performs them.
    ``inputs`` holds the momentum transform's outputs (the orthogonalizer's inputs) for later transforms.

    Example:
        >>> s = StepStage(); t = torch.zeros(2); s.stage(t, torch.ones(2)); s.commit(); t
        tensor([1., 1.])
    """

    def __init__(self) -> None:
        self.writes: list[tuple[Tensor, Tensor]] = []
        self.param_factors: list[tuple[Tensor, Tensor | float]] = []
        self.inputs: list[Tensor] = []

    def stage(self, target: Tensor, value: Tensor) -> None:
        """Record ``target ← value`` (shapes must match; ``value`` is cast to ``target``'s dtype on commit)."""
        if tuple(target.shape) != tuple(value.shape):
            raise ValueError(f"staged value shape {tuple(value.shape)} != state shape {tuple(target.shape)}")
        self.writes.append((target, value))

    def scale_param(self, p: Tensor, factor: Tensor | float) -> None:
        """Record ``p ← p·factor`` (``factor`` broadcastable to ``p``)."""
        self.param_factors.append((p, factor))

    def bad_values(self) -> bool:
        """True if a staged state value or parameter factor is not finite."""
        vals = [v for _, v in self.writes] + [f for _, f in self.param_factors if isinstance(f, Tensor)]
        if any(not bool(torch.isfinite(v).all()) for v in vals):
            return True
        return any(not math.isfinite(f) for _, f in self.param_factors if not isinstance(f, Tensor))

    def commit(self) -> None:
        """Write the staged state values, then apply the staged parameter factors."""
        for t, v in self.writes:
            t.copy_(v)
        for p, f in self.param_factors:
            p.mul_(f.to(p.dtype) if isinstance(f, Tensor) else f)
        self.writes.clear()
        self.param_factors.clear()


class staged_momentum(Transform):
    r"""EMA momentum :math:`M ← μM + (1−μ)G` (Nesterov input :math:`(1−μ)G + μM` if ``nesterov``; or the
    ``"sum"`` convention :math:`M ← μM + G`, input :math:`G + μM`), with the buffer write deferred to :class:`commit_stage`. State key ``momentum_buffer`` (same as
    :class:`orthokit.optim.transforms.momentum`, so checkpoints are interchangeable).

    Example:
        >>> st = StepStage(); t = staged_momentum(0.9, False, st)
        >>> g = [torch.ones(2, 2)]; s = [t.init(g[0], {})]
        >>> out = t.update(g, s, g, {}); float(s[0]["momentum_buffer"][0, 0]), float(out[0][0, 0])
        (0.0, 0.1...)
    """

    name = "staged_momentum"
    state_keys = ("momentum_buffer",)

    def __init__(self, beta: float, nesterov: bool, stage: StepStage, convention: str = "ema") -> None:
        if not 0.0 <= float(beta) < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {beta}")
        if convention not in ("ema", "sum"):
            raise ValueError(f"momentum_convention must be 'ema' or 'sum', got {convention!r}")
        self.beta = float(beta)
        self.nesterov = bool(nesterov)
        self.convention = convention
        self.stage_ = stage

    def init(self, param: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        return {"momentum_buffer": torch.zeros_like(param, memory_format=torch.preserve_format)}

    def update(
        self, updates: list[Tensor], states: list[dict[str, Any]], params: list[Tensor], group: dict[str, Any]
    ) -> list[Tensor]:
        bufs = [s["momentum_buffer"] for s in states]
        b = self.beta
        if self.convention == "ema":
            new = list(torch._foreach_lerp(bufs, updates, 1.0 - b))
            out = list(torch._foreach_lerp(updates, new, b)) if self.nesterov else new
        else:  # "sum": M ← μM + G, Nesterov input G + μM
            new = list(torch._foreach_add(torch._foreach_mul(bufs, b), updates))
            out = list(torch._foreach_add(updates, new, alpha=b)) if self.nesterov else new
        for buf, n in zip(bufs, new):
            self.stage_.stage(buf, n)
        self.stage_.inputs = out
        return out


class commit_stage(Transform):
    """Check that every update and staged value is finite, then commit the :class:`StepStage`.

    Raises :class:`StepComputationError` naming the parameters otherwise — nothing has been written at that
    point. Passes the updates through unchanged (``passthrough``, so a preceding ``scale_by_shape`` can still be
    fused into the final update by the optimizer).

    Example:
        >>> st = StepStage(); b = torch.zeros(2); st.stage(b, torch.tensor([1.0, float("nan")]))
        >>> commit_stage(st).update([torch.ones(2)], [{}], [torch.zeros(2)], {})
        Traceback (most recent call last):
        ...
        orthokit.optim._normalizers.StepComputationError: ...
    """

    name = "commit_stage"
    passthrough = True

    def __init__(self, stage: StepStage) -> None:
        self.stage_ = stage

    def begin_step(self) -> None:
        """Drop writes staged by an earlier step that failed before reaching this transform (the optimizer
        calls this at the start of every step; the chain and its stage are reused across steps)."""
        self.stage_.writes.clear()
        self.stage_.param_factors.clear()
        self.stage_.inputs = []

    def update(
        self, updates: list[Tensor], states: list[dict[str, Any]], params: list[Tensor], group: dict[str, Any]
    ) -> list[Tensor]:
        bad = [i for i, u in enumerate(updates) if not bool(torch.isfinite(u).all())]
        if bad or self.stage_.bad_values():
            self.stage_.writes.clear()
            self.stage_.param_factors.clear()
            names = self._names(params, bad)
            raise StepComputationError(
                f"the update{' of ' + names if names else ''} could not be computed in finite arithmetic; "
                "no parameter or state was modified"
            )
        self.stage_.commit()
        return updates

    def _names(self, params: Sequence[Tensor], idx: Sequence[int]) -> str:
        if self.optimizer is None:
            return ", ".join(f"#{i}" for i in idx)
        return ", ".join(repr(self.optimizer.param_name(params[i])) for i in idx)


class prescale(Transform):
    """Divide each matrix (view) of the update by its largest entry (out of place).

    Placed before ``orthogonalize`` it makes the polar factor exactly invariant to the update's scale (the
    orthogonalizer's ``‖X‖ + eps`` normalization is not for tiny matrices) and keeps every later norm in range.

    Example:
        >>> prescale().update([torch.tensor([[1e-6, -4e-6]])], [{}], [torch.zeros(1, 2)], {})[0]
        tensor([[ 0.2500, -1.0000]])
    """

    name = "prescale"

    def update(
        self, updates: list[Tensor], states: list[dict[str, Any]], params: list[Tensor], group: dict[str, Any]
    ) -> list[Tensor]:
        out = []
        for u, p in zip(updates, params):
            v = self._view(p)
            um = v.as_matrices(u)
            out.append((um / max_abs(um).to(um.dtype)).reshape(v.shape))
        return out
