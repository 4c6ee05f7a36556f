"""Closed-form checks of orthokit.diagnostics.factor.factor_orthogonality."""

from __future__ import annotations

import math

import pytest
import torch

from orthokit.diagnostics.factor import factor_orthogonality


def _grid(n_a: int, n_b: int, reps: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.arange(n_a).repeat_interleave(n_b).repeat(reps)
    b = torch.arange(n_b).repeat(n_a).repeat(reps)
    return a, b


def _orth_vectors(d: int, m: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(d, m, generator=g, dtype=torch.float64))[0].T  # m orthonormal rows


@pytest.mark.parametrize("fit", ["means", "lstsq"])
def test_planted_additive_orthogonal_factors(fit):
    a, b = _grid(4, 6)
    Q = _orth_vectors(16, 10)
    g = torch.Generator().manual_seed(1)
    U = torch.randn(4, 4, generator=g, dtype=torch.float64) @ Q[:4]  # concept a lives in span(Q[:4])
    V = torch.randn(6, 6, generator=g, dtype=torch.float64) @ Q[4:10]  # concept b in the orthogonal span
    X = U[a] + V[b] + 3.0
    rep = factor_orthogonality(X, {"a": a, "b": b}, fit=fit)
    assert rep.r2 == pytest.approx(1.0, abs=1e-12) and rep.r2_whitened == pytest.approx(1.0, abs=1e-6)
    assert rep.ranks == {"a": 3, "b": 5}  # centered components: #values - 1
    assert torch.allclose(rep.angles_deg[("a", "b")], torch.full((3,), 90.0, dtype=torch.float64), atol=1e-8)
    assert rep.orthogonality == pytest.approx(1.0, abs=1e-12) and rep.score == pytest.approx(1.0, abs=1e-12)
    assert rep.cross_abs_cos < 1e-12


def test_planted_correlated_factors_known_principal_angle():
    theta = math.radians(60.0)
    e = torch.eye(5, dtype=torch.float64)
    u_dir, v_dir = e[0], math.cos(theta) * e[0] + math.sin(theta) * e[1]
    a, b = _grid(2, 2, reps=3)
    sign = lambda y: (2.0 * y.double() - 1.0)[:, None]  # noqa: E731
    X = 2.0 * sign(a) * u_dir + 0.7 * sign(b) * v_dir
    rep = factor_orthogonality(X, {"a": a, "b": b})
    assert rep.r2 == pytest.approx(1.0, abs=1e-12)
    assert rep.angles_deg[("a", "b")].item() == pytest.approx(60.0, abs=1e-9)
    assert rep.orthogonality == pytest.approx(1 - math.cos(theta) ** 2, abs=1e-12)
    assert rep.cross_abs_cos == pytest.approx(math.cos(theta), abs=1e-12)


def test_interaction_lowers_r2_by_the_known_amount():
    e = torch.eye(6, dtype=torch.float64)
    a, b = _grid(2, 2, reps=5)
    sa, sb = (2.0 * a.double() - 1.0)[:, None], (2.0 * b.double() - 1.0)[:, None]
    wa, wb, wi = 1.5, 1.0, 0.8
    X = wa * sa * e[0] + wb * sb * e[1] + wi * (sa * sb) * e[2]  # centered interaction ⟂ both concepts
    rep = factor_orthogonality(X, {"a": a, "b": b})
    want = (wa**2 + wb**2) / (wa**2 + wb**2 + wi**2)
    assert rep.r2 == pytest.approx(want, abs=1e-12)
    assert factor_orthogonality(X, {"a": a, "b": b}, fit="lstsq").r2 == pytest.approx(want, abs=1e-12)


def test_lstsq_fit_removes_confounding_of_an_unbalanced_design():
    a, b = _grid(3, 3, reps=2)
    keep = torch.ones(len(a), dtype=torch.bool)
    keep[[0, 1, 4, 9]] = False  # drop some cells' replicates: unbalanced
    a, b = a[keep], b[keep]
    Q = _orth_vectors(8, 6, seed=2)
    X = (torch.arange(3.0, dtype=torch.float64)[:, None] * Q[0])[a] + (Q[1:4])[b]
    assert factor_orthogonality(X, {"a": a, "b": b}, fit="lstsq").r2 == pytest.approx(1.0, abs=1e-10)
    assert factor_orthogonality(X, {"a": a, "b": b}, fit="means").r2 < 1.0 - 1e-4  # means are confounded


def test_rank_option_and_tensor_attributes():
    a, b = _grid(4, 5)
    X = torch.randn(20, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rep = factor_orthogonality(X, torch.stack([a, b], dim=1), rank=2)
    assert rep.concepts == ("c0", "c1") and rep.ranks == {"c0": 2, "c1": 2}
    assert rep.bases["c0"].shape == (12, 2) and rep.angles[("c0", "c1")].shape == (2,)
    assert float(rep) == rep.score and "principal angles" in rep.to_markdown()


def test_errors_name_the_argument():
    a, b = _grid(2, 3)
    X = torch.randn(6, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"attributes\['b'\] must have shape \[6\]"):
        factor_orthogonality(X, {"a": a, "b": b[:5]})
    with pytest.raises(TypeError, match="integer tensor"):
        factor_orthogonality(X, {"a": a.double(), "b": b})
    with pytest.raises(ValueError, match="single value"):
        factor_orthogonality(X, {"a": torch.zeros(6, dtype=torch.int64), "b": b})
    with pytest.raises(ValueError, match="at least 2 concept"):  # one concept: nothing to be orthogonal to
        factor_orthogonality(X, {"a": a})
    bad = X.clone()
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        factor_orthogonality(bad, {"a": a, "b": b})
    with pytest.raises(ValueError, match="fit"):
        factor_orthogonality(X, {"a": a, "b": b}, fit="ridge")
    with pytest.raises(ValueError, match="rank"):
        factor_orthogonality(X, {"a": a, "b": b}, rank=0)


@pytest.mark.parametrize("seed", range(4))
def test_a_concept_that_carries_nothing_has_rank_zero_and_no_orthogonality(seed):
    # X depends on a only; b's means are rounding noise (~1e-16) that must not count as a direction
    a, b = torch.arange(12) % 3, torch.arange(12) // 3
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(3, 8, generator=g, dtype=torch.float64)[a]
    rep = factor_orthogonality(X, {"a": a, "b": b})
    assert rep.ranks == {"a": 2, "b": 0} and rep.k95["b"] == 0 and rep.null_concepts == ("b",)
    assert rep.r2 == pytest.approx(1.0, abs=1e-12)
    assert rep.angles[("a", "b")].numel() == 0
    assert math.isnan(rep.orthogonality) and math.isnan(rep.score)  # undefined, not a rounding artefact
    assert "not encoded" in rep.to_markdown()
    # three concepts, full factorial, b carries nothing: orthogonality is that of the encoded pair (a, c) alone
    a3, b3, c3 = torch.arange(24) % 3, (torch.arange(24) // 3) % 2, torch.arange(24) // 6
    X2 = (
        torch.randn(3, 8, generator=g, dtype=torch.float64)[a3]
        + torch.randn(4, 8, generator=g, dtype=torch.float64)[c3]
    )
    rep2 = factor_orthogonality(X2, {"a": a3, "b": b3, "c": c3})
    assert rep2.null_concepts == ("b",) and rep2.ranks == {"a": 2, "b": 0, "c": 3}
    cos2 = torch.cos(rep2.angles[("a", "c")]).square().mean().item()
    assert rep2.orthogonality == pytest.approx(1.0 - cos2, abs=1e-12)


@pytest.mark.parametrize("c", [1e200, 1e-200])
def test_extreme_magnitudes_are_scale_invariant(c):
    a, b = _grid(3, 4, reps=2)
    g = torch.Generator().manual_seed(5)
    X = torch.randn(24, 10, generator=g, dtype=torch.float64)
    r0, r1 = factor_orthogonality(X, {"a": a, "b": b}), factor_orthogonality(X * c, {"a": a, "b": b})
    assert r1.r2 == pytest.approx(r0.r2, abs=1e-12) and r1.orthogonality == pytest.approx(
        r0.orthogonality, abs=1e-12
    )
    assert r1.ranks == r0.ranks and torch.allclose(r1.angles[("a", "b")], r0.angles[("a", "b")], atol=1e-10)
    assert torch.allclose(r1.components["a"] / c, r0.components["a"], rtol=1e-12, atol=0)
    assert math.isfinite(r1.r2_whitened)


def test_invariant_to_rotation_and_offset_of_the_embedding_space():
    a, b = _grid(3, 4, reps=2)
    g = torch.Generator().manual_seed(4)
    X = torch.randn(24, 10, generator=g, dtype=torch.float64)
    Q = torch.linalg.qr(torch.randn(10, 10, generator=g, dtype=torch.float64))[0]
    r0 = factor_orthogonality(X, {"a": a, "b": b})
    r1 = factor_orthogonality(X @ Q + 7.0, {"a": a, "b": b})
    assert r1.r2 == pytest.approx(r0.r2, abs=1e-12) and r1.orthogonality == pytest.approx(
        r0.orthogonality, abs=1e-10
    )
    assert torch.allclose(r1.angles[("a", "b")], r0.angles[("a", "b")], atol=1e-10)
