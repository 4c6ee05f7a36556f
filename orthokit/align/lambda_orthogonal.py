r"""λ-orthogonality (Ricci et al., NeurIPS 2025, arXiv 2509.16664): an affine map kept within λ of orthogonal.

Ricci, Biondi, Pernici, Patras, Del Bimbo, "λ-Orthogonality Regularization for Compatible Representation
Learning" (official code: github.com/miccunifi/lambda_orthogonality) learn an *affine* map between two
representation spaces while relaxing, rather than imposing, orthogonality: the map may deviate from an
orthogonal one by a tolerance λ and is penalized only beyond it.

Definition used here. A ``m×n`` matrix ``W`` is **λ-orthogonal** when ``‖G − I‖_F ≤ λ``, where ``G`` is the
Gram matrix of its smaller side (``WWᵀ`` if ``m ≤ n``, else ``WᵀW``; the two agree for square ``W``). In
singular values: ``Σᵢ (σᵢ² − 1)² ≤ λ²`` over the ``min(m, n)`` singular values, so λ = 0 is exactly the
(semi-)orthogonal set. With ``norm="spectral"`` the tolerance is ``max_i |σᵢ² − 1| ≤ λ`` instead (every
singular value in the band ``[√(1−λ), √(1+λ)]``). The paper's exact formula could not be checked against its
text or code (neither is in this project's reference store); see ``docs/align/maps.md`` § Fidelity.

Example:
    >>> import torch
    >>> from orthokit.align.lambda_orthogonal import lambda_orthogonality_penalty
    >>> Q = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))[0]
    >>> float(lambda_orthogonality_penalty(Q, 0.0)) < 1e-20
    True
    >>> float(lambda_orthogonality_penalty(1.1 * Q, 0.1))  # ‖1.21·I − I‖_F = 0.42 → (0.42 − 0.1)²
    0.1024
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from orthokit.align._aligner import Aligner
from orthokit.align.registry import ALIGNERS

__all__ = [
    "lambda_orthogonality_penalty",
    "lambda_orthogonality_gap",
    "fit_lambda_orthogonal",
    "solve_lambda_orthogonal",
]

_NORMS = ("fro", "spectral")


def _check_w(W: object, name: str = "W") -> Tensor:
    if not isinstance(W, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(W).__name__}")
    if W.dim() != 2:
        raise ValueError(f"{name} must be a 2-D matrix, got shape {tuple(W.shape)}")
    if not W.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got dtype {W.dtype}")
    return W


def _check_lam(lam: object) -> float:
    if isinstance(lam, bool) or not isinstance(lam, (int, float)):
        raise TypeError(f"lam must be a real number, got {type(lam).__name__}")
    lam = float(lam)
    if not math.isfinite(lam) or lam < 0:
        raise ValueError(f"lam must be a finite number >= 0, got {lam}")
    return lam


def lambda_orthogonality_gap(W: Tensor, *, norm: str = "fro") -> Tensor:
    r"""Distance of ``W`` from (semi-)orthogonality: ``‖G − I‖`` with ``G`` the smaller-side Gram matrix.

    ``norm="fro"``: ``‖G − I‖_F = (Σᵢ (σᵢ² − 1)²)^{1/2}``; ``norm="spectral"``: ``max_i |σᵢ² − 1|``.
    ``W`` is λ-orthogonal exactly when this is ``≤ λ``. Differentiable; the gradient at an exactly
    orthogonal ``W`` (where the Frobenius norm is not differentiable) is taken as zero.

    Args:
        W: ``m×n`` floating matrix.
        norm: ``"fro"`` (default) or ``"spectral"``.

    Returns:
        Scalar tensor in ``W``'s dtype.

    Example:
        >>> import torch
        >>> round(float(lambda_orthogonality_gap(2 * torch.eye(3))), 6)  # ‖4I − I‖_F = 3√3
        5.196152
        >>> float(lambda_orthogonality_gap(2 * torch.eye(3), norm="spectral"))
        3.0
    """
    W = _check_w(W)
    if norm not in _NORMS:
        raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}")
    m, n = W.shape
    G = W @ W.mT if m <= n else W.mT @ W
    D = G - torch.eye(G.shape[0], dtype=G.dtype, device=G.device)
    if norm == "spectral":
        return torch.linalg.matrix_norm(D, ord=2)
    sq = (D * D).sum()
    # sqrt has an infinite derivative at 0; clamp so that an exactly orthogonal W gets a zero gradient
    safe = torch.where(sq > 0, sq, torch.ones_like(sq))
    return torch.where(sq > 0, safe.sqrt(), torch.zeros_like(sq))


def lambda_orthogonality_penalty(W: Tensor, lam: float, *, norm: str = "fro") -> Tensor:
    r"""λ-orthogonality penalty ``max(0, ‖G − I‖ − λ)²`` (zero exactly on the λ-orthogonal set).

    ``G`` is the Gram matrix of ``W``'s smaller side (``WWᵀ`` for ``m ≤ n``, ``WᵀW`` otherwise), so the
    penalty depends only on the singular values: for ``norm="fro"`` it is zero iff
    ``Σᵢ (σᵢ² − 1)² ≤ λ²``. The squared hinge is continuously differentiable (its gradient is zero inside
    the tolerance and grows linearly with the violation), so it can be added to any training loss with a
    weight, or used as an exact-penalty constraint. Source: Ricci et al., NeurIPS 2025 (arXiv 2509.16664),
    "λ-orthogonality regularization"; the Frobenius form and the squared hinge are this library's choice
    (the paper's exact formula was not available to check — ``docs/align/maps.md`` § Fidelity).

    Args:
        W: ``m×n`` floating matrix (e.g. an ``nn.Linear`` weight; orientation does not matter).
        lam: tolerance λ ≥ 0; ``lam=0`` penalizes any deviation from (semi-)orthogonality.
        norm: ``"fro"`` (default) or ``"spectral"`` (every ``σᵢ²`` within ``[1−λ, 1+λ]``).

    Returns:
        Scalar tensor (differentiable w.r.t. ``W``) in ``W``'s dtype.

    Example:
        >>> import torch
        >>> W = torch.eye(3, dtype=torch.float64).requires_grad_()
        >>> p = lambda_orthogonality_penalty(1.05 * W, 0.5)  # gap 0.1025·√3 = 0.178 < 0.5
        >>> p.backward(); float(p.detach()), float(W.grad.abs().max())
        (0.0, 0.0)
    """
    lam = _check_lam(lam)
    gap = lambda_orthogonality_gap(W, norm=norm)
    return torch.relu(gap - lam) ** 2


# ---------------------------------------------------------------------------------------------- the fit
def _gap_fro(W: Tensor) -> Tensor:
    return lambda_orthogonality_gap(W, norm="fro")


def _shrink_to_tolerance(W: Tensor, lam: float, tol: float = 1e-13) -> tuple[Tensor, float]:
    r"""Move ``W`` toward its polar factor ``P`` until ``‖G − I‖_F ≤ λ``: ``W(t) = P + t(W − P)``.

    ``W`` and ``P = U Vᵀ`` share singular vectors, so ``σᵢ(t) = 1 + t(σᵢ − 1)`` and the gap
    ``(Σ ((1 + tδᵢ)² − 1)²)^{1/2}`` (``δᵢ = σᵢ − 1 ≥ −1``) is increasing in ``t ∈ [0, 1]``: bisection finds
    the largest feasible ``t``. Returns ``(W(t), t)``; ``W`` itself when already feasible.
    """
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    delta = S - 1

    def gap(t: float) -> float:
        s = 1 + t * delta
        return float(((s * s - 1) ** 2).sum().sqrt())

    if gap(1.0) <= lam:
        return W, 1.0
    lo, hi = 0.0, 1.0
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if gap(mid) <= lam else (lo, mid)
    return (U * (1 + lo * delta)) @ Vh, lo


def _gram_residual_grad(W: Tensor) -> tuple[Tensor, Tensor]:
    """``h = ‖G − I‖_F²`` (smaller-side Gram) and its gradient ``4W(WᵀW − I)`` or ``4(WWᵀ − I)W``."""
    m, n = W.shape
    if m <= n:
        D = W @ W.mT - torch.eye(m, dtype=W.dtype, device=W.device)
        return (D * D).sum(), 4 * D @ W
    D = W.mT @ W - torch.eye(n, dtype=W.dtype, device=W.device)
    return (D * D).sum(), 4 * W @ D


def _lbfgs(
    fg: Callable[[Tensor], tuple[float, Tensor]], W: Tensor, max_iter: int, tol: float, history: int = 20
) -> tuple[Tensor, int]:
    """Minimize a smooth ``fg(W) -> (value, gradient)`` by L-BFGS with an Armijo backtracking line search.

    Stops when ``‖∇‖_max ≤ tol``, when the value changes by less than ``tol·max(1, |value|)`` in one step, or
    after ``max_iter`` iterations. Returns ``(W, evaluations)``. Deterministic (no randomness).
    """
    val, g = fg(W)
    evals = 1
    S: list[Tensor] = []
    Yh: list[Tensor] = []
    for _ in range(max_iter):
        if float(g.abs().max()) <= tol:
            break
        # two-loop recursion: d = −H g
        q = g.clone()
        alphas = []
        for s_k, y_k in zip(reversed(S), reversed(Yh)):
            a_k = float((s_k * q).sum()) / float((y_k * s_k).sum())
            alphas.append(a_k)
            q -= a_k * y_k
        if S:
            q *= float((S[-1] * Yh[-1]).sum()) / float((Yh[-1] * Yh[-1]).sum())
        for (s_k, y_k), a_k in zip(zip(S, Yh), reversed(alphas)):
            b_k = float((y_k * q).sum()) / float((y_k * s_k).sum())
            q += (a_k - b_k) * s_k
        d = -q
        slope = float((g * d).sum())
        if slope >= 0:  # not a descent direction: restart from steepest descent
            S.clear()
            Yh.clear()
            d, slope = -g, -float((g * g).sum())
        t = 1.0 if S else min(1.0, 1.0 / max(float(g.abs().sum()), 1e-300))
        while True:
            W_new = W + t * d
            val_new, g_new = fg(W_new)
            evals += 1
            if val_new <= val + 1e-4 * t * slope or t < 1e-20:
                break
            t *= 0.5
        s_k, y_k = W_new - W, g_new - g
        if float((s_k * y_k).sum()) > 1e-12 * float(s_k.norm() * y_k.norm()):
            S.append(s_k)
            Yh.append(y_k)
            if len(S) > history:
                S.pop(0)
                Yh.pop(0)
        done = abs(val - val_new) <= tol * max(1.0, abs(val_new))
        W, val, g = W_new, val_new, g_new
        if done:
            break
    return W, evals


def solve_lambda_orthogonal(
    Xc: Tensor,
    Yc: Tensor,
    lam: float,
    *,
    max_outer: int = 30,
    max_inner: int = 200,
    tol: float = 1e-8,
) -> tuple[Tensor, dict[str, Any]]:
    r"""``min_W ‖Xc W − Yc‖_F² / n  s.t.  ‖G − I‖_F ≤ λ`` (centered data), by an augmented Lagrangian.

    Steps (all in ``Xc``'s dtype; float64 recommended):

    1. The unconstrained least-squares ``W_ls``; if it is λ-orthogonal it is the global optimum (the λ → ∞
       limit, affine least squares, is exact). ``λ = 0``: the feasible set is the (semi-)orthogonal matrices
       and the optimum is the Procrustes factor (exact).
    2. Otherwise start from the better (lower objective) of two feasible points — the Procrustes factor and
       ``W_ls`` shrunk toward its polar factor onto the boundary — and minimize the augmented Lagrangian
       ``f(W) + (ρ/2)·max(0, h(W) + ν/ρ)²`` with ``h = ‖G − I‖_F² − λ²`` by L-BFGS (Armijo backtracking), updating
       ``ν ← max(0, ν + ρh)`` and raising ``ρ`` ×10 when the violation does not drop 4×.
    3. Shrink the result onto the feasible set (:func:`_shrink_to_tolerance`) so ``‖G − I‖_F ≤ λ`` holds to
       rounding, and keep it only if it beats the feasible start.

    The problem is non-convex for small λ (the feasible set is a shell around the orthogonal group), so
    the result is a local minimizer from the better start; tests compare it with an independent SLSQP solve.
    ``f`` is normalized by ``‖Yc‖²/n`` so tolerances do not depend on the data's scale.

    Returns:
        ``(W, info)`` with ``info`` keys ``objective`` (normalized ``f``), ``gap``, ``outer``, ``evals``,
        ``start`` (``"least_squares"``, ``"procrustes"``, ``"shrunk_least_squares"``) and ``active``
        (whether the constraint binds).
    """
    from orthokit.align.affine import least_squares_map
    from orthokit.linalg import procrustes

    n = Xc.shape[0]
    C = Xc.mT @ Xc / n
    B = Xc.mT @ Yc / n
    f0 = float((Yc * Yc).sum()) / n
    f0 = f0 if f0 > 0 else 1.0

    def f(W: Tensor) -> Tensor:
        return ((W * (C @ W)).sum() - 2 * (W * B).sum()) / f0 + 1.0

    W_ls = least_squares_map(Xc, Yc)
    if float(_gap_fro(W_ls)) <= lam:
        return W_ls, {
            "objective": float(f(W_ls)),
            "gap": float(_gap_fro(W_ls)),
            "outer": 0,
            "evals": 0,
            "start": "least_squares",
            "active": False,
        }
    W_p = procrustes(Xc, Yc).Q
    if lam == 0:
        return W_p, {
            "objective": float(f(W_p)),
            "gap": float(_gap_fro(W_p)),
            "outer": 0,
            "evals": 0,
            "start": "procrustes",
            "active": True,
        }
    W_s, _ = _shrink_to_tolerance(W_ls, lam)
    starts = {"procrustes": W_p, "shrunk_least_squares": W_s}
    start = min(starts, key=lambda k: float(f(starts[k])))
    W0 = starts[start]
    f_start = float(f(W0))

    W = W0.clone()
    nu, rho = 0.0, 10.0
    lam2 = lam * lam
    prev_viol = math.inf
    evals = 0
    outer = 0
    for outer in range(1, max_outer + 1):  # noqa: B007 - reported in info

        def fg(V: Tensor, nu: float = nu, rho: float = rho) -> tuple[float, Tensor]:
            CV = C @ V
            fv = float((V * CV).sum() - 2 * (V * B).sum()) / f0 + 1.0
            h, dh = _gram_residual_grad(V)
            m = max(0.0, nu + rho * (float(h) - lam2))
            value = fv + (0.5 / rho) * (m * m - nu * nu)
            return value, 2 * (CV - B) / f0 + m * dh

        W, k = _lbfgs(fg, W, max_inner, tol)
        evals += k
        h = float(_gram_residual_grad(W)[0]) - lam2
        viol = max(h, 0.0)
        nu = max(0.0, nu + rho * h)
        if viol <= tol * max(lam2, 1.0) and abs(nu * h) <= tol:
            break
        if viol > 0.25 * prev_viol:
            rho *= 10.0
        prev_viol = viol
    W_final, _ = _shrink_to_tolerance(W, lam)
    if float(f(W_final)) > f_start:  # never return something worse than a feasible start
        W_final = W0
    return W_final, {
        "objective": float(f(W_final)),
        "gap": float(_gap_fro(W_final)),
        "outer": outer,
        "evals": evals,
        "start": start,
        "active": True,
    }


@ALIGNERS.register("lambda_orthogonal", aliases=("lambda_orth",), kind="near_isometry")
def fit_lambda_orthogonal(
    source: Tensor,
    target: Tensor,
    *,
    lam: float,
    center: bool = True,
    dtype: torch.dtype | None = None,
    max_outer: int = 30,
    max_inner: int = 200,
    tol: float = 1e-8,
) -> Aligner:
    r"""Affine map with a λ-orthogonal linear part: ``min ‖(X − μ_s)W + μ_t − Y‖²`` s.t. ``‖G − I‖_F ≤ λ``.

    The regularized affine adaptation of Ricci et al. (NeurIPS 2025, arXiv 2509.16664), solved here as the
    constrained problem whose penalty form is :func:`lambda_orthogonality_penalty` (the penalty is zero
    exactly on the feasible set). With centered data the optimal intercept is ``μ_t − μ_s W`` for any ``W``,
    so only ``W`` is solved for (:func:`solve_lambda_orthogonal`). Limits (exact, tested): ``λ = 0`` gives
    the Procrustes map (``orthogonal``); λ at least the least-squares map's gap gives ``affine``.

    Guarantee: ``‖G − I‖_F ≤ λ`` for the returned ``W`` (to float rounding), with ``G`` the smaller-side Gram
    matrix — every singular value satisfies ``|σᵢ² − 1| ≤ λ``, so no distance or norm changes by more than a
    factor ``√(1 ± λ)``. Needs ``d_s ≤ d_t``: a wider source is refused with a ``ValueError`` (use ``affine``,
    or reduce the source to ``d_t`` features first).

    Args:
        source: ``[n, d_s]`` anchors (finite, ``n ≥ 2``).
        target: ``[n, d_t]`` the same anchors in the target space.
        lam: tolerance λ ≥ 0.
        center: fit means (default); ``False`` fits a linear map through the origin.
        dtype: computation dtype (default float64).
        max_outer, max_inner, tol: augmented-Lagrangian outer iterations, L-BFGS iterations per outer step,
            and the relative feasibility / stationarity tolerance.

    Returns:
        :class:`~orthokit.align._aligner.Aligner` (``kind="near_isometry"``, ``lam`` set, ``info`` holding
        the solver report).

    Example:
        >>> import torch
        >>> from orthokit.align.lambda_orthogonal import fit_lambda_orthogonal
        >>> X = torch.randn(300, 4, dtype=torch.float64)
        >>> A = torch.diag(torch.tensor([1.5, 1.0, 1.0, 0.5], dtype=torch.float64))
        >>> a = fit_lambda_orthogonal(X, X @ A, lam=0.5)
        >>> a.orthogonality_error() <= 0.5 + 1e-9, a.info["active"]
        (True, True)
    """
    from orthokit.align._aligner import check_narrow_source, check_pair, resolve_dtype

    cd = resolve_dtype(dtype)
    X, Y = check_pair(source, target, dtype=cd)
    check_narrow_source(X, Y, "lambda_orthogonal")
    lam = _check_lam(lam)
    for name, v in (("max_outer", max_outer), ("max_inner", max_inner)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (0 < tol < 1):
        raise ValueError(f"tol must be a number in (0, 1), got {tol!r}")
    Xd, Yd = X.to(cd), Y.to(cd)
    if center:
        mu_s, mu_t = Xd.mean(0), Yd.mean(0)
    else:
        mu_s = torch.zeros(Xd.shape[1], dtype=cd, device=Xd.device)
        mu_t = torch.zeros(Yd.shape[1], dtype=cd, device=Yd.device)
    W, info = solve_lambda_orthogonal(
        Xd - mu_s, Yd - mu_t, lam, max_outer=max_outer, max_inner=max_inner, tol=float(tol)
    )
    info["center"] = bool(center)
    return Aligner(
        W.detach(), mu_s, mu_t, 1.0, method="lambda_orthogonal", kind="near_isometry", lam=lam, info=info
    )
