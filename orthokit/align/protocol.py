"""The backward-compatibility evaluation protocol: retrieval metrics and the old/new compatibility report.

A model update is *backward compatible* when queries embedded by the new model can be searched against a
gallery embedded by the old one. BCT (Shen et al., "Towards Backward-Compatible Representation Learning",
CVPR 2020) states the empirical criterion ``M(φ_new, φ_old) > M(φ_old, φ_old)``: the new/old cross-model
accuracy must beat the old model searching its own gallery. OCA (Ricci et al., ECCV-W 2024) and BT² (Zhou et al.,
ICCV 2023) report three settings — old/old, new/old (new query, old gallery) and new/new — as CMC top-1/top-5 and
mAP, with the evaluation code of ``apple/ml-fct`` (``utils/eval_utils.py``), which this module follows:

* **distance** — cosine: both features are truncated to ``min(d_query, d_gallery)`` *before* L2 normalization,
  ``d = 1 − q̂·ĝ`` (how a wider new feature ``d_old + k`` meets an old ``d_old`` gallery); L2: the same
  truncation, then Euclidean distance (ranked by its square); ``"inner"``: the truncation and ``1 − q·g``
  without normalizing (the BT² code's cosine, which expects normalized model outputs).
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
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from orthokit._fs import publish_mode

__all__ = [
    "retrieval_metrics",
    "compatibility_report",
    "CompatibilityReport",
    "save_figure",
    "METRICS",
    "CRITERION",
]

#: distance names accepted by :func:`retrieval_metrics`
METRICS = ("cosine", "l2", "inner")

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
            f"{name}: non-finite values (NaN/inf) in {rows.numel()} row(s), first row {int(rows[0])}"
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


def _check_dtype(dtype: Any) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype (e.g. torch.float64), got {dtype!r}")
    return dtype


def _safe_range(dtype: torch.dtype, d: int) -> tuple[float, float]:
    """``(lo, hi)``: rows whose largest ``|x|`` lies in it have sums of ``d`` squares that neither overflow
    ``dtype`` nor lose precision to underflow (and norms far above ``F.normalize``'s eps 1e-12)."""
    fi = torch.finfo(dtype)
    return max(math.sqrt(fi.tiny) / fi.eps, 1e-6), math.sqrt(fi.max / (4 * d))


def _common_scale(parts: Sequence[Tensor], metric: str, dtype: torch.dtype) -> float:
    """One power-of-two factor shared by every (already truncated) feature block that meets in one ranking.

    ``l2`` and ``inner`` rank by a distance that is invariant (``l2``) or order-preserving (``inner``, ``1 − q·g``)
    under a common positive scale of query and gallery, so when the largest ``|x|`` is outside the safe range
    of ``dtype`` (squares would overflow — 1e160 in float64 — or underflow) all blocks are multiplied by one
    power of two that brings it to [0.5, 1). In-range data are not touched (bit-identical distances).
    ``cosine`` normalizes each row on its own (:func:`_prepare`): 1."""
    if metric == "cosine":
        return 1.0
    big = max(float(x.abs().amax()) for x in parts)
    lo, hi = _safe_range(dtype, max(x.shape[1] for x in parts))
    if big == 0.0 or lo <= big <= hi:
        return 1.0
    return math.ldexp(1.0, -max(math.frexp(big)[1], -1000))  # a finite factor even for a subnormal max


def _prepare(x: Tensor, d: int, metric: str, dtype: torch.dtype, scale: float = 1.0) -> Tensor:
    """Truncate to ``d`` dims, then: cosine — L2-normalize each row, first dividing rows whose max ``|x|`` is
    outside the safe range of ``dtype`` by that max (exact for cosine; a zero row stays zero); l2/inner —
    multiply by the common ``scale`` of :func:`_common_scale` (in float64, exact, then cast to ``dtype``)."""
    x = x[:, :d]
    if metric == "cosine":
        x = x.to(torch.promote_types(x.dtype, dtype))
        lo, hi = _safe_range(dtype, d)
        peak = x.abs().amax(dim=1, keepdim=True)
        rescale = ((peak > hi) | (peak < lo)) & (peak > 0)
        if bool(rescale.any()):
            x = torch.where(rescale, x / torch.where(rescale, peak, torch.ones_like(peak)), x)
        return torch.nn.functional.normalize(x.to(dtype), p=2, dim=1)
    if scale != 1.0:
        x = x.to(torch.float64) * scale
    return x.to(dtype)


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
        metric: ``"cosine"`` (truncate, then L2-normalize, ``1 − cos``), ``"l2"`` (truncate, Euclidean) or
            ``"inner"`` (truncate, ``1 − q·g`` without normalizing: the BT² code's distance, for features the
            models already normalize).
        topk: the k of the CMC values returned as ``"top{k}"``.
        exclude_self: the query set *is* the gallery set (``n_q == n_g``, row i the same item): gallery item i
            is removed from query i's ranking (ml-fct does this whenever query and gallery labels are equal).
        chunk_size: queries per block (memory ∝ ``chunk_size × n_g``); default keeps a block near 4M entries.
        dtype: precision of the distances, a floating-point ``torch.dtype`` (float64 by default, so near-ties
            are not decided by rounding). Huge or tiny finite features are rescaled so they rank as unscaled
            ones: per row for cosine, by one factor shared by query and gallery for l2/inner.

    Returns:
        ``{"top1": …, "top5": …, "mAP": …, "n_queries_without_positive": int}`` — the metrics are fractions
        in [0, 1] over the queries that have at least one relevant gallery item. Ranking is deterministic: a
        stable sort by distance, ties by gallery index; AP counts tied distances as one threshold, like
        ``sklearn.metrics.average_precision_score``.

    Raises:
        ValueError: on empty, non-2-D or non-finite features, label lengths that do not match, an unknown
            ``metric``, bad ``topk``, ``exclude_self`` with ``n_q != n_g``, or when no query has a relevant
            gallery item.
        TypeError: on non-Tensor or non-float features, non-integer labels or a ``dtype`` that is not a
            floating-point ``torch.dtype``.

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
    dtype = _check_dtype(dtype)

    d = min(query.shape[1], gallery.shape[1])
    with torch.no_grad():
        scale = _common_scale((query[:, :d], gallery[:, :d]), metric, dtype)  # shared: one ranking
        G = _prepare(gallery, d, metric, dtype, scale).to(query.device)

        def blocks() -> Iterator[tuple[int, Tensor]]:
            for s in range(0, n_q, chunk_size):
                q = _prepare(query[s : s + chunk_size], d, metric, dtype, scale)
                yield s, _distance(q, G, metric)

        return _score(blocks(), query_labels, gallery_labels, ks, exclude_self)


def _distance(Q: Tensor, G: Tensor, metric: str) -> Tensor:
    """``[c, n_g]`` distances between prepared (truncated, for cosine normalized) rows."""
    if metric in ("cosine", "inner"):
        return 1.0 - Q @ G.T
    return ((Q * Q).sum(dim=1, keepdim=True) + (G * G).sum(dim=1) - 2.0 * (Q @ G.T)).clamp_min_(0.0)


def _score_block(dist: Tensor, relevant: Tensor, ks: tuple[int, ...]) -> tuple[Tensor, Tensor, Tensor]:
    """Per-query CMC hits ``[len(ks), c]`` (bool), AP ``[c]`` and validity ``[c]`` of one distance block."""
    n_g = dist.shape[1]
    dist_sorted, order = torch.sort(dist, dim=1, stable=True)  # ties: lower gallery index first
    match = torch.gather(relevant, 1, order)
    n_pos = match.sum(dim=1)
    valid = n_pos > 0
    first = match.to(torch.int8).argmax(dim=1)  # rank of the first relevant item (first-match-break)
    hits = torch.stack([first < k for k in ks]) & valid
    # AP with tied distances as one threshold: every relevant item gets the precision at the last position
    # of its tie group (sklearn's precision_recall_curve steps once per distinct score)
    is_end = torch.ones_like(match)
    is_end[:, :-1] = dist_sorted[:, 1:] != dist_sorted[:, :-1]
    positions = torch.arange(n_g, device=dist.device)
    tp = match.cumsum(dim=1, dtype=torch.float64)
    if bool(is_end.all()):  # no tied distances (the usual case): each item is its own threshold
        prec_at_end = tp / (positions + 1).to(torch.float64)
    else:
        end = torch.where(is_end, positions, n_g).flip(1).cummin(dim=1).values.flip(1)
        prec_at_end = tp.gather(1, end) / (end + 1).to(torch.float64)
    ap = (prec_at_end * match).sum(dim=1) / n_pos.clamp_min(1)
    return hits, ap, valid


def _score(
    blocks: Iterable[tuple[int, Tensor]],
    query_labels: Tensor,
    gallery_labels: Tensor,
    ks: tuple[int, ...],
    exclude_self: bool,
) -> dict[str, float]:
    """Accumulate CMC and mAP over ``(first query row, [c, n_g] distances)`` blocks."""
    hits_sum = torch.zeros(len(ks), dtype=torch.float64)
    ap_sum = 0.0
    n_valid = 0
    n_q = query_labels.numel()
    for s, dist in blocks:
        c = dist.shape[0]
        g_lab = gallery_labels.to(dist.device)
        relevant = query_labels[s : s + c].to(dist.device)[:, None] == g_lab[None, :]
        if exclude_self:
            rows = torch.arange(c, device=dist.device)
            dist[rows, s + rows] = math.inf  # ranked last and never relevant: as if removed
            relevant[rows, s + rows] = False
        hits, ap, valid = _score_block(dist, relevant, ks)
        hits_sum += hits.sum(dim=1).to(torch.float64).cpu()
        ap_sum += float(ap[valid].sum())
        n_valid += int(valid.sum())
    if n_valid == 0:
        other = " other than the query itself" if exclude_self else ""
        raise ValueError(
            f"no query has a gallery item with its label{other}; retrieval metrics are undefined"
        )
    out: dict[str, float] = {f"top{k}": float(hits_sum[i]) / n_valid for i, k in enumerate(ks)}
    out["mAP"] = ap_sum / n_valid
    out["n_queries_without_positive"] = n_q - n_valid
    return out


#: the BCT empirical compatibility criterion, as printed in reports
CRITERION = "new/old top-1 > old/old top-1"

FeatureSource = nn.Module | Callable[[Tensor], Tensor] | Mapping[str, Tensor]


@dataclass(frozen=True)
class CompatibilityReport:
    """Old/old, new/old and new/new retrieval metrics of one model update (from :func:`compatibility_report`).

    Attributes:
        rows: ``{"old/old": {...}, "new/old": {...}, "new/new": {...}}`` (plus ``"old/new"`` when asked), each
            the :func:`retrieval_metrics` dict; the setting is ``query model / gallery model``.
        metric: ``"cosine"`` or ``"l2"``.
        topk: the CMC ranks reported.
        dims: ``{"old": d_old, "new": d_new}``, plus ``"compatible": d_c`` when the new model gave a separate
            compatible feature for the cross-model rows; cross-model pairs are compared on
            ``min(d_old, d_c or d_new)`` dims.
        n_query, n_gallery: set sizes.
        exclude_self: whether item i was removed from query i's ranking (query set = gallery set).

    Example:
        >>> import torch
        >>> from orthokit.align.protocol import CompatibilityReport
        >>> r = CompatibilityReport(
        ...     rows={"old/old": {"top1": 0.5, "mAP": 0.4}, "new/old": {"top1": 0.6, "mAP": 0.45},
        ...           "new/new": {"top1": 0.8, "mAP": 0.7}},
        ...     metric="cosine", topk=(1,), dims={"old": 8, "new": 12}, n_query=10, n_gallery=10,
        ...     exclude_self=True)
        >>> r.compatible, round(r.gain, 3)
        (True, 0.1)
    """

    rows: dict[str, dict[str, float]]
    metric: str
    topk: tuple[int, ...]
    dims: dict[str, int]
    n_query: int
    n_gallery: int
    exclude_self: bool
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def compatible(self) -> bool:
        """The BCT criterion: new/old top-1 strictly above old/old top-1."""
        return self.rows["new/old"]["top1"] > self.rows["old/old"]["top1"]

    @property
    def gain(self) -> float:
        """new/old top-1 minus old/old top-1 (positive when compatible)."""
        return self.rows["new/old"]["top1"] - self.rows["old/old"]["top1"]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict of everything in the report."""
        return {
            "rows": {k: dict(v) for k, v in self.rows.items()},
            "compatible": self.compatible,
            "gain_top1": self.gain,
            "criterion": CRITERION,
            "metric": self.metric,
            "topk": list(self.topk),
            "dims": dict(self.dims),
            "n_query": self.n_query,
            "n_gallery": self.n_gallery,
            "exclude_self": self.exclude_self,
            **({"meta": dict(self.meta)} if self.meta else {}),
        }

    def _columns(self) -> list[str]:
        return [f"top{k}" for k in self.topk] + ["mAP"]

    def to_markdown(self, title: str | None = None) -> str:
        """A markdown table (percentages) with the criterion's verdict under it."""
        cols = self._columns()
        head = ["setting (query/gallery)"] + [c.replace("top", "top-") for c in cols] + ["no positive"]
        lines = ([f"**{title}**", ""] if title else []) + [
            "| " + " | ".join(head) + " |",
            "|" + "---|" * len(head),
        ]
        for name, row in self.rows.items():
            vals = [f"{100 * row[c]:.2f}" if c in row else "—" for c in cols]
            lines.append(
                f"| {name} | " + " | ".join(vals) + f" | {row.get('n_queries_without_positive', 0)} |"
            )
        d_old, d_new = self.dims["old"], self.dims["new"]
        d_c = self.dims.get("compatible")
        d_x = d_new if d_c is None else d_c
        width = f"old {d_old}-d, new {d_new}-d" + (
            "" if d_c is None else f", cross-model rows use the new model's {d_c}-d compatible feature"
        )
        width += f" (cross-model pairs on the first {min(d_old, d_x)} dims)" if d_old != d_x else ""
        lines += [
            "",
            f"{self.metric} distance, {width}; {self.n_query} queries, {self.n_gallery} gallery items"
            + (", each query's own item excluded" if self.exclude_self else "")
            + ".",
            f"Compatible (BCT criterion, {CRITERION}): **{'yes' if self.compatible else 'no'}** "
            f"({100 * self.gain:+.2f} points).",
        ]
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike, title: str | None = None) -> Path:
        """Grouped bar chart (settings × metrics) saved atomically to ``path`` (format from the suffix)."""
        from matplotlib.figure import Figure  # lazy: matplotlib is an optional dependency

        cols = self._columns()
        names = list(self.rows)
        fig = Figure(figsize=(1.6 + 1.2 * len(cols) * max(1, len(names)) / 3, 3.2))
        ax = fig.add_subplot(1, 1, 1)
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(cols))]
            ys = [100 * self.rows[name].get(c, float("nan")) for c in cols]
            bars = ax.bar(xs, ys, width=width, label=name)
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
        ax.set_xticks(range(len(cols)), [c.replace("top", "top-") for c in cols])
        ax.set_ylabel("%")
        ax.set_ylim(0, 105)
        verdict = "compatible" if self.compatible else "NOT compatible"
        ax.set_title(title or f"{self.metric} retrieval — {verdict}", fontsize=9)
        ax.legend(fontsize=7, title="query/gallery", title_fontsize=7)
        fig.tight_layout()
        return save_figure(fig, path)


