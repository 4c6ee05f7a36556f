"""Orthonormal subspace bases (GPM-style energy criterion) and principal angles between subspaces.

References:
    * G. Saha, I. Garg, K. Roy, "Gradient Projection Memory for Continual Learning", ICLR 2021
      (arXiv 2103.09762), Eq. 5 (first task) and Eqs. 8–9 (incremental update with the residual).
    * G. Saha, K. Roy, "Continual Learning with Scaled Gradient Projection", AAAI 2023 (SGP):
      per-direction importance from the singular values, projection ``G (I − M Λ Mᵀ)``.
    * Å. Björck, G. H. Golub, "Numerical methods for computing angles between linear subspaces",
      Math. Comp. 27 (1973); A. Knyazev, M. Argentati, "Principal angles between subspaces in an
      A-based scalar product", SIAM J. Sci. Comput. 23 (2002) — sine-based formula for small angles.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from orthokit.linalg._checks import check_finite, check_matrix, compute_dtype
from orthokit.linalg.qr import qr_basis

__all__ = ["Subspace", "principal_angles"]


def _eps(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps)


def _orthonormality_tol(dtype: torch.dtype, n: int) -> float:
    """Tolerance on ``max|BᵀB − I|`` accepted for a stored basis of ambient dimension ``n``."""
    return 64.0 * _eps(dtype) * math.sqrt(max(n, 1))


def _check_threshold(energy_threshold: float) -> float:
    if isinstance(energy_threshold, bool) or not isinstance(energy_threshold, (int, float)):
        raise TypeError(f"energy_threshold must be a float in [0, 1], got {type(energy_threshold).__name__}")
    eps = float(energy_threshold)
    if not (0.0 <= eps <= 1.0) or math.isnan(eps):
        raise ValueError(f"energy_threshold must lie in [0, 1], got {energy_threshold}")
    return eps


class Subspace:
    r"""A linear subspace of ``R^n`` stored as an orthonormal basis ``B ∈ R^{n×k}`` (columns).

    The object is immutable-ish: every operation that changes the subspace (``extend``, ``to``,
    ``complement``) returns a **new** ``Subspace``; treat ``.basis`` as read-only.

    * ``project(x) = x B Bᵀ`` and ``complement_project(x) = x − (x B) Bᵀ`` act on the **last** dim
      of ``x`` and never form the ``n×n`` projector (cost ``O(n k)`` per row instead of ``O(n²)``).
      With ``weights=λ`` (length ``k``) they become SGP's scaled projection ``x B diag(λ) Bᵀ``.
    * ``extend(R, ε)`` is GPM's incremental update (Saha et al., ICLR 2021, Eqs. 8–9): with the
      residual ``R̂ = R − B BᵀR`` and its singular values ``σ̂₁ ≥ σ̂₂ ≥ …`` it appends the first ``r``
      left singular vectors of ``R̂``, ``r`` the smallest integer with
      ``‖BᵀR‖_F² + Σ_{i≤r} σ̂_i² ≥ ε ‖R‖_F²``. Directions with numerically zero ``σ̂`` are never
      added and the dimension never exceeds ``n``.
    * ``from_matrix(R, ε)`` is the first-task criterion (GPM Eq. 5): smallest ``r`` with
      ``Σ_{i≤r} σ_i² ≥ ε ‖R‖_F²``. (GPM's reference code uses a strict ``<`` count, i.e. one
      direction fewer; orthokit implements the criterion as written in the paper.)
    * ``scales`` (optional, length ``k``): the singular value that introduced each basis direction,
      kept through ``extend`` — SGP turns them into importances ``λ_i``.

    Args:
        basis: ``[n, k]`` tensor with orthonormal columns (``k`` may be 0).
        scales: optional ``[k]`` non-negative finite tensor (same device as ``basis``).
        check: verify ``max|BᵀB − I| ≤ 64·eps(dtype)·√n`` (and shapes/finiteness) on construction.

    Example:
        >>> R = torch.randn(20, 50, dtype=torch.float64)          # 50 samples as columns
        >>> S = Subspace.from_matrix(R[:, :25], energy_threshold=0.9)
        >>> S2 = S.extend(R[:, 25:], energy_threshold=0.95)
        >>> S2.dim >= S.dim and S2.ambient_dim == 20
        True
        >>> x = torch.randn(4, 20, dtype=torch.float64)
        >>> bool(torch.allclose(S2.project(x) + S2.complement_project(x), x))
        True
    """

    __slots__ = ("_basis", "_scales")

    def __init__(
        self, basis: torch.Tensor, scales: torch.Tensor | None = None, *, check: bool = True
    ) -> None:
        if not isinstance(basis, torch.Tensor):
            raise TypeError(f"basis must be a torch.Tensor, got {type(basis).__name__}")
        if basis.dim() != 2:
            raise ValueError(
                f"basis must be 2-D [n, k] with orthonormal columns, got shape {tuple(basis.shape)}"
            )
        n, k = basis.shape
        if check:
            if basis.is_complex() or not basis.is_floating_point():
                raise ValueError(f"basis must be a real floating tensor, got dtype {basis.dtype}")
            if n == 0:
                raise ValueError("basis must have ambient dimension n >= 1")
            if k > n:
                raise ValueError(f"basis has k={k} columns > ambient dimension n={n}; cannot be orthonormal")
            check_finite(basis, "basis")
            if k > 0:
                cd = compute_dtype(basis.dtype)
                b = basis.detach().to(cd)
                err = float((b.mT @ b - torch.eye(k, dtype=cd, device=b.device)).abs().max())
                tol = _orthonormality_tol(basis.dtype, n)
                if err > tol:
                    raise ValueError(
                        f"basis columns are not orthonormal: max|BᵀB − I| = {err:.3e} > tol {tol:.3e} "
                        f"(orthonormalize with orthokit.linalg.qr_basis or pass check=False)"
                    )
        if scales is not None:
            if not isinstance(scales, torch.Tensor):
                raise TypeError(f"scales must be a torch.Tensor or None, got {type(scales).__name__}")
            if scales.shape != (k,):
                raise ValueError(
                    f"scales must have shape ({k},) to match the basis, got {tuple(scales.shape)}"
                )
            if check:
                if not scales.is_floating_point():
                    raise ValueError(f"scales must be floating point, got dtype {scales.dtype}")
                check_finite(scales, "scales")
                if bool((scales < 0).any()):
                    raise ValueError("scales must be non-negative (they are singular values)")
        self._basis = basis
        self._scales = scales

    # ------------------------------------------------------------------ constructors
    @classmethod
    def empty(
        cls, n: int, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
    ) -> Subspace:
        """The zero subspace ``{0}`` of ``R^n`` (basis ``[n, 0]``, ``scales`` of length 0).

        Example:
            >>> Subspace.empty(8).dim, Subspace.empty(8).free_dim
            (0, 8)
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"ambient dimension n must be a positive int, got {n!r}")
        return cls(
            torch.zeros(n, 0, dtype=dtype, device=device),
            torch.zeros(0, dtype=dtype, device=device),
            check=False,
        )

    @classmethod
    def from_matrix(
        cls, R: torch.Tensor, energy_threshold: float | None = None, rank: int | None = None
    ) -> Subspace:
        r"""Principal subspace of the columns of ``R`` (``[n, s]``, samples as columns).

        Keeps the top left singular vectors of ``R``: the smallest ``r`` with
        ``Σ_{i≤r} σ_i² ≥ ε ‖R‖_F²`` (GPM Eq. 5) when ``energy_threshold=ε`` is given, capped at
        ``rank`` when given; with neither, every numerically non-zero direction (the column space).
        ``scales`` are the kept singular values. ``R = 0`` gives the empty subspace.

        Example:
            >>> R = torch.randn(10, 3, dtype=torch.float64) @ torch.randn(3, 40, dtype=torch.float64)
            >>> Subspace.from_matrix(R).dim
            3
        """
        check_matrix(R, "R")
        if R.dim() != 2:
            raise ValueError(f"R must be 2-D [n, samples], got shape {tuple(R.shape)}")
        return cls.empty(R.shape[0], dtype=R.dtype, device=R.device).extend(
            R, 1.0 if energy_threshold is None else energy_threshold, max_new=rank
        )

    # ------------------------------------------------------------------ properties
    @property
    def basis(self) -> torch.Tensor:
        """The orthonormal basis ``[n, k]`` (read-only by convention)."""
        return self._basis

    @property
    def scales(self) -> torch.Tensor | None:
        """Per-direction singular values ``[k]`` (``None`` when unknown)."""
        return self._scales

    @property
    def dim(self) -> int:
        """Subspace dimension ``k``."""
        return int(self._basis.shape[1])

    @property
    def ambient_dim(self) -> int:
        """Ambient dimension ``n``."""
        return int(self._basis.shape[0])

    @property
    def free_dim(self) -> int:
        """Dimension of the orthogonal complement, ``n − k``."""
        return self.ambient_dim - self.dim

    @property
    def dtype(self) -> torch.dtype:
        """dtype of the stored basis."""
        return self._basis.dtype

    @property
    def device(self) -> torch.device:
        """device of the stored basis."""
        return self._basis.device

    # ------------------------------------------------------------------ projections
    def _prep(self, x: torch.Tensor, weights: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, Any]:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise ValueError(f"x must be a floating tensor, got dtype {x.dtype}")
        if x.dim() < 1 or x.shape[-1] != self.ambient_dim:
            raise ValueError(
                f"x's last dimension must equal the ambient dimension {self.ambient_dim}, got shape {tuple(x.shape)}"
            )
        cd = compute_dtype(torch.promote_types(x.dtype, self.dtype))
        b = self._basis.to(device=x.device, dtype=cd)
        w = None
        if weights is not None:
            if not isinstance(weights, torch.Tensor) or weights.shape != (self.dim,):
                shape = tuple(weights.shape) if isinstance(weights, torch.Tensor) else type(weights).__name__
                raise ValueError(f"weights must be a tensor of shape ({self.dim},), got {shape}")
            w = weights.to(device=x.device, dtype=cd)
        return x.to(cd), b, w

    def coordinates(self, x: torch.Tensor) -> torch.Tensor:
        """Coordinates ``x B`` (``[..., k]``) of the last dim of ``x`` in the basis."""
        xc, b, _ = self._prep(x, None)
        return (xc @ b).to(x.dtype)

    def project(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        r"""Orthogonal projection onto the subspace along the last dim: ``x B diag(λ) Bᵀ``.

        Args:
            x: ``[..., n]`` floating tensor.
            weights: optional ``[k]`` per-direction factors ``λ`` (SGP importances); default all ones.

        Returns:
            Tensor like ``x`` (same dtype; computed in ≥ float32). An empty subspace returns zeros.
        """
        xc, b, w = self._prep(x, weights)
        c = xc @ b
        if w is not None:
            c = c * w
        return (c @ b.mT).to(x.dtype)

    def complement_project(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        r"""Projection onto the orthogonal complement: ``x − (x B diag(λ)) Bᵀ`` (no ``n×n`` matrix formed).

        This is GPM's ``grad ← grad − grad·M Mᵀ`` (and SGP's scaled version with ``weights``).
        An empty subspace returns ``x`` unchanged (a copy in the same dtype).
        """
        xc, b, w = self._prep(x, weights)
        c = xc @ b
        if w is not None:
            c = c * w
        return (xc - c @ b.mT).to(x.dtype)

    def projector(self, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Dense projector ``B diag(λ) Bᵀ`` (``[n, n]``, basis dtype). Prefer ``project`` for large ``n``."""
        eye = torch.eye(self.ambient_dim, dtype=self.dtype, device=self.device)
        return self.project(eye, weights)

    def complement(self) -> Subspace:
        """The orthogonal complement as a new ``Subspace`` (basis from a complete QR of ``B``; no scales)."""
        n, k = self.ambient_dim, self.dim
        if k == 0:
            return Subspace(torch.eye(n, dtype=self.dtype, device=self.device), check=False)
        if k == n:
            return Subspace.empty(n, dtype=self.dtype, device=self.device)
        cd = compute_dtype(self.dtype)
        q, _ = torch.linalg.qr(self._basis.detach().to(cd), mode="complete")
        return Subspace(q[:, k:].contiguous().to(self.dtype), check=False)

    # ------------------------------------------------------------------ growth
    def extend(self, R: torch.Tensor, energy_threshold: float, *, max_new: int | None = None) -> Subspace:
        r"""GPM incremental update: a NEW subspace containing this one plus the residual directions of ``R``.

        Computes ``R̂ = R − B(BᵀR)``, its SVD ``R̂ = Û Σ̂ V̂ᵀ``, and appends ``Û[:, :r]`` with ``r`` the
        smallest integer such that ``‖BᵀR‖_F² + Σ_{i≤r} σ̂_i² ≥ ε ‖R‖_F²`` (Saha et al. 2021, Eq. 8–9),
        capped by ``max_new``, by the number of numerically non-zero ``σ̂_i``
        (``σ̂_i > max(n, s)·eps·‖R‖_F``) and by ``n − k``. The new columns are re-orthogonalized
        against ``B`` (classical Gram–Schmidt, applied twice) and orthonormalized with a sign-fixed QR,
        so the old basis columns are kept bit-for-bit. If ``R`` has zero energy nothing is added.
        ``scales`` are carried through (new entries ``σ̂_i``) when this subspace has scales.

        Args:
            R: ``[n, s]`` representation matrix, samples as COLUMNS.
            energy_threshold: ``ε ∈ [0, 1]``.
            max_new: optional cap on the number of appended directions.

        Returns:
            A new ``Subspace`` (``self`` is unchanged).

        Example:
            >>> S = Subspace.empty(6, dtype=torch.float64)
            >>> S = S.extend(torch.eye(6, dtype=torch.float64)[:, :2] * 3.0, 0.99)
            >>> S.dim, S.scales.tolist()
            (2, [3.0, 3.0])
        """
        eps_thr = _check_threshold(energy_threshold)
        check_matrix(R, "R")
        if R.dim() != 2:
            raise ValueError(f"R must be 2-D [n, samples] (samples as columns), got shape {tuple(R.shape)}")
        if R.shape[0] != self.ambient_dim:
            raise ValueError(
                f"R has {R.shape[0]} rows but the subspace lives in R^{self.ambient_dim} (samples must be columns)"
            )
        check_finite(R, "R")
        if max_new is not None and (isinstance(max_new, bool) or not isinstance(max_new, int) or max_new < 0):
            raise ValueError(f"max_new must be a non-negative int or None, got {max_new!r}")

        n, k = self.ambient_dim, self.dim
        cd = compute_dtype(torch.promote_types(R.dtype, self.dtype))
        r_mat = R.detach().to(device=self.device, dtype=cd)
        b = self._basis.detach().to(cd)
        total = float((r_mat * r_mat).sum())
        if total == 0.0 or k >= n:
            return self._copy()

        coeff = b.mT @ r_mat  # [k, s]
        captured = float((coeff * coeff).sum())
        resid = r_mat - b @ coeff
        u, s, _ = torch.linalg.svd(resid, full_matrices=False)
        # numerically zero residual directions are never appended
        tiny = max(r_mat.shape) * _eps(cd) * math.sqrt(total)
        n_valid = int((s > tiny).sum())
        cap = min(n_valid, n - k)
        if max_new is not None:
            cap = min(cap, max_new)
        target = eps_thr * total
        if captured >= target:
            r = 0
        else:
            cum = captured + torch.cumsum((s.double() ** 2), 0)
            hits = torch.nonzero(cum >= target * (1.0 - 4.0 * _eps(torch.float64)))
            r = int(hits[0]) + 1 if hits.numel() else n_valid
        r = min(r, cap)
        if r == 0:
            return self._copy()

        new = u[:, :r]
        if k > 0:  # re-orthogonalize against the old basis ("twice is enough")
            new = new - b @ (b.mT @ new)
            new = new - b @ (b.mT @ new)
        new = qr_basis(new)
        basis = torch.cat([b, new], dim=1).to(self.dtype)
        scales = None
        if self._scales is not None:
            scales = torch.cat([self._scales.detach().to(cd), s[:r]]).to(self._scales.dtype)
        return Subspace(basis, scales, check=False)

    def _copy(self) -> Subspace:
        return Subspace(self._basis, self._scales, check=False)

    # ------------------------------------------------------------------ misc
    def to(self, *args: Any, **kwargs: Any) -> Subspace:
        """A new ``Subspace`` with basis (and scales) moved/cast like ``Tensor.to(*args, **kwargs)``."""
        basis = self._basis.to(*args, **kwargs)
        scales = None
        if self._scales is not None:
            scales = self._scales.to(device=basis.device, dtype=basis.dtype)
        return Subspace(basis, scales, check=False)

    def principal_angles(self, other: Subspace | torch.Tensor) -> torch.Tensor:
        """Principal angles (radians, ascending) between this subspace and ``other`` (see :func:`principal_angles`)."""
        ob = other.basis if isinstance(other, Subspace) else other
        if self.dim == 0 or ob.shape[-1] == 0:
            return torch.zeros(0, dtype=self.dtype, device=self.device)
        return principal_angles(self._basis, ob)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only (safetensors-friendly): ``{"basis": [n,k]}`` plus ``"scales"`` when present."""
        d = {"basis": self._basis.detach().clone()}
        if self._scales is not None:
            d["scales"] = self._scales.detach().clone()
        return d

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor], *, check: bool = True) -> Subspace:
        """Inverse of :meth:`state_dict` (validates orthonormality unless ``check=False``)."""
        if not isinstance(state, Mapping) or "basis" not in state:
            raise ValueError("state must be a mapping with a 'basis' tensor (from Subspace.state_dict())")
        unknown = set(state) - {"basis", "scales"}
        if unknown:
            raise ValueError(f"unexpected keys in Subspace state: {sorted(unknown)}")
        return cls(state["basis"], state.get("scales"), check=check)

    def __repr__(self) -> str:
        sc = "yes" if self._scales is not None else "no"
        return (
            f"Subspace(dim={self.dim}, ambient_dim={self.ambient_dim}, dtype={self.dtype}, "
            f"device={self.device}, scales={sc})"
        )


def principal_angles(U: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    r"""Principal angles ``0 ≤ θ₁ ≤ … ≤ θ_q ≤ π/2`` between ``span(U)`` and ``span(V)``.

    ``U`` (``[..., n, p]``) and ``V`` (``[..., n, q]``) may be any full-column-rank matrices; both are
    orthonormalized by QR first. With ``Q_U``, ``Q_V`` and ``q = min(p, q)``:

    * cosines: singular values ``σ`` of ``Q_Uᵀ Q_V`` (Björck & Golub 1973), ``θ = arccos σ``;
    * sines: singular values ``μ`` of ``Q_V − Q_U(Q_Uᵀ Q_V)`` (the smaller space playing ``V``),
      ``θ = arcsin μ`` (Knyazev & Argentati 2002).

    ``arccos`` loses all accuracy for small angles (``cos θ ≈ 1 − θ²/2``), ``arcsin`` for angles
    near ``π/2``; the result uses the sine for ``θ < π/4`` and the cosine otherwise, so every angle
    is accurate to about machine precision. Computed in ≥ float32, returned in the promoted input dtype.

    Args:
        U: ``[..., n, p]`` real floating tensor, finite, full column rank.
        V: ``[..., n, q]`` with the same ``n`` (batch dims broadcast).

    Returns:
        ``[..., min(p, q)]`` angles in radians, ascending.

    Example:
        >>> e = torch.eye(3, dtype=torch.float64)
        >>> t = torch.tensor(1e-9, dtype=torch.float64)
        >>> V = torch.stack([torch.cos(t) * e[0] + torch.sin(t) * e[1], e[2]], dim=1)
        >>> principal_angles(e[:, [0, 2]], V)            # accurate even for a 1e-9 rad angle
        tensor([0.0000e+00, 1.0000e-09], dtype=torch.float64)
    """
    check_matrix(U, "U")
    check_matrix(V, "V")
    if U.shape[-2] != V.shape[-2]:
        raise ValueError(f"U and V must have the same number of rows n, got {U.shape[-2]} and {V.shape[-2]}")
    check_finite(U, "U")
    check_finite(V, "V")
    out_dtype = torch.promote_types(U.dtype, V.dtype)
    cd = compute_dtype(out_dtype)
    if U.shape[-1] < V.shape[-1]:
        U, V = V, U  # V is the smaller space
    qu = qr_basis(U.to(cd))
    qv = qr_basis(V.to(cd))
    m = qu.mT @ qv
    cos = torch.linalg.svdvals(m).clamp(0.0, 1.0)  # descending -> angles ascending
    theta_c = torch.arccos(cos)
    resid = qv - qu @ m
    sin = torch.linalg.svdvals(resid).clamp(0.0, 1.0).flip(-1)  # ascending -> angles ascending
    theta_s = torch.arcsin(sin)
    theta = torch.where(theta_c < math.pi / 4, theta_s, theta_c)
    return theta.to(out_dtype)
