"""Conformance of the representation diagnostics registered in DIAGNOSTICS with ``input`` "embedding" (ε: how far
a set of vectors is from orthogonal) and "labelled_embeddings" (factor orthogonality: additive, orthogonal
concept components), plus mutants the checks must reject.

The protocol: ``float(fn(E))`` / ``float(fn(emb, attributes))`` is the headline number; ``higher_is`` says
what a larger value means ("deviation" from orthogonality, or "orthogonal" structure).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch

import orthokit.diagnostics.capacity  # noqa: F401  (registers "epsilon")
import orthokit.diagnostics.factor  # noqa: F401  (registers "factor_orthogonality")
from orthokit.diagnostics.registry import DIAGNOSTICS

MY_INPUTS = ("embedding", "labelled_embeddings")


def _names(kind: str) -> list[str]:
    return [n for n in DIAGNOSTICS.names() if DIAGNOSTICS.capabilities(n).get("input") == kind]


# ------------------------------------------------------------------------------------------- checks
def check_embedding_diagnostic(fn: Callable[..., Any], higher_is: str) -> None:
    """ε of exactly orthogonal rows is 0; of an equiangular set with cosine c it is c; random Gaussian
    vectors sit between and get closer to orthogonal as the width grows."""
    assert higher_is == "deviation", f"an embedding diagnostic here measures deviation, got {higher_is!r}"
    g = torch.Generator().manual_seed(0)
    Q = torch.linalg.qr(torch.randn(64, 64, generator=g, dtype=torch.float64))[0]
    v0 = float(fn(Q[:50]))
    assert abs(v0) < 1e-7, f"orthonormal rows must give 0, got {v0}"
    k, s = 40, 0.1
    c = (2 * s + k * s * s) / (1 + 2 * s + k * s * s)
    vc = float(fn(torch.eye(k, dtype=torch.float64) + s))
    assert vc == pytest.approx(c, abs=1e-4), f"equiangular set with cosine {c:.4f} gave {vc}"
    narrow = float(fn(torch.randn(800, 32, generator=g, dtype=torch.float64)))
    wide = float(fn(torch.randn(800, 512, generator=g, dtype=torch.float64)))
    assert 0 < wide < narrow, (
        f"random vectors: d=512 must be closer to orthogonal than d=32 ({wide} vs {narrow})"
    )
    assert narrow == pytest.approx(2 / math.sqrt(32), rel=0.1)
    # signed cosines: a regular simplex (d + 1 unit vectors, cos = −1/d) beside m orthonormal vectors in the
    # complementary coordinates; over the P = C(d+1+m, 2) pairs μ = −C(d+1, 2)/(d P), E[cos²] = C(d+1, 2)/(d² P),
    # ε = μ + 2σ in closed form (|cos| would shift it by 2|μ|)
    dd, m = 4, 20
    simplex = torch.eye(dd + 1, dtype=torch.float64) - 1.0 / (dd + 1)  # rows span the sum-zero hyperplane
    simplex = simplex / simplex.norm(dim=1, keepdim=True)  # pairwise cos = −1/dd
    S = torch.zeros(dd + 1 + m, dd + 1 + m, dtype=torch.float64)
    S[: dd + 1, : dd + 1] = simplex
    S[dd + 1 :, dd + 1 :] = torch.eye(m, dtype=torch.float64)
    P, ps = math.comb(dd + 1 + m, 2), math.comb(dd + 1, 2)
    mu, ex2 = -ps / (dd * P), ps / (dd * dd * P)
    want = mu + 2.0 * math.sqrt(ex2 - mu * mu)
    vs = float(fn(S))
    assert vs == pytest.approx(want, abs=1e-9), (
        f"simplex + orthonormal set: ε = μ + 2σ = {want:.6f}, got {vs}"
    )


def _planted(correlated: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    a = torch.arange(5).repeat_interleave(6)
    b = torch.arange(6).repeat(5)
    g = torch.Generator().manual_seed(1)
    Q = torch.linalg.qr(torch.randn(24, 9, generator=g, dtype=torch.float64))[0].T
    U = torch.randn(5, 4, generator=g, dtype=torch.float64) @ Q[:4]
    Vb = Q[4:9] if not correlated else 0.3 * Q[4:9] + torch.cat([Q[:4], Q[:1]])  # b leans onto a's span
    V = torch.randn(6, 5, generator=g, dtype=torch.float64) @ Vb
    return U[a] + V[b] + 2.0, {"a": a, "b": b}


def _planted_angles(theta1: float, theta2: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Balanced 3 × 3 design, exactly additive; concept a spans (e0, e1), concept b spans
    (cos θ1 e0 + sin θ1 e2, cos θ2 e1 + sin θ2 e3): principal angles θ1, θ2 exactly."""
    a, b = torch.arange(9) % 3, torch.arange(9) // 3
    e = torch.eye(6, dtype=torch.float64)
    f0 = math.cos(theta1) * e[0] + math.sin(theta1) * e[2]
    f1 = math.cos(theta2) * e[1] + math.sin(theta2) * e[3]
    tri = torch.tensor(
        [[1.0, 0.0], [-0.5, 0.8660254037844386], [-0.5, -0.8660254037844386]], dtype=torch.float64
    )
    U = tri @ torch.stack([e[0], e[1]]) * 2.0  # centered, rank 2, not equal-norm to b's
    V = (tri * torch.tensor([1.0, 0.5], dtype=torch.float64)) @ torch.stack([f0, f1])
    return U[a] + V[b] + 1.5, {"a": a, "b": b}


