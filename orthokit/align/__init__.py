"""``orthokit.align`` — alignment and backward-compatible representations, orthogonality losses and heads.

Independently trained models agree up to an orthogonal map and a mean shift; a retrieval system can upgrade its
model without re-embedding its gallery when the new features are compatible with the old ones. This family makes
orthogonality the tool for both, on ``orthokit.linalg``:

* **Alignment maps** (:data:`ALIGNERS`, :func:`fit`): ``orthogonal`` (centered Procrustes — an isometry),
  ``orthogonal_scaled`` (Umeyama), ``lambda_orthogonal`` (affine within tolerance λ of orthogonal) and
  ``affine`` (least squares); :func:`canonicalize` (one Q from one modality's anchors, applied to another) and
  :func:`anchor_efficiency` curves (``docs/align/maps.md``).
* **Backward-compatible training** (:data:`COMPAT_METHODS`): ``independent`` (baseline), ``bct``, ``oca``,
  ``bt2``, ``lambda_orthogonal`` — one ``nn.Module`` interface (``loss``, ``new_features``,
  ``compatible_features``, ``extra_parameters``; ``docs/align/compat.md``).
* **The compatibility protocol** (:func:`compatibility_report`, :func:`retrieval_metrics`,
  :func:`partial_backfill_curve`): old/old, new/old, new/new CMC top-k and mAP with ml-fct's dimension
  truncation, the criterion new/old > old/old, plots (``docs/align/protocol.md``).
* **Losses and heads** (:data:`ALIGN_LOSSES`): ``opl`` (Orthogonal Projection Loss), ``ebv`` (equiangular
  basis vectors), ``grassmann`` (classes as subspaces, :class:`GrassmannSGD`), ``dolg`` (orthogonal
  local/global fusion; ``docs/align/losses.md``).

Example:
    >>> import torch
    >>> from orthokit.align import fit
    >>> g = torch.Generator().manual_seed(0)
    >>> X = torch.randn(200, 8, generator=g, dtype=torch.float64)
    >>> Q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))
    >>> al = fit(X, X @ Q + 3.0)                      # centered Procrustes: recovers Q and the shift
    >>> bool(torch.allclose(al.W, Q, atol=1e-10)), al.kind
    (True, 'isometry')
"""

from __future__ import annotations

# Importing the method modules registers them (maps, compatible training, losses/heads).
from orthokit.align._aligner import Aligner
from orthokit.align._compat_common import CompatMethod
from orthokit.align.affine import fit_affine
from orthokit.align.api import anchor_efficiency, canonicalize, fit, knn_overlap, top1_cross_retrieval
from orthokit.align.backfill import BackfillCurve, backfill_order, partial_backfill_curve
from orthokit.align.bct import BCT, bct_influence_loss, synthesize_prototypes
from orthokit.align.bt2 import BT2
from orthokit.align.dolg import DOLGHead, DOLGLocalBranch, MultiAtrous, OrthogonalFusion, orthogonal_fusion
from orthokit.align.ebv import EquiangularBasisVectors, generate_ebv, max_abs_cosine, welch_bound
from orthokit.align.grassmann import (
    GrassmannClassHead,
    GrassmannSGD,
    grassmann_param_groups,
    grassmann_retract,
    tangent_projection,
)
from orthokit.align.independent import Independent
from orthokit.align.lambda_compat import LambdaOrthogonal, cross_model_supcon
from orthokit.align.lambda_orthogonal import (
    fit_lambda_orthogonal,
    lambda_orthogonality_gap,
    lambda_orthogonality_penalty,
)
from orthokit.align.oca import OCA
from orthokit.align.opl import OrthogonalProjectionLoss, cross_entropy_with_opl, opl_terms
from orthokit.align.orthogonal import fit_orthogonal
from orthokit.align.orthogonal_scaled import fit_orthogonal_scaled
from orthokit.align.protocol import CompatibilityReport, compatibility_report, retrieval_metrics
from orthokit.align.registry import ALIGN_LOSSES, ALIGNERS, COMPAT_METHODS

__all__ = [
    # registries
    "ALIGNERS",
    "COMPAT_METHODS",
    "ALIGN_LOSSES",
    # alignment maps
    "Aligner",
    "fit",
    "canonicalize",
    "anchor_efficiency",
    "top1_cross_retrieval",
    "knn_overlap",
    "fit_orthogonal",
    "fit_orthogonal_scaled",
    "fit_lambda_orthogonal",
    "fit_affine",
    "lambda_orthogonality_penalty",
    "lambda_orthogonality_gap",
    # protocol
    "retrieval_metrics",
    "compatibility_report",
    "CompatibilityReport",
    "partial_backfill_curve",
    "BackfillCurve",
    "backfill_order",
    # compatible training
    "CompatMethod",
    "Independent",
    "BCT",
    "OCA",
    "BT2",
    "LambdaOrthogonal",
    "synthesize_prototypes",
    "bct_influence_loss",
    "cross_model_supcon",
    # losses and heads
    "OrthogonalProjectionLoss",
    "cross_entropy_with_opl",
    "opl_terms",
    "EquiangularBasisVectors",
    "generate_ebv",
    "welch_bound",
    "max_abs_cosine",
    "GrassmannClassHead",
    "GrassmannSGD",
    "grassmann_param_groups",
    "grassmann_retract",
    "tangent_projection",
    "OrthogonalFusion",
    "orthogonal_fusion",
    "DOLGHead",
    "DOLGLocalBranch",
    "MultiAtrous",
]
