"""Conformance suite for every registered alignment map (``ALIGNERS``), by declared ``kind``, plus mutants.

Each check tests the purpose of a kind:

* ``isometry`` — pairwise distances of *fresh* points are preserved to 1e-6 (float64), ``‖WWᵀ − I‖ ≤ 1e-6``;
* ``similarity`` — distances are multiplied by exactly the fitted scale;
* ``near_isometry`` — ``‖G − I‖_F ≤ λ`` and every distance ratio within ``[√(1−λ), √(1+λ)]``;
* ``similarity`` — on noisy data the fitted scale is the least-squares optimum for the fitted ``W``
  (``s = ⟨X̃W, Ỹ⟩/‖X̃W‖²``: the residual is stationary in ``s``);
* ``near_isometry`` — on a planted non-orthogonal map a larger λ gives a strictly smaller residual, and the
  constraint is active: the fitted gap is λ (to 1e-6);
* every kind — a planted rotation (times a scale for similarities) plus a mean shift on isotropic Gaussian data
  (n ≫ d) is recovered to 1e-4 in data space and in ``‖W − Q*‖``, for ``d_s = d_t`` and for a non-square
  ``d_s < d_t`` (orthonormal rows), where the kind's distance guarantee must hold too; a wider source
  (``d_s > d_t``) is refused by every kind except ``affine``; ``inverse_transform ∘ transform = id`` (1e-6)
  for square invertible fits; bad input gives a one-line ValueError/TypeError.

The mutants at the bottom each break one defining step (forgotten centering, transposed map, an affine fit
declared an isometry, an unfitted scale, a scale set to ``‖Ỹ‖/‖X̃‖``, an ignored tolerance, a tolerance
that always returns the Procrustes map); the same checks must reject every one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

import orthokit.align.api  # noqa: F401  (registers every map)
from orthokit.align._aligner import Aligner
from orthokit.align.affine import fit_affine
from orthokit.align.lambda_orthogonal import lambda_orthogonality_gap
from orthokit.align.orthogonal import fit_orthogonal
from orthokit.align.orthogonal_scaled import fit_orthogonal_scaled
from orthokit.align.registry import ALIGNERS

FitFn = Callable[..., Aligner]
LAM = 0.3
KW_BY_KIND: dict[str, dict[str, Any]] = {"near_isometry": {"lam": LAM}}
F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _haar(d: int, g: torch.Generator) -> Tensor:
    q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
    return q * torch.sign(torch.diagonal(r))


def _pairwise_ratio(X: Tensor, P: Tensor) -> Tensor:
    iu = torch.triu_indices(X.shape[0], X.shape[0], 1)
    d0 = torch.cdist(X, X)[iu[0], iu[1]]
    d1 = torch.cdist(P, P)[iu[0], iu[1]]
    return d1 / d0


# ------------------------------------------------------------------------------------------------ checks
def check_geometry(fit: FitFn, kind: str, kw: dict[str, Any]) -> None:
    """The kind's geometric guarantee on unrelated random data, measured on fresh points."""
    g = _gen(0)
    X = torch.randn(40, 6, generator=g, dtype=F64) * 3 + 1
    Y = torch.randn(40, 6, generator=g, dtype=F64) @ torch.randn(6, 6, generator=g, dtype=F64) - 2
    a = fit(X, Y, **kw)
    fresh = torch.randn(30, 6, generator=g, dtype=F64) * 5
    ratio = _pairwise_ratio(fresh, a.transform(fresh))
    if kind == "isometry":
        assert a.orthogonality_error() <= 1e-6, (
            f"W is not orthogonal: ‖WWᵀ − I‖ = {a.orthogonality_error():.3g}"
        )
        assert float((ratio - 1).abs().max()) <= 1e-6, "an isometry changed a pairwise distance"
    elif kind == "similarity":
        assert a.scale > 0
        assert float((ratio - a.scale).abs().max()) <= 1e-6 * a.scale, "distances not scaled by exactly s"
    elif kind == "near_isometry":
        lam = float(kw["lam"])
        gap = float(lambda_orthogonality_gap(a.W))
        assert gap <= lam + 1e-9, f"‖G − I‖_F = {gap:.6g} exceeds λ = {lam}"
        lo, hi = math.sqrt(1 - lam) - 1e-9, math.sqrt(1 + lam) + 1e-9
        assert float(ratio.min()) >= lo and float(ratio.max()) <= hi, "a distance ratio left the λ band"


