"""``orthokit.merge`` — model merging: a registry of tensor-level merge methods plus a streaming tool.

* Methods (one file each, registered in :data:`MERGE_METHODS`): mergekit 0.1.5's ``linear``, ``slerp``,
  ``nuslerp``, ``multislerp``, ``karcher``, ``nearswap``, ``passthrough``, ``task_arithmetic``, ``ties``,
  ``dare_ties``, ``dare_linear``, ``breadcrumbs``, ``breadcrumbs_ties``, ``della``, ``della_linear``, ``sce``,
  ``model_stock``, and the orthogonal/subspace mergers of the geometry track (``orthomerge``, ``orthomerge_oft``,
  ``dc_merge``, ``do_merging``).
* :func:`merge` merges in-memory state dicts or ``nn.Module`` s (notebooks).
* ``orthokit merge CONFIG.yaml OUT_DIR`` (:mod:`orthokit.merge.cli`) merges checkpoints on disk, streaming one
  tensor at a time from memory-mapped safetensors, with a mergekit-compatible YAML config.

Example:
    >>> import torch
    >>> from orthokit.merge import merge
    >>> base = {"w": torch.zeros(3)}
    >>> fts = [{"w": torch.ones(3)}, {"w": 3 * torch.ones(3)}]
    >>> merge(base, fts, "task_arithmetic", lambda_=0.5)["w"]
    tensor([2., 2., 2.])
"""

from __future__ import annotations

# Importing a method module registers its methods in MERGE_METHODS.
# (the function imports below load the method modules; the module names are shadowed by their functions)
from orthokit.merge.api import merge, run_merge
from orthokit.merge.breadcrumbs import breadcrumbs, breadcrumbs_ties
from orthokit.merge.dare import dare, dare_linear, dare_ties
from orthokit.merge.dc_merge import dc_merge
from orthokit.merge.della import della, della_linear
from orthokit.merge.diagnostics import (
    pairwise_cosine,
    subspace_overlap,
    task_vectors,
    weight_disentanglement_error,
)
from orthokit.merge.do_merging import do_merging
from orthokit.merge.karcher import karcher
from orthokit.merge.linear import linear
from orthokit.merge.model_stock import model_stock
from orthokit.merge.multislerp import multislerp
from orthokit.merge.nearswap import nearswap
from orthokit.merge.nuslerp import nuslerp
from orthokit.merge.orthomerge import orthomerge, orthomerge_oft
from orthokit.merge.passthrough import passthrough
from orthokit.merge.registry import (
    MERGE_METHODS,
    MethodSchema,
    ParamSpec,
    method_schema,
    register_merge_method,
    validate_params,
)
from orthokit.merge.sce import sce
from orthokit.merge.slerp import slerp
from orthokit.merge.task_arithmetic import task_arithmetic
from orthokit.merge.ties import ties

__all__ = [
    "karcher",
    "linear",
    "multislerp",
    "nearswap",
    "nuslerp",
    "passthrough",
    "slerp",
    "MERGE_METHODS",
    "MethodSchema",
    "ParamSpec",
    "dare",
    "dare_linear",
    "dc_merge",
    "do_merging",
    "orthomerge",
    "orthomerge_oft",
    "pairwise_cosine",
    "subspace_overlap",
    "task_vectors",
    "weight_disentanglement_error",
    "dare_ties",
    "merge",
    "method_schema",
    "register_merge_method",
    "run_merge",
    "task_arithmetic",
    "ties",
    "breadcrumbs",
    "breadcrumbs_ties",
    "della",
    "della_linear",
    "model_stock",
    "sce",
    "validate_params",
]
