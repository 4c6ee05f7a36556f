r"""Cayley SGD on the Stiefel manifold — the optimizer SpinQuant learns its rotations with.

This is SpinQuant's ``SGDG`` (``facebookresearch/SpinQuant``, ``train_utils/optimizer.py``), itself the
Cayley SGD of Li, Fuxin & Todorovic, *Efficient Riemannian Optimization on the Stiefel Manifold via the Cayley
Transform*, ICLR 2020 (arXiv 2002.01113), Algorithm 1. Written from the paper and the reference's behaviour.

A parameter ``P`` of shape ``(p, n)``, ``p <= n``, has orthonormal **rows** (a square rotation ``R`` used as
``x ↦ x @ R`` is the case ``p = n``). The update works on the column matrix ``X = Pᵀ`` (``n × p``):

.. math::

    M &\leftarrow \beta M - \nabla_X f, \qquad
    \hat W = M X^\top - \tfrac12 X (X^\top M X^\top), \qquad W = \hat W - \hat W^\top \ (\text{skew}), \\
    \alpha &= \min\bigl(\mathrm{lr},\ 1/(\lVert W\rVert_1 + 10^{-8})\bigr)
    \quad (\lVert W\rVert_1 = \max_j \textstyle\sum_i |W_{ij}|,\ \text{the matrix 1-norm}), \\
    Y_0 &= X + \alpha M, \qquad Y_{k+1} = X + \tfrac{\alpha}{2} W (X + Y_k)\quad (k < 5), \qquad
    X \leftarrow Y_5, \quad M \leftarrow W X_{\text{old}}.

The fixed point of the iteration is the Cayley retraction
``Y* = (I − α/2·W)⁻¹ (I + α/2·W) X``, which is exactly orthonormal because ``W`` is skew. The iteration error
contracts by ``α‖W‖₂/2 ≤ 1/2`` per step (``‖W‖₂ ≤ ‖W‖₁`` for a skew matrix, and ``α‖W‖₁ ≤ 1``), so after ``K``
iterations ``‖Y_K − Y*‖₂ ≤ (α‖W‖₂/2)^K ‖Y_0 − Y*‖₂`` — the truncation error the tests check against.

Deviations from the reference (each an option):

* **QR re-orthonormalization.** SpinQuant re-orthonormalizes ``X`` by a sign-fixed QR with probability 1/101 per
  step, drawn from Python's global ``random`` (not reproducible from a seed). Here it is deterministic:
  ``qr_every=101`` re-orthonormalizes before every 101st step (same expected rate); ``qr_every=None`` never does.
* **Momentum.** The reference rebinds its local ``V`` before ``V.copy_(W X)``, so its momentum buffer stays zero
  whatever ``momentum`` is. SpinQuant trains with ``momentum=0`` (the default), where both agree exactly. Here a
  non-zero ``momentum`` works as in Li et al. (the buffer becomes ``W X``).
* A step whose result is not finite raises ``ValueError`` and leaves parameters and state untouched.

Example:
    >>> import torch
    >>> from orthokit.rotation.cayley_sgd import CayleySGD
    >>> A = torch.randn(8, 8, generator=torch.Generator().manual_seed(0))
    >>> target = torch.linalg.matrix_exp(A - A.T)  # a rotation in SO(8)
    >>> R = torch.nn.Parameter(torch.eye(8))
    >>> opt = CayleySGD([R], lr=0.1)
    >>> for _ in range(100):
    ...     opt.zero_grad()
    ...     loss = (R - target).pow(2).sum()
    ...     loss.backward()
    ...     opt.step()
    >>> bool(torch.allclose(R.detach() @ R.detach().T, torch.eye(8), atol=1e-5))
    True
    >>> round(float((R.detach() - target).pow(2).sum()), 3)  # reached the target
    0.0
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

__all__ = ["CayleySGD", "cayley_generator", "cayley_fixed_point", "qr_reorthonormalize"]


def cayley_generator(M: Tensor, X: Tensor) -> Tensor:
    """The skew-symmetric generator ``W = Ŵ − Ŵᵀ``, ``Ŵ = M Xᵀ − ½ X (Xᵀ M Xᵀ)`` (``X``, ``M``: ``n × p``).

    ``W X`` is the projection of the descent direction ``M`` onto the tangent space at ``X`` (Li et al. 2020,
    eq. 5). Skew symmetry is what keeps the retraction on the manifold.
    """
    mx = M @ X.transpose(-1, -2)
    w_hat = mx - 0.5 * X @ (X.transpose(-1, -2) @ mx)
    return w_hat - w_hat.transpose(-1, -2)


def cayley_fixed_point(X: Tensor, W: Tensor, M: Tensor, alpha: float, iterations: int) -> Tensor:
    """``iterations`` fixed-point steps ``Y ← X + α W (X + Y)/2`` from ``Y₀ = X + α M`` (→ the Cayley retraction)."""
    Y = X + alpha * M
    for _ in range(iterations):
        Y = X + alpha * (W @ (0.5 * (X + Y)))
    return Y


def qr_reorthonormalize(X: Tensor) -> Tensor:
    """Sign-fixed QR of a column matrix ``X`` (``n × p``): the nearest-by-Gram–Schmidt orthonormal ``Q`` with
    ``diag(R) > 0`` (SpinQuant's ``qr_retraction``)."""
    q, r = torch.linalg.qr(X)
    d = torch.diagonal(r, 0, -2, -1).sign()
    d = torch.where(d == 0, torch.ones_like(d), d)
    return q * d.unsqueeze(-2)


class CayleySGD(torch.optim.Optimizer):
    """SGD with momentum on the Stiefel manifold via the Cayley transform (SpinQuant's ``SGDG``, ``stiefel=True``).

    Every parameter must be 2-D with ``rows <= cols`` and (approximately) orthonormal rows; a square rotation
    ``R`` (used as ``x @ R``) is the usual case. See the module docstring for the update and deviations.

    Args:
        params: parameters or parameter groups.
        lr: maximal step ``α`` (the actual step is ``min(lr, 1/(‖W‖₁ + eps))``). SpinQuant uses 1.5 with a cosine
            schedule; any ``torch.optim.lr_scheduler`` works on ``group["lr"]``.
        momentum: momentum factor ``β`` (SpinQuant: 0).
        iterations: fixed-point Cayley iterations (SpinQuant: 5).
        qr_every: re-orthonormalize by sign-fixed QR before every ``qr_every``-th step (``None``: never).
        eps: the ``1e-8`` in the step-size cap.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1.5,
        momentum: float = 0.0,
        iterations: int = 5,
        qr_every: int | None = 101,
        eps: float = 1e-8,
    ) -> None:
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
            raise ValueError(f"lr must be a positive number, got {lr!r}")
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"iterations must be a positive int, got {iterations!r}")
        if qr_every is not None and (
            isinstance(qr_every, bool) or not isinstance(qr_every, int) or qr_every < 1
        ):
            raise ValueError(f"qr_every must be a positive int or None, got {qr_every!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"eps must be a positive number, got {eps!r}")
        defaults = dict(
            lr=float(lr), momentum=float(momentum), iterations=iterations, qr_every=qr_every, eps=eps
        )
        super().__init__(params, defaults)
        for gi, group in enumerate(self.param_groups):
            for pi, p in enumerate(group["params"]):
                if p.dim() != 2 or p.shape[0] > p.shape[1]:
                    raise ValueError(
                        f"CayleySGD parameter {pi} of group {gi} must be 2-D with rows <= cols (orthonormal rows), "
                        f"got shape {tuple(p.shape)}"
                    )
                if not p.is_floating_point() or p.is_complex():
                    raise TypeError(
                        f"CayleySGD parameter {pi} of group {gi} must be a real float tensor, got {p.dtype}"
                    )

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        """One Cayley SGD step for every parameter with a gradient. Raises ``ValueError`` (nothing changed) if a
        result would be non-finite."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        pending: list[tuple[Tensor, Tensor, Tensor, int]] = []
        for group in self.param_groups:
            lr, beta = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state.get(p, {})
                k = int(state.get("step", 0))
                dt = torch.promote_types(p.dtype, torch.float32)
                rows = p.detach().to(dt)
                rows = rows / (rows.norm(dim=1, keepdim=True) + 1e-8)  # SpinQuant's unit-row normalization
                X = rows.T
                if group["qr_every"] is not None and k > 0 and k % group["qr_every"] == 0:
                    X = qr_reorthonormalize(X)
                G = p.grad.detach().to(dt).T
                buf = state.get("momentum_buffer")
                M = -G if buf is None or beta == 0 else beta * buf.to(dt) - G
                W = cayley_generator(M, X)
                w_norm1 = float(W.abs().sum(dim=0).max())
                alpha = min(lr, 1.0 / (w_norm1 + group["eps"]))
                Y = cayley_fixed_point(X, W, M, alpha, group["iterations"])
                new_buf = W @ X
                if not (bool(torch.isfinite(Y).all()) and bool(torch.isfinite(new_buf).all())):
                    raise ValueError(
                        f"CayleySGD step produced non-finite values for a parameter of shape {tuple(p.shape)} "
                        "(check the gradient); nothing was changed"
                    )
                pending.append((p, Y.T.to(p.dtype), new_buf, k + 1))
        for p, new_p, new_buf, k in pending:  # commit only after every parameter succeeded
            p.copy_(new_p)
            self.state[p]["step"] = k
            self.state[p]["momentum_buffer"] = new_buf
        return loss
