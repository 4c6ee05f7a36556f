"""``orthokit.dictionary`` — orthogonal dictionary learning: a square orthogonal basis in which data is sparse.

With an orthogonal dictionary ``D`` (``DᵀD = I``) the best ``s``-sparse code of a signal is exact and cheap: hard
thresholding of ``Dᵀy`` keeps its ``s`` largest coefficients (no OMP, no lasso). This family learns ``D``:

* ``online_fw`` (:class:`OnlineFrankWolfeODL`) — streaming Frank–Wolfe over the convex hull of the orthogonal
  group after Xue & Lau (arXiv 2103.01484): constant memory whatever the number of samples seen, the reported
  dictionary exactly orthogonal after every step (``docs/dictionary/online_fw.md``; only the paper's opening is
  reachable with our search tools, so the algorithm's details are reconstructed — each one is listed there).
* ``batch_msp`` (:class:`BatchMSP`) — ℓ4 (ℓp) norm maximization by matching, stretching and projection
  (Zhai et al. 2020), the batch baseline.
* ``batch_procrustes`` (:class:`BatchProcrustesDL`) — alternating hard thresholding and Procrustes.
* :func:`sparse_code`, :func:`hard_threshold`, :func:`reconstruct`; :func:`atom_recovery` and
  :func:`planted_data` for planted-dictionary experiments.

Data is ``[d, n]`` (columns are samples). Every learner is registered in :data:`DICT_LEARNERS` with its
capabilities (``online``, ``exact_orthogonal``); ``tests/dictionary/test_conformance.py`` reads the registry.

Example:
    >>> import torch
    >>> from orthokit.dictionary import OnlineFrankWolfeODL, planted_data
    >>> Y, D_true = planted_data(d=8, n=8000, theta=0.2, seed=0)
    >>> learner = OnlineFrankWolfeODL(8, seed=0)
    >>> for Yb in Y.split(50, dim=1):                                   # a stream of 160 mini-batches
    ...     _ = learner.partial_fit(Yb)
    >>> D = learner.dictionary
    >>> bool(torch.dist(D.T @ D, torch.eye(8, dtype=D.dtype)) < 1e-10)   # exactly orthogonal
    True
    >>> from orthokit.dictionary import atom_recovery
    >>> atom_recovery(D, D_true)["max_angle_deg"] < 10.0                 # the planted atoms, up to sign/order
    True
"""

from __future__ import annotations

# importing the learner modules registers them
from orthokit.dictionary._common import OrthogonalDictionaryLearner
from orthokit.dictionary.batch_msp import BatchMSP
from orthokit.dictionary.batch_procrustes import BatchProcrustesDL
from orthokit.dictionary.metrics import atom_recovery, planted_data
from orthokit.dictionary.online_fw import OnlineFrankWolfeODL
from orthokit.dictionary.registry import DICT_LEARNERS
from orthokit.dictionary.sparse import hard_threshold, reconstruct, sparse_code

__all__ = [
    "DICT_LEARNERS",
    "OrthogonalDictionaryLearner",
    "OnlineFrankWolfeODL",
    "BatchMSP",
    "BatchProcrustesDL",
    "sparse_code",
    "hard_threshold",
    "reconstruct",
    "atom_recovery",
    "planted_data",
]