def save_figure(fig: Any, path: str | os.PathLike) -> Path:
    """Save a matplotlib figure atomically: a temporary file in the target folder, then ``os.replace``."""
    path = Path(path)
    if not path.suffix:
        raise ValueError(f"plot path {str(path)!r} has no suffix; give e.g. '.png' or '.pdf'")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120)
        publish_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _module_modes(m: Any) -> list[tuple[nn.Module, bool]]:
    return [(sub, sub.training) for sub in m.modules()] if isinstance(m, nn.Module) else []


def _has_compatible(src: Any) -> bool:
    """``src`` is a compatible-training method: it has callable ``new_features`` and ``compatible_features``."""
    return (
        not isinstance(src, Mapping)
        and callable(getattr(src, "new_features", None))
        and callable(getattr(src, "compatible_features", None))
    )


def _embed(
    src: FeatureSource,
    inputs: Any,
    role: str,
    which: str,
    batch_size: int | None,
    owner: Any = None,
) -> Tensor:
    """Features of ``inputs`` from a model/function, or the precomputed ``src[which]``.

    ``owner``: the module whose training flags are switched to eval around the call (default ``src``; a bound
    method such as ``method.compatible_features`` passes its module here)."""
    if isinstance(src, Mapping):
        if which not in src:
            raise ValueError(
                f"{role} features given as a dict need keys 'query' and 'gallery'; missing {which!r}"
            )
        feats = src[which]
        if not isinstance(feats, Tensor):
            raise TypeError(f"{role} {which} features must be a Tensor, got {type(feats).__name__}")
        return feats
    if not callable(src):
        raise TypeError(
            f"{role} must be a model/function mapping inputs to features or a dict "
            f"{{'query': Tensor, 'gallery': Tensor}}, got {type(src).__name__}"
        )
    if inputs is None:
        raise ValueError(f"{role} is a model, so the {which} inputs are needed (got None)")
    modes = _module_modes(src if owner is None else owner)
    try:
        for sub, _ in modes:
            sub.training = False  # eval(), restored below even when the forward fails
        with torch.no_grad():
            if batch_size is not None and isinstance(inputs, Tensor) and inputs.shape[0] > batch_size:
                parts = [src(inputs[i : i + batch_size]) for i in range(0, inputs.shape[0], batch_size)]
                if not all(isinstance(p, Tensor) for p in parts):
                    bad = next(p for p in parts if not isinstance(p, Tensor))
                    raise TypeError(
                        f"{role} returned {type(bad).__name__} for the {which}; expected a Tensor"
                    )
                feats = torch.cat(parts)
            else:
                feats = src(inputs)
    finally:
        for sub, was in modes:
            sub.training = was
    if not isinstance(feats, Tensor):
        raise TypeError(f"{role} returned {type(feats).__name__} for the {which}; expected a [n, d] Tensor")
    return feats


