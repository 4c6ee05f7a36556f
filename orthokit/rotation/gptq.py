r"""GPTQ: second-order, error-compensating weight quantization of one linear layer.

GPTQ (Frantar, Ashkboos, Hoefler, Alistarh, ICLR'23, arXiv 2210.17323; reference code ``IST-DASLab/gptq``
``gptq.py::GPTQ.fasterquant`` at commit ``9f2abd3``) minimizes the layer-output error
``‖X Wᵀ − X Ŵᵀ‖²_F = tr((W − Ŵ) H (W − Ŵ)ᵀ)/2`` with ``H = 2/n · Σ_t x_t x_tᵀ`` over calibration inputs ``x_t``.
It quantizes the columns of ``W`` one at a time (Optimal Brain Quantization with a fixed order) and, after
quantizing column ``j`` to ``q_j``, moves the error onto the columns not yet quantized:

.. math::
    W_{:,k} \mathrel{-}= \frac{w_j - q_j}{[H^{-1}_F]_{jj}} [H^{-1}_F]_{jk},\quad k \in F\setminus\{j\},\qquad
    H^{-1}_{F\setminus j} = H^{-1}_F - \frac{H^{-1}_{F,j} H^{-1}_{j,F}}{[H^{-1}_F]_{jj}}

The sequence of Schur complements of ``H^{-1}`` is read off one upper Cholesky factor ``U`` of ``H^{-1}``
(``Uᵀ U = H^{-1}``): row ``j`` of ``U`` is ``H^{-1}_{F,j}/\sqrt{[H^{-1}_F]_{jj}}``, so the update is
``W_{:,j:} -= ((w_j − q_j)/U_{jj}) U_{j,j:}``. Updates are applied lazily per block of ``block_size`` columns.

Details shared with the reference: dead inputs (``H_jj = 0``) get ``H_jj = 1`` and their weight column zeroed;
damping ``λ = percdamp · mean(diag H)`` is added to the diagonal; ``act_order`` processes columns by decreasing
``H_jj`` and restores the order at the end; ``static_groups`` computes every group's grid up front from the
(unpermuted) weights. Per-channel grids (``group_size=None``) come from the original weights.

Deviations (documented in ``docs/rotation/quantize.md``): everything runs in float64 (the reference uses
float32); with ``group_size`` (non-static) a group's grid is computed from the *error-updated* weights of its
columns, including updates of the current block that the reference's lazy copy has not yet received — the
algorithm as stated in the paper, independent of ``block_size`` (the reference matches it when every group starts
at a block start); :class:`HessianAccumulator` counts tokens, not sequences, in ``n`` (a scale factor, which
GPTQ is invariant to except through the relative damping, unchanged).

Example:
    >>> import torch
    >>> from orthokit.rotation.gptq import HessianAccumulator, gptq_quantize
    >>> from orthokit.rotation.quant import quantize_weight
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(512, 32, generator=g) @ torch.randn(32, 32, generator=g)   # correlated inputs
    >>> w = torch.randn(16, 32, generator=g)
    >>> acc = HessianAccumulator(32); acc.add(x)
    >>> wq = gptq_quantize(w, acc.hessian, 3)
    >>> err = lambda v: float((x @ (w - v).T).norm())
    >>> err(wq) < 0.8 * err(quantize_weight(w, 3))
    True
"""

from __future__ import annotations

import torch
from torch import Tensor

from orthokit.rotation.quant import check_bits, fake_quantize, find_qparams

__all__ = ["HessianAccumulator", "gptq_quantize"]


