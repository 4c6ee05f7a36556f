r"""The fitted alignment map shared by every ``orthokit.align`` aligner: ``T(x) = s·(x − μ_s) W + μ_t``.

An :class:`Aligner` maps rows of a *source* representation space (width ``d_s``) to a *target* space (width
``d_t``). Every registered fit function (``orthogonal``, ``orthogonal_scaled``, ``lambda_orthogonal``,
``affine``) returns one; they differ only in the constraint on ``W`` (``d_s×d_t``) and the scale ``s``:

* ``isometry`` — ``W`` has orthonormal rows (``WWᵀ = I``), ``s = 1``: pairwise distances are preserved exactly.
* ``similarity`` — as above times one global scale ``s > 0``.
* ``near_isometry`` — ``W`` within a tolerance λ of (semi-)orthogonal (λ-orthogonality).
* ``affine`` — any ``W``.

The first three need ``d_s ≤ d_t`` and their fits refuse a wider source (:func:`check_narrow_source`): no map
into a narrower space preserves distances, and there Procrustes is not even the least-squares fit. Use
``affine``, or reduce the source (PCA, truncation) first.

The bias is implied by the two means: ``T(x) = s·x W + b`` with ``b = μ_t − s·μ_s W`` (:attr:`Aligner.bias`);
``center=False`` fits store zero means, so the map is linear.

Numerics: parameters are kept in the fit's computation dtype (float64 by default); ``transform`` and
``inverse_transform`` compute in that dtype and return the input's dtype.

Example:
    >>> import torch
    >>> from orthokit.align._aligner import Aligner
    >>> W = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)  # a 90° rotation
    >>> a = Aligner(W, torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64), kind="isometry")
    >>> a.transform(torch.tensor([[1.0, 0.0]]))
    tensor([[1., 2.]])
    >>> a.inverse_transform(a.transform(torch.tensor([[3.0, 4.0]])))
    tensor([[3., 4.]])
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from orthokit.linalg._checks import compute_dtype

__all__ = ["Aligner", "KINDS", "check_narrow_source", "check_pair", "check_rows", "resolve_dtype"]

#: the capability ``kind`` values an aligner may declare (see :mod:`orthokit.align.registry`)
KINDS = ("isometry", "similarity", "near_isometry", "affine")
_FORMAT = "orthokit.align.Aligner/1"
_TENSORS = ("W", "mean_source", "mean_target", "scale")


def _overflow_limit(dtype: torch.dtype, n: int, d: int) -> float:
    """Largest ``max|x|`` for which sums of ``n·d`` squares (Gram matrices, norms) stay finite in ``dtype``."""
    return math.sqrt(torch.finfo(dtype).max / (4.0 * max(n, 1) * max(d, 1)))


def check_rows(X: object, name: str, dtype: torch.dtype | None = None) -> Tensor:
    """Validate one 2-D row matrix (``[n, d]``, real floating, finite, ``n ≥ 1``, ``d ≥ 1``); return it.

    Values so large that sums of their squares would overflow the computation ``dtype`` (default float64;
    about ``1e154/√(nd)`` there, ``1e19/√(nd)`` in float32) are refused with a one-line ``ValueError``: the
    Gram matrices and norms behind every fit would be ``inf``.
    """
    if not isinstance(X, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(X).__name__}")
    if X.dim() != 2:
        raise ValueError(f"{name} must be a 2-D [rows, features] tensor, got shape {tuple(X.shape)}")
    if X.is_complex() or not X.is_floating_point():
        raise TypeError(f"{name} must be a real floating tensor, got dtype {X.dtype}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(X.shape)}")
    if not bool(torch.isfinite(X).all()):
        raise ValueError(
            f"{name} contains {int((~torch.isfinite(X)).sum())} non-finite value(s) (NaN or inf)"
        )
    cd = torch.float64 if dtype is None else dtype
    amax = float(X.detach().abs().max().to(torch.float64))
    limit = _overflow_limit(cd, X.shape[0], X.shape[1])
    if amax > limit:
        raise ValueError(
            f"{name} has values up to {amax:.3g}, too large for {cd} (sums of squares would overflow above "
            f"{limit:.3g}); divide it by a constant first"
        )
    return X


def check_pair(
    source: object,
    target: object,
    min_rows: int = 2,
    names: tuple[str, str] = ("source", "target"),
    dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """Validate corresponding rows: both 2-D, finite, the same number of rows ``≥ min_rows``.

    ``dtype`` is the computation dtype for the overflow check of :func:`check_rows` (default float64).
    """
    a, b = names
    X = check_rows(source, a, dtype)
    Y = check_rows(target, b, dtype)
    if X.shape[0] != Y.shape[0]:
        raise ValueError(
            f"{a} and {b} must have the same number of rows (corresponding pairs), got {X.shape[0]} and {Y.shape[0]}"
        )
    if X.shape[0] < min_rows:
        raise ValueError(f"{a} and {b} need at least {min_rows} rows, got {X.shape[0]}")
    if X.device != Y.device:
        raise ValueError(f"{a} and {b} must be on the same device, got {X.device} and {Y.device}")
    return X, Y


def check_narrow_source(X: Tensor, Y: Tensor, method: str) -> None:
    """Refuse ``d_s > d_t`` for the isometry / similarity / near-isometry fits (one-line ``ValueError``).

    No map from a wider space into a narrower one preserves distances, and with orthonormal-column ``W`` the
    fit error ``‖X̃W − Ỹ‖`` depends on ``W`` through ``‖X̃W‖``, so the max-trace Procrustes ``U Vᵀ`` is not
    the least-squares solution there.
    """
    d_s, d_t = X.shape[1], Y.shape[1]
    if d_s > d_t:
        raise ValueError(
            f"{method}: source is wider than target (d_s={d_s} > d_t={d_t}), so no (near-)isometry exists and "
            f"Procrustes is not the least-squares fit; use method 'affine', or first reduce the source to "
            f"d_t={d_t} features (e.g. PCA or truncation)"
        )


def resolve_dtype(dtype: object, *tensors: Tensor) -> torch.dtype:
    """The computation dtype: ``dtype`` if given (a floating torch.dtype), else float64."""
    if dtype is None:
        return torch.float64
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype or None, got {dtype!r}")
    return compute_dtype(dtype)


def _scalar(x: object, name: str) -> float:
    if isinstance(x, Tensor):
        if x.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got shape {tuple(x.shape)}")
        x = float(x)
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(x).__name__}")
    return float(x)


def _finite_output(out: Tensor, dtype: torch.dtype, what: str) -> Tensor:
    """Cast ``out`` to ``dtype``; a non-finite result (overflow) raises a one-line ``ValueError``."""
    res = out.to(dtype)
    if not bool(torch.isfinite(res).all()):
        raise ValueError(
            f"{what}: the result has {int((~torch.isfinite(res)).sum())} non-finite value(s) in {dtype} "
            "(the input is too large for this map); rescale the input or use a wider dtype"
        )
    return res


@dataclass(frozen=True, eq=False)
class Aligner:
    """A fitted map ``T(x) = scale·(x − mean_source) @ W + mean_target`` from source rows to target rows.

    Args:
        W: ``d_s×d_t`` map (floating, finite).
        mean_source: ``[d_s]`` source mean removed before mapping (zeros for an uncentered fit).
        mean_target: ``[d_t]`` target mean added after mapping.
        scale: global scale ``s ≥ 0`` (1 except for similarities).
        method: registry name of the fit that produced it (free text for hand-built aligners).
        kind: one of :data:`KINDS`, the guarantee the fit declares.
        lam: tolerance λ of a ``near_isometry`` fit, else ``None``.
        info: fit diagnostics (solver iterations, objective, ...); plain numbers and strings.

    Example:
        >>> import torch
        >>> from orthokit.align.orthogonal import fit_orthogonal
        >>> X = torch.randn(100, 3, dtype=torch.float64)
        >>> Q = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))[0]
        >>> a = fit_orthogonal(X, X @ Q + 2.0)
        >>> a.kind, a.residuals(X, X @ Q + 2.0)["relative"] < 1e-12, a.orthogonality_error() < 1e-12
        ('isometry', True, True)
    """

    W: Tensor
    mean_source: Tensor
    mean_target: Tensor
    scale: float = 1.0
    method: str = "custom"
    kind: str = "affine"
    lam: float | None = None
    info: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        W = self.W
        if not isinstance(W, Tensor):
            raise TypeError(f"W must be a torch.Tensor, got {type(W).__name__}")
        if W.dim() != 2 or not W.is_floating_point() or W.is_complex():
            raise ValueError(
                f"W must be a real floating 2-D matrix, got shape {tuple(W.shape)} dtype {W.dtype}"
            )
        d_s, d_t = W.shape
        for name, v, d in (("mean_source", self.mean_source, d_s), ("mean_target", self.mean_target, d_t)):
            if not isinstance(v, Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(v).__name__}")
            if tuple(v.shape) != (d,):
                raise ValueError(
                    f"{name} must have shape ({d},) to match W {tuple(W.shape)}, got {tuple(v.shape)}"
                )
        s = _scalar(self.scale, "scale")
        if not math.isfinite(s) or s < 0:
            raise ValueError(f"scale must be finite and >= 0, got {s}")
        object.__setattr__(self, "scale", s)
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.lam is not None:
            lam = _scalar(self.lam, "lam")
            if not math.isfinite(lam) or lam < 0:
                raise ValueError(f"lam must be finite and >= 0, got {lam}")
            object.__setattr__(self, "lam", lam)
        for name in ("W", "mean_source", "mean_target"):
            t = getattr(self, name)
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"{name} contains non-finite values (NaN or inf)")
            object.__setattr__(self, name, t.detach().to(W.dtype))

    # ------------------------------------------------------------------ shape / derived quantities
    @property
    def d_source(self) -> int:
        """Source width ``d_s``."""
        return int(self.W.shape[0])

    @property
    def d_target(self) -> int:
        """Target width ``d_t``."""
        return int(self.W.shape[1])

    @property
    def dtype(self) -> torch.dtype:
        """Computation dtype of the stored parameters."""
        return self.W.dtype

    @property
    def bias(self) -> Tensor:
        """``b = μ_t − s·μ_s W``, so that ``T(x) = s·x W + b``."""
        return self.mean_target - self.scale * (self.mean_source @ self.W)

    @property
    def is_isometry(self) -> bool:
        """Whether the map is declared distance-preserving: kind ``isometry`` and ``d_s ≤ d_t``."""
        return self.kind == "isometry" and self.d_source <= self.d_target

    # ------------------------------------------------------------------ mapping
    def _input(self, X: object, name: str, width: int) -> Tensor:
        X = check_rows(X, name)
        if X.shape[1] != width:
            raise ValueError(f"{name} has {X.shape[1]} features, the aligner expects {width}")
        return X

    def transform(self, X: Tensor) -> Tensor:
        """Map source rows ``[n, d_s]`` to the target space ``[n, d_t]`` (returned in ``X``'s dtype)."""
        X = self._input(X, "X", self.d_source)
        W = self.W.to(X.device)
        Xc = X.to(W.dtype) - self.mean_source.to(X.device)
        out = self.scale * (Xc @ W) + self.mean_target.to(X.device)
        return _finite_output(out, X.dtype, "transform")

    def inverse_transform(self, Y: Tensor) -> Tensor:
        """Map target rows ``[n, d_t]`` back to the source space ``[n, d_s]``.

        Isometries and similarities use the exact transpose, ``(Y − μ_t) Wᵀ / s + μ_s`` (an exact inverse for
        ``d_s ≤ d_t``; the least-squares pre-image otherwise). Other kinds use the pseudo-inverse by a
        least-squares solve (the exact inverse when ``W`` is square and invertible); a singular ``W``
        (rank below ``min(d_s, d_t)``) or ``scale == 0`` raises ``ValueError``.
        """
        Y = self._input(Y, "Y", self.d_target)
        if self.scale == 0:
            raise ValueError("inverse_transform is undefined: the aligner's scale is 0")
        W = self.W.to(Y.device)
        Yc = (Y.to(W.dtype) - self.mean_target.to(Y.device)) / self.scale
        if self.kind in ("isometry", "similarity"):
            Xc = Yc @ W.mT
        else:
            sv = torch.linalg.svdvals(W)
            tol = sv.max() * max(W.shape) * torch.finfo(W.dtype).eps
            rank = int((sv > tol).sum())
            if rank < min(W.shape):
                raise ValueError(
                    f"inverse_transform is undefined: W {tuple(W.shape)} is singular (numerical rank {rank} < "
                    f"{min(W.shape)})"
                )
            # x W = y: x = y W⁺ (exact for square W; least squares / minimum norm otherwise)
            Xc = Yc @ torch.linalg.pinv(W)
        return _finite_output(Xc + self.mean_source.to(Y.device), Y.dtype, "inverse_transform")

    # ------------------------------------------------------------------ diagnostics
    def residuals(self, X: Tensor, Y: Tensor) -> dict[str, float]:
        """Data-space fit quality of ``T(X)`` against ``Y`` (float64).

        Returns:
            ``relative`` ``‖T(X) − Y‖_F / ‖Y − mean(Y)‖_F`` (0 = perfect; 1 = no better than the mean),
            ``rmse`` (root mean squared row error), ``max_row_error`` (largest ``‖T(xᵢ) − yᵢ‖``),
            ``mean_cosine`` (mean cosine similarity of ``T(xᵢ)`` and ``yᵢ``).
        """
        X, Y = check_pair(X, Y, min_rows=1, names=("X", "Y"))
        if Y.shape[1] != self.d_target:
            raise ValueError(f"Y has {Y.shape[1]} features, the aligner maps to {self.d_target}")
        P = self.transform(X.to(torch.float64)).to(torch.float64)
        Yd = Y.to(torch.float64).to(P.device)
        E = P - Yd
        denom = float(torch.linalg.norm(Yd - Yd.mean(0)))
        num = float(torch.linalg.norm(E))
        rel = num / denom if denom > 0 else (0.0 if num == 0 else math.inf)
        cos = torch.nn.functional.cosine_similarity(P, Yd, dim=1, eps=1e-300)
        return {
            "relative": rel,
            "rmse": float(E.pow(2).sum(1).mean().sqrt()),
            "max_row_error": float(E.norm(dim=1).max()),
            "mean_cosine": float(cos.mean()),
        }

    def orthogonality_error(self) -> float:
        """``‖G − I‖_F`` with ``G`` the smaller-side Gram matrix of ``W`` (``WWᵀ`` if ``d_s ≤ d_t``, else ``WᵀW``).

        Zero (to rounding) for isometries and similarities (whose scale is kept separately in ``scale``).
        """
        from orthokit.align.lambda_orthogonal import lambda_orthogonality_gap

        return float(lambda_orthogonality_gap(self.W))

    def distortion(self, X: Tensor, *, up_to_scale: bool = False) -> float:
        """Largest relative change of a pairwise distance: ``max_{i<j} |‖T(xᵢ)−T(xⱼ)‖ − c‖xᵢ−xⱼ‖| / (c‖xᵢ−xⱼ‖)``.

        ``c = 1``, or ``c = scale`` with ``up_to_scale=True`` (zero for similarities). Pairs of identical rows
        are skipped. Costs ``O(n²)`` memory: pass a few thousand rows at most.
        """
        X = self._input(X, "X", self.d_source)
        if X.shape[0] < 2:
            raise ValueError(f"distortion needs at least 2 rows in X, got {X.shape[0]}")
        Xd = X.to(torch.float64)
        P = self.transform(Xd).to(torch.float64)
        c = self.scale if up_to_scale else 1.0
        d0 = torch.cdist(Xd, Xd) * c
        d1 = torch.cdist(P, P)
        iu = torch.triu_indices(X.shape[0], X.shape[0], 1)
        a, b = d0[iu[0], iu[1]], d1[iu[0], iu[1]]
        keep = a > 0
        if not bool(keep.any()):
            raise ValueError("distortion needs at least two distinct rows in X")
        return float(((b[keep] - a[keep]).abs() / a[keep]).max())

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """Tensors ``W``, ``mean_source``, ``mean_target``, ``scale`` (0-d) plus ``method``, ``kind``, ``lam``."""
        return {
            "W": self.W.clone(),
            "mean_source": self.mean_source.clone(),
            "mean_target": self.mean_target.clone(),
            "scale": torch.tensor(self.scale, dtype=self.W.dtype),
            "method": self.method,
            "kind": self.kind,
            "lam": self.lam,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Aligner:
        """Rebuild an aligner from :meth:`state_dict` output (validated: keys, shapes, finiteness, kind).

        Untrusted state is also checked against its declared ``kind``: ``W`` must be non-empty; an
        ``isometry``/``similarity`` needs orthonormal rows (columns if ``d_s > d_t``): ``‖G − I‖_F`` (in float64) at
        most ``max(1e-5, 4·eps)·√k`` with ``eps`` of the stored dtype and ``k = min(d_s, d_t)``; a
        ``near_isometry`` needs ``lam`` and ``‖G − I‖_F ≤ λ`` plus the same slack.
        """
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict, got {type(state).__name__}")
        missing = [k for k in (*_TENSORS, "kind") if k not in state]
        if missing:
            raise ValueError(f"aligner state is missing {', '.join(missing)}")
        a = cls(
            W=state["W"],
            mean_source=state["mean_source"],
            mean_target=state["mean_target"],
            scale=state["scale"],
            method=str(state.get("method", "custom")),
            kind=state["kind"],
            lam=state.get("lam"),
        )
        a._verify_kind()
        return a

    def _verify_kind(self) -> None:
        """Raise ``ValueError`` when ``W`` is empty or does not satisfy the declared ``kind``."""
        if self.W.numel() == 0:
            raise ValueError(f"W is empty (shape {tuple(self.W.shape)})")
        if self.kind == "affine":
            return
        from orthokit.align.lambda_orthogonal import lambda_orthogonality_gap

        tol = max(1e-5, 4 * torch.finfo(self.W.dtype).eps)  # stored-dtype rounding: ~eps·√k measured
        k = min(self.W.shape)
        gap = float(lambda_orthogonality_gap(self.W.to(torch.float64)))
        if self.kind in ("isometry", "similarity"):
            if gap > tol * math.sqrt(k):
                raise ValueError(
                    f"kind {self.kind!r} needs W with orthonormal rows, but ‖G − I‖_F = {gap:.3g} "
                    f"(tolerance {tol * math.sqrt(k):.3g})"
                )
        elif self.lam is None:
            raise ValueError("kind 'near_isometry' needs lam, got None")
        elif gap > self.lam + tol * math.sqrt(k):
            raise ValueError(f"kind 'near_isometry' needs ‖G − I‖_F <= lam = {self.lam:g}, got {gap:.6g}")

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write a ``.safetensors`` file atomically (temp file in the same folder, then ``os.replace``; the file
        I/O is :func:`orthokit.io.record.write_record`).

        Non-finite parameters are refused (they cannot arise from a validated aligner unless its tensors were
        modified in place). Returns the path written.
        """
        from orthokit.io.record import write_record

        tensors = {k: v for k, v in self.state_dict().items() if k in _TENSORS}
        meta = {
            "format": _FORMAT,
            "method": self.method,
            "kind": self.kind,
            "lam": "" if self.lam is None else repr(self.lam),
        }
        return write_record(path, tensors, meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Aligner:
        """Read an aligner written by :meth:`save` (file checks in :func:`orthokit.io.record.read_record`); a
        file of another kind, or one whose ``W`` contradicts its declared kind, raises ``ValueError`` naming it."""
        from orthokit.io.record import read_record

        tensors, meta = read_record(path, fmt=_FORMAT, keys=_TENSORS, what="aligner")
        state: dict[str, Any] = dict(tensors)
        path = Path(path)
        lam_text = meta.get("lam", "")
        try:
            lam = float(lam_text) if lam_text else None
        except ValueError:
            raise ValueError(f"{str(path)!r} has a non-numeric lam {lam_text!r} in its metadata") from None
        state.update(method=meta.get("method", "custom"), kind=meta.get("kind", ""), lam=lam)
        try:
            return cls.from_state_dict(state)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{str(path)!r} holds an invalid aligner: {e}") from None

    def __repr__(self) -> str:
        lam = "" if self.lam is None else f", lam={self.lam:g}"
        return (
            f"Aligner(method={self.method!r}, kind={self.kind!r}, {self.d_source}→{self.d_target}, "
            f"scale={self.scale:.6g}{lam}, dtype={self.dtype})"
        )
