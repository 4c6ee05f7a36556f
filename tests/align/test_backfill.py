"""Partial backfill: endpoints equal the protocol's new/old and new/new, a mixed gallery matches a brute force."""

from __future__ import annotations

import json

import pytest
import torch

from orthokit.align.backfill import BackfillCurve, backfill_order, partial_backfill_curve
from orthokit.align.protocol import retrieval_metrics

from ._protocol_checks import (
    assert_close,
    check_backfill_exclude_self,
    exclude_self_case,
    ref_distances,
    ref_from_distances,
)


def _setup(seed: int = 0, n_g: int = 90, n_q: int = 40, d_old: int = 6, d_new: int = 9, n_cls: int = 5):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(n_cls, d_new, generator=g)
    gl = torch.arange(n_g) % n_cls
    ql = torch.randint(0, n_cls, (n_q,), generator=g)
    new_g = centers[gl] + 0.7 * torch.randn(n_g, d_new, generator=g)
    old_g = centers[gl, :d_old] + 1.6 * torch.randn(n_g, d_old, generator=g)
    new_q = centers[ql] + 0.7 * torch.randn(n_q, d_new, generator=g)
    return old_g, new_g, new_q, ql, gl


def test_endpoints_are_new_old_and_new_new() -> None:
    old_g, new_g, new_q, ql, gl = _setup()
    for metric in ("cosine", "l2"):
        c = partial_backfill_curve(old_g, new_g, new_q, ql, gl, fractions=(0.0, 1.0), metric=metric)
        first, last = (
            {k: v for k, v in p.items() if k not in ("fraction", "n_backfilled")} for p in c.points
        )
        assert_close(first, retrieval_metrics(new_q, old_g, ql, gl, metric=metric), tol=1e-12)
        assert_close(last, retrieval_metrics(new_q, new_g, ql, gl, metric=metric), tol=1e-12)
        assert [p["n_backfilled"] for p in c.points] == [0, 90]


def test_exclude_self_endpoints() -> None:
    check_backfill_exclude_self(partial_backfill_curve)
    old_g, new_g, y, new_q = exclude_self_case()
    for metric in ("cosine", "l2"):
        c = partial_backfill_curve(
            old_g, new_g, new_q, y, y, fractions=(0, 1), exclude_self=True, metric=metric
        )
        for point, gallery in zip(c.points, (old_g, new_g)):
            got = {k: v for k, v in point.items() if k not in ("fraction", "n_backfilled")}
            want = retrieval_metrics(new_q, gallery, y, y, metric=metric, exclude_self=True)
            assert want != retrieval_metrics(new_q, gallery, y, y, metric=metric)
            assert_close(got, want, tol=1e-12)


def test_huge_features_share_one_scale() -> None:
    old_g, new_g, new_q, ql, gl = _setup(6, n_g=40, n_q=20)
    for metric, s in (("l2", 1e160), ("inner", 1e200), ("cosine", 1e300), ("l2", 1e-200)):
        kw = {"fractions": (0, 0.5, 1), "metric": metric}
        want = partial_backfill_curve(old_g, new_g, new_q, ql, gl, **kw).points
        # the old gallery 1e6 times smaller than the new features: a per-block scale would misrank the mix
        got = partial_backfill_curve(
            old_g.double() * s / 1e6, new_g.double() * s, new_q.double() * s, ql, gl, **kw
        )
        if metric == "cosine":
            assert got.points == want
        else:
            small = partial_backfill_curve(old_g / 1e6, new_g, new_q, ql, gl, **kw).points
            assert got.points == small and small != want


def test_mixed_gallery_matches_brute_force() -> None:
    old_g, new_g, new_q, ql, gl = _setup(1, n_g=30, n_q=12)
    perm = torch.randperm(30, generator=torch.Generator().manual_seed(5))
    for metric in ("cosine", "l2"):
        curve = partial_backfill_curve(
            old_g, new_g, new_q, ql, gl, fractions=(0.3,), order=perm, metric=metric, topk=(1, 3)
        )
        backfilled = set(perm[:9].tolist())
        d_new, d_old = ref_distances(new_q, new_g, metric), ref_distances(new_q, old_g, metric)
        dist = [[dn[j] if j in backfilled else do[j] for j in range(30)] for dn, do in zip(d_new, d_old)]
        want = ref_from_distances(dist, ql.tolist(), gl.tolist(), ks=(1, 3))
        got = {k: v for k, v in curve.points[0].items() if k not in ("fraction", "n_backfilled")}
        assert_close(got, want, tol=1e-12)
        assert curve.order == "permutation" and curve.points[0]["n_backfilled"] == 9


def test_monotone_on_a_well_behaved_case_and_auc() -> None:
    old_g, new_g, new_q, ql, gl = _setup(2, n_g=300, n_q=150)
    fractions = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    curve = partial_backfill_curve(old_g, new_g, new_q, ql, gl, fractions=fractions, seed=3)
    maps = [p["mAP"] for p in curve.points]
    assert all(b >= a for a, b in zip(maps, maps[1:])), maps
    assert maps[-1] - maps[0] > 0.2  # the new model is much better than the noisy old one
    fr = [p["fraction"] for p in curve.points]
    trapezoid = sum((fr[i + 1] - fr[i]) * (maps[i + 1] + maps[i]) / 2 for i in range(len(fr) - 1))
    assert curve.auc["mAP"] == pytest.approx(trapezoid, abs=1e-12)
    assert maps[0] < curve.auc["mAP"] < maps[-1]


