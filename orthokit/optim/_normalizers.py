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

import torch

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