def _new_features(
    new: FeatureSource,
    query: Any,
    gallery: Any,
    same: bool,
    need_gallery_compat: bool,
    batch_size: int | None,
) -> dict[str, Tensor]:
    """The new model's ``query``/``gallery`` features, plus ``compatible_query`` (and, when the old/new row is
    asked, ``compatible_gallery``) when ``new`` provides a separate compatible feature."""
    out: dict[str, Tensor] = {}
    if isinstance(new, Mapping):
        out["query"] = _embed(new, None, "new", "query", batch_size)
        out["gallery"] = _embed(new, None, "new", "gallery", batch_size)
        for key in ("compatible_query", "compatible_gallery"):
            if key in new:
                out[key] = _embed(new, None, "new", key, batch_size)
        return out
    if _has_compatible(new):
        pairs = [("query", "query", new.new_features), ("compatible_query", "query", new.compatible_features)]
        pairs += [("gallery", "gallery", new.new_features)]
        if need_gallery_compat:
            pairs += [("compatible_gallery", "gallery", new.compatible_features)]
        for key, which, fn in pairs:
            if same and which == "gallery":
                out[key] = out[key.replace("gallery", "query")]
            else:
                out[key] = _embed(
                    fn, query if which == "query" else gallery, "new", key, batch_size, owner=new
                )
        return out
    out["query"] = _embed(new, query, "new", "query", batch_size)
    out["gallery"] = out["query"] if same else _embed(new, gallery, "new", "gallery", batch_size)
    return out


