"""Partial-backfill simulation: retrieval quality while the gallery is re-embedded with the new model.

After a model update the gallery holds old features; "backfilling" re-embeds it with the new model, which is
expensive, so it happens over time. In between, new-model queries search a *mixed* gallery: the backfilled items
carry new features, the rest still old ones. The backfilling curve plots retrieval quality against the
backfilled fraction — at 0 it is the new/old number of the compatibility protocol, at 1 the new/new number —
and its area summarizes how good the update is along the way. FastFill (Jaeckle, Faghri, Farhadi, Tuzel,
Pouransari, "FastFill: Efficient Compatible Model Update", ICLR 2023; code in ``apple/ml-fct``) compares
backfilling orders by this curve (random vs. its uncertainty-based order); λ-orthogonality (Ricci et al. 2025)
also reports partial backfilling. Here the order is ``"random"``, an explicit permutation, or per-item
priorities (e.g. an uncertainty estimate: highest first).

Each query–item distance is the one its pair would have in the three-setting protocol: against a backfilled
item the new query uses all shared dims of the two new features; against an old item both are truncated to
``min(d_new, d_old)`` (then L2-normalized for cosine), exactly as :func:`orthokit.align.protocol.retrieval_metrics`.

Example:
    >>> import torch
    >>> from orthokit.align.backfill import partial_backfill_curve
    >>> g = torch.Generator().manual_seed(0)
    >>> y = torch.arange(200) % 4
    >>> centers = torch.randn(4, 16, generator=g)
    >>> new_g = centers[y] + 0.5 * torch.randn(200, 16, generator=g)   # new model: tight clusters
    >>> old_g = centers[y] + 2.0 * torch.randn(200, 16, generator=g)   # old model: compatible but noisy
    >>> new_q = centers[y] + 0.5 * torch.randn(200, 16, generator=g)
    >>> curve = partial_backfill_curve(old_g, new_g, new_q, y, y, fractions=(0, 0.5, 1))
    >>> [p["fraction"] for p in curve.points]
    [0.0, 0.5, 1.0]
    >>> curve.points[0]["mAP"] < curve.points[1]["mAP"] < curve.points[2]["mAP"]
    True
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from orthokit.align.protocol import (
    METRICS,
    _check_features,
    _check_labels,
    _check_topk,
    _common_scale,
    _distance,
    _prepare,
    _score,
    save_figure,
)

__all__ = ["partial_backfill_curve", "BackfillCurve", "backfill_order", "DEFAULT_FRACTIONS"]

#: 0, 0.1, …, 1
DEFAULT_FRACTIONS: tuple[float, ...] = tuple(i / 10 for i in range(11))


def backfill_order(n: int, order: str | Tensor = "random", *, seed: int = 0) -> Tensor:
    """The order in which the ``n`` gallery items are re-embedded, as a permutation of ``range(n)``.

    Args:
        n: gallery size.
        order: ``"random"`` (a uniform permutation drawn from ``seed``); a 1-D integer tensor, taken as the
            permutation itself; or a 1-D floating tensor of per-item priorities, backfilled highest first
            (ties by index) — e.g. FastFill's estimated uncertainty of each item's old feature.
        seed: seed of the random order (an int; required, so every curve is reproducible).

    Example:
        >>> import torch
        >>> from orthokit.align.backfill import backfill_order
        >>> backfill_order(4, torch.tensor([0.1, 0.9, 0.5, 0.9])).tolist()
        [1, 3, 2, 0]
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not -(2**63) <= seed < 2**64:
        raise ValueError(f"seed must fit in 64 bits, got {seed}")
    if isinstance(order, str):
        if order != "random":
            raise ValueError(f"unknown order {order!r}; give 'random', a permutation or a priority tensor")
        return torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    if not isinstance(order, Tensor):
        raise TypeError(f"order must be 'random' or a 1-D Tensor, got {type(order).__name__}")
    if order.ndim != 1 or order.numel() != n:
        raise ValueError(
            f"order must be 1-D with one entry per gallery item ({n}), got shape {tuple(order.shape)}"
        )
    if order.is_floating_point():
        if not bool(torch.isfinite(order).all()):
            raise ValueError("order priorities contain NaN/inf")
        return torch.sort(order.cpu(), descending=True, stable=True).indices
    if order.dtype == torch.bool or order.is_complex():
        raise TypeError(f"order must be an integer permutation or float priorities, got {order.dtype}")
    perm = order.cpu().long()
    if not torch.equal(torch.sort(perm).values, torch.arange(n)):
        raise ValueError(f"order is not a permutation of range({n})")
    return perm


