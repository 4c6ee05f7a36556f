"""Uniform fake quantizers (quantize → dequantize) for weights, activations and KV caches.

Every function returns a *dequantized* tensor of the input's shape and dtype: the values lie on a uniform integer
grid ``scale · (q − zero)`` with ``q`` a ``bits``-bit integer, which is what quantization damage measurements need
(fake quantization, as in QuaRot's ``fake_quant`` and GPTQ's ``quant.py``).

Grids (QuaRot ``fake_quant/quant_utils.py`` at commit ``f06f680``; GPTQ ``IST-DASLab/gptq/quant.py``):

* symmetric: ``maxq = 2^(b−1) − 1``, ``scale = max|x| / maxq``, ``q = clamp(round(x/scale), −(maxq+1), maxq)``,
  ``x̂ = scale · q``. The grid holds zero and is signed two's complement (e.g. 4 bits: −8..7).
* asymmetric: ``maxq = 2^b − 1``, ``xmin = min(min x, 0)``, ``xmax = max(max x, 0)`` (the range always holds 0),
  ``scale = (xmax − xmin)/maxq``, ``zero = round(−xmin/scale)``, ``q = clamp(round(x/scale) + zero, 0, maxq)``,
  ``x̂ = scale · (q − zero)``.
* clipping: ``xmin, xmax ← c·xmin, c·xmax`` for a clip ratio ``c ∈ (0, 1]`` (QuaRot ``a_clip_ratio``), or, for
  weights with ``clip=True``, the shrink ``c = 1 − i/100``, ``i = 0..79`` minimizing ``Σ|x̂ − x|^2.4`` per row
  (GPTQ/QuaRot ``find_params(mse=True)``; ``--w_clip``).
* all-zero rows: ``scale = 1`` (symmetric) or range ``[−1, 1]`` (asymmetric), so they dequantize to exact zeros.
  Deviation: QuaRot clamps the weight ``max|x|`` at ``1e-5``; here only exact zeros are special-cased, so tiny
  rows keep their own scale.

Granularity: weights per output channel (one grid per row of ``W``) or per group of ``group_size`` consecutive
input columns; activations per token (one grid per vector along the last dimension); K and V per token and per
head (one grid per ``head_dim`` vector, or per ``group_size`` slice of it) — QuaRot's KV groupsize = head_dim.

``bits=16`` means "not quantized": the input is returned unchanged (a copy for weights). Otherwise ``bits`` must
be an ``int`` in 2..8. Weights are computed in float64, activations and KV in float32 (float64 if given float64),
then cast back.

Example:
    >>> import torch
    >>> from orthokit.rotation.quant import quantize_weight, quantize_activation
    >>> w = torch.tensor([[0.7, -0.3, 0.4, 0.0]])
    >>> quantize_weight(w, 2)          # maxq = 1: grid {-1.4, -0.7, 0, 0.7}
    tensor([[0.7000, -0.0000, 0.7000, 0.0000]])
    >>> quantize_activation(torch.tensor([[1.0, -2.0, 0.5]]), 8, sym=False).sub(torch.tensor([[1.0, -2.0, 0.5]])).abs().max() < 3 / 255
    tensor(True)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "check_bits",
    "fake_quantize",
    "find_qparams",
    "quantize_activation",
    "quantize_kv",
    "quantize_weight",
    "ste",
]

_MSE_NORM = 2.4
_MSE_GRID = 100
_MSE_MAXSHRINK = 0.8


def check_bits(bits: object, name: str = "bits") -> int:
    """Validate a bit width: an ``int`` in 2..8, or 16 (= not quantized). Returns it.

    Example:
        >>> check_bits(4)
        4
        >>> check_bits(1, "w_bits")
        Traceback (most recent call last):
        ...
        ValueError: w_bits must be an int in 2..8 or 16 (not quantized), got 1
    """
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise TypeError(f"{name} must be an int in 2..8 or 16 (not quantized), got {type(bits).__name__}")
    if bits != 16 and not 2 <= bits <= 8:
        raise ValueError(f"{name} must be an int in 2..8 or 16 (not quantized), got {bits}")
    return bits


def _check_ratio(c: object, name: str) -> float:
    if isinstance(c, bool) or not isinstance(c, (int, float)):
        raise TypeError(f"{name} must be a float in (0, 1], got {type(c).__name__}")
    c = float(c)
    if not (0.0 < c <= 1.0):
        raise ValueError(f"{name} must be a float in (0, 1], got {c}")
    return c


def _check_float_tensor(x: object, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    return x


def _maxq(bits: int, sym: bool) -> int:
    return 2 ** (bits - 1) - 1 if sym else 2**bits - 1


def _params_from_range(xmin: Tensor, xmax: Tensor, bits: int, sym: bool) -> tuple[Tensor, Tensor]:
    """(scale, zero) of the grid covering [xmin, xmax] (xmin ≤ 0 ≤ xmax), zero ranges made harmless."""
    maxq = _maxq(bits, sym)
    if sym:
        amax = torch.maximum(xmin.abs(), xmax)
        scale = torch.where(amax == 0, torch.ones_like(amax), amax / maxq)
        return scale, torch.zeros_like(scale)
    empty = (xmin == 0) & (xmax == 0)
    xmin = torch.where(empty, -torch.ones_like(xmin), xmin)
    xmax = torch.where(empty, torch.ones_like(xmax), xmax)
    scale = (xmax - xmin) / maxq
    zero = torch.round(-xmin / scale)
    return scale, zero


def fake_quantize(x: Tensor, scale: Tensor, zero: Tensor, bits: int, *, sym: bool = True) -> Tensor:
    """Quantize-dequantize ``x`` on the grid ``(scale, zero)`` (broadcast against ``x``), in ``x``'s dtype.

    Symmetric: ``scale·clamp(round(x/scale), −2^(b−1), 2^(b−1)−1)``; asymmetric:
    ``scale·(clamp(round(x/scale)+zero, 0, 2^b−1) − zero)``. Used by GPTQ to quantize one column at a time with
    the grid of its row/group.

    Example:
        >>> import torch
        >>> fake_quantize(torch.tensor([0.26, -1.0, 9.0]), torch.tensor(0.5), torch.tensor(0.0), 3)
        tensor([ 0.5000, -1.0000,  1.5000])
    """
    maxq = _maxq(bits, sym)
    if sym:
        return torch.clamp(torch.round(x / scale), -(maxq + 1), maxq) * scale
    q = torch.clamp(torch.round(x / scale) + zero, 0, maxq)
    return scale * (q - zero)


def find_qparams(
    x: Tensor,
    bits: int,
    *,
    sym: bool = True,
    clip: float | bool = 1.0,
    norm: float = _MSE_NORM,
    grid: int = _MSE_GRID,
    maxshrink: float = _MSE_MAXSHRINK,
) -> tuple[Tensor, Tensor]:
    """Per-row grid ``(scale, zero)`` of a 2-D tensor ``x`` (rows, n), each of shape (rows, 1), in ``x``'s dtype.

    ``clip`` is a shrink ratio in (0, 1] applied to the row range, ``True`` for the MSE grid search (shrink
    ``1 − i/grid`` for ``i < maxshrink·grid`` minimizing ``Σ|x̂ − x|^norm``, first best kept on ties), ``False`` = 1.

    Example:
        >>> import torch
        >>> s, z = find_qparams(torch.tensor([[-1.0, 3.0], [0.0, 0.0]]), 2, sym=False)
        >>> [round(v, 4) for v in s.flatten().tolist()], z.flatten().tolist()
        ([1.3333, 0.6667], [1.0, 2.0])
    """
    bits = check_bits(bits)
    if bits == 16:
        raise ValueError("find_qparams: bits=16 means not quantized; there is no grid")
    if x.dim() != 2:
        raise ValueError(f"find_qparams: x must be 2-D (rows, n), got shape {tuple(x.shape)}")
    zeros = torch.zeros((), dtype=x.dtype, device=x.device)
    xmin = torch.minimum(x.amin(dim=1, keepdim=True), zeros)
    xmax = torch.maximum(x.amax(dim=1, keepdim=True), zeros)
    if clip is True:
        best = torch.full_like(xmin, math.inf)
        scale, zero = _params_from_range(xmin, xmax, bits, sym)
        for i in range(int(maxshrink * grid)):
            p = 1.0 - i / grid
            s1, z1 = _params_from_range(p * xmin, p * xmax, bits, sym)
            err = (fake_quantize(x, s1, z1, bits, sym=sym) - x).abs().pow(norm).sum(dim=1, keepdim=True)
            better = err < best
            best = torch.where(better, err, best)
            scale = torch.where(better, s1, scale)
            zero = torch.where(better, z1, zero)
        return scale, zero
    c = 1.0 if clip is False else _check_ratio(clip, "clip")
    return _params_from_range(c * xmin, c * xmax, bits, sym)


def quantize_weight(
    w: Tensor, bits: int, *, group_size: int | None = None, sym: bool = True, clip: float | bool = 1.0
) -> Tensor:
    """Fake-quantized copy of a weight ``w`` (out, in): one grid per output row, or per ``group_size`` columns.

    Args:
        w: floating 2-D weight (``nn.Linear`` layout: out_features × in_features); must be finite.
        bits: 2..8, or 16 for an unquantized copy.
        group_size: ``None`` = per output channel; else a divisor of in_features (per row, per column group).
        sym: symmetric signed grid (default) or asymmetric with a zero point.
        clip: shrink ratio in (0, 1] applied to each grid's range, ``True`` = MSE grid search (QuaRot ``w_clip``),
            ``False`` = no clipping.

    Computed in float64 and cast back; differentiable in the trivial sense (``round`` has zero gradient — wrap
    with :func:`ste` for straight-through training).

    Example:
        >>> import torch
        >>> w = torch.tensor([[1.0, 0.6, -0.25, 0.1], [8.0, 1.0, -0.9, 2.0]])
        >>> quantize_weight(w, 3, group_size=2)   # maxq = 3; groups [1, .6], [-.25, .1], [8, 1], [-.9, 2]
        tensor([[ 1.0000,  0.6667, -0.2500,  0.0833],
                [ 8.0000,  0.0000, -0.6667,  2.0000]])
    """
    w = _check_float_tensor(w, "w")
    bits = check_bits(bits)
    if w.dim() != 2:
        raise ValueError(f"w must be 2-D (out_features, in_features), got shape {tuple(w.shape)}")
    if group_size is not None:
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0:
            raise ValueError(f"group_size must be a positive int or None, got {group_size!r}")
        if w.shape[1] % group_size:
            raise ValueError(f"group_size={group_size} does not divide in_features={w.shape[1]}")
    if not isinstance(clip, bool):
        _check_ratio(clip, "clip")
    if bits == 16:
        return w.clone()
    if not bool(torch.isfinite(w).all()):
        raise ValueError("w contains non-finite values (nan/inf); cannot quantize")
    x = w.to(torch.float64)
    rows = x.reshape(-1, group_size) if group_size is not None else x
    scale, zero = find_qparams(rows, bits, sym=sym, clip=clip)
    return fake_quantize(rows, scale, zero, bits, sym=sym).reshape(w.shape).to(w.dtype)


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _quantize_last_dim(x: Tensor, bits: int, sym: bool, clip_ratio: float, group_size: int | None) -> Tensor:
    y = x.to(_compute_dtype(x))
    n = y.shape[-1]
    g = n if group_size is None else group_size
    rows = y.reshape(-1, g)
    zeros = torch.zeros((), dtype=y.dtype, device=y.device)
    xmin = torch.minimum(rows.amin(dim=1, keepdim=True), zeros) * clip_ratio
    xmax = torch.maximum(rows.amax(dim=1, keepdim=True), zeros) * clip_ratio
    scale, zero = _params_from_range(xmin, xmax, bits, sym)
    return fake_quantize(rows, scale, zero, bits, sym=sym).reshape(x.shape).to(x.dtype)


def quantize_activation(x: Tensor, bits: int, *, sym: bool = True, clip_ratio: float = 1.0) -> Tensor:
    """Per-token fake quantization: one grid per vector along the last dimension (any leading dims).

    ``clip_ratio`` ∈ (0, 1] scales each token's range before the grid is built (QuaRot ``a_clip_ratio``; values
    beyond it saturate). ``bits=16`` returns ``x`` itself. Computed in ≥ float32, cast back to ``x.dtype``.

    Example:
        >>> import torch
        >>> quantize_activation(torch.tensor([[3.0, 1.0, -1.4], [0.0, 0.0, 0.0]]), 3)   # scale 1 for row 0
        tensor([[ 3.,  1., -1.],
                [ 0.,  0.,  0.]])
    """
    x = _check_float_tensor(x, "x")
    bits = check_bits(bits)
    clip_ratio = _check_ratio(clip_ratio, "clip_ratio")
    if bits == 16:
        return x
    if x.dim() == 0:
        raise ValueError("x must have at least 1 dimension (tokens along the last), got a scalar")
    return _quantize_last_dim(x, bits, sym, clip_ratio, None)


def quantize_kv(
    k: Tensor,
    v: Tensor,
    bits: int,
    *,
    group_size: int | None = None,
    sym: bool = False,
    clip_ratio: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Fake-quantize keys and values per token and per head: one grid per ``head_dim`` vector (last dimension),
    or per ``group_size`` slice of it.

    ``k``, ``v``: (batch, heads, seq, head_dim) as transformers' attention sees them (any leading dims work).
    Asymmetric by default, like QuaRot's ``--k_asym/--v_asym`` and SpinQuant's recipe. ``bits=16``: unchanged.

    Example:
        >>> import torch
        >>> k = torch.randn(1, 2, 5, 8); v = torch.randn(1, 2, 5, 8)
        >>> kq, vq = quantize_kv(k, v, 4, group_size=4)
        >>> bool((kq - k).abs().max() <= (k.amax(-1) - k.amin(-1)).max() / 15)
        True
        >>> quantize_kv(k, v, 16)[0] is k
        True
    """
    k = _check_float_tensor(k, "k")
    v = _check_float_tensor(v, "v")
    bits = check_bits(bits)
    clip_ratio = _check_ratio(clip_ratio, "clip_ratio")
    for name, t in (("k", k), ("v", v)):
        if t.dim() == 0:
            raise ValueError(f"{name} must have at least 1 dimension (head_dim last), got a scalar")
        if group_size is not None:
            if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0:
                raise ValueError(f"group_size must be a positive int or None, got {group_size!r}")
            if t.shape[-1] % group_size:
                raise ValueError(f"group_size={group_size} does not divide {name}'s head_dim={t.shape[-1]}")
    if bits == 16:
        return k, v
    return (
        _quantize_last_dim(k, bits, sym, clip_ratio, group_size),
        _quantize_last_dim(v, bits, sym, clip_ratio, group_size),
    )


def ste(x: Tensor, q: Tensor) -> Tensor:
    """Straight-through estimator: exactly the value of ``q``, the gradient of ``x``
    (``q.detach() + (x − x.detach())``; the second term is an exact zero that carries ``x``'s gradient).

    Example:
        >>> import torch
        >>> x = torch.tensor([0.3, 1.7], requires_grad=True)
        >>> y = ste(x, quantize_activation(x, 2))
        >>> y.sum().backward(); x.grad
        tensor([1., 1.])
    """
    if x.shape != q.shape:
        raise ValueError(f"ste: x and q must have the same shape, got {tuple(x.shape)} and {tuple(q.shape)}")
    return q.detach() + (x - x.detach())