def test_auc_closed_form_and_span_normalization() -> None:
    g = torch.eye(2)
    y = torch.tensor([0, 1])
    c = partial_backfill_curve(-g, g, g, y, y, fractions=(0.0, 0.5, 1.0), order=torch.tensor([0, 1]))
    # 0: both queries miss; 0.5: item 0 backfilled, query 0 hits; 1: both hit -> 0, 1/2, 1; area 1/2
    assert [p["top1"] for p in c.points] == [0.0, 0.5, 1.0] and c.auc["top1"] == 0.5
    half = partial_backfill_curve(-g, g, g, y, y, fractions=(0.5, 1.0), order=torch.tensor([0, 1]))
    assert half.auc["top1"] == 0.75  # mean height over [0.5, 1]
    single = partial_backfill_curve(-g, g, g, y, y, fractions=(1.0,))
    assert single.auc["top1"] == 1.0


def test_orders() -> None:
    assert torch.equal(backfill_order(5, "random", seed=1), backfill_order(5, seed=1))
    assert not torch.equal(backfill_order(50, seed=1), backfill_order(50, seed=2))
    assert sorted(backfill_order(50, seed=4).tolist()) == list(range(50))
    assert backfill_order(4, torch.tensor([2, 0, 3, 1])).tolist() == [2, 0, 3, 1]
    assert backfill_order(3, torch.tensor([0.5, 0.5, 2.0])).tolist() == [
        2,
        0,
        1,
    ]  # highest first, ties by index
    old_g, new_g, new_q, ql, gl = _setup(3, n_g=40, n_q=20)
    pri = torch.linspace(0, 1, 40)
    a = partial_backfill_curve(old_g, new_g, new_q, ql, gl, fractions=(0.25,), order=pri)
    b = partial_backfill_curve(old_g, new_g, new_q, ql, gl, fractions=(0.25,), order=torch.arange(39, -1, -1))
    assert a.points == b.points and a.order == "priority"


@pytest.mark.parametrize(
    "order, exc, match",
    [
        ("uncertainty", ValueError, "unknown order 'uncertainty'"),
        (torch.tensor([0, 1, 1]), ValueError, "not a permutation of range"),
        (torch.tensor([0, 1]), ValueError, "one entry per gallery item"),
        (torch.tensor([0.1, float("nan"), 0.2]), ValueError, "NaN/inf"),
        (torch.tensor([True, False, True]), TypeError, "integer permutation or float priorities"),
        ([0, 1, 2], TypeError, "order must be 'random' or a 1-D Tensor"),
    ],
)
def test_order_errors(order, exc, match) -> None:
    with pytest.raises(exc, match=match):
        backfill_order(3, order)


def test_errors() -> None:
    old_g, new_g, new_q, ql, gl = _setup(4, n_g=20, n_q=10)
    cases = [
        (
            (old_g[:19], new_g, new_q, ql, gl),
            {},
            "new_gallery_feats has 20 rows but old_gallery_feats has 19",
        ),
        ((old_g, new_g[:, :5], new_q, ql, gl), {}, "new_gallery_feats are 5-d but new_query_feats are 9-d"),
        ((old_g, new_g, new_q, ql[:9], gl), {}, "query_labels has 9 entries"),
        ((old_g, new_g, new_q, ql, gl), {"fractions": (0.5, 1.2)}, r"fractions must lie in \[0, 1\]"),
        ((old_g, new_g, new_q, ql, gl), {"fractions": (0.5, 0.5)}, "repeated"),
        ((old_g, new_g, new_q, ql, gl), {"fractions": ()}, "fractions is empty"),
        ((old_g, new_g, new_q, ql, gl), {"metric": "ip"}, "unknown metric"),
        ((old_g, new_g, new_q, ql, gl), {"exclude_self": True}, "exclude_self=True needs"),
    ]
    for args, kw, match in cases:
        with pytest.raises(ValueError, match=match):
            partial_backfill_curve(*args, **kw)
    for kw, match in (
        ({"seed": None}, "seed must be an int, got NoneType"),
        ({"seed": 1.0}, "seed must be an int, got float"),
        ({"fractions": "01"}, "got the string '01'"),
    ):
        with pytest.raises(TypeError, match=match):
            partial_backfill_curve(old_g, new_g, new_q, ql, gl, **kw)
    with pytest.raises(ValueError, match="seed must fit in 64 bits"):
        partial_backfill_curve(old_g, new_g, new_q, ql, gl, seed=2**64)
    bad = old_g.clone()
    bad[2, 0] = float("nan")
    with pytest.raises(ValueError, match="old_gallery_feats: non-finite"):
        partial_backfill_curve(bad, new_g, new_q, ql, gl)


def test_serialization_markdown_plot(tmp_path) -> None:
    old_g, new_g, new_q, ql, gl = _setup(5, n_g=40, n_q=20)
    c = partial_backfill_curve(old_g, new_g, new_q, ql, gl, fractions=(0, 0.5, 1))
    assert isinstance(c, BackfillCurve)
    d = json.loads(json.dumps(c.to_dict()))
    assert d["order"] == "random" and len(d["points"]) == 3 and set(d["auc"]) == {"top1", "top5", "mAP"}
    md = c.to_markdown()
    assert md.count("\n") == 5 and "| AUC |" in md and "| 50% | 20 |" in md
    pytest.importorskip("matplotlib")
    assert c.plot(tmp_path / "bf.png").stat().st_size > 1000
