r"""Alignment-map front door: :func:`fit`, cross-modal :func:`canonicalize`, :func:`anchor_efficiency` curves.

* :func:`fit` looks ``method`` up in :data:`~orthokit.align.registry.ALIGNERS` (``orthogonal``,
  ``orthogonal_scaled``, ``lambda_orthogonal``, ``affine``) and returns an
  :class:`~orthokit.align._aligner.Aligner`.
* :func:`canonicalize` — the recipe of Gupta, Kansal, Jegelka, Isola, Garg, "Canonicalizing multimodal
  contrastive representation learning" (arXiv 2602.17584): two independently trained multimodal models agree
  up to one orthogonal map and a global mean shift, and the *same* map aligns both modalities, so it can be
  fitted on a few anchors of one modality (images) and applied to the other (text).
* :func:`anchor_efficiency` — alignment quality against the number of anchors, with two metrics as small
  public functions: :func:`top1_cross_retrieval` (does mapped row ``i`` retrieve target row ``i``?) and
  :func:`knn_overlap` (are the mapped rows' neighbours those of the original rows?).

Example:
    >>> import torch
    >>> from orthokit.align.api import fit, top1_cross_retrieval
    >>> g = torch.Generator().manual_seed(0)
    >>> X = torch.randn(300, 8, generator=g, dtype=torch.float64)
    >>> Q = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))[0]
    >>> Y = X @ Q + 3.0
    >>> a = fit(X[:100], Y[:100])  # orthogonal + mean shift from 100 anchors
    >>> top1_cross_retrieval(a.transform(X[100:]), Y[100:])
    1.0
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

# importing the method modules registers them
from orthokit.align import affine as _affine  # noqa: F401
from orthokit.align import lambda_orthogonal as _lambda_orthogonal  # noqa: F401
from orthokit.align import orthogonal as _orthogonal  # noqa: F401
from orthokit.align import orthogonal_scaled as _orthogonal_scaled  # noqa: F401
from orthokit.align._aligner import Aligner, check_pair
from orthokit.align.registry import ALIGNERS

__all__ = ["fit", "canonicalize", "anchor_efficiency", "top1_cross_retrieval", "knn_overlap", "Aligner"]

_METRICS = ("cosine", "euclidean")
_CHUNK = 2048


def fit(
    source: Tensor,
    target: Tensor,
    method: str = "orthogonal",
    *,
    center: bool = True,
    lam: float | None = None,
    **kw: Any,
) -> Aligner:
    """Fit an alignment map from ``source`` rows to ``target`` rows (corresponding anchors).

    Args:
        source: ``[n, d_s]`` anchors in the source space.
        target: ``[n, d_t]`` the same anchors in the target space.
        method: a name in :data:`~orthokit.align.registry.ALIGNERS` — ``"orthogonal"`` (isometry),
            ``"orthogonal_scaled"`` (similarity), ``"lambda_orthogonal"`` (near-isometry, needs ``lam``) or
            ``"affine"``. The first three need ``d_s ≤ d_t`` (a wider source raises ``ValueError``: use
            ``"affine"`` or reduce the source first).
        center: fit the mean shift (default; strongly recommended for learned embeddings).
        lam: tolerance λ for ``lambda_orthogonal`` only.
        **kw: method options (``rotation_only``, ``alpha``, ``dtype``, ...).

    Returns:
        The fitted :class:`~orthokit.align._aligner.Aligner`.

    Example:
        >>> import torch
        >>> X = torch.randn(50, 4, dtype=torch.float64)
        >>> fit(X, 2 * X, "orthogonal_scaled").scale  # doctest: +ELLIPSIS
        2.0...
        >>> fit(X, X, "orthogonal", lam=0.1)
        Traceback (most recent call last):
        ...
        ValueError: lam is only used by method 'lambda_orthogonal', not 'orthogonal'
    """
    entry = ALIGNERS.entry(method)
    if entry.name == "lambda_orthogonal":
        if lam is None:
            raise ValueError("method 'lambda_orthogonal' needs a tolerance: pass lam=... (e.g. lam=0.1)")
        kw["lam"] = lam
    elif lam is not None:
        raise ValueError(f"lam is only used by method 'lambda_orthogonal', not {entry.name!r}")
    if not isinstance(center, bool):
        raise TypeError(f"center must be a bool, got {type(center).__name__}")
    return entry.obj(source, target, center=center, **kw)


def canonicalize(
    anchors_a: Tensor,
    anchors_b: Tensor,
    method: str = "orthogonal",
    *,
    center: bool = True,
    **kw: Any,
) -> Aligner:
    r"""Fit the map from model A's space to model B's space on anchors of **one** modality (D5 recipe).

    Gupta et al. (arXiv 2602.17584) show that independently trained contrastive multimodal models satisfy
    ``f_B(x) ≈ f_A(x) Q + c`` for images and ``g_B(y) ≈ g_A(y) Q + c`` for text with the **same** orthogonal
    ``Q`` and global shift ``c``. Recipe:

    1. embed a few hundred anchor images with both models: ``anchors_a = f_A(x)``, ``anchors_b = f_B(x)``;
    2. ``a = canonicalize(anchors_a, anchors_b)`` — ``Q`` from the SVD of the centered cross-covariance,
       ``x ↦ (x − μ_A) Q + μ_B``;
    3. apply ``a.transform`` to model A's features of **either** modality, e.g. ``a.transform(g_A(texts))``
       then compare with ``f_B(images)`` (cross-model retrieval / zero-shot classification).

    Step 3 is exact for the other modality when the shift is global (shared by both modalities): then
    ``(g_A − μ_A) Q + μ_B = g_A Q + c``. A per-modality shift is not recovered from one modality's anchors.

    Args:
        anchors_a: ``[n, d_a]`` model-A features of the anchors (one modality).
        anchors_b: ``[n, d_b]`` model-B features of the same anchors.
        method: any :func:`fit` method; the paper's is ``"orthogonal"``.
        center: fit the mean shift (default, as in the paper).
        **kw: passed to :func:`fit`.

    Returns:
        The :class:`~orthokit.align._aligner.Aligner` from A's space to B's.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(1)
        >>> Q = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))[0]
        >>> img_a = torch.randn(40, 6, generator=g, dtype=torch.float64)
        >>> txt_a = torch.randn(40, 6, generator=g, dtype=torch.float64) + 1.0
        >>> a = canonicalize(img_a, img_a @ Q + 0.5)  # fitted on images only
        >>> bool(torch.allclose(a.transform(txt_a), txt_a @ Q + 0.5))  # applied to text
        True
    """
    return fit(anchors_a, anchors_b, method, center=center, **kw)


# ---------------------------------------------------------------------------------------------- metrics
def _check_metric(metric: str) -> str:
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {_METRICS}, got {metric!r}")
    return metric


def _scores(Q: Tensor, G: Tensor, metric: str) -> Tensor:
    """Similarity (higher = closer) of every query row to every gallery row."""
    if metric == "cosine":
        Qn = torch.nn.functional.normalize(Q, dim=1, eps=1e-300)
        Gn = torch.nn.functional.normalize(G, dim=1, eps=1e-300)
        return Qn @ Gn.mT
    # −‖q − g‖² up to a per-query constant: 2⟨q, g⟩ − ‖g‖²
    return 2 * Q @ G.mT - (G * G).sum(1)


def top1_cross_retrieval(query: Tensor, gallery: Tensor, *, metric: str = "cosine") -> float:
    """Fraction of rows ``i`` whose nearest ``gallery`` row is row ``i`` (paired rows; float64).

    Used with ``query = aligner.transform(eval_source)`` and ``gallery = eval_target``: 1.0 means every
    mapped item retrieves its own counterpart. Ties go to the lowest index.

    Args:
        query: ``[n, d]`` rows.
        gallery: ``[n, d]`` rows, row ``i`` the counterpart of query row ``i``.
        metric: ``"cosine"`` (default) or ``"euclidean"``.

    Example:
        >>> import torch
        >>> top1_cross_retrieval(torch.eye(3), torch.tensor([[1.0, 0, 0], [0, 0, 1], [0, 1, 0]]))
        0.3333333333333333
    """
    Q, G = check_pair(query, gallery, min_rows=1, names=("query", "gallery"))
    if Q.shape[1] != G.shape[1]:
        raise ValueError(f"query and gallery must have the same width, got {Q.shape[1]} and {G.shape[1]}")
    _check_metric(metric)
    Q, G = Q.to(torch.float64), G.to(torch.float64).to(Q.device)
    hits = 0
    for i in range(0, Q.shape[0], _CHUNK):
        best = _scores(Q[i : i + _CHUNK], G, metric).argmax(1)
        hits += int((best == torch.arange(i, i + best.shape[0], device=Q.device)).sum())
    return hits / Q.shape[0]


def _knn(X: Tensor, k: int, metric: str) -> Tensor:
    out = []
    for i in range(0, X.shape[0], _CHUNK):
        S = _scores(X[i : i + _CHUNK], X, metric)
        rows = torch.arange(i, i + S.shape[0], device=X.device)
        S[torch.arange(S.shape[0], device=X.device), rows] = -math.inf  # exclude self
        out.append(S.topk(k, dim=1).indices)
    return torch.cat(out)


def knn_overlap(A: Tensor, B: Tensor, *, k: int = 10, metric: str = "euclidean") -> float:
    """Mean fraction of each row's ``k`` nearest neighbours (self excluded) shared between spaces ``A`` and ``B``.

    Row ``i`` of ``A`` and of ``B`` are the same item in two spaces (e.g. mapped and original source rows). 1.0
    means the map kept every neighbourhood; an isometry scores 1.0 with the default Euclidean metric (cosine
    neighbourhoods are not translation-invariant, so a mean shift may change them).

    Args:
        A: ``[n, d_a]`` rows.
        B: ``[n, d_b]`` rows (widths may differ).
        k: neighbourhood size, ``1 ≤ k < n``.
        metric: ``"euclidean"`` (default) or ``"cosine"``.

    Example:
        >>> import torch
        >>> X = torch.randn(30, 5, dtype=torch.float64)
        >>> knn_overlap(X, 3 * X + 1, k=5)
        1.0
    """
    A, B = check_pair(A, B, min_rows=2, names=("A", "B"))
    _check_metric(metric)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < A.shape[0]:
        raise ValueError(f"k must be an integer in [1, n-1] = [1, {A.shape[0] - 1}], got {k!r}")
    Ad, Bd = A.to(torch.float64), B.to(torch.float64).to(A.device)
    na, nb = _knn(Ad, k, metric), _knn(Bd, k, metric)
    shared = (na.unsqueeze(2) == nb.unsqueeze(1)).any(2).sum(1)
    return float(shared.double().mean() / k)


# ---------------------------------------------------------------------------------------------- curves
def _method_specs(methods: Sequence[str | Mapping[str, Any]]) -> list[tuple[str, str, dict[str, Any]]]:
    """``[(label, method, kwargs)]`` from names or ``{"method": ..., "label": ..., **kwargs}`` mappings."""
    if isinstance(methods, (str, Mapping)):
        methods = [methods]
    specs = []
    for m in methods:
        if isinstance(m, str):
            if m != "none":
                ALIGNERS.entry(m)
            specs.append((m, m, {}))
        elif isinstance(m, Mapping):
            if "method" not in m:
                raise ValueError(f"a method spec must have a 'method' key, got {dict(m)!r}")
            kw = {k: v for k, v in m.items() if k not in ("method", "label")}
            name = str(m["method"])
            if name != "none":
                ALIGNERS.entry(name)
            specs.append((str(m.get("label", name)), name, kw))
        else:
            raise TypeError(f"each method must be a name or a mapping, got {type(m).__name__}")
    labels = [s[0] for s in specs]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ValueError(f"method labels must be unique, got duplicates {dup}; give each spec a 'label'")
    return specs


def _default_metrics(mapped: Tensor, eval_target: Tensor, eval_source: Tensor) -> dict[str, float]:
    return {
        "top1": top1_cross_retrieval(mapped, eval_target),
        "knn_overlap": knn_overlap(mapped, eval_source, k=min(10, mapped.shape[0] - 1)),
    }


def anchor_efficiency(
    source: Tensor,
    target: Tensor,
    eval_source: Tensor,
    eval_target: Tensor,
    *,
    n_anchors: Sequence[int] = (25, 50, 100, 250, 500, 1000),
    methods: Sequence[str | Mapping[str, Any]] = ("none", "orthogonal", "affine"),
    seeds: Sequence[int] = (0, 1, 2),
    metric_fn: Callable[[Tensor, Tensor, Tensor], Mapping[str, float]] | None = None,
) -> list[dict[str, Any]]:
    """Alignment quality against the number of anchors: one row per (method, n_anchors, seed).

    For each seed, ``n`` anchors are drawn without replacement from the ``source``/``target`` pool
    (``torch.Generator`` seeded with ``seed``; the same draw for every method), each method is fitted on them
    and evaluated on the held-out ``eval_source``/``eval_target`` pairs.

    Args:
        source, target: ``[N, d_s]`` / ``[N, d_t]`` anchor pool (corresponding rows).
        eval_source, eval_target: ``[M, d_s]`` / ``[M, d_t]`` held-out pairs.
        n_anchors: anchor counts, each in ``[2, N]``.
        methods: names (``"none"`` = identity map, needs ``d_s = d_t``) or mappings
            ``{"method": name, "label": text, **fit_kwargs}`` (e.g.
            ``{"method": "orthogonal", "center": False, "label": "orthogonal (no mean)"}``,
            ``{"method": "lambda_orthogonal", "lam": 0.5}``).
        seeds: anchor-draw seeds.
        metric_fn: ``(mapped_eval_source, eval_target, eval_source) -> {name: value}``; default
            ``{"top1": top1_cross_retrieval(mapped, eval_target), "knn_overlap": knn_overlap(mapped,
            eval_source, k=10)}`` (cosine top-1, Euclidean 10-NN).

    Returns:
        ``[{"method": label, "n_anchors": n, "seed": s, **metrics, "relative_residual": ...}, ...]`` where
        ``relative_residual`` is the held-out data-space residual (:meth:`Aligner.residuals`).

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> X = torch.randn(120, 5, generator=g, dtype=torch.float64)
        >>> Q = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64))[0]
        >>> rows = anchor_efficiency(X[:80], X[:80] @ Q, X[80:], X[80:] @ Q, n_anchors=(10,),
        ...                          methods=("orthogonal",), seeds=(0,))
        >>> rows[0]["method"], rows[0]["n_anchors"], rows[0]["top1"], rows[0]["knn_overlap"]
        ('orthogonal', 10, 1.0, 1.0)
    """
    X, Y = check_pair(source, target)
    Xe, Ye = check_pair(eval_source, eval_target, names=("eval_source", "eval_target"))
    if (Xe.shape[1], Ye.shape[1]) != (X.shape[1], Y.shape[1]):
        raise ValueError(
            f"eval_source/eval_target widths {(Xe.shape[1], Ye.shape[1])} differ from source/target "
            f"{(X.shape[1], Y.shape[1])}"
        )
    sizes = [int(n) for n in n_anchors]
    for n in sizes:
        if not 2 <= n <= X.shape[0]:
            raise ValueError(
                f"n_anchors value {n} is outside [2, {X.shape[0]}] (the anchor pool has {X.shape[0]} rows)"
            )
    specs = _method_specs(methods)
    if any(name == "none" for _, name, _ in specs) and X.shape[1] != Y.shape[1]:
        raise ValueError(
            f"method 'none' (identity) needs equal widths, got d_s={X.shape[1]}, d_t={Y.shape[1]}"
        )
    seed_list = [int(s) for s in seeds]
    if not seed_list:
        raise ValueError("seeds must not be empty")
    metric = metric_fn if metric_fn is not None else _default_metrics
    rows: list[dict[str, Any]] = []
    for label, name, kw in specs:
        if name == "none":  # identity: no anchors used, the same for every n and seed
            scores = dict(metric(Xe, Ye, Xe))
            scores["relative_residual"] = _identity_residual(Xe, Ye)
            rows += [{"method": label, "n_anchors": n, "seed": s, **scores} for n in sizes for s in seed_list]
            continue
        for n in sizes:
            for s in seed_list:
                g = torch.Generator().manual_seed(s)
                idx = torch.randperm(X.shape[0], generator=g)[:n].to(X.device)
                a = fit(X[idx], Y[idx], name, **kw)
                mapped = a.transform(Xe)
                scores = dict(metric(mapped, Ye, Xe))
                scores["relative_residual"] = a.residuals(Xe, Ye)["relative"]
                rows.append({"method": label, "n_anchors": n, "seed": s, **scores})
    return rows


def _identity_residual(X: Tensor, Y: Tensor) -> float:
    Xd, Yd = X.to(torch.float64), Y.to(torch.float64)
    denom = float(torch.linalg.norm(Yd - Yd.mean(0)))
    return float(torch.linalg.norm(Xd - Yd)) / denom if denom > 0 else math.inf
