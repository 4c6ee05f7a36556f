"""Conformance of every ``DIAGNOSTICS`` entry with ``input="updates"`` (scores of two task updates where higher =
more conflict), on planted updates with a known answer, plus mutants the suite must reject.

Purpose tested: a conflict score is 0 for identical updates, symmetric, grows as the updates' input subspaces
rotate apart (maximal, near 1, for orthogonal ones), sees the spectrum (same subspace, different singular
values ⇒ conflict > 0), is invariant to a common orthogonal change of basis on either side, and to scaling both
updates by the same factor.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

import orthokit.diagnostics.conflict  # noqa: F401  (registers geometry_conflict)
from orthokit._registry import Registry
from orthokit.diagnostics.registry import DIAGNOSTICS
from orthokit.linalg import principal_angles

Score = Callable[..., float]


def _planted(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(10, 10, generator=g, dtype=torch.float64))[0][:, :3]
    V = torch.linalg.qr(torch.randn(16, 16, generator=g, dtype=torch.float64))[0]
    s = torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)
    c, sn = math.cos(math.pi / 6), math.sin(math.pi / 6)
    return {
        "A": U @ torch.diag(s) @ V[:, :3].T,
        "spectrum": U @ torch.diag(s.flip(0)) @ V[:, :3].T,  # same input subspace, swapped singular values
        "rot30": U @ torch.diag(s) @ (c * V[:, :3] + sn * V[:, 3:6]).T,
        "rot60": U @ torch.diag(s) @ (sn * V[:, :3] + c * V[:, 3:6]).T,
        "orth": U @ torch.diag(s) @ V[:, 6:9].T,
        "P": torch.linalg.qr(torch.randn(10, 10, generator=g, dtype=torch.float64))[0],
        "Q": torch.linalg.qr(torch.randn(16, 16, generator=g, dtype=torch.float64))[0],
        "B": torch.randn(10, 16, generator=g, dtype=torch.float64),
    }


def _w(x: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"layer.weight": x}


def conformance_failures(fn: Score) -> list[str]:
    """Every property the conflict score violates (empty list = conforming)."""
    d = _planted()
    A, fails = d["A"], []

    def s(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(fn(_w(a), _w(b)))

    same = s(A, A)
    if abs(same) > 1e-6:
        fails.append(f"identical updates score {same:.3g}, expected 0")
    sym = (s(A, d["B"]), s(d["B"], A))
    if abs(sym[0] - sym[1]) > 1e-8 * max(1.0, abs(sym[0])):
        fails.append(f"not symmetric: {sym}")
    ladder = [same, s(A, d["rot30"]), s(A, d["rot60"]), s(A, d["orth"])]
    if not all(x < y for x, y in zip(ladder, ladder[1:])):
        fails.append(f"not increasing as the input subspaces rotate apart: {ladder}")
    if ladder[-1] < 0.9:
        fails.append(f"orthogonal input subspaces score {ladder[-1]:.3g}, expected near 1")
    spec = s(A, d["spectrum"])
    if spec < 0.05:
        fails.append(f"blind to the spectrum: same subspace, swapped singular values scores {spec:.3g}")
    base = s(A, d["B"])
    rot = s(d["P"] @ A @ d["Q"], d["P"] @ d["B"] @ d["Q"])
    if abs(rot - base) > 1e-6 * max(1.0, abs(base)):
        fails.append(f"not invariant to a common orthogonal change of basis: {base} vs {rot}")
    # closed form pinning the Bures–Wasserstein cross term and the joint normalisation: two full-rank 2-D
    # geometries Σ_a = diag(4, 1), Σ_b = R diag(1, 9) Rᵀ (unequal traces 5, 10, not commuting); for 2 × 2
    # PSD matrices tr (A^½ B A^½)^½ = √(tr AB + 2 √(det A det B)), so GC = W² / (tr A + tr B)
    th = math.radians(35.0)
    R = torch.tensor([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]], dtype=torch.float64)
    Da = torch.diag(torch.tensor([2.0, 1.0], dtype=torch.float64))
    Db = torch.diag(torch.tensor([1.0, 3.0], dtype=torch.float64)) @ R.T
    Sa, Sb = Da.T @ Da, Db.T @ Db
    cross = math.sqrt(float(torch.trace(Sa @ Sb)) + 2 * math.sqrt(float(torch.det(Sa) * torch.det(Sb))))
    want = (15.0 - 2 * cross) / 15.0
    got = s(Da, Db)
    if abs(got - want) > 1e-5:
        fails.append(f"closed-form 2 × 2 case (traces 5 and 10, rotated 35°): want {want:.6f}, got {got:.6f}")
    scaled = s(5.0 * A, 5.0 * d["B"])
    if abs(scaled - base) > 2e-3 * max(1.0, abs(base)):  # regularisers may break it at O(√reg / σ)
        fails.append(f"not invariant to scaling both updates: {base} vs {scaled}")
    return fails


UPDATE_SCORES = DIAGNOSTICS.names(input="updates")


def test_registry_has_update_scores() -> None:
    assert "geometry_conflict" in UPDATE_SCORES
    for name in UPDATE_SCORES:
        assert DIAGNOSTICS.capabilities(name)["higher_is"] == "conflict"


@pytest.mark.parametrize("name", UPDATE_SCORES)
def test_conformance(name: str) -> None:
    assert conformance_failures(DIAGNOSTICS.get(name)) == []


# ---------------------------------------------------------------------------------------------------------
# mutants: deliberately broken scores, registered into a temporary copy of the registry
# ---------------------------------------------------------------------------------------------------------
def _psd_sqrt(S: torch.Tensor) -> torch.Tensor:
    w, V = torch.linalg.eigh(S)
    return (V * w.clamp_min(0).sqrt()) @ V.T


def _cov(u: dict[str, torch.Tensor]) -> torch.Tensor:
    X = u["layer.weight"].double()
    return X.T @ X


def bw_without_cross_sqrt(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Mutant: tr A + tr B − 2 tr(A^½ B A^½), the cross term's square root forgotten."""
    A, B = _cov(a), _cov(b)
    rA = _psd_sqrt(A)
    return float((A.trace() + B.trace() - 2 * (rA @ B @ rA).trace()) / (A.trace() + B.trace()))


