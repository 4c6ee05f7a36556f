"""Geometry Conflict between task updates: a data-free predictor of forgetting (Wang et al., arXiv 2605.09608).

Each task is represented by its parameter update ``ΔW`` (a task vector, see
:func:`orthokit.merge.diagnostics.task_vectors`). For every 2-D weight the update induces a covariance geometry on
the layer's input space, and two updates conflict when these geometries are far apart in the Bures–Wasserstein
metric, normalised by their total energy.

Math (per 2-D tensor ``ΔW ∈ R^{m×n}``, following the authors' analysis code):

1. **Task geometry.** ``Σ = ΔWᵀΔW`` (``n × n``) with eigenpairs ``(σ_i² , v_i)`` from the SVD of ``ΔW``;
   eigenvalues are regularised, ``λ_i = σ_i² + reg``, and truncated to the smallest ``r ≤ rank`` whose energy
   ``Σ_{i≤r} λ_i / Σ_i λ_i`` reaches ``energy``: ``Σ̂ = V_r diag(λ_{1..r}) V_rᵀ``.
2. **Shared space.** ``Q`` = orthonormal basis of ``span(V_r^a) + span(V_r^b)`` (dimension ``u``);
   ``B = Qᵀ Σ̂ Q + reg·I_u`` for both updates.
3. **Bures–Wasserstein.** ``W²(A, B) = tr A + tr B − 2 tr (A^{1/2} B A^{1/2})^{1/2}`` (the squared 2-Wasserstein
   distance of ``N(0, A)`` and ``N(0, B)``), float64, PSD square roots by ``eigh`` with clamping.
4. **Geometry conflict** ``GC = W²(B_a, B_b) / (tr B_a + tr B_b + reg) ∈ [0, 1]``: 0 for identical geometries,
   → 1 for updates whose input subspaces are orthogonal. The model-level score is the unweighted mean over the
   compared tensors (``reduction="mean"``, as the authors' code), or weighted by entries (``"weighted"``).

The paper's *state-relative* conflict compares the new task's update with the accumulated update of the model
state (``θ_t − θ_0``); :func:`sequence_conflicts` computes both that and the consecutive-task conflict for a
sequence of checkpoints. :func:`conflict_report` also returns the baselines the paper argues against (update norm,
task-vector cosine), the subspace overlap of the top-``rank`` left singular subspaces (principal angles) and the
authors' subspace alignment ratio (SAR ``‖ΔW_a V_b‖_F / ‖ΔW_a‖_F``, symmetrised).

Source: Wang, Yang et al., "Geometry Conflict: Explaining and Controlling Forgetting in LLM Continual
Post-Training", arXiv 2605.09608 (2026); official code github.com/wyy-code/GCWM (commit e8e2c47,
``analysis/bridge_analyzer_fast_sharded.py``: defaults ``rank=32``, ``energy_threshold=0.95``, ``cov_reg=1e-6``).
See ``docs/diagnostics/conflict.md`` for every deviation.

Example:
    >>> import torch
    >>> from orthokit.diagnostics.conflict import geometry_conflict
    >>> a = torch.zeros(4, 6); a[0, 0], a[1, 1] = 2.0, 1.0   # reads input coordinates 0 and 1
    >>> b = torch.zeros(4, 6); b[0, 2], b[1, 3] = 2.0, 1.0   # reads 2 and 3: orthogonal input subspaces
    >>> round(geometry_conflict(a, a), 3), round(geometry_conflict(a, b), 3)   # 1 − O(√reg) for orthogonal
    (0.0, 0.999)
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from orthokit.diagnostics.registry import DIAGNOSTICS

__all__ = [
    "AUTHORS_TARGETS",
    "bures_wasserstein",
    "UpdateGeometry",
    "update_geometry",
    "layer_conflict",
    "LayerConflict",
    "ConflictReport",
    "geometry_conflict",
    "conflict_report",
    "sequence_conflicts",
]

Update = Tensor | Mapping[str, Tensor]
DEFAULT_EXCLUDE: tuple[str, ...] = ("embed", "lm_head")  # the authors' code drops embeddings and the LM head
#: the authors' TARGET_KEYWORDS (bridge_analyzer_fast_sharded.py): only these projections are compared
AUTHORS_TARGETS: tuple[str, ...] = (
    "q_proj.weight",
    "k_proj.weight",
    "v_proj.weight",
    "o_proj.weight",
    "gate_proj.weight",
    "up_proj.weight",
    "down_proj.weight",
)
Targets = Sequence[str] | Literal["auto"] | None
#: name substrings of embedding / head matrices: ``targets="auto"`` leaving these out is expected (no warning)
_EMBED_OR_HEAD: tuple[str, ...] = ("embed", "head", "wte", "wpe", "classifier")
_ZERO_REL_TOL = (
    1e-10  # eigenvalues below this fraction of the largest are zeroed in PSD square roots (authors')
)


# ----------------------------------------------------------------------------------------------------------
# Bures–Wasserstein distance
# ----------------------------------------------------------------------------------------------------------
def _psd_sqrt(S: Tensor) -> Tensor:
    """Square root of a symmetric PSD float64 matrix: ``eigh``, negatives and relatively tiny eigenvalues → 0."""
    w, V = torch.linalg.eigh(0.5 * (S + S.T))
    w = w.clamp_min(0.0)
    if w.numel() and float(w.max()) > 0:
        w = torch.where(w < _ZERO_REL_TOL * w.max(), torch.zeros_like(w), w)
    return (V * w.sqrt()) @ V.T


def _check_cov(S: Tensor, name: str) -> Tensor:
    if not isinstance(S, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(S).__name__}")
    if S.dim() != 2 or S.shape[0] != S.shape[1]:
        raise ValueError(f"{name} must be a square matrix, got shape {tuple(S.shape)}")
    if not (S.is_floating_point()):
        raise TypeError(f"{name} must be a floating tensor, got {S.dtype}")
    X = S.detach().to("cpu", torch.float64)
    if not torch.isfinite(X).all():
        raise ValueError(f"{name} contains NaN or inf")
    scale = float(X.abs().max()) if X.numel() else 0.0
    if float((X - X.T).abs().max() if X.numel() else 0.0) > 1e-6 * max(scale, 1e-300):
        raise ValueError(f"{name} must be symmetric")
    X = 0.5 * (X + X.T)
    if X.numel() and float(torch.linalg.eigvalsh(X)[0]) < -1e-8 * max(scale, 1e-300):
        raise ValueError(f"{name} must be positive semidefinite (it has a negative eigenvalue)")
    return X


def bures_wasserstein(S1: Tensor, S2: Tensor, *, squared: bool = False) -> float:
    """Bures–Wasserstein distance between two PSD matrices (covariances of centred Gaussians), in float64.

    Math: ``W²(S1, S2) = tr S1 + tr S2 − 2 tr (S1^{1/2} S2 S1^{1/2})^{1/2}``, clamped at 0 against rounding; PSD
    square roots by ``eigh`` with negative (rounding) eigenvalues set to 0. For commuting matrices with
    eigenvalues ``a_i``, ``b_i`` it reduces to ``Σ_i (√a_i − √b_i)²``.

    Args:
        S1, S2: ``n × n`` symmetric positive semidefinite matrices (any float dtype, finite).
        squared: return ``W²`` instead of ``W``.

    Example:
        >>> import torch
        >>> bures_wasserstein(torch.diag(torch.tensor([4.0, 1.0])), torch.diag(torch.tensor([1.0, 1.0])))
        1.0

    Reference: Bhatia, Jain & Lim, "On the Bures–Wasserstein distance between positive definite matrices",
    Expositiones Mathematicae 37 (2019).
    """
    A, B = _check_cov(S1, "S1"), _check_cov(S2, "S2")
    if A.shape != B.shape:
        raise ValueError(f"S1 and S2 must have the same shape, got {tuple(A.shape)} and {tuple(B.shape)}")
    d2 = _bures_sq(A, B)
    return d2 if squared else math.sqrt(d2)


def _bures_sq(A: Tensor, B: Tensor) -> float:
    rA = _psd_sqrt(A)
    cross = _psd_sqrt(rA @ B @ rA)
    return max(float(torch.trace(A) + torch.trace(B) - 2.0 * torch.trace(cross)), 0.0)


# ----------------------------------------------------------------------------------------------------------
# per-tensor geometry and conflict
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UpdateGeometry:
    """Truncated covariance geometry of one 2-D update: ``Σ̂ = basis · diag(eigenvalues) · basisᵀ``.

    Attributes:
        basis: ``n × r`` orthonormal top right singular vectors (``r = 0`` for a zero update).
        eigenvalues: ``r`` regularised eigenvalues ``σ_i² + reg`` of ``ΔWᵀΔW``, descending.
        fro_norm: ``‖ΔW‖_F``.
    """

    basis: Tensor
    eigenvalues: Tensor
    fro_norm: float

    @property
    def rank(self) -> int:
        """Retained rank ``r``."""
        return int(self.basis.shape[1])


def _check_normalize(normalize: str) -> None:
    if normalize not in ("joint", "unit_trace"):
        raise ValueError(f"normalize must be 'joint' or 'unit_trace', got {normalize!r}")


def _check_hparams(rank: int, energy: float, reg: float) -> None:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be an integer >= 1, got {rank!r}")
    for nm, v in (("energy", energy), ("reg", reg)):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"{nm} must be a real number, got {type(v).__name__} {v!r}")
    if not (0.0 < float(energy) <= 1.0):
        raise ValueError(f"energy must be in (0, 1], got {energy!r}")
    if not (float(reg) >= 0.0 and math.isfinite(float(reg))):
        raise ValueError(f"reg must be a finite number >= 0, got {reg!r}")


def _check_delta(delta: Tensor, name: str) -> Tensor:
    """Validate one 2-D update and return it as CPU float64."""
    if not isinstance(delta, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(delta).__name__}")
    if delta.dim() != 2:
        raise ValueError(f"{name} must be a 2-D tensor, got shape {tuple(delta.shape)}")
    if not delta.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got {delta.dtype}")
    X = delta.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(X).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return X


def _unit(s: float, reg: float) -> float:
    """Common unit ``m`` for updates of max-abs ``s``: ``m² = max(s², reg)`` without forming either square, so
    ``ΔW / m`` and ``reg / m²`` are O(1) whatever the magnitude (1e200 or 1e-200)."""
    return max(s, math.sqrt(reg)) if max(s, reg) > 0 else 1.0


def _geometry(X: Tensor, rank: int, energy: float, reg: float) -> tuple[Tensor, Tensor]:
    """(basis, eigenvalues) of a float64 update already in the common unit (``reg`` in that unit too)."""
    n = X.shape[1]
    if not bool(X.any()):
        return torch.zeros(n, 0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
    _, s, Vh = torch.linalg.svd(X, full_matrices=False)
    keep = s > 1e-12 * s[0]
    s, Vh = s[keep], Vh[keep]
    lam = s.square() + reg
    cum = torch.cumsum(lam, 0) / lam.sum()
    r = int(torch.searchsorted(cum, torch.tensor([float(energy)], dtype=torch.float64)).item()) + 1
    r = max(1, min(r, rank, lam.numel()))
    return Vh[:r].T.contiguous(), lam[:r].contiguous()


def update_geometry(
    delta: Tensor, *, rank: int = 32, energy: float = 0.95, reg: float = 1e-6
) -> UpdateGeometry:
    """Covariance geometry of a 2-D update ``ΔW`` (step 1 of the module docstring), float64.

    Singular values below ``1e-12 · σ_max`` count as zero (the authors keep eigenvalues of ``ΔWᵀΔW + reg·I`` above
    ``reg``, i.e. the numerically non-zero ones). A zero update has rank 0. The SVD runs on ``ΔW`` divided by a
    common unit (scale-safe at any magnitude); eigenvalues whose value ``σ² + reg`` overflows float64 (entries
    beyond ~1e154) raise a ValueError — :func:`layer_conflict` / :func:`geometry_conflict` need no such
    representation and accept any finite update.

    Example:
        >>> import torch
        >>> g = update_geometry(torch.diag(torch.tensor([3.0, 1.0, 0.0])), energy=0.85)
        >>> g.rank, [round(v, 3) for v in g.eigenvalues.tolist()]
        (1, [9.0])
    """
    _check_hparams(rank, energy, reg)
    X = _check_delta(delta, "delta")
    m = _unit(float(X.abs().max()) if X.numel() else 0.0, float(reg))
    Xs = X / m
    basis, lam = _geometry(Xs, rank, energy, (math.sqrt(float(reg)) / m) ** 2)
    lam = lam * m * m
    if not bool(torch.isfinite(lam).all()):
        raise ValueError(
            f"delta's squared singular values overflow float64 (max |entry| {float(X.abs().max()):.3g}); "
            "scale it down, or use layer_conflict / geometry_conflict, which are scale-safe"
        )
    return UpdateGeometry(basis, lam, m * float(Xs.norm()) if basis.shape[1] else 0.0)


def _union_basis(a: Tensor, b: Tensor) -> Tensor:
    cat = torch.cat([a, b], dim=1)
    if cat.shape[1] == 0:
        return cat
    U, s, _ = torch.linalg.svd(cat, full_matrices=False)
    return U[:, s > 1e-10 * max(float(s[0]), 1.0)]


@dataclass(frozen=True)
class LayerConflict:
    """Geometry conflict of one tensor and its ingredients (``sar``: authors' symmetrised alignment ratio)."""

    conflict: float
    bures_sq: float
    trace_a: float
    trace_b: float
    rank_a: int
    rank_b: int
    union_rank: int
    sar: float


def _sar(delta: Tensor, basis: Tensor, fro: float) -> float:
    return float((delta @ basis).norm()) / fro if basis.shape[1] and fro > 0 else 0.0


def layer_conflict(
    delta_a: Tensor,
    delta_b: Tensor,
    *,
    rank: int = 32,
    energy: float = 0.95,
    reg: float = 1e-6,
    normalize: Literal["joint", "unit_trace"] = "joint",
) -> LayerConflict:
    """Geometry conflict of two same-shape 2-D updates (steps 1–4 of the module docstring).

    ``normalize="joint"`` (the authors') divides ``W²`` by ``tr B_a + tr B_b``; ``"unit_trace"`` (an orthokit
    option) first scales each ``B`` to unit trace, so only the *shape* of the geometries counts, not their
    relative size (``GC(Δ, cΔ) = 0``); then ``GC = W²/2``.

    Example:
        >>> import torch
        >>> a = torch.diag(torch.tensor([2.0, 1.0, 0.0]))
        >>> b = torch.diag(torch.tensor([1.0, 2.0, 0.0]))      # same subspace, swapped spectrum
        >>> round(layer_conflict(a, b).conflict, 4)            # (√4−√1)² + (√1−√4)² over 10
        0.2
    """
    _check_hparams(rank, energy, reg)
    _check_normalize(normalize)
    Xa, Xb = _check_delta(delta_a, "delta_a"), _check_delta(delta_b, "delta_b")
    if Xa.shape != Xb.shape:
        raise ValueError(f"shape mismatch: delta_a {tuple(Xa.shape)} vs delta_b {tuple(Xb.shape)}")
    # one common unit m for both updates (m² = max(max|ΔW|², reg)): GC is a ratio of homogeneous degree-1
    # functions of (σ², reg), so it is computed exactly in that unit; squares never overflow or underflow
    s = max(float(Xa.abs().max()), float(Xb.abs().max())) if Xa.numel() else 0.0
    m = _unit(s, float(reg))
    Xa, Xb = Xa / m, Xb / m
    r = (math.sqrt(float(reg)) / m) ** 2
    (ba, la), (bb, lb) = _geometry(Xa, rank, energy, r), _geometry(Xb, rank, energy, r)
    Q = _union_basis(ba, bb)
    u = Q.shape[1]
    if u == 0:
        return LayerConflict(0.0, 0.0, 0.0, 0.0, 0, 0, 0, 0.0)
    eye = r * torch.eye(u, dtype=torch.float64)
    Pa, Pb = Q.T @ ba, Q.T @ bb
    Ba = (Pa * la) @ Pa.T + eye
    Bb = (Pb * lb) @ Pb.T + eye
    if normalize == "unit_trace":
        Ba, Bb = Ba / torch.trace(Ba), Bb / torch.trace(Bb)
    d2 = _bures_sq(0.5 * (Ba + Ba.T), 0.5 * (Bb + Bb.T))
    ta, tb = float(torch.trace(Ba)), float(torch.trace(Bb))
    fa, fb = float(Xa.norm()), float(Xb.norm())
    sar = 0.5 * (_sar(Xa, bb, fa) + _sar(Xb, ba, fb))
    # joint: + reg in the denominator as the authors (in the common unit); unit_trace: W² / (2 + reg) as before
    conflict = d2 / max(ta + tb + (float(reg) if normalize == "unit_trace" else r), 1e-300)
    unit2 = 1.0 if normalize == "unit_trace" else m * m  # report W² and traces in the caller's units
    return LayerConflict(conflict, d2 * unit2, ta * unit2, tb * unit2, ba.shape[1], bb.shape[1], u, sar)


# ----------------------------------------------------------------------------------------------------------
# model-level score and report
# ----------------------------------------------------------------------------------------------------------
def _as_dict(u: Update, name: str) -> dict[str, Tensor]:
    if isinstance(u, Tensor):
        if u.dim() != 2:
            raise ValueError(
                f"{name} must be a 2-D tensor or a state dict, got a tensor of shape {tuple(u.shape)}"
            )
        return {"weight": u}
    if not isinstance(u, Mapping):
        raise TypeError(f"{name} must be a tensor or a mapping name -> tensor, got {type(u).__name__}")
    for k, v in u.items():
        if not isinstance(v, Tensor):
            raise TypeError(f"{name}[{k!r}] must be a torch.Tensor, got {type(v).__name__}")
    return dict(u)


def _select(
    a: dict[str, Tensor],
    b: dict[str, Tensor],
    keys: Sequence[str] | None,
    exclude: Sequence[str],
    targets: Targets = "auto",
) -> list[str]:
    if isinstance(targets, str) and targets != "auto":
        raise TypeError(f"targets must be 'auto', None or a sequence of name substrings, got {targets!r}")
    if targets is not None and not isinstance(targets, str) and not all(isinstance(t, str) for t in targets):
        raise TypeError(f"targets must be a sequence of name substrings, got {targets!r}")
    if isinstance(exclude, str) or not all(isinstance(e, str) for e in exclude):
        raise TypeError(
            f"exclude must be a sequence of name substrings (e.g. ('embed', 'lm_head')), got {exclude!r}"
        )
    if keys is not None:
        if isinstance(keys, str):
            raise TypeError("keys must be a sequence of tensor names, not a single string")
        dup = sorted(k for k, c in Counter(keys).items() if c > 1)
        if dup:
            raise ValueError(f"keys lists tensor(s) more than once: {dup[:5]}")
        missing = [k for k in keys if k not in a or k not in b]
        if missing:
            raise ValueError(f"keys not in both updates: {missing[:5]}")
        sel = list(keys)
    else:
        if set(a) != set(b):
            diff = sorted(set(a) ^ set(b))[:5]
            raise ValueError(
                f"update_a and update_b have different keys (e.g. {diff}); pass keys= to compare a subset"
            )
        sel = [k for k in a if a[k].dim() == 2 and not any(e in k for e in exclude)]
        if targets is not None:
            pats = AUTHORS_TARGETS if isinstance(targets, str) and targets == "auto" else targets
            hit = [k for k in sel if any(t in k for t in pats)]
            auto = isinstance(targets, str) and targets == "auto"
            if hit or not auto:
                if not hit:
                    raise ValueError(f"no 2-D tensor name contains any of targets={list(pats)[:7]}")
                if auto:
                    hits = set(hit)
                    left = [k for k in sel if k not in hits and not any(e in k for e in _EMBED_OR_HEAD)]
                    if left:
                        warnings.warn(
                            f"targets='auto' keeps the {len(hit)} tensors named like the authors' "
                            f"q/k/v/o/gate/up/down_proj and leaves out {len(left)} other 2-D tensor(s): "
                            f"{left[:6]}{' ...' if len(left) > 6 else ''}; pass targets=None to compare every "
                            "2-D tensor, or targets=[...] / keys=[...] to choose",
                            UserWarning,
                            stacklevel=4,
                        )
                sel = hit
    for k in sel:
        if a[k].dim() != 2:
            raise ValueError(f"tensor {k!r} is {a[k].dim()}-D; geometry conflict compares 2-D weights")
        if a[k].shape != b[k].shape:
            raise ValueError(f"shape mismatch for {k!r}: {tuple(a[k].shape)} vs {tuple(b[k].shape)}")
        for nm, d in (("update_a", a), ("update_b", b)):
            if not d[k].is_floating_point():
                raise TypeError(f"{nm}[{k!r}] must be a floating tensor, got {d[k].dtype}")
            if not torch.isfinite(d[k]).all():
                raise ValueError(f"{nm}[{k!r}] contains NaN or inf")
    if not sel:
        raise ValueError("no 2-D tensors to compare (check keys= / exclude=)")
    return sel


def _max_scaled(t: Tensor) -> Tensor:
    X = t.detach().to("cpu", torch.float64)
    m = float(X.abs().max()) if X.numel() else 0.0
    return X / m if m > 0 else X


@dataclass
class ConflictReport:
    """Result of :func:`conflict_report`.

    Attributes:
        conflict: model-level geometry conflict (mean of ``layers[k].conflict`` per ``reduction``).
        layers: tensor name → :class:`LayerConflict`, for exactly the tensors in ``compared``.
        norm_a, norm_b: Frobenius norms of the compared parts of the updates (the update-norm baseline).
        cosine: cosine of the flattened compared updates (task-vector cosine baseline).
        subspace_overlap: size-weighted mean ``cos²`` of the principal angles between the top-``rank`` left
            singular subspaces (via :func:`orthokit.merge.diagnostics.subspace_overlap`); 1 = same subspaces.
        sar: mean over tensors of the authors' symmetrised subspace alignment ratio.
        compared: names of the tensors averaged into ``conflict`` (the selection by ``keys`` / ``targets`` /
            ``exclude``, less ``skipped``), in selection order.
        skipped: selected tensors left out of the average → reason (``"zero in both updates"``: no geometry).
    """

    conflict: float
    layers: dict[str, LayerConflict] = field(default_factory=dict)
    norm_a: float = 0.0
    norm_b: float = 0.0
    cosine: float = 0.0
    subspace_overlap: float = 0.0
    sar: float = 0.0
    compared: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def _reduce(layers: dict[str, LayerConflict], sizes: dict[str, int], reduction: str) -> float:
    if reduction == "mean":
        return sum(v.conflict for v in layers.values()) / len(layers)
    tot = sum(sizes[k] for k in layers)
    return sum(sizes[k] * v.conflict for k, v in layers.items()) / tot


def _prepare(
    update_a: Update,
    update_b: Update,
    keys: Sequence[str] | None,
    exclude: Sequence[str],
    reduction: str,
    targets: Targets = "auto",
) -> tuple[dict[str, Tensor], dict[str, Tensor], list[str]]:
    if reduction not in ("mean", "weighted"):
        raise ValueError(f"reduction must be 'mean' or 'weighted', got {reduction!r}")
    a, b = _as_dict(update_a, "update_a"), _as_dict(update_b, "update_b")
    return a, b, _select(a, b, keys, exclude, targets)


def _layers(
    a: dict[str, Tensor],
    b: dict[str, Tensor],
    sel: list[str],
    rank: int,
    energy: float,
    reg: float,
    normalize: str,
) -> tuple[dict[str, LayerConflict], dict[str, str]]:
    """Per-tensor conflicts of the selected tensors, and the selected tensors skipped (name → reason)."""
    _check_hparams(rank, energy, reg)
    _check_normalize(normalize)
    out, skipped = {}, {}
    for k in sel:
        if not bool(a[k].any()) and not bool(b[k].any()):
            skipped[k] = "zero in both updates"
            continue
        out[k] = layer_conflict(a[k], b[k], rank=rank, energy=energy, reg=reg, normalize=normalize)  # type: ignore[arg-type]
    if not out:
        raise ValueError("both updates are zero in every compared tensor; geometry conflict is undefined")
    return out, skipped


def _score(
    update_a: Update,
    update_b: Update,
    keys: Sequence[str] | None,
    exclude: Sequence[str],
    targets: Targets,
    reduction: str,
    rank: int,
    energy: float,
    reg: float,
    normalize: str,
) -> tuple[dict[str, Tensor], dict[str, Tensor], list[str], dict[str, LayerConflict], dict[str, str], float]:
    """The one validation + scoring path of :func:`geometry_conflict` and :func:`conflict_report`:
    ``(a, b, selected names, per-tensor conflicts, skipped → reason, reduced conflict)``."""
    a, b, sel = _prepare(update_a, update_b, keys, exclude, reduction, targets)
    layers, skipped = _layers(a, b, sel, rank, energy, reg, normalize)
    return a, b, sel, layers, skipped, _reduce(layers, {k: a[k].numel() for k in sel}, reduction)


@DIAGNOSTICS.register("geometry_conflict", input="updates", higher_is="conflict", paper="arXiv 2605.09608")
def geometry_conflict(
    update_a: Update,
    update_b: Update,
    *,
    rank: int = 32,
    energy: float = 0.95,
    reg: float = 1e-6,
    keys: Sequence[str] | None = None,
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
    targets: Targets = "auto",
    reduction: Literal["mean", "weighted"] = "mean",
    normalize: Literal["joint", "unit_trace"] = "joint",
) -> float:
    """Geometry conflict of two task updates: normalised Bures–Wasserstein distance of their covariance geometries.

    Args:
        update_a, update_b: 2-D tensors, or state dicts of updates ``θ_after − θ_before`` with the same keys
            (e.g. from :func:`orthokit.merge.diagnostics.task_vectors`).
        rank, energy, reg: truncation rank, energy threshold and regulariser of each geometry (authors' defaults).
        keys: tensor names to compare (overrides ``targets``/``exclude``); default: the 2-D tensors picked
            by ``targets`` among those whose name contains none of ``exclude``.
        exclude: name substrings skipped when ``keys`` is None (default: embeddings and the LM head, as the
            authors' code).
        targets: ``"auto"`` (default, the authors'): the 2-D tensors whose name contains one of
            :data:`AUTHORS_TARGETS` (``q/k/v/o/gate/up/down_proj.weight``) — or, when no tensor has such a
            name (an MLP, a GPT-2-style model), every 2-D tensor; a ``UserWarning`` names the 2-D tensors
            left out when only some match (e.g. Phi-style ``q/k/v_proj`` + ``dense``/``fc1``/``fc2``: the MLP
            would be dropped), embeddings/heads aside; a sequence of substrings: exactly the tensors
            matching one (ValueError if none does); ``None``: every 2-D tensor.
        reduction: ``"mean"`` over tensors (authors) or ``"weighted"`` by number of entries.
        normalize: ``"joint"`` (authors: ``W² / (tr B_a + tr B_b)``) or ``"unit_trace"`` (orthokit option: each
            geometry scaled to unit trace first; blind to the updates' relative size).

    Returns:
        GC in ``[0, 1]``; higher = more conflicting geometries. 0 for identical updates; invariant to scaling both
        updates by the same factor (exactly with ``reg=0``; up to the absolute ``reg`` otherwise; computed in a
        common unit, so any finite magnitude works), but not one of them (``GC(Δ, cΔ) = (1 − c)² / (1 + c²)``).

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> a = {"l.weight": torch.randn(8, 16, generator=g)}
        >>> b = {"l.weight": 3.0 * a["l.weight"]}         # same subspace, 3x the singular values
        >>> round(geometry_conflict(a, b), 6)                # (1 − 3)² / (1 + 3²): the spectrum counts
        0.4
    """
    return _score(update_a, update_b, keys, exclude, targets, reduction, rank, energy, reg, normalize)[-1]


def conflict_report(
    update_a: Update,
    update_b: Update,
    *,
    rank: int = 32,
    energy: float = 0.95,
    reg: float = 1e-6,
    keys: Sequence[str] | None = None,
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
    targets: Targets = "auto",
    reduction: Literal["mean", "weighted"] = "mean",
    normalize: Literal["joint", "unit_trace"] = "joint",
    overlap_rank: int = 8,
) -> ConflictReport:
    """Per-tensor geometry conflict plus the baselines (update norm, cosine, subspace overlap, SAR).

    Arguments as :func:`geometry_conflict`; ``overlap_rank`` is the subspace dimension of the principal-angle
    overlap baseline. ``report.compared`` lists the tensors averaged into ``report.conflict`` and
    ``report.skipped`` the selected ones left out, with the reason (both updates zero there).

    Example:
        >>> import torch
        >>> a = {"w": torch.diag(torch.tensor([2.0, 1.0, 0.0, 0.0]))}
        >>> b = {"w": torch.diag(torch.tensor([0.0, 0.0, 2.0, 1.0]))}
        >>> r = conflict_report(a, b, overlap_rank=2)
        >>> round(r.conflict, 3), round(r.cosine, 6), round(r.subspace_overlap, 6), r.layers["w"].union_rank
        (0.999, 0.0, 0.0, 4)
    """
    from orthokit.merge.diagnostics import pairwise_cosine, subspace_overlap

    if isinstance(overlap_rank, bool) or not isinstance(overlap_rank, int) or overlap_rank < 1:
        raise ValueError(f"overlap_rank must be an integer >= 1, got {overlap_rank!r}")
    a, b, sel, layers, skipped, conflict = _score(
        update_a, update_b, keys, exclude, targets, reduction, rank, energy, reg, normalize
    )
    fa = torch.cat([a[k].detach().reshape(-1).to("cpu", torch.float64) for k in sel])
    fb = torch.cat([b[k].detach().reshape(-1).to("cpu", torch.float64) for k in sel])
    # baselines are scale-invariant (cosine, overlap) or homogeneous (norms): computed on max-abs-scaled copies
    ma, mb = float(fa.abs().max()) or 1.0, float(fb.abs().max()) or 1.0
    fa, fb = fa / ma, fb / mb
    sa = {k: _max_scaled(a[k]) for k in layers}
    sb = {k: _max_scaled(b[k]) for k in layers}
    return ConflictReport(
        conflict=conflict,
        layers=layers,
        norm_a=ma * float(fa.norm()),
        norm_b=mb * float(fb.norm()),
        cosine=float(pairwise_cosine([fa, fb])[0, 1]),
        subspace_overlap=float(subspace_overlap([sa, sb], rank=overlap_rank, side="left").mean[0, 1]),
        sar=sum(v.sar for v in layers.values()) / len(layers),
        compared=list(layers),
        skipped=skipped,
    )


def sequence_conflicts(
    states: Sequence[Mapping[str, Tensor]],
    *,
    keys: Sequence[str] | None = None,
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
    targets: Targets = "auto",
    rank: int = 32,
    energy: float = 0.95,
    reg: float = 1e-6,
    overlap_rank: int = 8,
) -> list[dict[str, float]]:
    """Scores for each consecutive pair of tasks of a training sequence ``θ_0, θ_1, …, θ_T``.

    For ``t = 1 … T−1`` (task ``t`` then task ``t+1``), with ``Δ_t = θ_t − θ_{t−1}`` and the model-state update
    ``S_t = θ_t − θ_0``: ``pair_conflict = GC(Δ_t, Δ_{t+1})``, ``state_conflict = GC(S_t, Δ_{t+1})`` (the
    paper's state-relative conflict), ``update_norm = ‖Δ_{t+1}‖``, ``cosine = cos(Δ_t, Δ_{t+1})``,
    ``subspace_overlap`` and ``sar`` of ``(Δ_t, Δ_{t+1})``, and ``state_shape_conflict`` = the state-relative
    conflict with ``normalize="unit_trace"``. ``keys`` / ``exclude`` / ``targets`` select the tensors as in
    :func:`geometry_conflict`.

    Example:
        >>> import torch
        >>> th = [{"w": torch.zeros(3, 3)}, {"w": torch.eye(3)}, {"w": 2 * torch.eye(3)}]
        >>> r = sequence_conflicts(th)
        >>> len(r), round(r[0]["pair_conflict"], 6), round(r[0]["cosine"], 6)
        (1, 0.0, 1.0)
    """
    from orthokit.merge.diagnostics import task_vectors

    if isinstance(states, Mapping) or len(states) < 3:
        raise ValueError("states must be a sequence of at least 3 state dicts (θ_0 and two tasks)")
    first = states[0]
    if isinstance(first, Mapping):
        cand = keys if keys is not None and not isinstance(keys, str) else list(first)
        two_d = [k for k in cand if isinstance(first.get(k), Tensor) and first[k].dim() == 2]
        if two_d and not any(first[k].is_floating_point() for k in two_d):
            dts = sorted({str(first[k].dtype) for k in two_d})
            raise TypeError(
                f"states hold no floating 2-D tensor to compare: the 2-D entries (e.g. {two_d[:3]}) are "
                f"{', '.join(dts)}; task updates need floating weights"
            )
    deltas = [task_vectors(states[t - 1], [states[t]])[0] for t in range(1, len(states))]
    accum = task_vectors(states[0], list(states[1:]))
    kw = dict(keys=keys, exclude=exclude, targets=targets, rank=rank, energy=energy, reg=reg)
    out = []
    for t in range(1, len(deltas)):
        rep = conflict_report(deltas[t - 1], deltas[t], overlap_rank=overlap_rank, **kw)  # type: ignore[arg-type]
        out.append(
            {
                "task": t,
                "pair_conflict": rep.conflict,
                "state_conflict": geometry_conflict(accum[t - 1], deltas[t], **kw),  # type: ignore[arg-type]
                "state_shape_conflict": geometry_conflict(
                    accum[t - 1],
                    deltas[t],
                    normalize="unit_trace",
                    **kw,  # type: ignore[arg-type]
                ),
                "update_norm": rep.norm_b,
                "cosine": rep.cosine,
                "subspace_overlap": rep.subspace_overlap,
                "sar": rep.sar,
            }
        )
    return out
