"""FISMO (arXiv:2601.21750) Kronecker-factored metric and ARO (arXiv:2602.09006) rotated steps."""

from __future__ import annotations

import math

import pytest
import torch

from orthokit.optim.aro import aro_base_projection, aro_rotation_step
from orthokit.optim.fismo import fismo_update_factors, inverse_sqrt_spd


def test_inverse_sqrt_spd_matches_float64() -> None:
    a = torch.randn(7, 7, dtype=torch.float64)
    a = a @ a.T + 0.1 * torch.eye(7, dtype=torch.float64)
    r = inverse_sqrt_spd(a)
    torch.testing.assert_close(r @ a @ r, torch.eye(7, dtype=torch.float64), rtol=1e-9, atol=1e-9)


def test_fismo_factors_first_step_reference_and_invariants() -> None:
    g = torch.randn(6, 4, dtype=torch.float64)
    eye6, eye4 = torch.eye(6, dtype=torch.float64), torch.eye(4, dtype=torch.float64)
    z = torch.zeros(1, 1, dtype=torch.float64)
    gamma, delta = 0.8, 0.1
    p, q, pr, qr, pi, qi = fismo_update_factors(g, eye6, eye4, z, z, gamma=gamma, damping=delta)
    # first step: P̃₀ = ℓ·I with ℓ = tr(L)/m, damping δ·ℓ (all in the gradient's own units)
    lft = g @ g.T / 4
    ell = float(lft.trace()) / 6
    pt = gamma * ell * eye6 + (1 - gamma) * (lft + delta * ell * eye6)
    p_ref = 6 * pt / pt.trace()
    rgt = g.T @ torch.linalg.inv(p_ref) @ g / 6
    rho = float(rgt.trace()) / 4
    qt = gamma * rho * eye4 + (1 - gamma) * (rgt + delta * rho * eye4)
    q_ref = 4 * qt / qt.trace()
    torch.testing.assert_close(p, p_ref)
    torch.testing.assert_close(q, q_ref)
    assert float(pr) ** 2 == pytest.approx(float(pt.trace()) / 6, rel=1e-12)
    assert float(qr) ** 2 == pytest.approx(float(qt.trace()) / 4, rel=1e-12)
    torch.testing.assert_close(pi @ pi, torch.linalg.inv(p_ref))
    torch.testing.assert_close(qi @ qi, torch.linalg.inv(q_ref))


def test_fismo_gamma_one_is_muon_metric() -> None:
    p, q, z = torch.eye(5), torch.eye(3), torch.zeros(1, 1)
    *_, pi, qi = fismo_update_factors(torch.randn(5, 3), p, q, z, z, gamma=1.0)
    torch.testing.assert_close(pi, torch.eye(5))
    torch.testing.assert_close(qi, torch.eye(3))
    with pytest.raises(ValueError, match="damping"):
        fismo_update_factors(torch.randn(5, 3), p, q, z, z, damping=0.0)
    with pytest.raises(ValueError, match="do not match"):
        fismo_update_factors(torch.randn(3, 5), p, q, z, z)


def test_inverse_sqrt_spd_raises_clearly_on_nonfinite_input() -> None:
    from orthokit.optim._normalizers import StepComputationError

    with pytest.raises(StepComputationError, match="no parameter or state was modified"):
        inverse_sqrt_spd(torch.full((3, 3), float("nan")))


@pytest.mark.parametrize("kind", ["sign", "sinkhorn"])
@pytest.mark.parametrize("shape", [(6, 10), (10, 6)])
def test_aro_rotation_orthogonal_and_descent(kind: str, shape: tuple[int, int]) -> None:
    m = torch.randn(*shape, dtype=torch.float64)
    s = min(shape)
    rot = torch.eye(s, dtype=torch.float64)
    for _ in range(3):
        delta, rot = aro_rotation_step(m, rot, kind)
        torch.testing.assert_close(rot.T @ rot, torch.eye(s, dtype=torch.float64))
        assert (delta * m).sum().item() > 0  # ⟨R f(RᵀM), M⟩ = ⟨f(X), X⟩ > 0
    x = m.T if shape[0] > shape[1] else m
    ref = rot @ aro_base_projection(rot.T @ x, kind)
    torch.testing.assert_close(delta, ref.T if shape[0] > shape[1] else ref)