def compatibility_report(
    old: FeatureSource,
    new: FeatureSource,
    query: Any = None,
    gallery: Any = None,
    labels: tuple[Tensor, Tensor] | None = None,
    *,
    metric: str = "cosine",
    topk: Sequence[int] | int = (1, 5),
    exclude_self: bool | None = None,
    include_old_new: bool = False,
    batch_size: int | None = 1024,
    chunk_size: int | None = None,
) -> CompatibilityReport:
    """Evaluate a model update in the three settings of the compatibility protocol (old/old, new/old, new/new).

    Args:
        old: the old model — an ``nn.Module`` or function mapping a batch of inputs to ``[B, d_old]`` features
            (called under ``no_grad`` in eval mode, training flags restored after), or precomputed features
            ``{"query": Tensor, "gallery": Tensor}``.
        new: the new model, same forms; its features may be wider (``d_new > d_old``: truncated against old).
            A compatible-training method — any object with callable ``new_features`` and
            ``compatible_features`` (e.g. :class:`orthokit.align._compat_common.CompatMethod`; checked before
            plain callables) — gives its ``compatible_features`` to the cross-model rows (new/old, and the
            gallery of old/new) and its ``new_features`` to new/new (eval mode, flags restored). Precomputed:
            optional keys ``"compatible_query"`` (new/old) and ``"compatible_gallery"`` (old/new) do the same;
            without them the ``"query"``/``"gallery"`` features serve every row.
        query: query inputs (a Tensor is fed in ``batch_size`` row batches); unused for precomputed features.
        gallery: gallery inputs; passing the *same object* as ``query`` embeds it once and, by default, uses
            the leave-one-out protocol of ml-fct (``exclude_self``).
        labels: ``(query_labels, gallery_labels)``.
        metric, topk, chunk_size: as in :func:`retrieval_metrics` (top-1 is always computed: the criterion).
        exclude_self: remove item i from query i's ranking; default: ``query is gallery``.
        include_old_new: also report old query vs new gallery (forward compatibility).
        batch_size: rows per forward call for Tensor inputs (``None``: one call).

    Returns:
        A :class:`CompatibilityReport`; ``.compatible`` is the BCT criterion on top-1.

    Raises:
        ValueError/TypeError: one line naming the bad argument (labels, shapes, non-finite features, …).

    Example:
        >>> import torch
        >>> from orthokit.align.protocol import compatibility_report
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(60) % 3
        >>> centers = torch.randn(3, 8, generator=g)
        >>> x = centers[y] + 0.8 * torch.randn(60, 8, generator=g)  # the "images"
        >>> old = lambda t: t[:, :6]  # the old model sees 6 dims
        >>> new = lambda t: t  # the new one all 8; its first 6 are the old feature
        >>> r = compatibility_report(old, new, x, x, (y, y))
        >>> r.rows["new/old"] == r.rows["old/old"], r.compatible  # equal is not better: not compatible
        (True, False)
        >>> list(r.rows), r.dims, r.exclude_self
        (['old/old', 'new/old', 'new/new'], {'old': 6, 'new': 8}, True)

        A compatible-training method: new/old reads its compatible feature, new/new its new one.

        >>> from types import SimpleNamespace
        >>> method = SimpleNamespace(new_features=lambda t: t.flip(1), compatible_features=lambda t: t[:, :6])
        >>> rm = compatibility_report(old, method, x, x, (y, y))  # flip: 8-d, its first 6 dims are not old's
        >>> rm.rows["new/old"] == r.rows["old/old"], rm.rows["new/new"] == r.rows["new/new"], rm.dims
        (True, True, {'old': 6, 'new': 8, 'compatible': 6})
    """
    if labels is None or not isinstance(labels, (tuple, list)) or len(labels) != 2:
        raise ValueError("labels must be a pair (query_labels, gallery_labels)")
    if isinstance(topk, int):
        topk = (topk,)
    ks = _check_topk(topk)
    if 1 not in ks:
        ks = (1, *ks)
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
    same = query is gallery and query is not None
    if exclude_self is None:
        exclude_self = same
    feats: dict[tuple[str, str], Tensor] = {}
    feats["old", "query"] = _embed(old, query, "old", "query", batch_size)
    if same and not isinstance(old, Mapping):
        feats["old", "gallery"] = feats["old", "query"]
    else:
        feats["old", "gallery"] = _embed(old, gallery, "old", "gallery", batch_size)
    for which, f in _new_features(new, query, gallery, same, include_old_new, batch_size).items():
        role, which = ("compat", which.split("_")[1]) if which.startswith("compatible_") else ("new", which)
        feats[role, which] = f
    q_lab, g_lab = labels
    for (role, which), f in feats.items():
        name = f"new compatible_{which}" if role == "compat" else f"{role} {which}"
        _check_features(f, f"{name} features")
    n_q, n_g = feats["old", "query"].shape[0], feats["old", "gallery"].shape[0]
    for (role, which), f in feats.items():
        n = n_q if which == "query" else n_g
        if role != "old" and f.shape[0] != n:
            name = f"new compatible_{which}" if role == "compat" else f"new {which}"
            raise ValueError(f"{name} features have {f.shape[0]} rows but old ones have {n}")
    for role in ("old", "new", "compat"):
        if (role, "query") in feats and (role, "gallery") in feats:
            dq, dg = feats[role, "query"].shape[1], feats[role, "gallery"].shape[1]
            if dq != dg:
                pre = "new compatible_" if role == "compat" else f"{role} "
                raise ValueError(
                    f"{pre}query features are {dq}-d but {pre}gallery features are {dg}-d; one model must give "
                    "one width"
                )
    q_lab = _check_labels(q_lab, "query_labels", n_q, "the query set")
    g_lab = _check_labels(g_lab, "gallery_labels", n_g, "the gallery set")
    # the cross-model rows read the new model's compatible feature where it has one
    pairs = {
        "old/old": (("old", "query"), ("old", "gallery")),
        "new/old": (("compat" if ("compat", "query") in feats else "new", "query"), ("old", "gallery")),
        "new/new": (("new", "query"), ("new", "gallery")),
    }
    if include_old_new:
        pairs["old/new"] = (
            ("old", "query"),
            ("compat" if ("compat", "gallery") in feats else "new", "gallery"),
        )
    rows = {
        name: retrieval_metrics(
            feats[qk],
            feats[gk],
            q_lab,
            g_lab,
            metric=metric,
            topk=ks,
            exclude_self=exclude_self,
            chunk_size=chunk_size,
        )
        for name, (qk, gk) in pairs.items()
    }
    dims = {"old": feats["old", "query"].shape[1], "new": feats["new", "query"].shape[1]}
    compat_key = ("compat", "query") if ("compat", "query") in feats else ("compat", "gallery")
    if compat_key in feats:
        dims["compatible"] = feats[compat_key].shape[1]
    return CompatibilityReport(rows, metric, ks, dims, n_q, n_g, bool(exclude_self))
