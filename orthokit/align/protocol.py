"""The backward-compatibility evaluation protocol: retrieval metrics and the old/new compatibility report.

A model update is *backward compatible* when queries embedded by the new model can be searched against a
gallery embedded by the old one. BCT (Shen et al., "Towards Backward-Compatible Representation Learning",
CVPR 2020) states the empirical criterion ``M(φ_new, φ_old) > M(φ_old, φ_old)``: the new/old cross-model
accuracy must beat the old model searching its own gallery. OCA (Ricci et al., ECCV-W 2024) and BT² (Zhou et al.,
ICCV 2023) report three settings — old/old, new/old (new query, old gallery) and new/new — as CMC top-1/top-5 and
mAP, with the evaluation code of ``apple/ml-fct`` (``utils/eval_utils.py``), which this module follows:

* **distance** — cosine: both features are truncated to ``min(d_query, d_gallery)`` *before* L2 normalization,
  ``d = 1 − q̂·ĝ`` (how a wider new feature ``d_old + k`` meets an old ``d_old`` gallery); L2: the same
  truncation, then Euclidean distance (ranked by its square).
* **CMC top-k** with first-match-break: a query is a hit at k when any of its k nearest gallery items shares its
  label.
* **mAP** — mean over queries of average precision with ``sklearn.metrics.average_precision_score`` semantics
  over the whole ranked gallery (scores ``−distance``; tied distances form one threshold).
* queries whose label does not occur in the gallery are skipped by both metrics (as in ml-fct) and counted in
  ``n_queries_without_positive``.

Every deviation from ml-fct is listed in ``docs/align/protocol.md`` (``## Fidelity``).

Example:
    >>> import torch
    >>> from orthokit.align.protocol import retrieval_metrics
    >>> g = torch.eye(3)                                  # gallery: three orthogonal directions
    >>> q = torch.tensor([[1.0, 0.1, 0.0], [0.0, 0.2, 1.0]])
    >>> m = retrieval_metrics(q, g, torch.tensor([0, 1]), torch.tensor([0, 1, 2]))
    >>> m["top1"], m["top5"], m["mAP"]                  # query 1's positive is ranked 2nd of 3: AP = 1/2
    (0.5, 1.0, 0.75)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["retrieval_metrics", "METRICS"]

#: distance names accepted by :func:`retrieval_metrics`
METRICS = ("cosine", "l2")

#: elements of one query-chunk × gallery block kept in memory at once when ``chunk_size`` is not given
_BLOCK_ELEMENTS = 1 << 22


def _check_features(x: Any, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [n, d], got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D [n, d], got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 rows)")
    if x.shape[1] == 0:
        raise ValueError(f"{name} has feature dimension 0")
    if not (x.is_floating_point() or x.is_complex()):
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if x.is_complex():
        raise TypeError(f"{name} must be real, got {x.dtype}")
    bad = ~torch.isfinite(x).all(dim=1)
    if bool(bad.any()):
        rows = bad.nonzero().flatten()
        raise ValueError(
            f"{name} has non-finite values (NaN/inf) in {rows.numel()} row(s), first row {int(rows[0])}"
        )
    return x


def _check_labels(y: Any, name: str, n: int, owner: str) -> Tensor:
    if not isinstance(y, Tensor):
        try:
            y = torch.as_tensor(y)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"{name} must be a 1-D tensor of labels, got {type(y).__name__}") from e
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(y.shape)}")
    if y.is_floating_point() or y.is_complex():
        raise TypeError(f"{name} must hold integer (or bool) class labels, got {y.dtype}")
    if y.numel() != n:
        raise ValueError(f"{name} has {y.numel()} entries but {owner} has {n} rows")
    return y


def _check_topk(topk: Any) -> tuple[int, ...]:
    if isinstance(topk, int):
        topk = (topk,)
    try:
        ks = tuple(topk)
    except TypeError as e:
        raise TypeError(f"topk must be an int or a sequence of ints, got {type(topk).__name__}") from e
    if not ks:
        raise ValueError("topk is empty; give at least one k (e.g. topk=(1, 5))")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"topk entries must be positive ints, got {k!r}")
    if len(set(ks)) != len(ks):
        raise ValueError(f"topk has repeated entries: {ks}")
    return ks


def _prepare(x: Tensor, d: int, metric: str, dtype: torch.dtype) -> Tensor:
    x = x[:, :d].to(dtype)
    if metric == "cosine":
        x = torch.nn.functional.normalize(x, p=2, dim=1)  # eps 1e-12 as F.normalize: a zero row stays zero
    return x


def retrieval_metrics(
    query: Tensor,
    gallery: Tensor,
    query_labels: Tensor,
    gallery_labels: Tensor,
    *,
    metric: str = "cosine",
    topk: Sequence[int] | int = (1, 5),
    exclude_self: bool = False,
    chunk_size: int | None = None,
    dtype: torch.dtype = torch.float64,
) -> dict[str, float]:
    """CMC top-k and mAP of retrieving ``gallery`` rows with ``query`` rows (label match = relevant).

    Args:
        query: ``[n_q, d_q]`` query features.
        gallery: ``[n_g, d_g]`` gallery features; both are truncated to ``min(d_q, d_g)`` dims first.
        query_labels: ``[n_q]`` integer class labels.
        gallery_labels: ``[n_g]`` integer class labels.
        metric: ``"cosine"`` (truncate, then L2-normalize, ``1 − cos``) or ``"l2"`` (truncate, Euclidean).
        topk: the k of the CMC values returned as ``"top{k}"``.
        exclude_self: the query set *is* the gallery set (``n_q == n_g``, row i the same item): gallery item i
            is removed from query i's ranking (ml-fct does this whenever query and gallery labels are equal).
        chunk_size: queries per block (memory ∝ ``chunk_size × n_g``); default keeps a block near 4M entries.
        dtype: precision of the distances (float64 by default, so near-ties are not decided by rounding).

    Returns:
        ``{"top1": …, "top5": …, "mAP": …, "n_queries_without_positive": int}`` — the metrics are fractions
        in [0, 1] over the queries that have at least one relevant gallery item. Ranking is deterministic: a
        stable sort by distance, ties by gallery index; AP counts tied distances as one threshold, like
        ``sklearn.metrics.average_precision_score``.

    Raises:
        ValueError: on empty, non-2-D or non-finite features, label lengths that do not match, an unknown
            ``metric``, bad ``topk``, ``exclude_self`` with ``n_q != n_g``, or when no query has a relevant
            gallery item.

    Example:
        >>> import torch
        >>> from orthokit.align.protocol import retrieval_metrics
        >>> g = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
        >>> q = torch.tensor([[0.0, 1.0, 5.0]])           # wider query: its 3rd dim is truncated away
        >>> retrieval_metrics(q, g, torch.tensor([0]), torch.tensor([0, 1, 0]))["mAP"]  # ranks 2, 3: (1/2+2/3)/2
        0.5833...
    """
    query = _check_features(query, "query")
    gallery = _check_features(gallery, "gallery")
    n_q, n_g = query.shape[0], gallery.shape[0]
    query_labels = _check_labels(query_labels, "query_labels", n_q, "query")
    gallery_labels = _check_labels(gallery_labels, "gallery_labels", n_g, "gallery")
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    ks = _check_topk(topk)
    if exclude_self and n_q != n_g:
        raise ValueError(
            f"exclude_self=True needs the query set to be the gallery set, got {n_q} vs {n_g} rows"
        )
    if chunk_size is None:
        chunk_size = max(1, _BLOCK_ELEMENTS // n_g)
    elif isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point dtype, got {dtype}")

    device = query.device
    d = min(query.shape[1], gallery.shape[1])
    with torch.no_grad():
        G = _prepare(gallery, d, metric, dtype).to(device)
        g_sq = (G * G).sum(dim=1) if metric == "l2" else None
        g_lab = gallery_labels.to(device)
        q_lab_all = query_labels.to(device)
        hits = torch.zeros(len(ks), dtype=torch.float64, device=device)
        ap_sum = torch.zeros((), dtype=torch.float64, device=device)
        n_valid = 0
        positions = torch.arange(n_g, device=device)
        for s in range(0, n_q, chunk_size):
            Q = _prepare(query[s : s + chunk_size], d, metric, dtype)
            c = Q.shape[0]
            if metric == "cosine":
                dist = 1.0 - Q @ G.T
            else:
                dist = ((Q * Q).sum(dim=1, keepdim=True) + g_sq - 2.0 * (Q @ G.T)).clamp_min_(0.0)
            relevant = q_lab_all[s : s + c, None] == g_lab[None, :]
            if exclude_self:
                rows = torch.arange(c, device=device)
                dist[rows, s + rows] = math.inf  # ranked last, and never relevant: as if removed
                relevant[rows, s + rows] = False
            dist_sorted, order = torch.sort(dist, dim=1, stable=True)
            match = torch.gather(relevant, 1, order)
            n_pos = match.sum(dim=1)
            valid = n_pos > 0
            n_valid += int(valid.sum())
            first = match.to(torch.int8).argmax(dim=1)  # first relevant rank (0 when none; masked by valid)
            for i, k in enumerate(ks):
                hits[i] += ((first < k) & valid).sum()
            # AP with tied distances as one threshold: every relevant item gets the precision at the last
            # position of its tie group (sklearn's precision_recall_curve steps once per distinct score)
            is_end = torch.ones_like(match)
            is_end[:, :-1] = dist_sorted[:, 1:] != dist_sorted[:, :-1]
            end = torch.where(is_end, positions, n_g).flip(1).cummin(dim=1).values.flip(1)
            tp = match.cumsum(dim=1, dtype=torch.float64)
            prec_at_end = tp.gather(1, end) / (end + 1).to(torch.float64)
            ap = (prec_at_end * match).sum(dim=1) / n_pos.clamp_min(1)
            ap_sum += ap[valid].sum()
    if n_valid == 0:
        raise ValueError("no query label occurs among gallery_labels; retrieval metrics are undefined")
    out: dict[str, float] = {f"top{k}": float(hits[i]) / n_valid for i, k in enumerate(ks)}
    out["mAP"] = float(ap_sum) / n_valid
    out["n_queries_without_positive"] = n_q - n_valid
    return out