def test_aro_is_equivariant_to_left_rotations() -> None:
    # M' = QM, R' = QR  ⇒  R'_t = Q R_t and ΔW' = Q ΔW (the rotation absorbs any frame change)
    m = torch.randn(5, 9, dtype=torch.float64)
    q = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64)).Q
    r0 = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64)).Q
    for kind in ("sign", "sinkhorn"):
        d, r1 = aro_rotation_step(m, r0, kind)
        d2, r2 = aro_rotation_step(q @ m, q @ r0, kind)
        torch.testing.assert_close(r2, q @ r1)
        if (
            kind == "sinkhorn"
        ):  # sign() is discontinuous: a ~1e-16 entry may flip, so compare the smooth f only
            torch.testing.assert_close(d2, q @ d)


def test_aro_bad_kind_and_shape() -> None:
    with pytest.raises(ValueError, match="base projection"):
        aro_base_projection(torch.randn(3, 3), "adam")
    with pytest.raises(ValueError, match="rotation"):
        aro_rotation_step(torch.randn(3, 5), torch.eye(5))


def _sinkhorn(x: torch.Tensor, iters: int = 5, eps: float = 1e-8) -> torch.Tensor:
    r, n = x.shape
    for _ in range(iters):
        x = x * (math.sqrt(n) / (x.norm(dim=1, keepdim=True) + eps))
        x = x * (math.sqrt(r) / (x.norm(dim=0, keepdim=True) + eps))
    return x


def _aro_reference(
    w0: torch.Tensor, grads: list[torch.Tensor], lr: float, mu: float, wd: float
) -> torch.Tensor:
    """optim.md §9.2 with the Sinkhorn base f (SinkGD: 5 rounds of row ℓ₂ → sqrt(n), column ℓ₂ → sqrt(m)):
    M ← βM + (1−β)G; R_t = QR(M·f(R_{t−1}ᵀM)ᵀ).Q (R ∈ O(m), diag(R) > 0); ΔW = R_t f(R_tᵀ M);
    W ← W(1 − ηλ) − ηΔW. Plain float64, rotation on the left (m ≤ n here). (The sign base is not used: with it
    R_tᵀM can have exact structural zeros, where sign() is decided by rounding.)"""
    m_, n_ = w0.shape
    rot = torch.eye(m_, dtype=torch.float64)
    m = torch.zeros_like(w0)
    w = w0.clone()
    for g in grads:
        m = mu * m + (1 - mu) * g
        q, r = torch.linalg.qr(m @ _sinkhorn(rot.T @ m).T)
        rot = q * torch.sign(torch.diagonal(r))[None, :]
        delta = rot @ _sinkhorn(rot.T @ m)
        w = w * (1 - lr * wd) - lr * delta
    return w


@pytest.mark.parametrize("shape", [(4, 9), (6, 6), (3, 7)])
def test_aro_matches_the_section_9_2_equations(shape: tuple[int, int]) -> None:
    from orthokit.optim.aro import ARO

    torch.manual_seed(0)
    w0 = torch.randn(shape, dtype=torch.float64)
    grads = [torch.randn(shape, dtype=torch.float64) + 0.3 for _ in range(10)]
    w = torch.nn.Parameter(w0.clone())
    opt = ARO([w], lr=0.01, momentum=0.8, weight_decay=0.1, base="sinkhorn")
    for g in grads:
        w.grad = g.clone()
        opt.step()
    torch.testing.assert_close(w.detach(), _aro_reference(w0, grads, 0.01, 0.8, 0.1), rtol=1e-6, atol=1e-9)


def test_aro_tall_matrix_rotates_the_smaller_side() -> None:
    """Documented deviation: a tall W (m > n) is handled as Wᵀ (rotation in O(n) instead of O(m))."""
    from orthokit.optim.aro import ARO

    torch.manual_seed(1)
    w0 = torch.randn(9, 4, dtype=torch.float64)
    grads = [torch.randn(9, 4, dtype=torch.float64) for _ in range(10)]
    w = torch.nn.Parameter(w0.clone())
    opt = ARO([w], lr=0.01, momentum=0.8, weight_decay=0.1, base="sinkhorn")
    for g in grads:
        w.grad = g.clone()
        opt.step()
    ref = _aro_reference(w0.T, [g.T for g in grads], 0.01, 0.8, 0.1).T
    torch.testing.assert_close(w.detach(), ref, rtol=1e-6, atol=1e-9)


def test_optimizers_reject_bad_hyperparameters() -> None:
    from orthokit.optim.aro import ARO
    from orthokit.optim.fismo import FISMO

    p = [torch.nn.Parameter(torch.randn(4, 3))]
    with pytest.raises(ValueError, match="damping"):
        FISMO(p, damping=-1.0)
    with pytest.raises(ValueError, match="fisher_beta"):
        FISMO(p, fisher_beta=1.5)
    with pytest.raises(ValueError, match="base"):
        ARO(p, base="adam")
