"""Dion (arXiv:2504.05295): power iteration + QR + error feedback against float64 SVD references."""

from __future__ import annotations

import pytest
import torch

from orthokit.optim.dion import dion_init_q, dion_rank, dion_step


def test_rank_rules() -> None:
    assert dion_rank((3072, 768), 0.25) == 192
    assert dion_rank((768, 768), 1.0) == 768
    assert dion_rank((10, 7), 0.01) == 1
    assert dion_rank((10, 7), 50) == 7
    with pytest.raises(ValueError, match="fraction"):
        dion_rank((10, 7), 1.5)
    with pytest.raises(ValueError, match=">= 1"):
        dion_rank((10, 7), 0)
    with pytest.raises(TypeError, match="rank"):
        dion_rank((10, 7), "8")  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", [(30, 12), (12, 30)])
def test_full_rank_error_feedback_leaves_mu_times_momentum(shape: tuple[int, int]) -> None:
    b = torch.randn(*shape, dtype=torch.float64)
    q = dion_init_q(shape, min(shape), dtype=torch.float64)
    m = b.clone()
    delta, q2 = dion_step(m, q, mu=0.9)
    torch.testing.assert_close(m, 0.9 * b)  # full rank: P Rᵀ = B, so M ← B − 0.1·B
    assert delta.shape == b.shape and q2.shape == q.shape
    assert delta.pow(2).sum().item() == pytest.approx(min(shape), rel=1e-6)  # ‖P Q'ᵀ‖_F² = r


@pytest.mark.parametrize("shape", [(40, 24), (24, 40)])
def test_power_iteration_converges_to_truncated_polar_factor(shape: tuple[int, int]) -> None:
    r = 5
    u, _, vh = torch.linalg.svd(torch.randn(*shape, dtype=torch.float64), full_matrices=False)
    s = torch.tensor([16.0, 8, 4, 2, 1] + [0.1] * (min(shape) - 5), dtype=torch.float64)
    b = u @ torch.diag(s) @ vh
    q = dion_init_q(shape, r, seed=3, dtype=torch.float64)
    for _ in range(40):
        delta, q = dion_step(b.clone(), q, mu=0.95)
    target = u[:, :r] @ vh[:r]
    torch.testing.assert_close(delta, target, rtol=1e-6, atol=1e-6)


def test_low_rank_error_feedback_keeps_uncaptured_residual() -> None:
    b = torch.randn(20, 16, dtype=torch.float64)
    q = dion_init_q(b.shape, 4, dtype=torch.float64)
    m = b.clone()
    dion_step(m, q, mu=0.95)
    p = torch.linalg.qr(b @ q).Q
    captured = p @ (p.T @ b)
    torch.testing.assert_close(m, b - 0.05 * captured)


def test_batched_equals_per_matrix_and_seeded_init() -> None:
    torch.testing.assert_close(dion_init_q((3, 8, 6), 2, seed=1)[0], dion_init_q((3, 8, 6), 2, seed=1)[0])
    b = torch.randn(3, 8, 6, dtype=torch.float64)
    q = dion_init_q((8, 6), 2, dtype=torch.float64).expand(3, 6, 2).clone()
    d, _ = dion_step(b.clone(), q.clone(), mu=0.9)
    for i in range(3):
        di, _ = dion_step(b[i].clone(), q[i].clone(), mu=0.9)
        torch.testing.assert_close(d[i], di)
    with pytest.raises(ValueError, match="warm start"):
        dion_step(b.clone(), torch.zeros(3, 8, 2, dtype=torch.float64), mu=0.9)
    with pytest.raises(ValueError, match="mu"):
        dion_step(b.clone(), q, mu=1.0)


def test_optimizer_step_equals_manual_float64_and_zero_grad_guard() -> None:
    from orthokit.optim.dion import Dion

    w0 = torch.randn(16, 10, dtype=torch.float64)
    grads = [torch.randn(16, 10, dtype=torch.float64) for _ in range(3)]
    lr, mu, wd = 0.02, 0.9, 0.01
    w = torch.nn.Parameter(w0.clone())
    opt = Dion([w], lr=lr, rank=4, momentum=mu, weight_decay=wd, seed=7)
    m = torch.zeros_like(w0)
    q = dion_init_q((1, 16, 10), 4, seed=7, dtype=torch.float64)
    ref = w0.clone()
    for g in grads:
        w.grad = g.clone()
        opt.step()
        m = m + g
        d, q = dion_step(m.view(1, 16, 10), q, mu)
        ref = ref * (1 - lr * wd) - lr * (16 / 10) ** 0.5 * d[0]
    torch.testing.assert_close(w.detach(), ref, rtol=1e-10, atol=1e-10)
    # a zero momentum gives a zero update and keeps the warm start (no collapse to Q = 0)
    m0 = torch.zeros(12, 6, dtype=torch.float64)
    q0 = dion_init_q(m0.shape, 3, dtype=torch.float64)
    d0, q1 = dion_step(m0, q0, 0.9)
    assert d0.abs().max().item() == 0.0
    torch.testing.assert_close(q1, q0)