class HessianAccumulator:
    """Running ``H = 2/n · Σ_t r_t x_t x_tᵀ`` over input rows ``x_t`` (last dimension = features), in float64.

    ``r_t`` are optional per-token weights (RSQ's importance; default 1); ``n`` counts tokens. Adding batches in
    any split gives the same ``H`` up to rounding.

    Example:
        >>> import torch
        >>> acc = HessianAccumulator(3)
        >>> acc.add(torch.tensor([[1.0, 0.0, 2.0]])); acc.add(torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([3.0]))
        >>> acc.hessian
        tensor([[1., 0., 2.],
                [0., 3., 0.],
                [2., 0., 4.]], dtype=torch.float64)
        >>> acc.n_tokens
        2
    """

    def __init__(self, n_features: int, *, device: torch.device | str | None = None) -> None:
        if isinstance(n_features, bool) or not isinstance(n_features, int) or n_features <= 0:
            raise ValueError(f"n_features must be a positive int, got {n_features!r}")
        self.n_features = n_features
        self._h = torch.zeros(n_features, n_features, dtype=torch.float64, device=device)
        self.n_tokens = 0

    def add(self, x: Tensor, weights: Tensor | None = None) -> None:
        """Accumulate the rows of ``x`` (``(..., n_features)``), each weighted by ``weights`` (``x.shape[:-1]``)."""
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got {type(x).__name__}")
        if x.dim() == 0 or x.shape[-1] != self.n_features:
            raise ValueError(
                f"x must have last dimension n_features={self.n_features}, got shape {tuple(x.shape)}"
            )
        rows = x.detach().reshape(-1, self.n_features).to(device=self._h.device, dtype=torch.float64)
        m = rows.shape[0]
        if m == 0:
            return
        if not bool(torch.isfinite(rows).all()):
            raise ValueError("x contains non-finite values (nan/inf); cannot accumulate a Hessian")
        if weights is not None:
            if not isinstance(weights, Tensor):
                raise TypeError(f"weights must be a tensor or None, got {type(weights).__name__}")
            if weights.shape != x.shape[:-1]:
                raise ValueError(
                    f"weights must have shape x.shape[:-1]={tuple(x.shape[:-1])}, got {tuple(weights.shape)}"
                )
            r = weights.detach().reshape(-1).to(device=self._h.device, dtype=torch.float64)
            if not bool(torch.isfinite(r).all()) or bool((r < 0).any()):
                raise ValueError("weights must be finite and non-negative")
            lhs = rows * r[:, None]
        else:
            lhs = rows
        n = self.n_tokens
        self._h.mul_(n / (n + m)).add_(lhs.T @ rows, alpha=2.0 / (n + m))
        self.n_tokens = n + m

    @property
    def hessian(self) -> Tensor:
        """A copy of the current ``H`` (float64, symmetric positive semi-definite)."""
        return self._h.clone()


def _check_int(v: object, name: str, *, allow_none: bool = False) -> int | None:
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ValueError(f"{name} must be a positive int{' or None' if allow_none else ''}, got {v!r}")
    return v


