"""FISMO (arXiv:2601.21750) Kronecker-factored metric and ARO (arXiv:2602.09006) rotated steps."""

from __future__ import annotations

import pytest
import torch

from orthokit.optim.aro import aro_base_projection, aro_rotation_step
from orthokit.optim.fismo import fismo_update_factors, inverse_sqrt_spd


def test_inverse_sqrt_spd_matches_float64() -> None:
    a = torch.randn(7, 7, dtype=torch.float64)
    a = a @ a.T + 0.1 * torch.eye(7, dtype=torch.float64)
    r = inverse_sqrt_spd(a)
    torch.testing.assert_close(r @ a @ r, torch.eye(7, dtype=torch.float64), rtol=1e-9, atol=1e-9)


def test_fismo_factors_reference_and_invariants() -> None:
    g = torch.randn(6, 4, dtype=torch.float64)
    p = torch.eye(6, dtype=torch.float64)
    q = torch.eye(4, dtype=torch.float64)
    gamma, delta = 0.8, 0.1
    pi, qi = fismo_update_factors(g, p, q, gamma=gamma, damping=delta)
    lft = g @ g.T / 4 + delta * torch.eye(6, dtype=torch.float64)
    p_ref = gamma * torch.eye(6, dtype=torch.float64) + (1 - gamma) * lft
    p_ref = 6 * p_ref / p_ref.trace()
    rgt = g.T @ torch.linalg.inv(p_ref) @ g / 6 + delta * torch.eye(4, dtype=torch.float64)
    q_ref = gamma * torch.eye(4, dtype=torch.float64) + (1 - gamma) * rgt
    q_ref = 4 * q_ref / q_ref.trace()
    torch.testing.assert_close(p, p_ref)
    torch.testing.assert_close(q, q_ref)
    torch.testing.assert_close(pi @ pi, torch.linalg.inv(p_ref))
    torch.testing.assert_close(qi @ qi, torch.linalg.inv(q_ref))


def test_fismo_gamma_one_is_muon_metric() -> None:
    p, q = torch.eye(5), torch.eye(3)
    pi, qi = fismo_update_factors(torch.randn(5, 3), p, q, gamma=1.0)
    torch.testing.assert_close(pi, torch.eye(5))
    torch.testing.assert_close(qi, torch.eye(3))
    with pytest.raises(ValueError, match="damping"):
        fismo_update_factors(torch.randn(5, 3), p, q, damping=0.0)
    with pytest.raises(ValueError, match="do not match"):
        fismo_update_factors(torch.randn(3, 5), p, q)


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


def _polar64(x: torch.Tensor) -> torch.Tensor:
    u, _, vh = torch.linalg.svd(x, full_matrices=False)
    return u @ vh


def test_fismo_step_equals_manual_float64() -> None:
    from orthokit.optim.fismo import FISMO

    w0 = torch.randn(8, 5, dtype=torch.float64)
    grads = [torch.randn(8, 5, dtype=torch.float64) for _ in range(3)]
    lr, mu, gam, dmp = 0.05, 0.9, 0.7, 0.2
    w = torch.nn.Parameter(w0.clone())
    opt = FISMO([w], lr=lr, momentum=mu, fisher_beta=gam, damping=dmp, ns_method="svd")
    p, q = torch.eye(8, dtype=torch.float64), torch.eye(5, dtype=torch.float64)
    m, ref = torch.zeros_like(w0), w0.clone()
    for g in grads:
        w.grad = g.clone()
        opt.step()
        pi, qi = fismo_update_factors(g, p, q, gam, dmp)
        m = mu * m + (1 - mu) * (pi @ g @ qi)
        ref = ref - lr * (8 / 5) ** 0.5 * (pi @ _polar64(m) @ qi)
    torch.testing.assert_close(w.detach(), ref, rtol=1e-9, atol=1e-9)


def test_aro_step_equals_manual_float64() -> None:
    from orthokit.optim.aro import ARO

    w0 = torch.randn(9, 6, dtype=torch.float64)
    grads = [torch.randn(9, 6, dtype=torch.float64) for _ in range(3)]
    lr, mu, wd = 0.01, 0.8, 0.1
    w = torch.nn.Parameter(w0.clone())
    opt = ARO([w], lr=lr, momentum=mu, weight_decay=wd, base="sinkhorn")
    rot = torch.eye(6, dtype=torch.float64)
    m, ref = torch.zeros_like(w0), w0.clone()
    for g in grads:
        w.grad = g.clone()
        opt.step()
        m = mu * m + (1 - mu) * g
        d, rot = aro_rotation_step(m, rot, "sinkhorn")
        ref = ref * (1 - lr * wd) - lr * d
    torch.testing.assert_close(w.detach(), ref, rtol=1e-10, atol=1e-10)


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