def check_planted(fit: FitFn, kind: str, kw: dict[str, Any]) -> None:
    """A planted rotation (× scale for similarities) + mean shift is recovered to 1e-4 on isotropic data."""
    g = _gen(1)
    n, d = 4000, 8
    Q = _haar(d, g)
    s = 1.7 if kind == "similarity" else 1.0
    shift = 10 * torch.randn(d, generator=g, dtype=F64)
    X = torch.randn(n, d, generator=g, dtype=F64) + 4 * torch.randn(d, generator=g, dtype=F64)
    Y = s * X @ Q + shift + 1e-6 * torch.randn(n, d, generator=g, dtype=F64)
    a = fit(X, Y, **kw)
    assert a.residuals(X, Y)["relative"] <= 1e-4, f"data-space residual {a.residuals(X, Y)['relative']:.3g}"
    assert float(torch.linalg.norm(a.scale * a.W - s * Q)) <= 1e-4, "the planted map was not recovered"
    Xt = torch.randn(50, d, generator=g, dtype=F64)
    assert float((a.transform(Xt) - (s * Xt @ Q + shift)).abs().max()) <= 1e-4


def _check_distances(a: Aligner, kind: str, kw: dict[str, Any], fresh: Tensor) -> None:
    ratio = _pairwise_ratio(fresh, a.transform(fresh))
    if kind == "isometry":
        assert float((ratio - 1).abs().max()) <= 1e-6, "an isometry changed a pairwise distance"
    elif kind == "similarity":
        assert float((ratio - a.scale).abs().max()) <= 1e-6 * a.scale, "distances not scaled by exactly s"
    elif kind == "near_isometry":
        lam = float(kw["lam"])
        lo, hi = math.sqrt(1 - lam) - 1e-9, math.sqrt(1 + lam) + 1e-9
        assert float(ratio.min()) >= lo and float(ratio.max()) <= hi, "a distance ratio left the λ band"


def check_widths(fit: FitFn, kind: str, kw: dict[str, Any]) -> None:
    """``d_s < d_t``: a planted map with orthonormal rows is recovered and the kind's guarantee holds on fresh
    points; ``d_s > d_t``: refused (one-line ValueError pointing to ``affine``) unless the kind is affine."""
    g = _gen(5)
    n, ds, dt = 2000, 4, 7
    P = _haar(dt, g)[:ds]  # 4×7, orthonormal rows
    s = 0.8 if kind == "similarity" else 1.0
    shift = 3 * torch.randn(dt, generator=g, dtype=F64)
    X = torch.randn(n, ds, generator=g, dtype=F64) + 2
    Y = s * X @ P + shift + 1e-6 * torch.randn(n, dt, generator=g, dtype=F64)
    a = fit(X, Y, **kw)
    assert (a.d_source, a.d_target) == (ds, dt)
    assert a.residuals(X, Y)["relative"] <= 1e-4, f"non-square residual {a.residuals(X, Y)['relative']:.3g}"
    assert float(torch.linalg.norm(a.scale * a.W - s * P)) <= 1e-4, "the planted 4×7 map was not recovered"
    _check_distances(a, kind, kw, torch.randn(30, ds, generator=g, dtype=F64) * 3)
    if kind == "affine":
        assert fit(Y, X, **kw).d_source == dt
        return
    with pytest.raises(ValueError, match="affine") as info:
        fit(Y, X, **kw)
    assert "\n" not in str(info.value)


def check_optimal_scale(fit: FitFn, kind: str, kw: dict[str, Any]) -> None:
    """Similarity: with noise, ``s`` minimizes ``‖s·X̃W − Ỹ‖`` for the fitted ``W`` (closed form, float64)."""
    if kind != "similarity":
        return
    g = _gen(6)
    X = torch.randn(300, 5, generator=g, dtype=F64) * torch.linspace(0.5, 3, 5, dtype=F64)
    Y = 1.3 * X @ _haar(5, g) + 0.8 * torch.randn(300, 5, generator=g, dtype=F64) + 1
    a = fit(X, Y, **kw)
    P = (X - a.mean_source) @ a.W
    Yc = Y - a.mean_target
    s_opt = float((P * Yc).sum() / (P * P).sum())
    assert a.scale == pytest.approx(s_opt, rel=1e-9), f"scale {a.scale:.9g} is not the optimum {s_opt:.9g}"