@dataclass(frozen=True)
class BackfillCurve:
    """Retrieval metrics along a partial backfill (from :func:`partial_backfill_curve`).

    Attributes:
        points: one dict per fraction: ``fraction``, ``n_backfilled`` and the metrics (``top1``, … ``mAP``).
        auc: area under the curve of each metric over the fractions (trapezoid rule, divided by the span of
            the fractions, so a curve over [0, 1] gives the plain area, in [0, 1]).
        order: ``"random"``, ``"permutation"`` or ``"priority"``.
        metric: the distance.
    """

    points: list[dict[str, float]]
    auc: dict[str, float]
    order: str
    metric: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict."""
        return {
            "points": [dict(p) for p in self.points],
            "auc": dict(self.auc),
            "order": self.order,
            "metric": self.metric,
        }

    def _keys(self) -> list[str]:
        return [k for k in self.points[0] if k.startswith("top")] + ["mAP"]

    def to_markdown(self) -> str:
        """The curve as a markdown table (percentages) with the AUC row last."""
        keys = self._keys()
        head = ["backfilled", "items"] + [k.replace("top", "top-") for k in keys]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for p in self.points:
            vals = [f"{100 * p[k]:.2f}" for k in keys]
            lines.append(
                f"| {100 * p['fraction']:.0f}% | {int(p['n_backfilled'])} | " + " | ".join(vals) + " |"
            )
        lines.append("| AUC | | " + " | ".join(f"{100 * self.auc[k]:.2f}" for k in keys) + " |")
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike, title: str | None = None) -> Path:
        """Metric vs backfilled fraction, saved atomically to ``path``."""
        from matplotlib.figure import Figure  # lazy: optional dependency

        fig = Figure(figsize=(4.2, 3.0))
        ax = fig.add_subplot(1, 1, 1)
        xs = [100 * p["fraction"] for p in self.points]
        for k in self._keys():
            ax.plot(
                xs,
                [100 * p[k] for p in self.points],
                marker="o",
                ms=3,
                label=f"{k} (AUC {100 * self.auc[k]:.1f})",
            )
        ax.set_xlabel("gallery backfilled with the new model (%)")
        ax.set_ylabel("%")
        ax.set_title(title or f"partial backfill ({self.order} order, {self.metric})", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        return save_figure(fig, path)


def _check_fractions(fractions: Sequence[float]) -> list[float]:
    if isinstance(fractions, (str, bytes)):
        raise TypeError(f"fractions must be a sequence of numbers in [0, 1], got the string {fractions!r}")
    try:
        fs = [float(f) for f in fractions]
    except (TypeError, ValueError) as e:
        raise TypeError("fractions must be a sequence of numbers in [0, 1]") from e
    if not fs:
        raise ValueError("fractions is empty")
    for f in fs:
        if not (0.0 <= f <= 1.0):
            raise ValueError(f"fractions must lie in [0, 1], got {f}")
    if len(set(fs)) != len(fs):
        raise ValueError(f"fractions has repeated entries: {fs}")
    return sorted(fs)


def partial_backfill_curve(
    old_gallery_feats: Tensor,
    new_gallery_feats: Tensor,
    new_query_feats: Tensor,
    query_labels: Tensor,
    gallery_labels: Tensor,
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    order: str | Tensor = "random",
    seed: int = 0,
    metric: str = "cosine",
    topk: Sequence[int] | int = (1, 5),
    exclude_self: bool = False,
    chunk_size: int | None = None,
) -> BackfillCurve:
    """Retrieval of new-model queries against a gallery backfilled up to each fraction, in a given order.

    Args:
        old_gallery_feats: ``[n_g, d_old]`` the gallery as the old model embedded it.
        new_gallery_feats: ``[n_g, d_new]`` the same items embedded by the new model (row i = item i).
        new_query_feats: ``[n_q, d_new]`` queries embedded by the new model.
        query_labels, gallery_labels: integer labels.
        fractions: backfilled fractions in [0, 1] (sorted; ``round(f · n_g)`` items each, the first ones of
            the order, so the sets are nested); a sequence of numbers, not a string.
        order, seed: see :func:`backfill_order`.
        metric, topk, exclude_self, chunk_size: as in :func:`orthokit.align.protocol.retrieval_metrics`.

    Returns:
        A :class:`BackfillCurve`. Fraction 0 equals ``retrieval_metrics(new_query, old_gallery)`` and fraction
        1 equals ``retrieval_metrics(new_query, new_gallery)``.

    Example:
        >>> import torch
        >>> from orthokit.align.backfill import partial_backfill_curve
        >>> g = torch.eye(2)
        >>> curve = partial_backfill_curve(-g, g, g, torch.tensor([0, 1]), torch.tensor([0, 1]), fractions=(0, 1))
        >>> [(p["fraction"], p["top1"]) for p in curve.points], curve.auc["top1"]
        ([(0.0, 0.0), (1.0, 1.0)], 0.5)
    """
    old_g = _check_features(old_gallery_feats, "old_gallery_feats")
    new_g = _check_features(new_gallery_feats, "new_gallery_feats")
    new_q = _check_features(new_query_feats, "new_query_feats")
    n_g, n_q = old_g.shape[0], new_q.shape[0]
    if new_g.shape[0] != n_g:
        raise ValueError(f"new_gallery_feats has {new_g.shape[0]} rows but old_gallery_feats has {n_g}")
    if new_g.shape[1] != new_q.shape[1]:
        raise ValueError(
            f"new_gallery_feats are {new_g.shape[1]}-d but new_query_feats are {new_q.shape[1]}-d "
            "(both come from the new model)"
        )
    q_lab = _check_labels(query_labels, "query_labels", n_q, "new_query_feats")
    g_lab = _check_labels(gallery_labels, "gallery_labels", n_g, "the gallery")
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    ks = _check_topk(topk)
    fs = _check_fractions(fractions)
    if exclude_self and n_q != n_g:
        raise ValueError(
            f"exclude_self=True needs the query set to be the gallery set, got {n_q} vs {n_g} rows"
        )
    if chunk_size is None:
        chunk_size = max(1, (1 << 22) // n_g)
    elif isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    perm = backfill_order(n_g, order, seed=seed).to(new_q.device)
    order_name = (
        order if isinstance(order, str) else ("priority" if order.is_floating_point() else "permutation")
    )

    dtype = torch.float64
    d_new, d_x = new_q.shape[1], min(new_q.shape[1], old_g.shape[1])
    points: list[dict[str, float]] = []
    with torch.no_grad():
        # l2/inner: one factor for all three, since new and old items are ranked against each other
        sc = _common_scale((new_q, new_g, old_g[:, :d_x]), metric, dtype)
        G_new = _prepare(new_g, d_new, metric, dtype, sc).to(new_q.device)
        G_old = _prepare(old_g, d_x, metric, dtype, sc).to(new_q.device)
        for f in fs:
            k = math.floor(f * n_g + 0.5)
            is_new = torch.zeros(n_g, dtype=torch.bool, device=new_q.device)
            is_new[perm[:k]] = True
            new_idx, old_idx = is_new.nonzero().flatten(), (~is_new).nonzero().flatten()

            def blocks(new_idx: Tensor = new_idx, old_idx: Tensor = old_idx) -> Iterator[tuple[int, Tensor]]:
                for s in range(0, n_q, chunk_size):
                    q = new_q[s : s + chunk_size]
                    dist = torch.empty(q.shape[0], n_g, dtype=dtype, device=q.device)
                    if new_idx.numel():
                        dist[:, new_idx] = _distance(
                            _prepare(q, d_new, metric, dtype, sc), G_new[new_idx], metric
                        )
                    if old_idx.numel():
                        dist[:, old_idx] = _distance(
                            _prepare(q, d_x, metric, dtype, sc), G_old[old_idx], metric
                        )
                    yield s, dist

            m = _score(blocks(), q_lab, g_lab, ks, exclude_self)
            points.append({"fraction": f, "n_backfilled": k, **{key: m[key] for key in m}})
    keys = [f"top{k}" for k in ks] + ["mAP"]
    auc = {key: _area([p["fraction"] for p in points], [p[key] for p in points]) for key in keys}
    return BackfillCurve(points, auc, order_name, metric)


def _area(xs: list[float], ys: list[float]) -> float:
    """Trapezoid area divided by the x-span (the mean height; the plain area over [0, 1])."""
    if len(xs) == 1:
        return ys[0]
    area = sum((xs[i + 1] - xs[i]) * (ys[i + 1] + ys[i]) / 2 for i in range(len(xs) - 1))
    return area / (xs[-1] - xs[0])
