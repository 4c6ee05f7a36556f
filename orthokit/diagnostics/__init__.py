"""``orthokit.diagnostics`` — geometry diagnostics of representations and of training updates.

* **Capacity** (``docs/diagnostics/capacity.md``): :func:`cosine_histogram` of an embedding matrix's pairwise
  cosines, :func:`estimate_epsilon` (ε, the accepted deviation from orthogonality, as μ + 2σ of those cosines —
  Guha, arXiv 2606.02765, official code's rule), :func:`capacity` (the paper's adjusted k/d law) against
  :func:`jl_capacity` (the Johnson–Lindenstrauss count).
* **Factor orthogonality** (``docs/diagnostics/factor.md``): :func:`factor_orthogonality` — per-concept
  components of attribute-labelled embeddings, their principal angles and the additivity R² of
  ``emb(a, b) ≈ u_a + v_b`` (Uselis, Dittadi & Oh, arXiv 2602.24264).
* **Geometry Conflict** (``docs/diagnostics/conflict.md``): :func:`geometry_conflict` between two task updates
  (normalized Bures–Wasserstein distance of their ``ΔWᵀΔW`` geometries, arXiv 2605.09608 after the authors'
  code), :func:`conflict_report` per layer, :func:`sequence_conflicts` along a continual-training run.

Every diagnostic is registered in :data:`DIAGNOSTICS` (capabilities ``input``, ``higher_is``); the conformance
suites check each one on planted cases with a known answer and reject mutants.

Example:
    >>> import torch
    >>> from orthokit.diagnostics import estimate_epsilon, factor_orthogonality
    >>> Q, _ = torch.linalg.qr(torch.randn(64, 64, dtype=torch.float64))
    >>> round(float(estimate_epsilon(Q)), 6)                          # orthonormal rows: ε = 0
    0.0
    >>> color, shape = torch.arange(24) % 4, torch.arange(24) // 4      # 4 colors × 6 shapes
    >>> U, V = Q[:4] * 3, Q[4:10] * 3                                   # orthogonal per-concept components
    >>> emb = U[color] + V[shape]                                       # exactly additive
    >>> rep = factor_orthogonality(emb, {"color": color, "shape": shape})
    >>> round(rep.r2, 6)
    1.0
"""

from __future__ import annotations

# importing the modules registers the diagnostics
from orthokit.diagnostics.capacity import (
    ADJUSTED_CONSTANTS,
    INDETERMINATE_EPS,
    JL_C,
    RATIO_C,
    CosineHistogram,
    EpsilonEstimate,
    capacity,
    cosine_histogram,
    cosine_moments,
    estimate_epsilon,
    jl_capacity,
    log_capacity,
    null_abs_cos_quantile,
    required_epsilon,
)
from orthokit.diagnostics.conflict import (
    AUTHORS_TARGETS,
    ConflictReport,
    LayerConflict,
    UpdateGeometry,
    bures_wasserstein,
    conflict_report,
    geometry_conflict,
    layer_conflict,
    sequence_conflicts,
    update_geometry,
)
from orthokit.diagnostics.factor import FactorReport, concept_labels, factor_orthogonality
from orthokit.diagnostics.registry import DIAGNOSTICS

__all__ = [
    "DIAGNOSTICS",
    # capacity
    "estimate_epsilon",
    "EpsilonEstimate",
    "cosine_histogram",
    "CosineHistogram",
    "cosine_moments",
    "capacity",
    "log_capacity",
    "jl_capacity",
    "required_epsilon",
    "null_abs_cos_quantile",
    "ADJUSTED_CONSTANTS",
    "JL_C",
    "RATIO_C",
    "INDETERMINATE_EPS",
    # factor orthogonality
    "factor_orthogonality",
    "FactorReport",
    "concept_labels",
    # geometry conflict
    "geometry_conflict",
    "AUTHORS_TARGETS",
    "conflict_report",
    "sequence_conflicts",
    "layer_conflict",
    "update_geometry",
    "bures_wasserstein",
    "UpdateGeometry",
    "LayerConflict",
    "ConflictReport",
]
