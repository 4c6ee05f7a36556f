"""Checks of ``retrieval_metrics`` shared by the protocol tests and their mutant test.

Each ``check_*`` takes the function under test and raises ``AssertionError`` when it is wrong. The reference is
written independently of the implementation: float64 Python loops, an explicit sort by (distance, index), the
textbook AP ``(1/R) Σ_r P@r·rel(r)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Fn = Callable[..., dict]


def ref_distances(q: torch.Tensor, g: torch.Tensor, metric: str) -> list[list[float]]:
    """Pairwise distances in float64 with truncation to the shared width, then (cosine) normalization."""
    d = min(q.shape[1], g.shape[1])
    qs, gs = q[:, :d].double().tolist(), g[:, :d].double().tolist()
    out = []
    for a in qs:
        row = []
        for b in gs:
            if metric == "inner":
                row.append(1.0 - sum(x * y for x, y in zip(a, b)))
            elif metric == "cosine":
                na = math.sqrt(sum(x * x for x in a)) or 1.0
                nb = math.sqrt(sum(x * x for x in b)) or 1.0
                row.append(1.0 - sum(x * y for x, y in zip(a, b)) / (na * nb))
            else:
                row.append(math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b))))
        out.append(row)
    return out


def ref_from_distances(
    dist: list[list[float]], ql: list[int], gl: list[int], ks=(1, 5), exclude_self: bool = False
) -> dict:
    """CMC (first match) and textbook AP over the ranking sorted by (distance, gallery index)."""
    hits = dict.fromkeys(ks, 0)
    aps = []
    skipped = 0
    for i, row in enumerate(dist):
        items = [j for j in range(len(row)) if not (exclude_self and j == i)]
        ranked = sorted(items, key=lambda j: (row[j], j))
        rel = [gl[j] == ql[i] for j in ranked]
        if not any(rel):
            skipped += 1
            continue
        first = rel.index(True)
        for k in ks:
            hits[k] += first < k
        tp, ap = 0, 0.0
        for r, is_rel in enumerate(rel, start=1):
            if is_rel:
                tp += 1
                ap += tp / r
        aps.append(ap / sum(rel))
    n = len(aps)
    out = {f"top{k}": hits[k] / n for k in ks}
    out["mAP"] = sum(aps) / n
    out["n_queries_without_positive"] = skipped
    return out


def ref_metrics(q, g, ql, gl, metric="cosine", ks=(1, 5), exclude_self=False) -> dict:
    return ref_from_distances(ref_distances(q, g, metric), ql.tolist(), gl.tolist(), ks, exclude_self)


def assert_close(got: dict, want: dict, tol: float = 1e-12) -> None:
    assert set(got) == set(want), (got, want)
    for k in want:
        assert abs(got[k] - want[k]) <= tol, (k, got[k], want[k])


def random_case(seed: int, n_q: int, n_g: int, d_q: int, d_g: int, n_cls: int):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(n_cls, max(d_q, d_g), generator=g)
    ql = torch.randint(0, n_cls, (n_q,), generator=g)
    gl = torch.randint(0, n_cls, (n_g,), generator=g)
    q = centers[ql, :d_q] + 1.5 * torch.randn(n_q, d_q, generator=g)
    x = centers[gl, :d_g] + 1.5 * torch.randn(n_g, d_g, generator=g)
    return q, x, ql, gl


def check_against_reference(fn: Fn) -> None:
    """Random cases: both metrics, query wider / gallery wider / equal, labels missing from the gallery."""
    for seed, (n_q, n_g, d_q, d_g, n_cls) in enumerate(
        [(23, 31, 6, 6, 4), (17, 40, 9, 5, 5), (20, 27, 4, 10, 3), (15, 12, 7, 7, 9)]
    ):
        q, x, ql, gl = random_case(seed, n_q, n_g, d_q, d_g, n_cls)
        for metric in ("cosine", "l2", "inner"):
            assert_close(fn(q, x, ql, gl, metric=metric), ref_metrics(q, x, ql, gl, metric))
    q, _, ql, _ = random_case(7, 25, 25, 6, 6, 4)
    for metric in ("cosine", "l2"):
        assert_close(
            fn(q, q, ql, ql, metric=metric, exclude_self=True, topk=(1, 3)),
            ref_metrics(q, q, ql, ql, metric, ks=(1, 3), exclude_self=True),
        )


def check_hand_cases(fn: Fn) -> None:
    """Tiny cases computed by hand (exact numbers)."""
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.2]])
    gl = torch.tensor([0, 1, 1, 0])
    q = torch.tensor([[1.0, 0.1], [0.1, 1.0], [-1.0, 0.0]])
    ql = torch.tensor([1, 1, 0])
    # query 0 ranks g: 0 (label 0), 2 (1), 1 (1), 3 (0) -> first relevant at rank 2, AP (1/2 + 2/3)/2
    # query 1 ranks g: 1 (1), 2 (1), 0, 3 -> rank 1, AP 1
    # query 2 ranks g: 3 (0), then 1 (dist 1), 2, 0 (label 0, last) -> rank 1, AP (1 + 2/4)/2
    m = fn(q, g, ql, gl, metric="cosine", topk=(1, 2, 3))
    assert m["top1"] == 2 / 3 and m["top2"] == 1.0 and m["top3"] == 1.0, m
    want_map = ((1 / 2 + 2 / 3) / 2 + 1.0 + (1 + 2 / 4) / 2) / 3
    assert abs(m["mAP"] - want_map) < 1e-12, (m["mAP"], want_map)
    # a query whose class is absent from the gallery is skipped and counted
    m = fn(torch.cat([q, q[:1]]), g, torch.cat([ql, torch.tensor([7])]), gl, topk=(1,))
    assert m["n_queries_without_positive"] == 1 and m["top1"] == 2 / 3, m


def check_truncation(fn: Fn) -> None:
    """Features are cut to the shared width *before* normalizing (a wide gallery's tail must not matter)."""
    q = torch.tensor([[1.0, 0.0]])
    # gallery item 0 points along q in the shared dims but has a huge tail; item 1 is off by 45°
    g = torch.tensor([[1.0, 0.0, 100.0], [1.0, 1.0, 0.0]])
    m = fn(q, g, torch.tensor([0]), torch.tensor([0, 1]), topk=(1,))
    assert m["top1"] == 1.0 and m["mAP"] == 1.0, m
    # and symmetric: a wide query against a narrow gallery equals the truncated query
    qw = torch.tensor([[0.3, 1.0, -4.0, 2.0], [1.0, 0.2, 9.0, 0.0]])
    g2 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    a = fn(qw, g2, torch.tensor([1, 0]), torch.tensor([0, 1, 0]))
    b = fn(qw[:, :2], g2, torch.tensor([1, 0]), torch.tensor([0, 1, 0]))
    assert a == b, (a, b)


def check_ties(fn: Fn) -> None:
    """Tied distances: CMC breaks ties by gallery index; AP treats a tie as one threshold (sklearn)."""
    e0, e1 = [1.0, 0.0], [0.0, 1.0]
    g = torch.tensor([e0, e0, e0, e1])  # three identical items (labels 0, 1, 1), one far item (label 0)
    m = fn(torch.tensor([e0]), g, torch.tensor([1]), torch.tensor([0, 1, 1, 0]), topk=(1, 2))
    assert m["top1"] == 0.0 and m["top2"] == 1.0, m  # item 0 (wrong label) wins the tie: lowest index
    assert abs(m["mAP"] - 2 / 3) < 1e-12, m  # sklearn: one threshold with precision 2/3, recall 1


def check_scale(fn: Fn) -> None:
    """Huge/tiny finite features: a common scale (and, for cosine, any per-row scale) leaves the ranking as is.

    The reference runs on the unscaled data (its Python floats would overflow too)."""
    q, x, ql, gl = random_case(11, 14, 19, 5, 5, 3)
    for metric, scales in (("cosine", (1e300, 1e-300)), ("l2", (1e160, 1e-200)), ("inner", (1e200, 1e-200))):
        want = ref_metrics(q, x, ql, gl, metric)
        for s in scales:
            assert_close(fn(q.double() * s, x.double() * s, ql, gl, metric=metric), want)
    # float64 features far outside float32's range, ranked in float32
    want = ref_metrics(q, x, ql, gl, "l2")
    got = fn(q.double() * 1e100, x.double() * 1e100, ql, gl, metric="l2", dtype=torch.float32)
    assert got["top1"] == want["top1"] and got["top5"] == want["top5"], (got, want)
    # cosine ignores each row's own scale, however extreme
    rows = torch.tensor([1e300, 1e-300, 1.0, 1e150, 1e-20] * 4, dtype=torch.float64)
    got = fn(q.double() * rows[:14, None], x.double() * rows[:19, None].flip(0), ql, gl)
    assert_close(got, ref_metrics(q, x, ql, gl, "cosine"))


def exclude_self_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(old_g, new_g, labels, new_q)``: one set is queries and gallery (``new_q is new_g``); the old feature is
    close to the new one, so a query's own item is often nearest and leaving it out changes both curve ends."""
    g = torch.Generator().manual_seed(12)
    y = torch.arange(30) % 4
    centers = torch.randn(4, 6, generator=g)
    new_g = centers[y] + 1.3 * torch.randn(30, 6, generator=g)
    old_g = new_g[:, :4] + 0.3 * torch.randn(30, 4, generator=g)
    return old_g, new_g, y, new_g


def check_backfill_exclude_self(curve_fn: Fn) -> None:
    """``exclude_self=True``: the curve's ends equal the float64 reference with leave-one-out (new/old at 0,
    new/new at 1) on data where leaving the query's own item out does change the result."""
    old_g, new_g, y, new_q = exclude_self_case()
    c = curve_fn(old_g, new_g, new_q, y, y, fractions=(0.0, 1.0), exclude_self=True, topk=(1, 3))
    for point, gallery in zip(c.points, (old_g, new_g)):
        got = {k: v for k, v in point.items() if k not in ("fraction", "n_backfilled")}
        want = ref_metrics(new_q, gallery, y, y, "cosine", ks=(1, 3), exclude_self=True)
        assert ref_metrics(new_q, gallery, y, y, "cosine", ks=(1, 3)) != want  # the data make it matter
        assert_close(got, want)
