"""OrthoMerge — merging on the orthogonal group with magnitude correction (Yang, Shi, Liu, arXiv 2602.05943).

Two registered methods share the Lie-algebra machinery in this file:

* ``orthomerge_oft`` (``inputs="orthogonal"``) merges orthogonal adapters ``R_t ∈ SO(n)`` (OFT/BOFT blocks,
  ``[..., n, n]``). Each is mapped to the Lie algebra ``so(n)`` with the matrix logarithm, ``A_t = log R_t``,
  the skew matrices are combined with the paper's *magnitude correction* — the direction of the weighted sum
  and the weighted mean of the magnitudes::

      A* = (Σ_t w_t ‖A_t‖_F / Σ_t w_t) · (Σ_t w_t A_t) / ‖Σ_t w_t A_t‖_F,      R* = exp(λ A*)

  (a plain mean of T rotations pointing in different directions shrinks the angle by ~1/√T; the correction
  keeps the typical rotation angle). ``mean="karcher"`` replaces the tangent space at the identity by the
  Riemannian centre of mass (Karcher mean) of the R_t, then applies the same magnitude correction to its
  logarithm; for two inputs without correction it is the geodesic midpoint ``R_1 exp(½ log(R_1ᵀ R_2))``.

* ``orthomerge`` (``inputs="full"``) is the paper's *orthogonal-residual decoupling* for ordinary fine-tunes.
  For each 2-D weight ``W_0`` (out × in) and fine-tune ``W_t`` it takes the rotation-only Procrustes factor
  ``R_t = argmin_{R ∈ SO(d)} ‖W_0 R − W_t‖_F`` (right side, d = in) or ``‖R W_0 − W_t‖_F`` (left side, d = out),
  merges the rotations as above, and merges the residuals ``E_t = W_t − W_0 R_t`` Euclidean-ly::

      W = W_0 exp(λ A*) + λ_res · merge_res(E_1, …, E_T)      (right side)

  ``merge_res`` is the weighted mean (default; merging one or identical models returns them), the weighted sum
  (task arithmetic; the authors hard-code ``λ_res = 0.2`` with a sum) or TIES (trim to ``density``, sign
  election, disjoint mean). Tensors that are not 2-D (biases, norms; > 2-D weights are flattened to
  ``[shape[0], -1]``) have no rotation part: their whole delta is the residual.

Deviations from the authors' code (github.com/Sphere-AI-Lab/OrthoMerge @5986d4a), each deliberate:

* The authors use Cayley coordinates ``A = (R + I)⁻¹(R − I)``. Cayley⁻¹ is singular for any rotation with an
  angle π and explodes for a reflection (det R = −1, which unconstrained Procrustes returns). We use the exact
  exp/log pair instead: the logarithm is computed from the commuting symmetric/skew parts of R (see
  :func:`log_so`), is accurate up to angles within ~1e-5 of π, and handles angle exactly π by an explicit
  (documented, deterministic) branch choice. Procrustes is restricted to SO(d) (Kabsch sign fix).
* When ``W_0`` is rank-deficient on the chosen side (e.g. a wide matrix with the right side) the Procrustes
  minimiser is not unique; the authors get an arbitrary rotation of the null space, which inflates the
  magnitudes being averaged. We pick the minimiser closest to the identity (``polar(M + ε‖M‖ I)``,
  ε = 1e-12), and ``side="auto"`` rotates the smaller dimension, where ``W_0`` is generically full rank.
* The authors' "C" variant (only rows that conflict with the mean delta) is not implemented; this is "G".

Complexity per 2-D tensor and model: one d×d SVD, one d×d symmetric eigendecomposition and one d×d matrix
exponential (d = rotated dimension), all in float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from orthokit.linalg.lie import logm_orthogonal
from orthokit.merge.registry import check_merge_inputs, register_merge_method

__all__ = [
    "orthomerge",
    "orthomerge_oft",
    "log_so",
    "exp_so",
    "procrustes_so",
    "lie_combine",
    "karcher_mean_so",
    "residual_combine",
]


def _skew(A: Tensor) -> Tensor:
    return 0.5 * (A - A.transpose(-1, -2))


def _check_square(x: Tensor, what: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{what} must be floating point, got {x.dtype}")
    if x.dim() < 2 or x.shape[-1] != x.shape[-2] or x.shape[-1] == 0:
        raise ValueError(
            f"{what} must be a (batch of) square matrices [..., n, n], got shape {tuple(x.shape)}"
        )
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{what} contains NaN or inf")


def log_so(Q: Tensor) -> Tensor:
    """Principal matrix logarithm of rotations ``Q ∈ SO(n)`` (batched ``[..., n, n]``), returned in float64.

    Math: ``C = (Q + Qᵀ)/2`` and ``S = (Q − Qᵀ)/2`` commute (Q is normal); on each invariant plane with angle θ,
    ``C = cos θ·I₂`` and ``S = sin θ·J``, so ``log Q = g(C)·S`` with ``g(c) = arccos(c)/√(1 − c²)`` computed from
    the eigendecomposition of the symmetric ``C``. This is accurate to ≈ ε/sin θ (θ from ``atan2(‖S w‖, c)``).
    Eigenvalues of ``C`` within 1e-10 of −1 (θ within ~1.4e-5 of π) are treated explicitly: on that even-dimensional
    subspace ``E`` the plane orientation is taken from ``polar(Eᵀ S E + η J₀)`` (η = 1e-12, ``J₀`` pairs the
    basis vectors), which follows ``S`` when it is informative and picks a fixed branch at exactly θ = π, where
    the logarithm is not unique (both ±π are valid).

    Args:
        Q: rotation matrices (``QᵀQ = I``, ``det Q = +1``); not validated here (see :func:`orthomerge_oft`).

    Returns:
        Skew-symmetric ``A`` (float64) with ``exp(A) = Q`` and ``‖A‖₂ ≤ π``.

    Raises:
        ValueError: ``Q`` has ``det = −1`` (an odd-dimensional −1 eigenspace): reflections have no real logarithm.

    Example:
        >>> A = torch.tensor([[0.0, -0.3], [0.3, 0.0]], dtype=torch.float64)
        >>> torch.allclose(log_so(torch.linalg.matrix_exp(A)), A)
        True

    Reference: Higham, *Functions of Matrices* (2008), §11 (logarithm of normal matrices).
    """
    return logm_orthogonal(Q.to(torch.float64), check=False, method="eigh")


def exp_so(A: Tensor) -> Tensor:
    """Matrix exponential of skew-symmetric ``A`` (batched), a rotation in ``SO(n)``; computed in float64.

    Math: ``exp(A) = Σ_k A^k / k!`` (``torch.linalg.matrix_exp``, scaling-and-squaring Padé), re-skewed first so
    the result is orthogonal to machine precision.

    Example:
        >>> R = exp_so(torch.tensor([[0.0, -1.0], [1.0, 0.0]]))
        >>> torch.allclose(R.T @ R, torch.eye(2, dtype=torch.float64))
        True
    """
    return torch.linalg.matrix_exp(_skew(A.to(torch.float64)))


def procrustes_so(M: Tensor, eps: float = 1e-12) -> Tensor:
    """Rotation maximising ``tr(Rᵀ M)`` over ``SO(d)`` (Kabsch), closest to the identity when not unique.

    Math: ``M + ε‖M‖_F I = U Σ Vᵀ``; ``R = U diag(1, …, 1, sign det(U Vᵀ)) Vᵀ``. The sign flip of the smallest
    singular direction turns the reflection that unconstrained Procrustes may return into the best rotation;
    the ``ε I`` term selects, among the minimisers of a rank-deficient ``M``, the one nearest to ``I``.
    ``argmin_{R∈SO(d)} ‖W_0 R − W‖ = procrustes_so(W_0ᵀ W)``.

    Args:
        M: ``[..., d, d]`` cross-covariance (float64 recommended).
        eps: relative identity regulariser.

    Example:
        >>> R = procrustes_so(torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)))
        >>> float(torch.linalg.det(R))
        1.0

    Reference: Kabsch, Acta Cryst. A32 (1976); Schönemann, Psychometrika 31 (1966).
    """
    d = M.shape[-1]
    nrm = torch.linalg.matrix_norm(M).clamp_min(1e-300)[..., None, None]
    eye = torch.eye(d, dtype=M.dtype, device=M.device)
    U, _, Vh = torch.linalg.svd(M + eps * nrm * eye)
    sgn = torch.sign(torch.linalg.det(U @ Vh))
    sgn = torch.where(sgn == 0, torch.ones_like(sgn), sgn)
    U = U.clone()
    U[..., :, -1] = U[..., :, -1] * sgn[..., None]
    return U @ Vh


def _normalized_weights(weights: Sequence[float], what: str) -> list[float]:
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"{what}: weights must be non-negative with a positive sum, got {list(weights)}")
    return list(weights)


def lie_combine(As: Sequence[Tensor], weights: Sequence[float], magnitude_correction: bool = True) -> Tensor:
    """OrthoMerge's magnitude-corrected combination of Lie-algebra elements.

    Math: ``A* = (Σ w_t ‖A_t‖_F / Σ w_t) · (Σ w_t A_t)/‖Σ w_t A_t‖_F`` (direction of the weighted sum, weighted mean
    of the magnitudes; norms over the whole tensor, as in the authors' code); without correction the weighted mean
    ``Σ w_t A_t / Σ w_t``. A vanishing sum gives ``0``.

    Example:
        >>> A = torch.tensor([[0.0, -1.0], [1.0, 0.0]])
        >>> lie_combine([A, A], [1.0, 1.0]).allclose(A)
        True
    """
    w = _normalized_weights(weights, "lie_combine")
    tot = sum(w)
    s = sum(wi * a for wi, a in zip(w, As))
    if not magnitude_correction:
        return s / tot
    mean_mag = sum(wi * float(torch.linalg.vector_norm(a)) for wi, a in zip(w, As)) / tot
    ns = float(torch.linalg.vector_norm(s))
    if ns <= 1e-300 or mean_mag == 0.0:
        return torch.zeros_like(s)
    return s * (mean_mag / ns)


def karcher_mean_so(
    Rs: Sequence[Tensor], weights: Sequence[float], max_iter: int = 100, tol: float = 1e-13
) -> Tensor:
    """Weighted Riemannian centre of mass (Karcher mean) on ``SO(n)`` by the fixed-point iteration.

    Math: ``X ← X exp(Σ_t w̄_t log(Xᵀ R_t))`` until the update's norm is below ``tol`` (w̄ normalised weights);
    started at the log-Euclidean mean. For two rotations it converges to the geodesic midpoint
    ``R_1 exp(w̄_2 log(R_1ᵀ R_2))``. Unique when all inputs lie in a geodesic ball of radius < π/2.

    Example:
        >>> A = torch.tensor([[0.0, -0.4], [0.4, 0.0]], dtype=torch.float64)
        >>> M = karcher_mean_so([torch.eye(2, dtype=torch.float64), exp_so(A)], [1.0, 1.0])
        >>> torch.allclose(M, exp_so(A / 2))
        True

    Reference: Karcher, Comm. Pure Appl. Math. 30 (1977); Moakher, SIAM J. Matrix Anal. Appl. 24 (2002).
    """
    w = _normalized_weights(weights, "karcher_mean_so")
    tot = sum(w)
    w = [x / tot for x in w]
    Rs64 = [R.to(torch.float64) for R in Rs]
    X = exp_so(sum(wi * log_so(R) for wi, R in zip(w, Rs64)))
    for _ in range(max_iter):
        G = sum(wi * log_so(X.transpose(-1, -2) @ R) for wi, R in zip(w, Rs64))
        X = X @ exp_so(G)
        if float(torch.linalg.vector_norm(G)) < tol:
            break
    return X


def _ties(deltas: Sequence[Tensor], weights: Sequence[float], density: float) -> Tensor:
    """Per-tensor TIES (trim to ``density`` by magnitude, sign election of the weighted sum, disjoint mean)."""
    trimmed = []
    for d in deltas:
        flat = d.reshape(-1)
        k = max(1, int(math.floor(density * flat.numel())))
        if k >= flat.numel():
            trimmed.append(d)
            continue
        thr = flat.abs().kthvalue(flat.numel() - k + 1).values
        trimmed.append(torch.where(d.abs() >= thr, d, torch.zeros_like(d)))
    wd = [w * t for w, t in zip(weights, trimmed)]
    total = sum(wd)
    sign = torch.where(total >= 0, 1.0, -1.0).to(total.dtype)
    num = torch.zeros_like(total)
    den = torch.zeros_like(total)
    for w, t, x in zip(weights, trimmed, wd):
        agree = (torch.sign(t) == sign) & (t != 0)
        num = num + torch.where(agree, x, torch.zeros_like(x))
        den = den + torch.where(agree, torch.full_like(x, w), torch.zeros_like(x))
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(num))


def residual_combine(
    residuals: Sequence[Tensor],
    weights: Sequence[float],
    mode: Literal["mean", "sum", "ties"] = "mean",
    density: float = 0.2,
) -> Tensor:
    """Euclidean merge of residuals (or whole deltas): weighted ``mean``, weighted ``sum`` or ``ties``.

    Math: mean ``Σ w_t E_t / Σ w_t``; sum ``Σ w_t E_t`` (task arithmetic, Ilharco et al. 2023); ties = trim each
    ``E_t`` to its top ``density`` fraction by magnitude, elect the sign of ``Σ w_t E_t`` per entry (zero → +) and
    take the weighted mean over the tasks that agree with it (Yadav et al., NeurIPS 2023, arXiv 2306.01708).

    Example:
        >>> residual_combine([torch.ones(3), 3 * torch.ones(3)], [1.0, 1.0]).tolist()
        [2.0, 2.0, 2.0]
    """
    if mode == "mean":
        w = _normalized_weights(weights, "residual_combine")
        return sum(wi * r for wi, r in zip(w, residuals)) / sum(w)
    if mode == "sum":
        return sum(wi * r for wi, r in zip(weights, residuals))
    if mode == "ties":
        if not 0.0 < density <= 1.0:
            raise ValueError(f"density must be in (0, 1], got {density}")
        return _ties(residuals, _normalized_weights(weights, "residual_combine"), density)
    raise ValueError(f"residual merge mode must be 'mean', 'sum' or 'ties', got {mode!r}")


def _check_orthogonal(R: Tensor, what: str, atol: float) -> None:
    n = R.shape[-1]
    R64 = R.to(torch.float64)
    err = float((R64.transpose(-1, -2) @ R64 - torch.eye(n, dtype=torch.float64)).abs().max())
    if err > atol:
        raise ValueError(f"{what} is not orthogonal: max |RᵀR − I| = {err:.3g} > {atol:.3g}")
    if bool((torch.linalg.det(R64) < 0).any()):
        raise ValueError(
            f"{what} has det = -1 (a reflection): reflections are not in SO(n) and have no Lie-algebra logarithm; "
            "flip one axis of the adapter or merge it with a full-weight method"
        )


@register_merge_method(
    "orthomerge_oft",
    inputs="orthogonal",
    needs_base=False,
    order_invariant=True,
    reference="arXiv:2602.05943",
    one_model_exact={},
    idempotent={},
    base_fixed_point={},
)
def orthomerge_oft(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weights: Sequence[float] | None = None,
    lambda_: float = 1.0,
    mean: Literal["lie", "karcher"] = "lie",
    magnitude_correction: bool = True,
    orthogonality_tol: float = 1e-4,
    generator: torch.Generator | None = None,
) -> Tensor:
    """OrthoMerge for orthogonal adapters: magnitude-corrected merge of rotations in the Lie algebra ``so(n)``.

    Math (``R_0 = base`` or ``I``): ``A_t = log(R_0ᵀ R_t)``; ``mean="lie"`` (the paper):
    ``A* = (Σ w_t‖A_t‖/Σ w_t)·(Σ w_t A_t)/‖Σ w_t A_t‖``; ``mean="karcher"``: ``A* = log(R_0ᵀ K)`` with ``K`` the
    Karcher mean of the ``R_t``, rescaled to the mean magnitude if ``magnitude_correction``. Output
    ``R_0 exp(λ A*)`` — exactly orthogonal (float64 exp, cast back to the input dtype), ``det = +1``.

    Input convention (``inputs="orthogonal"``): ``tensors`` are the orthogonal matrices ``R_t`` themselves,
    ``[..., n, n]`` (a BOFT/OFT layer's block-diagonal rotation as a batch of blocks); an adapter stored in Cayley
    coordinates ``S`` (PEFT's ``oft_r``) must be turned into ``R = (I + S)(I − S)⁻¹`` by the caller.

    Args:
        base: optional reference rotation ``R_0`` (tangent point); ``None`` = identity (OFT: ``W = W_0 R``).
        tensors: rotations ``R_t``, same shape and dtype.
        weights: non-negative per-model weights (default all 1).
        lambda_: scale of the merged Lie-algebra element (1 = the paper).
        mean: ``"lie"`` (tangent space at ``R_0``, the paper) or ``"karcher"`` (Riemannian centre of mass).
        magnitude_correction: use the mean magnitude with the direction of the sum (the paper); ``False`` = plain
            weighted mean (``mean="karcher"`` with ``False`` gives the geodesic midpoint of two inputs).
        orthogonality_tol: max ``|RᵀR − I|`` accepted for the inputs.
        generator: unused (deterministic method).

    Returns:
        The merged rotation, same shape/dtype as the inputs.

    Raises:
        ValueError: non-square, non-orthogonal or reflection (``det = −1``) inputs, negative weights.
        TypeError: mismatched dtypes or non-tensors.

    Example:
        >>> A = torch.tensor([[0.0, -0.2], [0.2, 0.0]], dtype=torch.float64)
        >>> R = orthomerge_oft(None, [torch.linalg.matrix_exp(A), torch.linalg.matrix_exp(3 * A)])
        >>> torch.allclose(R, torch.linalg.matrix_exp(2 * A), atol=1e-12)
        True

    Reference: Yang, Shi, Liu, "Orthogonal Model Merging", arXiv 2602.05943 (2026); the authors' code merges
    Cayley parameters of PEFT ``oft_r`` with a hard-coded block size 32 — here the exact exp/log maps are used.
    """
    del generator
    w = check_merge_inputs(base, tensors, weights, needs_base=False)
    _normalized_weights(w, "orthomerge_oft")
    if mean not in ("lie", "karcher"):
        raise ValueError(f"mean must be 'lie' or 'karcher', got {mean!r}")
    items = ([("base", base)] if base is not None else []) + [
        (f"tensors[{i}]", t) for i, t in enumerate(tensors)
    ]
    for what, t in items:
        _check_square(t, what)
        _check_orthogonal(t, what, orthogonality_tol)
    dtype = tensors[0].dtype
    R0 = None if base is None else base.to(torch.float64)
    rel = [t.to(torch.float64) if R0 is None else R0.transpose(-1, -2) @ t.to(torch.float64) for t in tensors]
    As = [log_so(R) for R in rel]
    if mean == "lie":
        A = lie_combine(As, w, magnitude_correction)
    else:
        A = log_so(karcher_mean_so(rel, w))
        if magnitude_correction:
            mean_mag = sum(wi * float(torch.linalg.vector_norm(a)) for wi, a in zip(w, As)) / sum(w)
            na = float(torch.linalg.vector_norm(A))
            A = A * (mean_mag / na) if na > 1e-300 else torch.zeros_like(A)
    out = exp_so(lambda_ * A)
    if R0 is not None:
        out = R0 @ out
    return out.to(dtype)


@register_merge_method(
    "orthomerge",
    inputs="full",
    needs_base=True,
    order_invariant=True,
    reference="arXiv:2602.05943",
    one_model_exact={},
    idempotent={},
    base_fixed_point={},
)
def orthomerge(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weights: Sequence[float] | None = None,
    lambda_: float = 1.0,
    residual_lambda: float = 1.0,
    residual_merge: Literal["mean", "sum", "ties"] = "mean",
    density: float = 0.2,
    side: Literal["auto", "right", "left"] = "auto",
    magnitude_correction: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """OrthoMerge orthogonal-residual decoupling for full fine-tunes (rotation on SO(d) + Euclidean residual).

    Math (right side): ``R_t = argmin_{R∈SO(in)} ‖W_0 R − W_t‖_F`` (Kabsch, :func:`procrustes_so` of ``W_0ᵀ W_t``),
    ``A_t = log R_t``, ``A* = lie_combine(A_t)`` (direction of the sum, mean magnitude), ``E_t = W_t − W_0 R_t``::

        W = W_0 exp(λ A*) + λ_res · merge_res(E_1 … E_T)

    (left side: ``R_t W_0``). Non-2-D tensors: ``W = W_0 + λ_res · merge_res(W_t − W_0)``. With the defaults
    (``residual_merge="mean"``, λ = λ_res = 1) one model, or T identical models, are returned exactly.

    Args:
        base: the pre-trained tensor ``W_0``.
        tensors: fine-tuned tensors ``W_t``, same shape/dtype as ``base``.
        weights: non-negative per-model weights (default 1).
        lambda_: scale λ of the merged rotation's Lie-algebra element.
        residual_lambda: scale λ_res of the merged residual (authors: 0.2 with ``residual_merge="sum"``).
        residual_merge: ``"mean"`` | ``"sum"`` (task arithmetic) | ``"ties"`` (with ``density``).
        density: TIES keep fraction for the residuals.
        side: ``"right"`` (``W_0 R``, in × in: the paper), ``"left"`` (``R W_0``, out × out) or ``"auto"`` (the
            smaller dimension, where the Procrustes problem is well posed).
        magnitude_correction: OrthoMerge's mean-magnitude/sum-direction rule (``False`` = weighted mean of A_t).
        generator: unused (deterministic).

    Returns:
        The merged tensor (base's shape and dtype; computed in float64).

    Raises:
        ValueError/TypeError: mismatched shapes/dtypes, negative weights, bad option values.

    Example:
        >>> W0 = torch.randn(8, 6)
        >>> W1 = W0 @ torch.linalg.matrix_exp(0.1 * (lambda a: a - a.T)(torch.randn(6, 6)))
        >>> torch.allclose(orthomerge(W0, [W1]), W1, atol=1e-5)
        True

    Reference: Yang, Shi, Liu, "Orthogonal Model Merging", arXiv 2602.05943 (2026), §orthogonal-residual
    decoupling ("G" variant; authors use Cayley coordinates without a reflection guard — see module docstring).
    """
    del generator
    w = check_merge_inputs(base, tensors, weights, needs_base=True)
    _normalized_weights(w, "orthomerge")
    if side not in ("auto", "right", "left"):
        raise ValueError(f"side must be 'auto', 'right' or 'left', got {side!r}")
    if residual_merge not in ("mean", "sum", "ties"):
        raise ValueError(f"residual_merge must be 'mean', 'sum' or 'ties', got {residual_merge!r}")
    assert base is not None
    for what, t in [("base", base)] + [(f"tensors[{i}]", t) for i, t in enumerate(tensors)]:
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{what} contains NaN or inf")
    dtype, shape = base.dtype, base.shape
    W0 = base.to(torch.float64)
    Ws = [t.to(torch.float64) for t in tensors]
    if W0.dim() < 2 or min(W0.shape[0], W0[0].numel()) < 2:
        deltas = [W - W0 for W in Ws]
        out = W0 + residual_lambda * residual_combine(deltas, w, residual_merge, density)
        return out.to(dtype)
    W0 = W0.reshape(W0.shape[0], -1)
    Ws = [W.reshape(W0.shape) for W in Ws]
    right = side == "right" or (side == "auto" and W0.shape[1] <= W0.shape[0])
    if right:
        Rs = [procrustes_so(W0.T @ W) for W in Ws]
        rot = [W0 @ R for R in Rs]
    else:
        Rs = [procrustes_so(W @ W0.T) for W in Ws]
        rot = [R @ W0 for R in Rs]
    As = [log_so(R) for R in Rs]
    Rm = exp_so(lambda_ * lie_combine(As, w, magnitude_correction))
    merged_rot = W0 @ Rm if right else Rm @ W0
    res = residual_combine([W - r for W, r in zip(Ws, rot)], w, residual_merge, density)
    return (merged_rot + residual_lambda * res).reshape(shape).to(dtype)
