"""Geometry Conflict (orthokit.diagnostics.conflict): Bures–Wasserstein against float64 closed forms, the
conflict's defining properties, baselines, and input validation."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import Tensor

from orthokit.diagnostics.conflict import (
    bures_wasserstein,
    conflict_report,
    geometry_conflict,
    layer_conflict,
    sequence_conflicts,
    update_geometry,
)
from orthokit.merge.diagnostics import pairwise_cosine, subspace_overlap

REG = 1e-6


def _rand_psd(n: int, rank: int, g: torch.Generator) -> torch.Tensor:
    X = torch.randn(n, rank, generator=g, dtype=torch.float64)
    return X @ X.T


def _orth(n: int, g: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))[0]


# ---------------------------------------------------------------------------------------------------------
# Bures–Wasserstein
# ---------------------------------------------------------------------------------------------------------
def test_bw_commuting_closed_form() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.rand(6, generator=g, dtype=torch.float64) * 3
    b = torch.rand(6, generator=g, dtype=torch.float64) * 3
    Q = _orth(6, g)
    ref = float(((a.sqrt() - b.sqrt()) ** 2).sum())
    # commuting = simultaneously diagonalisable; rotate both by the same Q
    assert bures_wasserstein(Q @ torch.diag(a) @ Q.T, Q @ torch.diag(b) @ Q.T, squared=True) == pytest.approx(
        ref, rel=1e-9, abs=1e-12
    )
    assert bures_wasserstein(torch.diag(a), torch.diag(b)) == pytest.approx(math.sqrt(ref), rel=1e-9)


@pytest.mark.parametrize(("a", "b"), [(4.0, 1.0), (2.5, 0.0), (0.3, 7.0)])
def test_bw_scalar_gaussians(a: float, b: float) -> None:
    # W2(N(0, a), N(0, b)) = |√a − √b|
    d = bures_wasserstein(torch.tensor([[a]]), torch.tensor([[b]]))
    assert d == pytest.approx(abs(math.sqrt(a) - math.sqrt(b)), rel=1e-6)


def test_bw_general_against_fidelity_formula() -> None:
    """Non-commuting case against an independent formula: tr(A^½ B A^½)^½ = ‖A^½ B^½‖_* (nuclear norm)."""
    scipy_linalg = pytest.importorskip("scipy.linalg")
    g = torch.Generator().manual_seed(1)
    A, B = _rand_psd(7, 7, g), _rand_psd(7, 3, g)  # B singular
    rA = np.real(scipy_linalg.sqrtm(A.numpy()))
    rB = np.real(scipy_linalg.sqrtm(B.numpy()))
    fid = np.linalg.svd(rA @ rB, compute_uv=False).sum()
    ref = float(np.trace(A.numpy()) + np.trace(B.numpy()) - 2 * fid)
    assert bures_wasserstein(A, B, squared=True) == pytest.approx(ref, rel=1e-6)


def test_bw_metric_properties() -> None:
    g = torch.Generator().manual_seed(2)
    A, B = _rand_psd(5, 5, g), _rand_psd(5, 2, g)
    Q = _orth(5, g)
    d = bures_wasserstein(A, B)
    assert bures_wasserstein(B, A) == pytest.approx(d, rel=1e-8)
    assert bures_wasserstein(A, A) == pytest.approx(0.0, abs=1e-6)
    assert d > 0.1
    assert bures_wasserstein(Q @ A @ Q.T, Q @ B @ Q.T) == pytest.approx(d, rel=1e-8)


@pytest.mark.parametrize(
    ("S1", "S2", "exc", "msg"),
    [
        (torch.ones(2, 3), torch.ones(2, 3), ValueError, "S1 must be a square"),
        (torch.eye(2), torch.eye(3), ValueError, "same shape"),
        (torch.tensor([[float("nan"), 0.0], [0.0, 1.0]]), torch.eye(2), ValueError, "S1 contains NaN"),
        (torch.eye(2), torch.tensor([[1.0, 2.0], [0.0, 1.0]]), ValueError, "S2 must be symmetric"),
        (torch.eye(2), -torch.eye(2), ValueError, "S2 must be positive semidefinite"),
        (torch.eye(2, dtype=torch.int64), torch.eye(2), TypeError, "S1 must be a floating"),
        ([[1.0]], torch.eye(1), TypeError, "S1 must be a torch.Tensor"),
    ],
)
def test_bw_validation(S1: object, S2: object, exc: type, msg: str) -> None:
    with pytest.raises(exc, match=msg) as ei:
        bures_wasserstein(S1, S2)  # type: ignore[arg-type]
    assert "\n" not in str(ei.value)


# ---------------------------------------------------------------------------------------------------------
# geometry and conflict
# ---------------------------------------------------------------------------------------------------------
def test_update_geometry_energy_rule() -> None:
    s = torch.tensor([4.0, 2.0, 1.0, 0.5])
    X = torch.zeros(5, 6, dtype=torch.float64)
    X[range(4), range(4)] = s.double()
    lam = s.double() ** 2 + REG  # 16, 4, 1, 0.25 (+reg); cumulative energy 0.7529, 0.9412, 0.9882, 1
    for energy, r in [(0.5, 1), (0.75, 1), (0.76, 2), (0.95, 3), (0.99, 4), (1.0, 4)]:
        geo = update_geometry(X, energy=energy)
        assert geo.rank == r, energy
        torch.testing.assert_close(geo.eigenvalues, lam[:r])
        # basis spans the first r input coordinates
        torch.testing.assert_close(geo.basis.abs(), torch.eye(6, dtype=torch.float64)[:, :r])
    assert update_geometry(X, rank=2, energy=1.0).rank == 2
    assert update_geometry(torch.zeros(3, 4)).rank == 0
    assert update_geometry(X).fro_norm == pytest.approx(float(s.norm()))


def _diag_update(vals: list[float], n: int = 6, shift: int = 0) -> torch.Tensor:
    X = torch.zeros(len(vals), n, dtype=torch.float64)
    for i, v in enumerate(vals):
        X[i, i + shift] = v
    return X


def test_conflict_commuting_closed_form() -> None:
    """Same input subspace, different spectra: GC = Σ(√λa − √λb)² / (Σλa + Σλb + reg) with λ = σ² + 2 reg."""
    a, b = [3.0, 1.0], [1.0, 2.5]
    la = np.array(a) ** 2 + 2 * REG
    lb = np.array(b) ** 2 + 2 * REG
    ref = float(((np.sqrt(la) - np.sqrt(lb)) ** 2).sum() / (la.sum() + lb.sum() + REG))
    got = layer_conflict(_diag_update(a), _diag_update(b), energy=1.0)
    assert got.conflict == pytest.approx(ref, rel=1e-9)
    assert got.union_rank == 2 and got.rank_a == 2 and got.rank_b == 2
    assert geometry_conflict(_diag_update(a), _diag_update(b), energy=1.0) == pytest.approx(ref, rel=1e-9)


def test_conflict_orthogonal_vs_aligned_ordering() -> None:
    """Identical < same subspace/rotated spectrum < half-rotated < orthogonal input subspaces."""
    g = torch.Generator().manual_seed(3)
    n = 12
    U = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))[0][:, :3]
    V = _orth(n, g)
    s = torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)
    A = U @ torch.diag(s) @ V[:, :3].T
    same_sub = U @ torch.diag(s.flip(0)) @ V[:, :3].T
    c, sn = math.cos(math.pi / 4), math.sin(math.pi / 4)
    half = U @ torch.diag(s) @ (c * V[:, :3] + sn * V[:, 3:6]).T
    orth = U @ torch.diag(s) @ V[:, 3:6].T
    vals = [geometry_conflict(A, X, energy=1.0) for X in (A, same_sub, half, orth)]
    assert vals[0] == pytest.approx(0.0, abs=1e-9)
    assert vals[0] < vals[1] < vals[2] < vals[3]
    assert vals[3] > 0.99  # 1 − O(√reg)
    # the output side (left singular vectors) does not enter Σ = ΔWᵀΔW
    U2 = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))[0][:, 3:6]
    assert geometry_conflict(A, U2 @ torch.diag(s) @ V[:, :3].T) == pytest.approx(0.0, abs=1e-9)


def test_conflict_invariances_and_scale() -> None:
    g = torch.Generator().manual_seed(4)
    A = torch.randn(10, 16, generator=g, dtype=torch.float64)
    B = torch.randn(10, 16, generator=g, dtype=torch.float64) + 0.5 * A
    P, Q = _orth(10, g), _orth(16, g)
    ref = geometry_conflict(A, B, energy=1.0)
    assert geometry_conflict(B, A, energy=1.0) == pytest.approx(ref, rel=1e-9)
    assert geometry_conflict(P @ A @ Q, P @ B @ Q, energy=1.0) == pytest.approx(ref, rel=1e-8)
    assert geometry_conflict(7.0 * A, 7.0 * B, energy=1.0) == pytest.approx(
        ref, rel=1e-5
    )  # reg breaks it at O(reg)
    for c in (0.5, 2.0, 10.0):
        assert geometry_conflict(A, c * A, energy=1.0) == pytest.approx((1 - c) ** 2 / (1 + c * c), rel=1e-5)
    assert 0.0 <= ref <= 1.0


def test_conflict_zero_tensor_and_reductions() -> None:
    a = {"x": _diag_update([1.0, 1.0]), "y": torch.zeros(4, 3, dtype=torch.float64)}
    b = {"x": _diag_update([1.0, 1.0], shift=2), "y": torch.zeros(4, 3, dtype=torch.float64)}
    r = conflict_report(a, b)
    assert set(r.layers) == {"x"}  # both-zero tensor skipped
    one_zero = layer_conflict(torch.zeros(2, 6), _diag_update([2.0, 1.0]))
    assert one_zero.conflict > 0.99 and one_zero.rank_a == 0
    # mean (authors) vs size-weighted reduction on two tensors with known conflicts
    small_a, small_b = _diag_update([1.0], n=2), _diag_update([1.0], n=2, shift=1)  # conflict ≈ 1, 2 entries
    ua = {"big": _diag_update([1.0, 1.0]), "small": small_a}
    ub = {"big": _diag_update([1.0, 1.0]), "small": small_b}
    c_small = layer_conflict(small_a, small_b).conflict
    assert geometry_conflict(ua, ub) == pytest.approx(c_small / 2, rel=1e-9)
    assert geometry_conflict(ua, ub, reduction="weighted") == pytest.approx(c_small * 2 / (2 + 12), rel=1e-9)


def test_default_keys_exclude_embeddings_and_1d() -> None:
    g = torch.Generator().manual_seed(5)
    a = {
        "model.embed_tokens.weight": torch.randn(5, 4, generator=g),
        "lm_head.weight": torch.randn(5, 4, generator=g),
        "ln.weight": torch.randn(4, generator=g),
        "mlp.weight": _diag_update([1.0, 2.0]),
    }
    b = {k: v.clone() for k, v in a.items()}
    b["model.embed_tokens.weight"] = torch.randn(5, 4, generator=g)
    b["lm_head.weight"] = torch.randn(5, 4, generator=g)
    b["ln.weight"] = torch.randn(4, generator=g)
    r = conflict_report(a, b)
    assert list(r.layers) == ["mlp.weight"] and r.conflict == pytest.approx(0.0, abs=1e-12)
    assert geometry_conflict(a, b, exclude=()) > 0.05


def test_report_baselines_match_references() -> None:
    g = torch.Generator().manual_seed(6)
    a = {"w1": torch.randn(6, 9, generator=g), "w2": torch.randn(4, 6, generator=g)}
    b = {"w1": torch.randn(6, 9, generator=g) + a["w1"], "w2": torch.randn(4, 6, generator=g)}
    r = conflict_report(a, b, overlap_rank=3)
    fa = torch.cat([a[k].reshape(-1) for k in a]).double()
    fb = torch.cat([b[k].reshape(-1) for k in b]).double()
    assert r.norm_a == pytest.approx(float(fa.norm()), rel=1e-6)
    assert r.norm_b == pytest.approx(float(fb.norm()), rel=1e-6)
    assert r.cosine == pytest.approx(float(fa @ fb / (fa.norm() * fb.norm())), rel=1e-6)
    assert r.cosine == pytest.approx(float(pairwise_cosine([fa, fb])[0, 1]), rel=1e-9)
    assert r.subspace_overlap == pytest.approx(float(subspace_overlap([a, b], rank=3).mean[0, 1]), rel=1e-6)
    # SAR: 1 for identical updates, 0 for orthogonal input subspaces
    x = _diag_update([2.0, 1.0])
    assert conflict_report(x, x).sar == pytest.approx(1.0, rel=1e-9)
    assert conflict_report(x, _diag_update([2.0, 1.0], shift=2)).sar == pytest.approx(0.0, abs=1e-12)


def test_sequence_conflicts_closed_form() -> None:
    d1 = _diag_update([1.0, 0.0, 0.0], n=3)  # reads input 0
    d2 = _diag_update([0.0, 1.0, 0.0], n=3)  # reads input 1: orthogonal to d1 and to the state
    d3 = _diag_update([1.0, 1.0, 0.0], n=3)  # = the state after task 2
    th = [torch.zeros(3, 3, dtype=torch.float64)]
    for d in (d1, d2, d3):
        th.append(th[-1] + d)
    r = sequence_conflicts([{"w": t} for t in th])
    assert [x["task"] for x in r] == [1, 2]
    assert r[0]["pair_conflict"] > 0.99 and r[0]["state_conflict"] > 0.99
    assert r[1]["state_conflict"] == pytest.approx(0.0, abs=1e-9)  # Δ3 = θ2 − θ0 exactly
    assert r[1]["update_norm"] == pytest.approx(math.sqrt(2))
    assert r[1]["cosine"] == pytest.approx(1 / math.sqrt(2))
    assert r[0]["cosine"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(
    ("a", "b", "kw", "exc", "msg"),
    [
        (torch.ones(2, 3), torch.ones(3, 2), {}, ValueError, "shape mismatch"),
        ({"w": torch.ones(2, 3)}, {"v": torch.ones(2, 3)}, {}, ValueError, "different keys"),
        ({"w": torch.ones(2, 3)}, {"w": torch.ones(2, 4)}, {}, ValueError, "shape mismatch for 'w'"),
        (
            {"w": torch.full((2, 3), float("nan"))},
            {"w": torch.ones(2, 3)},
            {},
            ValueError,
            r"update_a\['w'\] contains NaN",
        ),
        (
            {"w": torch.ones(2, 3)},
            {"w": torch.full((2, 3), float("inf"))},
            {},
            ValueError,
            "contains NaN or inf",
        ),
        ({"w": torch.ones(2, 3)}, {"w": torch.ones(2, 3)}, {"keys": ["x"]}, ValueError, "keys not in both"),
        ({"w": torch.ones(3)}, {"w": torch.ones(3)}, {}, ValueError, "no 2-D tensors"),
        ({"w": torch.ones(3)}, {"w": torch.ones(3)}, {"keys": ["w"]}, ValueError, "1-D"),
        ({"w": torch.zeros(2, 3)}, {"w": torch.zeros(2, 3)}, {}, ValueError, "both updates are zero"),
        ({"w": torch.ones(2, 3)}, {"w": torch.ones(2, 3)}, {"rank": 0}, ValueError, "rank must be"),
        ({"w": torch.ones(2, 3)}, {"w": torch.ones(2, 3)}, {"energy": 1.5}, ValueError, "energy must be"),
        ({"w": torch.ones(2, 3)}, {"w": torch.ones(2, 3)}, {"reg": -1.0}, ValueError, "reg must be"),
        (
            {"w": torch.ones(2, 3)},
            {"w": torch.ones(2, 3)},
            {"energy": "0.5"},
            TypeError,
            "energy must be a real",
        ),
        ({"w": torch.ones(2, 3)}, {"w": torch.ones(2, 3)}, {"reg": "0"}, TypeError, "reg must be a real"),
        ({"w": torch.ones(2, 3)}, {"w": torch.ones(2, 3)}, {"exclude": "bias"}, TypeError, "exclude must be"),
        (
            {"w": torch.ones(2, 3)},
            {"w": torch.ones(2, 3)},
            {"keys": ["w", "w"]},
            ValueError,
            "more than once",
        ),
        (
            {"w": torch.ones(2, 3)},
            {"w": torch.ones(2, 3)},
            {"targets": "q_proj"},
            TypeError,
            "targets must be",
        ),
        (
            {"w": torch.ones(2, 3)},
            {"w": torch.ones(2, 3)},
            {"targets": ["q_proj"]},
            ValueError,
            "no 2-D tensor name",
        ),
        (
            {"w": torch.ones(2, 3)},
            {"w": torch.ones(2, 3)},
            {"reduction": "max"},
            ValueError,
            "reduction must be",
        ),
        (
            {"w": torch.ones(2, 3)},
            {"w": torch.ones(2, 3)},
            {"keys": "w"},
            TypeError,
            "keys must be a sequence",
        ),
        ({"w": torch.ones(2, 3, dtype=torch.int64)}, {"w": torch.ones(2, 3)}, {}, TypeError, "floating"),
        ({"w": [[1.0]]}, {"w": torch.ones(1, 1)}, {}, TypeError, r"update_a\['w'\] must be a torch.Tensor"),
        ([1.0], torch.ones(1, 1), {}, TypeError, "update_a must be a tensor or a mapping"),
        (
            torch.ones(1, 2, 3),
            torch.ones(1, 2, 3),
            {},
            ValueError,
            "update_a must be a 2-D tensor or a state dict",
        ),
    ],
)
def test_conflict_validation(a: object, b: object, kw: dict, exc: type, msg: str) -> None:
    with pytest.raises(exc, match=msg) as ei:
        geometry_conflict(a, b, **kw)  # type: ignore[arg-type]
    assert "\n" not in str(ei.value)


def test_report_and_sequence_validation() -> None:
    with pytest.raises(ValueError, match="overlap_rank"):
        conflict_report(torch.ones(2, 2), torch.ones(2, 2), overlap_rank=0)
    with pytest.raises(ValueError, match="at least 3 state dicts"):
        sequence_conflicts([{"w": torch.ones(2, 2)}, {"w": torch.ones(2, 2)}])
    with pytest.raises(ValueError, match="different keys"):
        sequence_conflicts([{"w": torch.ones(2, 2)}, {"w": torch.ones(2, 2)}, {"v": torch.ones(2, 2)}])


def test_inputs_not_modified() -> None:
    a = {"w": torch.randn(4, 5)}
    b = {"w": torch.randn(4, 5)}
    ca, cb = a["w"].clone(), b["w"].clone()
    conflict_report(a, b)
    assert torch.equal(a["w"], ca) and torch.equal(b["w"], cb)


def test_unit_trace_option_is_shape_only() -> None:
    """normalize="unit_trace": each geometry scaled to unit trace; GC = W²/2, blind to relative size."""
    g = torch.Generator().manual_seed(7)
    A = torch.randn(8, 12, generator=g, dtype=torch.float64)
    for c in (0.1, 3.0, 50.0):
        assert geometry_conflict(A, c * A, normalize="unit_trace") == pytest.approx(0.0, abs=1e-6)
    a, b = [3.0, 1.0], [1.0, 2.5]
    la = np.array(a) ** 2 + 2 * REG
    lb = 49.0 * np.array(b) ** 2 + 2 * REG  # update 7·b: λ = 49 b² + reg, plus reg·I
    la, lb = la / la.sum(), lb / lb.sum()
    ref = float(((np.sqrt(la) - np.sqrt(lb)) ** 2).sum() / (2 + REG))
    got = geometry_conflict(_diag_update(a), 7.0 * _diag_update(b), energy=1.0, normalize="unit_trace")
    assert got == pytest.approx(ref, rel=1e-9)
    assert geometry_conflict(_diag_update(a), _diag_update(a, shift=2), normalize="unit_trace") > 0.99
    with pytest.raises(ValueError, match="normalize must be"):
        geometry_conflict(A, A, normalize="none")  # type: ignore[arg-type]
    th = [torch.zeros(3, 3), torch.eye(3), 1.5 * torch.eye(3)]
    r = sequence_conflicts([{"w": t} for t in th])[0]
    assert r["state_shape_conflict"] == pytest.approx(0.0, abs=1e-6) and r["state_conflict"] > 0.1


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_updates_are_named(bad: float) -> None:
    with pytest.raises(ValueError, match="delta contains NaN or inf"):
        update_geometry(torch.full((3, 3), bad, dtype=torch.float64))
    ok = torch.eye(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="delta_b contains NaN or inf"):
        layer_conflict(ok, torch.full((3, 3), bad, dtype=torch.float64))
    with pytest.raises(TypeError, match="delta must be a floating tensor"):
        update_geometry(torch.ones(3, 3, dtype=torch.int64))


@pytest.mark.parametrize("c", [1e200, 1e-200])
def test_joint_scaling_exact_at_extreme_magnitudes(c: float) -> None:
    g = torch.Generator().manual_seed(11)
    A = torch.randn(6, 5, generator=g, dtype=torch.float64)
    B = torch.randn(6, 5, generator=g, dtype=torch.float64)
    B[:, :2] += A[:, :2]
    ref = layer_conflict(A, B, reg=0.0)
    got = layer_conflict(A * c, B * c, reg=0.0)  # GC(cA, cB) = GC(A, B) exactly when reg = 0
    assert got.conflict == pytest.approx(ref.conflict, rel=1e-12) and got.sar == pytest.approx(
        ref.sar, rel=1e-12
    )
    assert geometry_conflict(A * c, B * c, reg=0.0) == pytest.approx(
        geometry_conflict(A, B, reg=0.0), rel=1e-12
    )
    dflt = layer_conflict(
        A * c, B * c
    )  # the absolute reg = 1e-6 (authors'): negligible at 1e200, dominant at 1e-200
    assert math.isfinite(dflt.conflict) and 0.0 <= dflt.conflict <= 1.0
    if c > 1:
        assert dflt.conflict == pytest.approx(ref.conflict, rel=1e-12)
    rep = conflict_report({"w": A * c}, {"w": B * c}, reg=0.0)
    ref_rep = conflict_report({"w": A}, {"w": B}, reg=0.0)
    assert rep.cosine == pytest.approx(ref_rep.cosine, rel=1e-12)
    assert rep.norm_a / c == pytest.approx(ref_rep.norm_a, rel=1e-12)
    assert rep.subspace_overlap == pytest.approx(ref_rep.subspace_overlap, rel=1e-9)


def test_update_geometry_scale_safe_or_clear() -> None:
    d = torch.diag(torch.tensor([3.0, 1.0, 0.0], dtype=torch.float64))
    tiny = update_geometry(d * 1e-200)
    assert tiny.rank >= 1 and bool(torch.isfinite(tiny.eigenvalues).all())
    assert tiny.fro_norm == pytest.approx(math.sqrt(10.0) * 1e-200, rel=1e-12)
    big = update_geometry(d * 1e100, reg=0.0)
    assert big.eigenvalues[0].item() == pytest.approx(9e200, rel=1e-12)
    with pytest.raises(ValueError, match="overflow float64"):
        update_geometry(d * 1e200)


def test_targets_follow_the_authors_keywords() -> None:
    g = torch.Generator().manual_seed(6)
    names = ["layers.0.self_attn.q_proj.weight", "layers.0.mlp.down_proj.weight", "layers.0.other.weight"]
    a = {n: torch.randn(4, 5, generator=g) for n in names}
    b = {n: torch.randn(4, 5, generator=g) for n in names}
    with pytest.warns(UserWarning, match=r"leaves out 1 other 2-D tensor\(s\): \['layers.0.other.weight'\]"):
        assert conflict_report(a, b).compared == names[:2]  # default "auto": q/k/v/o/gate/up/down_proj only
    assert conflict_report(a, b, targets=None).compared == names
    assert conflict_report(a, b, targets=["other"]).compared == names[2:]
    mlp = {"fc1.weight": a[names[0]], "fc2.weight": a[names[1]]}
    mlp_b = {"fc1.weight": b[names[0]], "fc2.weight": b[names[1]]}
    assert conflict_report(mlp, mlp_b).compared == [
        "fc1.weight",
        "fc2.weight",
    ]  # no projection names: all 2-D


def test_integer_states_name_their_dtype() -> None:
    st = [{"w": torch.zeros(2, 2, dtype=torch.int64)}, {"w": torch.ones(2, 2, dtype=torch.int64)}]
    with pytest.raises(TypeError, match="torch.int64"):
        sequence_conflicts([*st, {"w": 2 * torch.ones(2, 2, dtype=torch.int64)}])


def test_compared_is_exactly_the_averaged_set() -> None:
    g = torch.Generator().manual_seed(7)
    a = {
        "q": torch.randn(4, 5, generator=g, dtype=torch.float64),
        "z": torch.zeros(4, 5, dtype=torch.float64),
    }
    b = {
        "q": torch.randn(4, 5, generator=g, dtype=torch.float64),
        "z": torch.zeros(4, 5, dtype=torch.float64),
    }
    a["w"], b["w"] = (
        torch.zeros(3, 3, dtype=torch.float64),
        torch.eye(3, dtype=torch.float64),
    )  # zero in one only
    rep = conflict_report(a, b, targets=None)
    assert rep.compared == ["q", "w"] == list(rep.layers)
    assert rep.skipped == {"z": "zero in both updates"}
    # the model-level score is the mean over exactly `compared` (float64 reference from the per-tensor scores)
    ref = (layer_conflict(a["q"], b["q"]).conflict + layer_conflict(a["w"], b["w"]).conflict) / 2
    assert rep.conflict == pytest.approx(ref, rel=1e-12)
    assert geometry_conflict(a, b, targets=None) == pytest.approx(ref, rel=1e-12)


def test_auto_targets_warn_on_a_partial_match_only() -> None:
    g = torch.Generator().manual_seed(8)

    def st(names: list[str]) -> dict[str, Tensor]:
        return {n: torch.randn(4, 4, generator=g) for n in names}

    phi = [
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.k_proj.weight",
        "model.layers.0.self_attn.v_proj.weight",
        "model.layers.0.self_attn.dense.weight",
        "model.layers.0.mlp.fc1.weight",
        "model.layers.0.mlp.fc2.weight",
        "lm_head.weight",
    ]
    with pytest.warns(
        UserWarning, match=r"dense.weight', 'model.layers.0.mlp.fc1.weight', 'model.layers.0.mlp.fc2"
    ):
        rep = conflict_report(st(phi), st(phi))
    assert rep.compared == phi[1:4]
    with pytest.warns(UserWarning, match="leaves out 3 other"):
        geometry_conflict(st(phi), st(phi))
    llama = [
        "model.embed_tokens.weight",
        *(f"model.layers.0.self_attn.{p}_proj.weight" for p in "qkvo"),
        *(f"model.layers.0.mlp.{p}_proj.weight" for p in ("gate", "up", "down")),
        "lm_head.weight",
        "score.head.weight",
    ]
    sa, sb = st(llama), st(llama)
    sa["model.norm.weight"] = sb["model.norm.weight"] = torch.ones(4)  # 1-D: never a candidate
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a full match (embeddings / heads aside) is silent
        assert conflict_report(sa, sb).compared == llama[1:8]
        assert (
            len(conflict_report(st(["fc1.weight", "fc2.weight"]), st(["fc1.weight", "fc2.weight"])).compared)
            == 2
        )