def subspace_only(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Mutant: 1 − mean cos² of the principal angles of the top-3 input subspaces; ignores the spectrum."""
    Va = torch.linalg.svd(a["layer.weight"].double(), full_matrices=False)[2][:3].T
    Vb = torch.linalg.svd(b["layer.weight"].double(), full_matrices=False)[2][:3].T
    return float(1 - torch.cos(principal_angles(Va, Vb)).square().mean())


def norm_gap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Mutant: relative difference of update norms; ignores the directions."""
    na, nb = float(a["layer.weight"].norm()), float(b["layer.weight"].norm())
    return abs(na - nb) / (na + nb)


def unnormalised_bw(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Mutant: squared Bures–Wasserstein distance without the trace normalisation (scale-dependent)."""
    A, B = _cov(a), _cov(b)
    rA = _psd_sqrt(A)
    return float(A.trace() + B.trace() - 2 * _psd_sqrt(rA @ B @ rA).trace()) / 14.0


def _bw(A: torch.Tensor, B: torch.Tensor) -> float:
    rA = _psd_sqrt(A)
    return float(A.trace() + B.trace() - 2 * _psd_sqrt(rA @ B @ rA).trace())


def max_trace_normalised(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Mutant: W² / (2 max(tr A, tr B)) instead of the joint W² / (tr A + tr B)."""
    A, B = _cov(a), _cov(b)
    return _bw(A, B) / (2 * max(float(A.trace()), float(B.trace())))


def hellinger_cross(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Mutant: cross term tr(A^½ B^½) (Hellinger-style) instead of tr (A^½ B A^½)^½."""
    A, B = _cov(a), _cov(b)
    h = float(A.trace() + B.trace() - 2 * (_psd_sqrt(A) @ _psd_sqrt(B)).trace())
    return max(h, 0.0) / float(A.trace() + B.trace())


@pytest.mark.parametrize(
    "mutant",
    [bw_without_cross_sqrt, subspace_only, norm_gap, unnormalised_bw, max_trace_normalised, hellinger_cross],
)
def test_mutant_rejected(mutant: Score) -> None:
    reg: Registry[Score] = Registry("geometry diagnostic (mutant copy)")
    for name in UPDATE_SCORES:
        reg.add(name, DIAGNOSTICS.get(name), **DIAGNOSTICS.capabilities(name))
    reg.add(mutant.__name__, mutant, input="updates", higher_is="conflict")
    failures = {n: conformance_failures(reg.get(n)) for n in reg.names(input="updates")}
    assert failures[mutant.__name__], f"mutant {mutant.__name__} passed the conformance suite"
    assert all(not failures[n] for n in UPDATE_SCORES)
