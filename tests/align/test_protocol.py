"""retrieval_metrics and compatibility_report against a float64 brute force, sklearn and hand-computed cases."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

from orthokit.align.protocol import CompatibilityReport, compatibility_report, retrieval_metrics

from ._protocol_checks import (
    assert_close,
    check_against_reference,
    check_hand_cases,
    check_scale,
    check_ties,
    check_truncation,
    random_case,
    ref_metrics,
)


def test_matches_float64_brute_force() -> None:
    check_against_reference(retrieval_metrics)


def test_hand_computed_cases() -> None:
    check_hand_cases(retrieval_metrics)


def test_truncation_before_normalization() -> None:
    check_truncation(retrieval_metrics)


def test_tie_breaking_and_tied_ap() -> None:
    check_ties(retrieval_metrics)


def test_huge_and_tiny_features_rank_as_unscaled() -> None:
    check_scale(retrieval_metrics)


def test_map_equals_sklearn_average_precision() -> None:
    sk = pytest.importorskip("sklearn.metrics")
    q, g, ql, gl = random_case(11, 30, 50, 8, 8, 4)
    g = torch.cat([g, g[:10]])  # duplicated gallery rows: exact distance ties
    gl = torch.cat([gl, gl[:10]])
    for metric in ("cosine", "l2"):
        qn, gn = q.double(), g.double()
        if metric == "cosine":
            dist = 1 - torch.nn.functional.normalize(qn, dim=1) @ torch.nn.functional.normalize(gn, dim=1).T
        else:
            dist = torch.cdist(qn, gn)
        aps = [
            sk.average_precision_score((gl == ql[i]).numpy(), -dist[i].numpy())
            for i in range(len(q))
            if bool((gl == ql[i]).any())
        ]
        got = retrieval_metrics(q, g, ql, gl, metric=metric)["mAP"]
        assert got == pytest.approx(sum(aps) / len(aps), abs=1e-9)


def test_chunking_equals_unchunked() -> None:
    q, g, ql, gl = random_case(3, 41, 37, 6, 9, 5)
    for metric in ("cosine", "l2"):
        full = retrieval_metrics(q, g, ql, gl, metric=metric, chunk_size=1000)
        for c in (1, 4, 40):
            assert_close(retrieval_metrics(q, g, ql, gl, metric=metric, chunk_size=c), full, tol=1e-12)
    full = retrieval_metrics(q, q, ql, ql, exclude_self=True, chunk_size=1000)
    assert_close(retrieval_metrics(q, q, ql, ql, exclude_self=True, chunk_size=3), full, tol=1e-12)


def test_values_are_fractions_and_float32_input_ok() -> None:
    q, g, ql, gl = random_case(5, 20, 20, 4, 4, 3)
    m = retrieval_metrics(q.float(), g.half().float(), ql.int(), gl.long(), topk=3)
    assert set(m) == {"top3", "mAP", "n_queries_without_positive"}
    assert 0.0 <= m["top3"] <= 1.0 and 0.0 <= m["mAP"] <= 1.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            {"gallery_labels": torch.zeros(3, dtype=torch.long)},
            "gallery_labels has 3 entries but gallery has 4",
        ),
        ({"query_labels": torch.zeros(5, dtype=torch.long)}, "query_labels has 5 entries but query has 2"),
        ({"gallery": torch.zeros(0, 3)}, "gallery is empty"),
        ({"query": torch.tensor([[1.0, float("nan"), 0.0], [0.0, 1.0, 0.0]])}, "query: non-finite"),
        ({"gallery": torch.ones(4)}, "gallery must be 2-D"),
        ({"metric": "dot"}, "unknown metric 'dot'"),
        ({"topk": (0,)}, "topk entries must be positive"),
        ({"topk": (1, 1)}, "repeated"),
        ({"exclude_self": True}, "exclude_self=True needs"),
        ({"chunk_size": 0}, "chunk_size must be a positive int"),
        ({"query_labels": torch.tensor([9, 9])}, "no query has a gallery item with its label;"),
    ],
)
def test_errors_are_one_line_value_errors(kwargs: dict, match: str) -> None:
    args = {
        "query": torch.eye(3)[:2],
        "gallery": torch.eye(3)[[0, 1, 2, 0]],
        "query_labels": torch.tensor([0, 1]),
        "gallery_labels": torch.tensor([0, 1, 2, 0]),
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match) as ei:
        retrieval_metrics(
            args.pop("query"),
            args.pop("gallery"),
            args.pop("query_labels"),
            args.pop("gallery_labels"),
            **args,
        )
    assert "\n" not in str(ei.value)


def test_leave_one_out_without_any_other_relevant_item() -> None:
    with pytest.raises(ValueError, match="other than the query itself"):
        retrieval_metrics(torch.eye(3), torch.eye(3), torch.arange(3), torch.arange(3), exclude_self=True)


def test_type_errors() -> None:
    with pytest.raises(TypeError, match="query must be a torch.Tensor"):
        retrieval_metrics([[1.0]], torch.eye(2), torch.tensor([0]), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="integer"):
        retrieval_metrics(torch.eye(2), torch.eye(2), torch.tensor([0.0, 1.0]), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="floating-point"):
        retrieval_metrics(torch.eye(2).long(), torch.eye(2), torch.tensor([0, 1]), torch.tensor([0, 1]))
    for bad in ("float64", torch.int64, None):
        with pytest.raises(TypeError, match="dtype must be a floating-point torch.dtype"):
            retrieval_metrics(
                torch.eye(2), torch.eye(2), torch.tensor([0, 1]), torch.tensor([0, 1]), dtype=bad
            )


# ----------------------------------------------------------------------------------------------- the report
def _data(seed: int = 0, n: int = 120, d: int = 12, n_cls: int = 4):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % n_cls
    centers = torch.randn(n_cls, d, generator=g)
    x = centers[y] + 1.2 * torch.randn(n, d, generator=g)
    return x, y, centers


def test_report_rows_equal_retrieval_metrics_on_each_pair() -> None:
    x, y, _ = _data()
    W_old, W_new = torch.randn(12, 6), torch.randn(12, 9)
    old, new = (lambda t: t @ W_old), (lambda t: t @ W_new)
    xq, yq, xg, yg = x[:50], y[:50], x[50:], y[50:]
    r = compatibility_report(old, new, xq, xg, (yq, yg), include_old_new=True, batch_size=7)
    assert list(r.rows) == ["old/old", "new/old", "new/new", "old/new"]
    feats = {"old": (xq @ W_old, xg @ W_old), "new": (xq @ W_new, xg @ W_new)}
    for name, row in r.rows.items():
        qm, gm = name.split("/")
        assert_close(row, ref_metrics(feats[qm][0], feats[gm][1], yq, yg), tol=1e-9)
    assert r.dims == {"old": 6, "new": 9} and not r.exclude_self
    assert r.compatible == (r.rows["new/old"]["top1"] > r.rows["old/old"]["top1"])


def test_criterion_on_a_compatible_and_an_independent_update() -> None:
    x, y, centers = _data(1)
    old = lambda t: t[:, :8]  # noqa: E731 - the old model: a noisy 8-d view
    # compatible new model: same space, closer to the class centers, 4 extra dims
    compat = lambda t: torch.cat([0.4 * t[:, :8] + 0.6 * centers[y][:, :8], t[:, 8:]], 1)  # noqa: E731
    Q = torch.linalg.qr(torch.randn(12, 12, generator=torch.Generator().manual_seed(2)))[0]
    indep = lambda t: compat(t) @ Q  # noqa: E731 - just as good, but in a rotated space
    rc = compatibility_report(old, compat, x, x, (y, y))
    ri = compatibility_report(old, indep, x, x, (y, y))
    assert rc.exclude_self and ri.exclude_self  # query is gallery: leave-one-out
    assert rc.compatible and rc.gain > 0
    assert not ri.compatible and ri.rows["new/new"]["top1"] == pytest.approx(rc.rows["new/new"]["top1"])
    same = compatibility_report(old, old, x, x, (y, y))  # equal is not better
    assert not same.compatible and same.gain == 0.0


def test_precomputed_features_and_modules() -> None:
    x, y, _ = _data(2)
    old_m = nn.Sequential(nn.Linear(12, 6), nn.BatchNorm1d(6))
    new_m = nn.Sequential(nn.Linear(12, 10), nn.Dropout(0.5), nn.BatchNorm1d(10))
    old_m.train()
    new_m.train()
    new_m[2].eval()  # a mixed-mode module: each flag must come back as it was
    r = compatibility_report(old_m, new_m, x, x, (y, y), batch_size=16)
    assert old_m.training and new_m.training and new_m[1].training and not new_m[2].training
    with torch.no_grad():
        old_m.eval(), new_m.eval()
        fo, fn = old_m(x), new_m(x)
    pre = compatibility_report(
        {"query": fo, "gallery": fo}, {"query": fn, "gallery": fn}, labels=(y, y), exclude_self=True
    )
    for k in r.rows:
        assert_close(pre.rows[k], r.rows[k], tol=1e-9)


def test_report_serialization_markdown_and_plot(tmp_path) -> None:
    x, y, _ = _data(3)
    r = compatibility_report(lambda t: t[:, :6], lambda t: t, x, x, (y, y), metric="l2")
    d = json.loads(json.dumps(r.to_dict()))
    assert d["compatible"] is False and d["rows"]["new/new"]["top1"] == r.rows["new/new"]["top1"]
    md = r.to_markdown("MNIST")
    assert "| new/old |" in md and "**no**" in md and "first 6 dims" in md
    pytest.importorskip("matplotlib")
    out = r.plot(tmp_path / "sub" / "compat.png")
    assert out.exists() and out.stat().st_size > 1000
    assert os.listdir(tmp_path / "sub") == ["compat.png"]  # no temporary file left behind
    with pytest.raises(ValueError, match="no suffix"):
        r.plot(tmp_path / "noext")


def test_report_errors() -> None:
    x, y, _ = _data(4, n=40)
    f = lambda t: t  # noqa: E731
    with pytest.raises(ValueError, match="labels must be a pair"):
        compatibility_report(f, f, x, x, y)
    with pytest.raises(ValueError, match="query_labels has 39 entries but the query set has 40"):
        compatibility_report(f, f, x, x, (y[:39], y))
    with pytest.raises(ValueError, match="new query features have 39 rows but old ones have 40"):
        compatibility_report({"query": x, "gallery": x}, {"query": x[:39], "gallery": x}, labels=(y, y))
    with pytest.raises(ValueError, match="missing 'gallery'"):
        compatibility_report({"query": x}, f, x, x, (y, y))
    bad = x.clone()
    bad[3, 1] = float("inf")
    with pytest.raises(ValueError, match=r"new gallery features: non-finite .* in 1 row\(s\), first row 3"):
        compatibility_report(f, {"query": x, "gallery": bad}, x, x, (y, y))
    with pytest.raises(ValueError, match="old is a model, so the query inputs are needed"):
        compatibility_report(f, {"query": x, "gallery": x}, labels=(y, y))
    with pytest.raises(TypeError, match="new returned tuple"):
        compatibility_report(f, lambda t: (t,), x, x, (y, y))
    with pytest.raises(TypeError, match="old must be a model/function"):
        compatibility_report(3, f, x, x, (y, y))
    with pytest.raises(ValueError, match="old query features are 12-d but old gallery features are 5-d"):
        compatibility_report({"query": x, "gallery": x[:, :5]}, f, x, x, (y, y))
    m = nn.Linear(3, 3)  # wrong input width: the forward fails, the training flag is still restored
    with pytest.raises(RuntimeError):
        compatibility_report(m, f, x, x, (y, y))
    assert m.training


def test_report_dataclass_criterion() -> None:
    rows = {"old/old": {"top1": 0.30}, "new/old": {"top1": 0.25}, "new/new": {"top1": 0.9}}
    r = CompatibilityReport(rows, "cosine", (1,), {"old": 4, "new": 4}, 5, 5, False)
    assert not r.compatible and r.gain == pytest.approx(-0.05)