def check_tolerance_used(fit: FitFn, kind: str, kw: dict[str, Any]) -> None:
    """Near-isometry on a planted non-orthogonal map: the gap equals λ (active) and a larger λ fits better."""
    if kind != "near_isometry":
        return
    g = _gen(7)
    R = _haar(4, g)
    A = R @ torch.diag(torch.tensor([1.6, 1.2, 0.8, 0.5], dtype=F64)) @ _haar(4, g)  # gap ≈ 2.0
    X = torch.randn(300, 4, generator=g, dtype=F64)
    Y = X @ A + 0.01 * torch.randn(300, 4, generator=g, dtype=F64) - 2
    res = {}
    for lam in (0.2, 0.6):
        a = fit(X, Y, **{**kw, "lam": lam})
        gap = float(lambda_orthogonality_gap(a.W))
        assert abs(gap - lam) <= 1e-6, f"λ = {lam}: gap {gap:.6g} is not at the (active) tolerance"
        res[lam] = a.residuals(X, Y)["relative"]
    assert res[0.6] < res[0.2] - 1e-3, f"a larger λ did not fit better: {res}"


def check_inverse(fit: FitFn, kind: str, kw: dict[str, Any]) -> None:
    """``inverse_transform(transform(X)) = X`` to 1e-6 for a square invertible fit; dtype is preserved."""
    g = _gen(2)
    X = torch.randn(200, 5, generator=g, dtype=F64)
    Y = X @ _haar(5, g) + 0.1 * torch.randn(200, 5, generator=g, dtype=F64) + 3
    a = fit(X, Y, **kw)
    Xt = torch.randn(20, 5, generator=g, dtype=F64) * 2
    assert float((a.inverse_transform(a.transform(Xt)) - Xt).abs().max()) <= 1e-6
    Yt = torch.randn(20, 5, generator=g, dtype=F64)
    assert float((a.transform(a.inverse_transform(Yt)) - Yt).abs().max()) <= 1e-6
    assert a.transform(Xt.float()).dtype == torch.float32


def check_validation(fit: FitFn, kind: str, kw: dict[str, Any]) -> None:
    """Bad input raises one-line ValueError/TypeError naming the argument."""
    X = torch.randn(10, 3, dtype=F64)
    bad = X.clone()
    bad[2, 1] = float("nan")
    cases: list[tuple[Any, Any, type[Exception], str]] = [
        (bad, X, ValueError, "source"),
        (X, bad, ValueError, "target"),
        (X, X[:9], ValueError, "rows"),
        (X[0], X[0], ValueError, "source"),
        (X[:1], X[:1], ValueError, "at least 2"),
        (X.numpy(), X, TypeError, "source"),
        (X.long(), X, TypeError, "source"),
    ]
    for src, tgt, exc, word in cases:
        with pytest.raises(exc, match=word) as info:
            fit(src, tgt, **kw)
        assert "\n" not in str(info.value)


CHECKS = {
    "geometry": check_geometry,
    "planted": check_planted,
    "widths": check_widths,
    "optimal_scale": check_optimal_scale,
    "tolerance_used": check_tolerance_used,
    "inverse": check_inverse,
    "validation": check_validation,
}


def _entry(name: str) -> tuple[FitFn, str, dict[str, Any]]:
    kind = ALIGNERS.capabilities(name)["kind"]
    return ALIGNERS.get(name), kind, dict(KW_BY_KIND.get(kind, {}))


def test_registry_lists_the_four_maps_with_known_kinds() -> None:
    assert {"orthogonal", "orthogonal_scaled", "lambda_orthogonal", "affine"} <= set(ALIGNERS.names())
    for name in ALIGNERS.names():
        assert ALIGNERS.capabilities(name)["kind"] in ("isometry", "similarity", "near_isometry", "affine")


