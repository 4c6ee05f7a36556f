"""orthogonality_report against closed forms: X = U diag(f) Vᵀ gives σ-range = f-range, alignment = mean f."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import orthokit
from orthokit.linalg import OrthogonalityReport, orthogonality_report

F64 = torch.float64


def _factors(m: int, n: int, batch: tuple[int, ...] = (), seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    k = min(m, n)
    U, _ = torch.linalg.qr(torch.randn(*batch, m, k, generator=g, dtype=F64))
    V, _ = torch.linalg.qr(torch.randn(*batch, n, k, generator=g, dtype=F64))
    return U, V


@pytest.mark.parametrize(("m", "n"), [(6, 9), (9, 6), (5, 5)])
def test_closed_form_against_known_singular_values(m: int, n: int) -> None:
    U, V = _factors(m, n)
    k = min(m, n)
    sigma_g = torch.logspace(0, -3, k, dtype=F64)
    G = (U * sigma_g) @ V.mT
    f = torch.linspace(0.6, 1.3, k, dtype=F64)
    X = (U * f) @ V.mT
    r = orthogonality_report(X, G)
    assert r.sigma_min == pytest.approx(0.6, abs=1e-12)
    assert r.sigma_max == pytest.approx(1.3, abs=1e-12)
    # ‖X − UVᵀ‖_F / ‖UVᵀ‖_F = sqrt(mean (f − 1)²); ⟨X, UVᵀ⟩ / ‖UVᵀ‖² = mean f
    assert r.rel_error == pytest.approx(float(((f - 1) ** 2).mean().sqrt()), abs=1e-10)
    assert r.alignment == pytest.approx(float(f.mean()), abs=1e-10)
    assert r.rank == k


def test_exact_polar_factor_scores_perfectly_and_sign_flip_is_visible() -> None:
    G = torch.randn(7, 12, dtype=F64)
    P = orthokit.polar(G, method="svd")
    r = orthogonality_report(P, G)
    assert r.rel_error < 1e-12 and r.alignment == pytest.approx(1.0, abs=1e-12)
    assert r.sigma_min == pytest.approx(1.0, abs=1e-12) and r.sigma_max == pytest.approx(1.0, abs=1e-12)
    flipped = orthogonality_report(-P, G)
    assert flipped.alignment == pytest.approx(-1.0, abs=1e-12) and flipped.rel_error == pytest.approx(2.0)


def test_without_g_only_sigma_range() -> None:
    r = orthogonality_report(0.5 * torch.eye(4))
    assert (r.sigma_min, r.sigma_max) == pytest.approx((0.5, 0.5))
    assert r.rel_error is None and r.alignment is None and r.per_rel_error is None and r.rank is None


def test_batched_worst_case_and_per_matrix_tensors() -> None:
    U, V = _factors(5, 8, batch=(2, 3))
    G = U @ V.mT
    scales = torch.tensor([[1.0, 0.9, 1.1], [0.7, 1.0, 1.05]], dtype=F64)
    X = G * scales[..., None, None]
    r = orthogonality_report(X, G)
    assert r.per_sigma_min.shape == (2, 3) and r.per_alignment.shape == (2, 3)
    torch.testing.assert_close(r.per_sigma_min, scales, atol=1e-12, rtol=0)
    torch.testing.assert_close(r.per_alignment, scales, atol=1e-12, rtol=0)
    torch.testing.assert_close(r.per_rel_error, (scales - 1).abs(), atol=1e-12, rtol=0)
    assert r.sigma_min == pytest.approx(0.7) and r.sigma_max == pytest.approx(1.1)
    assert r.rel_error == pytest.approx(0.3)
    assert r.alignment == pytest.approx(0.7)  # the entry farthest from 1


def test_rank_deficient_g_uses_partial_isometry() -> None:
    U, V = _factors(6, 6)
    sigma = torch.tensor([1.0, 0.5, 0.1, 0.0, 0.0, 0.0], dtype=F64)
    G = (U * sigma) @ V.mT
    P3 = U[:, :3] @ V[:, :3].T
    r = orthogonality_report(P3, G)
    assert r.rank == 3
    assert r.rel_error < 1e-10 and r.alignment == pytest.approx(1.0, abs=1e-10)
    assert r.sigma_min == pytest.approx(0.0, abs=1e-10)


def test_zero_g() -> None:
    Z = torch.zeros(3, 4)
    r = orthogonality_report(Z, Z)
    assert r.rank == 0 and r.rel_error == 0.0 and r.alignment == 1.0
    r2 = orthogonality_report(torch.ones(3, 4), Z)
    assert r2.rel_error == pytest.approx(12**0.5) and r2.alignment == 0.0


def test_low_precision_inputs_are_analysed_in_float64() -> None:
    G = torch.randn(16, 24)
    X = orthokit.polar(G, dtype=torch.bfloat16).to(torch.bfloat16)
    r = orthogonality_report(X, G.to(torch.bfloat16))
    assert r.per_sigma_min.dtype == F64
    assert 0.8 < r.sigma_min < r.sigma_max < 1.2


def test_report_is_frozen_and_serialisable() -> None:
    r = orthogonality_report(torch.eye(3), torch.eye(3))
    assert isinstance(r, OrthogonalityReport)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.sigma_min = 0.0  # type: ignore[misc]
    d = r.as_dict()
    assert set(d) == {"sigma_min", "sigma_max", "rel_error", "alignment", "rank"}
    assert all(isinstance(v, (int, float)) for v in d.values())


def test_errors() -> None:
    with pytest.raises(ValueError, match="same shape"):
        orthogonality_report(torch.eye(3), torch.eye(4))
    bad = torch.eye(3)
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        orthogonality_report(bad)
    with pytest.raises(ValueError, match="non-finite"):
        orthogonality_report(torch.eye(3), bad)
    with pytest.raises(ValueError):
        orthogonality_report(torch.ones(3))
    with pytest.raises(TypeError):
        orthogonality_report([[1.0]])  # type: ignore[arg-type]
