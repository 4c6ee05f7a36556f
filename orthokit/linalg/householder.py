"""Products of Householder reflections in compact WY form: build the matrix or apply it directly."""

from __future__ import annotations

import torch

from orthokit.linalg._checks import check_finite, check_matrix, compute_dtype

__all__ = ["householder_product", "householder_apply"]


def _unit_rows(V: torch.Tensor) -> torch.Tensor:
    check_matrix(V, "V")
    check_finite(V, "V")
    cd = compute_dtype(V.dtype)
    v = V.to(cd)
    norms = torch.linalg.vector_norm(v, dim=-1, keepdim=True)
    zero = norms.detach().squeeze(-1) == 0
    if bool(zero.any()):
        rows = sorted(set(torch.nonzero(zero)[:, -1].tolist()))[:10]
        raise ValueError(f"V has zero Householder vector(s) at row index {rows}: I − 2vvᵀ/‖v‖² is undefined")
    return v / norms


def _wy_t(u: torch.Tensor) -> torch.Tensor:
    """Upper-triangular ``T`` with ``H_1⋯H_r = I − Uᵀ T U`` for unit rows ``u`` (LAPACK ``larft``, τ = 2).

    Recurrence (Schreiber & Van Loan 1989): ``T_1 = [τ₁]``,
    ``T_k = [[T_{k−1}, −τ_k T_{k−1} U_{<k} u_k], [0, τ_k]]``.
    """
    r = u.shape[-2]
    gram = u @ u.mT  # [..., r, r]
    batch = u.shape[:-2]
    two = torch.full((*batch, 1, 1), 2.0, dtype=u.dtype, device=u.device)
    t = two
    for k in range(1, r):
        col = -2.0 * (t @ gram[..., :k, k : k + 1])  # [..., k, 1]
        top = torch.cat([t, col], dim=-1)  # [..., k, k+1]
        bottom = torch.cat([torch.zeros((*batch, 1, k), dtype=u.dtype, device=u.device), two], dim=-1)
        t = torch.cat([top, bottom], dim=-2)
    return t


def householder_product(V: torch.Tensor) -> torch.Tensor:
    r"""Product of Householder reflections ``H = H_1 H_2 ⋯ H_r``, ``H_i = I − 2 v_i v_iᵀ / ‖v_i‖²``.

    The rows ``v_i`` of ``V`` (``[..., r, n]``) are the Householder vectors (any non-zero scale).
    ``H`` is orthogonal with ``det H = (−1)^r``. Built in compact WY form ``H = I − Uᵀ T U``
    (``U`` the unit rows, ``T`` ``r×r`` upper triangular; Schreiber & Van Loan, SIAM J. Sci. Stat.
    Comput. 10(1), 1989) — ``O(r n² )`` with two matmuls instead of ``r`` rank-1 updates. This is
    the adapter of HRA (Yuan et al., "Bridging the gap between low-rank and orthogonal adaptation via
    Householder reflection adaptation", NeurIPS 2024): ``W' = W·H_1⋯H_r``; to apply it to
    activations without forming ``H`` use :func:`householder_apply`.
    Computed in ≥ float32, returned in the input dtype; differentiable.

    Args:
        V: ``[..., r, n]`` real tensor, finite, no zero rows.

    Returns:
        ``[..., n, n]`` orthogonal matrix ``H_1 ⋯ H_r``.

    Raises:
        ValueError: zero row (names its index), non-finite, fewer than 2 dims.

    Example:
        >>> v = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
        >>> householder_product(v).round(decimals=12)   # reflection across the line x = -y
        tensor([[ 0., -1.],
                [-1.,  0.]], dtype=torch.float64)
    """
    u = _unit_rows(V)
    n = u.shape[-1]
    t = _wy_t(u)
    eye = torch.eye(n, dtype=u.dtype, device=u.device)
    return (eye - u.mT @ (t @ u)).to(V.dtype)


def householder_apply(V: torch.Tensor, X: torch.Tensor, *, transpose: bool = False) -> torch.Tensor:
    r"""``X @ (H_1 ⋯ H_r)`` (or ``X @ (H_1 ⋯ H_r)ᵀ`` with ``transpose=True``) without forming the matrix.

    With unit rows ``U`` (``[r, n]``) and the WY factor ``T``: ``X H = X − ((X Uᵀ) T) U`` and
    ``X Hᵀ = X − ((X Uᵀ) Tᵀ) U`` — cost ``O(m n r)`` for ``m`` rows instead of ``O(m n²)``
    (plus ``O(r² n)`` once for ``T``). ``H`` acts on the **last** dim of ``X`` (row vectors); with a
    2-D ``V`` ``X`` may have any leading shape, with batched ``V`` the shapes broadcast like
    ``X @ H`` (``X`` then needs a row dimension ``[..., m, n]``). Since each ``H_i`` is symmetric,
    ``transpose=True`` applies ``H_r ⋯ H_1`` — the inverse map. Computed in ≥ float32, returned in
    ``X``'s dtype; differentiable in ``V`` and ``X``. (HRA, Yuan et al. NeurIPS 2024.)

    Args:
        V: ``[..., r, n]`` Householder vectors (rows), finite, non-zero.
        X: ``[..., n]`` (or ``[..., m, n]`` for batched ``V``) floating tensor.
        transpose: apply ``Hᵀ = H_r⋯H_1`` instead of ``H``.

    Example:
        >>> V = torch.randn(4, 16, dtype=torch.float64)
        >>> X = torch.randn(3, 16, dtype=torch.float64)
        >>> bool(torch.allclose(householder_apply(V, X), X @ householder_product(V)))
        True
    """
    u = _unit_rows(V)
    if not isinstance(X, torch.Tensor):
        raise TypeError(f"X must be a torch.Tensor, got {type(X).__name__}")
    if not X.is_floating_point():
        raise ValueError(f"X must be a floating tensor, got dtype {X.dtype}")
    if X.dim() < 1 or X.shape[-1] != u.shape[-1]:
        raise ValueError(
            f"X's last dimension must be n = {u.shape[-1]} (V is {tuple(V.shape)}), got {tuple(X.shape)}"
        )
    if u.dim() > 2 and X.dim() < 2:
        raise ValueError("with batched V, X must be [..., m, n]")
    check_finite(X, "X")
    t = _wy_t(u)
    if transpose:
        t = t.mT
    cd = compute_dtype(torch.promote_types(X.dtype, u.dtype))
    x = X.to(cd)
    u = u.to(cd)
    t = t.to(cd)
    coeff = (x @ u.mT) @ t
    return (x - coeff @ u).to(X.dtype)