@pytest.mark.parametrize("check", sorted(CHECKS))
@pytest.mark.parametrize("name", ALIGNERS.names())
def test_registered_map_conforms(name: str, check: str) -> None:
    fit, kind, kw = _entry(name)
    a = fit(torch.randn(10, 3, dtype=F64), torch.randn(10, 3, dtype=F64), **kw)
    assert a.kind == kind and ALIGNERS.get(a.method) is fit
    CHECKS[check](fit, kind, kw)


# ------------------------------------------------------------------------------------------------ mutants
def mutant_forgets_centering(source: Tensor, target: Tensor, **kw: Any) -> Aligner:
    """Procrustes without the mean shift: the rotation has to absorb the offset."""
    return fit_orthogonal(source, target, center=False)


def mutant_transposed(source: Tensor, target: Tensor, **kw: Any) -> Aligner:
    """Returns Wᵀ (the inverse rotation)."""
    a = fit_orthogonal(source, target)
    return Aligner(a.W.mT.contiguous(), a.mean_source, a.mean_target, method="orthogonal", kind="isometry")


def mutant_affine_called_isometry(source: Tensor, target: Tensor, **kw: Any) -> Aligner:
    """Least squares declared as an isometry."""
    a = fit_affine(source, target)
    return Aligner(a.W, a.mean_source, a.mean_target, method="orthogonal", kind="isometry")


def mutant_unfitted_scale(source: Tensor, target: Tensor, **kw: Any) -> Aligner:
    """Umeyama without the scale (s = 1)."""
    a = fit_orthogonal_scaled(source, target)
    return Aligner(a.W, a.mean_source, a.mean_target, 1.0, method="orthogonal_scaled", kind="similarity")


def mutant_ignores_tolerance(source: Tensor, target: Tensor, *, lam: float = LAM, **kw: Any) -> Aligner:
    """λ-orthogonal that returns the unconstrained least-squares map."""
    a = fit_affine(source, target)
    return Aligner(
        a.W, a.mean_source, a.mean_target, method="lambda_orthogonal", kind="near_isometry", lam=lam
    )


def mutant_norm_ratio_scale(source: Tensor, target: Tensor, **kw: Any) -> Aligner:
    """Umeyama with the scale ‖Ỹ‖/‖X̃‖ instead of tr(Σ)/‖X̃‖² (right only without noise)."""
    a = fit_orthogonal_scaled(source, target)
    s = float(torch.linalg.norm(target - a.mean_target) / torch.linalg.norm(source - a.mean_source))
    return Aligner(a.W, a.mean_source, a.mean_target, s, method="orthogonal_scaled", kind="similarity")


def mutant_always_procrustes(source: Tensor, target: Tensor, *, lam: float = LAM, **kw: Any) -> Aligner:
    """λ-orthogonal that ignores λ the other way: always the Procrustes map (feasible for any λ)."""
    a = fit_orthogonal(source, target)
    return Aligner(
        a.W, a.mean_source, a.mean_target, method="lambda_orthogonal", kind="near_isometry", lam=lam
    )


# mutant -> (fit function, declared kind, the check that must catch it)
MUTANTS: dict[str, tuple[FitFn, str, str]] = {
    "forgets_centering": (mutant_forgets_centering, "isometry", "planted"),
    "transposed": (mutant_transposed, "isometry", "planted"),
    "affine_called_isometry": (mutant_affine_called_isometry, "isometry", "geometry"),
    "unfitted_scale": (mutant_unfitted_scale, "similarity", "planted"),
    "ignores_tolerance": (mutant_ignores_tolerance, "near_isometry", "geometry"),
    "norm_ratio_scale": (mutant_norm_ratio_scale, "similarity", "optimal_scale"),
    "always_procrustes": (mutant_always_procrustes, "near_isometry", "tolerance_used"),
}


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_suite_rejects_mutant(mutant: str) -> None:
    fit, kind, expected = MUTANTS[mutant]
    kw = dict(KW_BY_KIND.get(kind, {}))
    failed = []
    for name, check in CHECKS.items():
        try:
            check(fit, kind, kw)
        except (Exception, pytest.fail.Exception):  # a failed assertion, a missing refusal, or a crash
            failed.append(name)
    assert expected in failed, f"mutant {mutant!r} passed the {expected!r} check (failed: {failed})"