def _means_rule_score(X: torch.Tensor, y: dict[str, torch.Tensor]) -> float:
    """Float64 reference of the official per-value-means rule for two rank-1 concepts (2 values each):
    R² of Σ_h mean{X_c | y_h} times sin² of the angle between the two component directions."""
    Xc = X - X.mean(0)
    comps = {h: torch.stack([Xc[v == k].mean(0) for k in (0, 1)]) for h, v in y.items()}
    Xhat = sum(comps[h][v] for h, v in y.items())
    r2 = 1 - float((Xc - Xhat).square().sum() / Xc.square().sum())
    ua, ub = comps["a"][1] - comps["a"][0], comps["b"][1] - comps["b"][0]
    cos = float(ua @ ub) / float(ua.norm() * ub.norm())
    return r2 * (1 - cos * cos)


def check_labelled_diagnostic(fn: Callable[..., Any], higher_is: str) -> None:
    """Planted additive orthogonal concepts (with a mean offset) score 1; correlated concept subspaces or
    shuffled labels score clearly lower; two rank-2 concept subspaces at principal angles (30°, 60°) with
    R² = 1 score exactly ``1 − mean cos²θ = 0.5`` (the score's formula); on an unbalanced 2 × 2 design the score
    is that of the official per-value means (not of a joint least-squares fit)."""
    assert higher_is == "orthogonal", (
        f"a labelled diagnostic here measures orthogonal structure, got {higher_is!r}"
    )
    X, y = _planted(correlated=False)
    top = float(fn(X, y))
    assert top == pytest.approx(1.0, abs=1e-9), f"additive orthogonal concepts must score 1, got {top}"
    Xc, yc = _planted(correlated=True)
    corr = float(fn(Xc, yc))
    assert corr < 0.9, f"correlated concept subspaces must score lower, got {corr}"
    g = torch.Generator().manual_seed(2)
    shuffled = {h: v[torch.randperm(len(v), generator=g)] for h, v in y.items()}
    sh = float(fn(X, shuffled))
    assert sh < 0.7, f"shuffled labels must score lower, got {sh}"
    t1, t2 = math.radians(30.0), math.radians(60.0)
    Xa, ya = _planted_angles(t1, t2)
    want = 1.0 - 0.5 * (math.cos(t1) ** 2 + math.cos(t2) ** 2)
    got = float(fn(Xa, ya))
    assert got == pytest.approx(want, abs=1e-9), (
        f"principal angles 30°, 60° with R² = 1: want {want}, got {got}"
    )
    # unbalanced 2 × 2 design (cell counts 5, 1, 2, 4), exactly additive with orthogonal effects: the
    # per-value means are confounded (R² < 1, components tilted), a joint fit would give 1
    cells = [(0, 0)] * 5 + [(0, 1)] + [(1, 0)] * 2 + [(1, 1)] * 4
    yu = {"a": torch.tensor([c[0] for c in cells]), "b": torch.tensor([c[1] for c in cells])}
    e = torch.eye(4, dtype=torch.float64)
    Xu = 2.0 * yu["a"].double()[:, None] * e[0] + 1.0 * yu["b"].double()[:, None] * e[1] + 0.3
    want_u = _means_rule_score(Xu, yu)
    got_u = float(fn(Xu, yu))
    assert want_u < 0.99, f"the unbalanced design must separate means from a joint fit ({want_u})"
    assert got_u == pytest.approx(want_u, abs=1e-9), (
        f"unbalanced design: means rule gives {want_u}, got {got_u}"
    )