def test_optimizer_rejects_bad_hyperparameters() -> None:
    from orthokit.optim.dion import Dion

    p = [torch.nn.Parameter(torch.randn(4, 3))]
    with pytest.raises(ValueError, match="rank"):
        Dion(p, rank=0)
    with pytest.raises(ValueError, match="momentum"):
        Dion(p, momentum=1.0)
    with pytest.raises(ValueError, match="scale"):
        Dion(p, scale="bogus")


# ---- what the update's norm actually is (issue 9 item 4) and robustness to one huge gradient (item 5) -------


def test_update_norms_frobenius_sqrt_r_spectral_between_1_and_sqrt_r() -> None:
    torch.manual_seed(0)
    first, converged = [], []
    for shape, r in [((64, 32), 8), ((64, 32), 32), ((128, 128), 32), ((40, 20), 20), ((32, 80), 12)]:
        b = torch.randn(*shape, dtype=torch.float64)
        q = dion_init_q(shape, r, seed=1, dtype=torch.float64)
        d, q = dion_step(b.clone(), q, mu=0.95)
        s = torch.linalg.svdvals(d)
        assert d.pow(2).sum().item() == pytest.approx(r, rel=1e-6)  # ‖PQ'ᵀ‖_F² = r (unit columns of Q')
        assert 1 - 1e-9 <= s.max().item() <= r**0.5 + 1e-9
        assert int((s > 1e-9).sum()) <= r
        first.append(s.max().item())
        for _ in range(30):
            d, q = dion_step(b.clone(), q, mu=0.95)
        converged.append(torch.linalg.matrix_norm(d, ord=2).item())
    assert max(first) > 1.2  # the old docstring's "spectral norm <= 1" is false on a first step
    assert max(converged) < 1.05  # → 1 as the warm-started power iteration converges


def test_huge_finite_momentum_gives_the_scale_free_update() -> None:
    torch.manual_seed(0)
    b = torch.randn(32, 24)
    q = dion_init_q(b.shape, 12)
    m_ref = b.clone()
    d_ref, q_ref = dion_step(m_ref, q, mu=0.95)
    p = torch.linalg.qr(b.double() @ q.double()).Q
    torch.testing.assert_close(
        m_ref.double(), b.double() - 0.05 * p @ (p.T @ b.double()), rtol=1e-4, atol=1e-5
    )
    for scale in (1e20, 1e-20, 3e37):
        m = b * scale
        d, q2 = dion_step(m, q, mu=0.95)  # before the fix: Gram overflow → P = 0, Q = 0 (Dion stuck forever)
        torch.testing.assert_close(d, d_ref, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(q2, q_ref, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(m / scale, m_ref, rtol=1e-4, atol=1e-5)  # error feedback, same scale as B


def _least_squares_run(spike: bool, rank: float, steps: int = 40) -> float:
    from orthokit.optim.dion import Dion

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 24, generator=g)
    y = x @ torch.randn(24, 16, generator=g)
    w = torch.nn.Parameter(torch.zeros(16, 24))
    opt = Dion([w], lr=0.1, rank=rank)
    for t in range(steps):
        opt.zero_grad()
        (x @ w.T - y).pow(2).mean().backward()
        if spike and t == 3:
            w.grad.mul_(1e20)  # one finite but huge gradient
        opt.step()
    return (x @ w.T - y).pow(2).mean().item()


@pytest.mark.parametrize("rank", [0.5, 1.0])
def test_one_huge_gradient_does_not_stall(rank: float) -> None:
    clean, spiked = _least_squares_run(False, rank), _least_squares_run(True, rank)
    # measured: 7.83 vs 8.14 (rank 0.5), 5.05 vs 6.16 (rank 1.0); before the fix 20.7 and 18.0 (stalled)
    assert spiked < 1.5 * clean


def test_momentum_overflow_leaves_params_and_state_unchanged() -> None:
    from orthokit.optim.dion import Dion

    w = torch.nn.Parameter(torch.randn(12, 8))
    opt = Dion([w], lr=0.01, rank=4, skip_nonfinite=True)
    w.grad = torch.full_like(w, 3e38)
    opt.step()  # finite (3e38 < float32 max) and computable
    assert torch.isfinite(w).all()
    w0 = w.detach().clone()
    st0 = {k: v.clone() for k, v in opt.state[w].items() if torch.is_tensor(v)}
    w.grad = torch.full_like(w, 3e38)  # the momentum 6e38 overflows float32: the step cannot be computed
    with pytest.warns(RuntimeWarning, match="non-finite"):
        opt.step()
    assert torch.equal(w.detach(), w0)
    for k, v in st0.items():
        assert torch.equal(opt.state[w][k], v), k
    opt.skip_nonfinite = False
    with pytest.raises(FloatingPointError, match="non-finite"):
        opt.step()
    assert torch.equal(w.detach(), w0)
    for k, v in st0.items():
        assert torch.equal(opt.state[w][k], v), k