def gptq_quantize(
    weight: Tensor,
    hessian: Tensor,
    bits: int,
    *,
    group_size: int | None = None,
    sym: bool = True,
    block_size: int = 128,
    percdamp: float = 0.01,
    act_order: bool = False,
    static_groups: bool = False,
    clip: float | bool = False,
) -> Tensor:
    """GPTQ-quantized (dequantized) copy of ``weight`` (out, in) given the input Hessian ``hessian`` (in, in).

    Args:
        weight: finite floating 2-D weight of an ``nn.Linear``; the result has its dtype.
        hessian: ``2/n Σ x xᵀ`` of the layer's inputs (see :class:`HessianAccumulator`), symmetric PSD.
        bits: 2..8 (16 returns a copy).
        group_size: ``None`` = one grid per output row; else a divisor of in_features (grid per row and group).
        sym: symmetric grid or asymmetric with zero point (see :mod:`orthokit.rotation.quant`).
        block_size: columns per lazy-update block (result independent of it up to rounding).
        percdamp: relative diagonal damping ``λ = percdamp · mean(diag H)`` (≥ 0).
        act_order: quantize columns by decreasing ``H_jj`` (order restored in the output).
        static_groups: with ``group_size``, fix all group grids from the initial weights (needed to store
            act-order models with contiguous groups).
        clip: grid clipping as in :func:`~orthokit.rotation.quant.quantize_weight` (``True`` = MSE grid search).

    Raises ``ValueError`` naming the argument on bad shapes, bits, non-finite input, or a Hessian that is not
    positive definite after damping; the inputs are never modified.

    Example:
        >>> import torch
        >>> w = torch.tensor([[0.9, 0.2, -0.4, 0.3]])
        >>> gptq_quantize(w, torch.eye(4), 4).sub(w).abs().max() < 0.9 / 7 / 2 + 1e-7   # H = I: plain rounding
        tensor(True)
    """
    if not isinstance(weight, Tensor) or not weight.is_floating_point():
        raise TypeError(
            f"weight must be a floating-point tensor, got {getattr(weight, 'dtype', type(weight).__name__)}"
        )
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (out_features, in_features), got shape {tuple(weight.shape)}")
    rows, cols = weight.shape
    if not isinstance(hessian, Tensor) or not hessian.is_floating_point():
        raise TypeError("hessian must be a floating-point tensor")
    if hessian.shape != (cols, cols):
        raise ValueError(
            f"hessian must have shape ({cols}, {cols}) for in_features={cols}, got {tuple(hessian.shape)}"
        )
    bits = check_bits(bits)
    group_size = _check_int(group_size, "group_size", allow_none=True)
    block_size = _check_int(block_size, "block_size")
    if group_size is not None and cols % group_size:
        raise ValueError(f"group_size={group_size} does not divide in_features={cols}")
    if static_groups and group_size is None:
        raise ValueError("static_groups=True needs a group_size")
    if isinstance(percdamp, bool) or not isinstance(percdamp, (int, float)) or not percdamp >= 0:
        raise ValueError(f"percdamp must be a float >= 0, got {percdamp!r}")
    if not isinstance(clip, bool) and not (isinstance(clip, (int, float)) and 0 < clip <= 1):
        raise ValueError(f"clip must be a bool or a float in (0, 1], got {clip!r}")
    if not bool(torch.isfinite(weight).all()):
        raise ValueError("weight contains non-finite values (nan/inf); cannot quantize")
    if not bool(torch.isfinite(hessian).all()):
        raise ValueError("hessian contains non-finite values (nan/inf)")
    if bits == 16:
        return weight.clone()

    dev = weight.device
    W = weight.detach().to(torch.float64).clone()
    H = hessian.detach().to(device=dev, dtype=torch.float64).clone()
    H = (H + H.T) / 2

    scale = zero = None
    if group_size is None:
        scale, zero = find_qparams(W, bits, sym=sym, clip=clip)
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    groups: list[tuple[Tensor, Tensor]] = []
    if static_groups:
        assert group_size is not None
        groups = [
            find_qparams(W[:, i : i + group_size], bits, sym=sym, clip=clip)
            for i in range(0, cols, group_size)
        ]
    perm = None
    if act_order:
        perm = torch.argsort(torch.diagonal(H), descending=True, stable=True)
        W = W[:, perm]
        H = H[perm][:, perm]
    H.diagonal().add_(percdamp * float(torch.diagonal(H).mean()))
    L, info = torch.linalg.cholesky_ex(H)
    if int(info) != 0:
        raise ValueError(
            f"hessian is not positive definite after damping (percdamp={percdamp}); increase percdamp"
        )
    U, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
    if int(info) != 0:
        raise ValueError(f"hessian is too ill-conditioned to invert (percdamp={percdamp}); increase percdamp")

    Q = torch.zeros_like(W)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if group_size is not None:
                if static_groups:
                    idx = int(perm[col]) if perm is not None else col
                    scale, zero = groups[idx // group_size]
                elif col % group_size == 0:
                    end = col + group_size
                    cur = W1[:, i : min(end, i2) - i1]
                    if end > i2:  # columns past this block: add the pending updates of the block so far
                        tail = W[:, i2:end] - Err1[:, :i] @ U[i1:col, i2:end]
                        cur = torch.cat([cur, tail], dim=1)
                    scale, zero = find_qparams(cur, bits, sym=sym, clip=clip)
            assert scale is not None and zero is not None
            w = W1[:, i]
            q = fake_quantize(w[:, None], scale, zero, bits, sym=sym)[:, 0]
            Q[:, col] = q
            err = (w - q) / U1[i, i]
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]

    if perm is not None:
        Q = Q[:, torch.argsort(perm)]
    if not bool(torch.isfinite(Q).all()):
        raise ValueError("GPTQ produced non-finite weights; check the hessian and percdamp")
    return Q.to(weight.dtype)