def test_my_inputs_are_registered():
    assert "epsilon" in _names("embedding") and "factor_orthogonality" in _names("labelled_embeddings")


@pytest.mark.parametrize("name", _names("embedding"))
def test_embedding_diagnostics_conform(name):
    check_embedding_diagnostic(DIAGNOSTICS.get(name), DIAGNOSTICS.capabilities(name)["higher_is"])


@pytest.mark.parametrize("name", _names("labelled_embeddings"))
def test_labelled_diagnostics_conform(name):
    check_labelled_diagnostic(DIAGNOSTICS.get(name), DIAGNOSTICS.capabilities(name)["higher_is"])


# ------------------------------------------------------------------------------------------- mutants
def _eps_with_diagonal(E: torch.Tensor) -> float:
    """MUTANT: μ + 2σ over the full Gram matrix, diagonal (cos = 1) included."""
    U = E.double() / E.double().norm(dim=1, keepdim=True)
    G = (U @ U.T).flatten()
    return float(G.mean() + 2 * G.std(unbiased=False))


def _eps_dot_not_cosine(E: torch.Tensor) -> float:
    """MUTANT: raw dot products instead of cosines (no row normalization)."""
    G = E.double() @ E.double().T
    v = G[~torch.eye(len(G), dtype=torch.bool)]
    return float(v.mean() + 2 * v.std(unbiased=False))


def _factor_uncentered(emb: torch.Tensor, attributes: dict[str, torch.Tensor]) -> float:
    """MUTANT: per-value means of the *uncentered* embeddings summed (the global mean counted per concept)."""
    X = emb.double()
    Xc = X - X.mean(0, keepdim=True)
    Xhat = torch.zeros_like(X)
    for y in attributes.values():
        for v in torch.unique(y):
            Xhat[y == v] += X[y == v].mean(0)
    return 1.0 - float((Xc - Xhat).square().sum() / Xc.square().sum())


def _factor_r2_only(emb: torch.Tensor, attributes: dict[str, torch.Tensor]) -> float:
    """MUTANT: reports additivity only and calls it orthogonality (blind to correlated concepts)."""
    return orthokit.diagnostics.factor.factor_orthogonality(emb, attributes).r2


def _eps_abs_cos(E: torch.Tensor) -> float:
    """MUTANT: μ + 2σ of |cos| instead of the signed cosines."""
    U = E.double() / E.double().norm(dim=1, keepdim=True)
    G = U @ U.T
    v = G[~torch.eye(len(G), dtype=torch.bool)].abs()
    return float(v.mean() + 2 * v.std(unbiased=False))


@pytest.mark.parametrize("mutant", [_eps_with_diagonal, _eps_dot_not_cosine, _eps_abs_cos])
def test_embedding_mutants_are_rejected(mutant):
    with pytest.raises(AssertionError):
        check_embedding_diagnostic(mutant, "deviation")


def _factor_cross_cos(emb: torch.Tensor, attributes: dict[str, torch.Tensor]) -> float:
    """MUTANT: R² · (1 − mean |cos| across concepts) instead of the principal-angle orthogonality."""
    r = orthokit.diagnostics.factor.factor_orthogonality(emb, attributes)
    return r.r2 * (1.0 - r.cross_abs_cos)


def _factor_largest_angle(emb: torch.Tensor, attributes: dict[str, torch.Tensor]) -> float:
    """MUTANT: R² · sin² of the largest principal angle only (blind to the smaller angles)."""
    r = orthokit.diagnostics.factor.factor_orthogonality(emb, attributes)
    return r.r2 * float(torch.sin(torch.cat(list(r.angles.values())).max()) ** 2)


def _factor_lstsq(emb: torch.Tensor, attributes: dict[str, torch.Tensor]) -> float:
    """MUTANT: the joint least-squares fit instead of the official per-value means."""
    return orthokit.diagnostics.factor.factor_orthogonality(emb, attributes, fit="lstsq").score


@pytest.mark.parametrize(
    "mutant", [_factor_uncentered, _factor_r2_only, _factor_cross_cos, _factor_largest_angle, _factor_lstsq]
)
def test_labelled_mutants_are_rejected(mutant):
    with pytest.raises(AssertionError):
        check_labelled_diagnostic(mutant, "orthogonal")
