"""Aligner diagnostics and persistence, cross-modal canonicalization, retrieval metrics, anchor-efficiency curves."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from orthokit.align._aligner import Aligner
from orthokit.align.api import anchor_efficiency, canonicalize, fit, knn_overlap, top1_cross_retrieval

F64 = torch.float64


def _haar(d: int, g: torch.Generator) -> Tensor:
    q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
    return q * torch.sign(torch.diagonal(r))


# ------------------------------------------------------------------------------------------- diagnostics
def test_residuals_match_hand_computation() -> None:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(30, 4, generator=g, dtype=F64)
    Y = torch.randn(30, 3, generator=g, dtype=F64) + 2
    a = fit(X, Y, "affine")
    P = (X.numpy() - X.numpy().mean(0)) @ a.W.numpy() + Y.numpy().mean(0)
    E = P - Y.numpy()
    r = a.residuals(X, Y)
    assert r["relative"] == pytest.approx(np.linalg.norm(E) / np.linalg.norm(Y.numpy() - Y.numpy().mean(0)))
    assert r["max_row_error"] == pytest.approx(np.linalg.norm(E, axis=1).max())
    assert r["rmse"] == pytest.approx(np.sqrt((E**2).sum(1).mean()))
    cos = (P * Y.numpy()).sum(1) / np.linalg.norm(P, axis=1) / np.linalg.norm(Y.numpy(), axis=1)
    assert r["mean_cosine"] == pytest.approx(cos.mean())


def test_distortion_and_orthogonality_error() -> None:
    g = torch.Generator().manual_seed(1)
    X = torch.randn(25, 5, generator=g, dtype=F64)
    Q = _haar(5, g)
    iso = Aligner(Q, torch.zeros(5, dtype=F64), torch.ones(5, dtype=F64), kind="isometry")
    assert iso.distortion(X) < 1e-12 and iso.orthogonality_error() < 1e-12
    sim = Aligner(Q, torch.zeros(5, dtype=F64), torch.zeros(5, dtype=F64), scale=3.0, kind="similarity")
    assert sim.distortion(X) == pytest.approx(2.0) and sim.distortion(X, up_to_scale=True) < 1e-12
    D = torch.diag(torch.tensor([2.0, 1, 1, 1, 1], dtype=F64))
    aff = Aligner(D, torch.zeros(5, dtype=F64), torch.zeros(5, dtype=F64))
    assert aff.orthogonality_error() == pytest.approx(3.0)  # ‖diag(4,1,1,1,1) − I‖_F
    assert 0 < aff.distortion(X) <= 1.0 + 1e-12  # distances grow by at most ×2
    with pytest.raises(ValueError, match="distinct rows"):
        iso.distortion(torch.ones(3, 5, dtype=F64))


def test_inverse_transform_pseudo_inverse_and_singular_error() -> None:
    g = torch.Generator().manual_seed(2)
    A = torch.randn(3, 5, generator=g, dtype=F64)  # d_s < d_t: injective, exact left inverse
    a = Aligner(A, torch.zeros(3, dtype=F64), torch.zeros(5, dtype=F64))
    X = torch.randn(7, 3, generator=g, dtype=F64)
    torch.testing.assert_close(a.inverse_transform(a.transform(X)), X)
    S = torch.tensor([[1.0, 2.0], [2.0, 4.0]], dtype=F64)
    sing = Aligner(S, torch.zeros(2, dtype=F64), torch.zeros(2, dtype=F64))
    with pytest.raises(ValueError, match="singular") as e:
        sing.inverse_transform(torch.ones(1, 2, dtype=F64))
    assert "\n" not in str(e.value)
    zero = Aligner(
        torch.eye(2, dtype=F64),
        torch.zeros(2, dtype=F64),
        torch.zeros(2, dtype=F64),
        scale=0.0,
        kind="similarity",
    )
    with pytest.raises(ValueError, match="scale is 0"):
        zero.inverse_transform(torch.ones(1, 2, dtype=F64))


def test_aligner_validates_its_fields_and_inputs() -> None:
    z3, z2 = torch.zeros(3, dtype=F64), torch.zeros(2, dtype=F64)
    W = torch.ones(3, 2, dtype=F64)
    with pytest.raises(ValueError, match="mean_source"):
        Aligner(W, z2, z2)
    with pytest.raises(ValueError, match="kind"):
        Aligner(W, z3, z2, kind="rotation")
    with pytest.raises(ValueError, match="scale"):
        Aligner(W, z3, z2, scale=float("nan"))
    with pytest.raises(ValueError, match="non-finite"):
        Aligner(W * float("inf"), z3, z2)
    a = Aligner(W, z3, z2)
    with pytest.raises(ValueError, match="X has 2 features"):
        a.transform(torch.ones(4, 2))
    with pytest.raises(ValueError, match="Y has 3 features"):
        a.inverse_transform(torch.ones(4, 3))
    with pytest.raises(TypeError, match="X must be a torch.Tensor"):
        a.transform([[1.0, 2.0, 3.0]])  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- persistence
def test_save_load_round_trip_is_exact(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(3)
    X, Y = torch.randn(40, 4, generator=g, dtype=F64), torch.randn(40, 4, generator=g, dtype=F64)
    a = fit(X, Y, "lambda_orthogonal", lam=0.25)
    p = a.save(tmp_path / "map.safetensors")
    b = Aligner.load(p)
    assert (b.method, b.kind, b.lam, b.scale) == (a.method, a.kind, a.lam, a.scale)
    assert torch.equal(b.W, a.W) and torch.equal(b.mean_source, a.mean_source)
    assert torch.equal(b.transform(X), a.transform(X))
    assert sorted(os.listdir(tmp_path)) == ["map.safetensors"]  # no temp file left
    c = Aligner.from_state_dict(a.state_dict())
    assert torch.equal(c.W, a.W) and c.lam == a.lam


def test_load_refuses_foreign_and_broken_files(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    other = tmp_path / "model.safetensors"
    save_file({"weight": torch.ones(2, 2)}, str(other))
    with pytest.raises(ValueError, match="not an orthokit aligner file"):
        Aligner.load(other)
    bad_meta = tmp_path / "bad.safetensors"
    t = {
        "W": torch.ones(2, 3),
        "mean_source": torch.zeros(3),
        "mean_target": torch.zeros(3),
        "scale": torch.tensor(1.0),
    }
    save_file(t, str(bad_meta), metadata={"format": "orthokit.align.Aligner/1", "kind": "affine", "lam": ""})
    with pytest.raises(ValueError, match="invalid aligner: mean_source"):
        Aligner.load(bad_meta)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        Aligner.load(junk)
    with pytest.raises(ValueError, match="does not exist"):
        Aligner.load(tmp_path / "missing.safetensors")


def test_save_refuses_non_finite_and_keeps_the_old_file(tmp_path: Path) -> None:
    a = fit(torch.randn(10, 3, dtype=F64), torch.randn(10, 3, dtype=F64))
    p = a.save(tmp_path / "a.safetensors")
    before = p.read_bytes()
    a.W[0, 0] = float("nan")  # in-place corruption after validation
    with pytest.raises(ValueError, match="non-finite"):
        a.save(p)
    assert p.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["a.safetensors"]
    with pytest.raises(ValueError, match="directory"):
        a.save(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        a.save(tmp_path / "nope" / "a.safetensors")


# ------------------------------------------------------------------------------------------- canonicalization
def test_one_map_fitted_on_images_aligns_text() -> None:
    """Two modalities generated by one planted Q and global shift: fit on image anchors, apply to text."""
    g = torch.Generator().manual_seed(4)
    d = 16
    Q = _haar(d, g)
    c = 2.0 * torch.randn(d, generator=g, dtype=F64)
    img_a = torch.randn(300, d, generator=g, dtype=F64) + 1.0
    txt_a = 0.5 * torch.randn(300, d, generator=g, dtype=F64) - 2.0  # other modality: its own mean and spread
    img_b = img_a @ Q + c + 1e-3 * torch.randn(300, d, generator=g, dtype=F64)
    txt_b = txt_a @ Q + c
    a = canonicalize(img_a[:100], img_b[:100])
    assert a.residuals(txt_a, txt_b)["relative"] < 1e-2
    assert top1_cross_retrieval(a.transform(txt_a), txt_b) == 1.0
    assert top1_cross_retrieval(txt_a, txt_b) < 0.5  # without the map, cross-model retrieval fails
    # cross-modal: model-A text queries retrieve model-B images of the same item when they are paired
    paired_txt_a = img_a[200:] + 0.05 * torch.randn(100, d, generator=g, dtype=F64)
    assert top1_cross_retrieval(a.transform(paired_txt_a), img_b[200:]) >= 0.95


# ------------------------------------------------------------------------------------------- metrics
def _brute_top1(Qm: np.ndarray, G: np.ndarray) -> float:
    Qn = Qm / np.linalg.norm(Qm, axis=1, keepdims=True)
    Gn = G / np.linalg.norm(G, axis=1, keepdims=True)
    return float(np.mean(np.argmax(Qn @ Gn.T, axis=1) == np.arange(len(Qm))))


def _brute_knn_overlap(A: np.ndarray, B: np.ndarray, k: int) -> float:
    def nn(X: np.ndarray) -> list[set[int]]:
        D = ((X[:, None] - X[None]) ** 2).sum(-1)
        np.fill_diagonal(D, np.inf)
        return [set(np.argsort(r)[:k]) for r in D]

    return float(np.mean([len(a & b) / k for a, b in zip(nn(A), nn(B))]))


def test_metrics_match_brute_force() -> None:
    g = torch.Generator().manual_seed(5)
    X = torch.randn(60, 6, generator=g, dtype=F64)
    Y = X + 0.8 * torch.randn(60, 6, generator=g, dtype=F64)
    assert top1_cross_retrieval(X, Y) == pytest.approx(_brute_top1(X.numpy(), Y.numpy()))
    assert 0 < top1_cross_retrieval(X, Y) < 1
    B = X @ torch.randn(6, 4, generator=g, dtype=F64)
    assert knn_overlap(X, B, k=5) == pytest.approx(_brute_knn_overlap(X.numpy(), B.numpy(), 5))
    e = top1_cross_retrieval(X, Y, metric="euclidean")
    D = torch.cdist(X, Y)
    assert e == pytest.approx(float((D.argmin(1) == torch.arange(60)).double().mean()))
    with pytest.raises(ValueError, match="metric"):
        top1_cross_retrieval(X, Y, metric="dot")
    with pytest.raises(ValueError, match="k must be"):
        knn_overlap(X, Y, k=60)
    with pytest.raises(ValueError, match="same width"):
        top1_cross_retrieval(X, B)


# ------------------------------------------------------------------------------------------- anchor efficiency
def test_anchor_efficiency_rows_and_monotone_quality() -> None:
    g = torch.Generator().manual_seed(6)
    d = 12
    Q = _haar(d, g)
    X = torch.randn(400, d, generator=g, dtype=F64) * torch.linspace(0.3, 2, d, dtype=F64) + 3
    Y = X @ Q + 1 + 0.3 * torch.randn(400, d, generator=g, dtype=F64)
    specs = [
        "none",
        "orthogonal",
        {"method": "orthogonal", "center": False, "label": "orth-nomean"},
        "affine",
    ]
    rows = anchor_efficiency(
        X[:300], Y[:300], X[300:], Y[300:], n_anchors=(15, 200), methods=specs, seeds=(0, 1)
    )
    assert len(rows) == 4 * 2 * 2
    assert {r["method"] for r in rows} == {"none", "orthogonal", "orth-nomean", "affine"}
    assert all(set(r) >= {"top1", "knn_overlap", "relative_residual", "seed", "n_anchors"} for r in rows)

    def mean(m: str, n: int, key: str) -> float:
        return float(np.mean([r[key] for r in rows if r["method"] == m and r["n_anchors"] == n]))

    assert mean("orthogonal", 200, "top1") >= mean("orthogonal", 15, "top1")
    assert mean("orthogonal", 200, "knn_overlap") == 1.0
    assert mean("affine", 200, "relative_residual") < mean(
        "affine", 15, "relative_residual"
    )  # 15 < d+1: ill-posed
    assert mean("orthogonal", 200, "top1") > mean("none", 200, "top1")
    # same seed → same anchors → identical rows
    again = anchor_efficiency(
        X[:300], Y[:300], X[300:], Y[300:], n_anchors=(15,), methods=["orthogonal"], seeds=(1,)
    )
    assert again[0] == next(
        r for r in rows if r["method"] == "orthogonal" and r["n_anchors"] == 15 and r["seed"] == 1
    )


def test_anchor_efficiency_custom_metric_and_errors() -> None:
    X = torch.randn(50, 4, dtype=F64)
    Y = X + 0.1
    rows = anchor_efficiency(
        X[:30],
        Y[:30],
        X[30:],
        Y[30:],
        n_anchors=(10,),
        methods=[{"method": "lambda_orthogonal", "lam": 0.1}],
        seeds=(0,),
        metric_fn=lambda m, t, s: {"max_err": float((m - t).abs().max())},
    )
    assert rows[0]["method"] == "lambda_orthogonal" and rows[0]["max_err"] < 1e-8
    with pytest.raises(ValueError, match="n_anchors value 31"):
        anchor_efficiency(X[:30], Y[:30], X[30:], Y[30:], n_anchors=(31,), methods=["orthogonal"])
    with pytest.raises(ValueError, match="unknown alignment map"):
        anchor_efficiency(X[:30], Y[:30], X[30:], Y[30:], n_anchors=(10,), methods=["procrustes2"])
    with pytest.raises(ValueError, match="duplicates"):
        anchor_efficiency(X[:30], Y[:30], X[30:], Y[30:], n_anchors=(10,), methods=["affine", "affine"])
    with pytest.raises(ValueError, match="'none' \\(identity\\) needs equal widths"):
        anchor_efficiency(X[:30], Y[:30, :3], X[30:], Y[30:, :3], n_anchors=(10,), methods=["none"])
    with pytest.raises(ValueError, match="eval_source"):
        anchor_efficiency(X[:30], Y[:30], X[30:], Y[31:], n_anchors=(10,), methods=["orthogonal"])
