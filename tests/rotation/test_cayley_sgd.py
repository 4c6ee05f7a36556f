"""CayleySGD (SpinQuant's SGDG): one step vs the float64 closed-form Cayley retraction, orthogonality over 200
steps, convergence to the SVD optimum of a Procrustes problem, a mutant without the skew projection."""

from __future__ import annotations

import pytest
import torch

import orthokit.rotation.cayley_sgd as cs
from orthokit.rotation.cayley_sgd import CayleySGD

F64 = torch.float64


def _orth(n: int, seed: int, dtype: torch.dtype = F64) -> torch.Tensor:
    q = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=F64))[0]
    if torch.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q.to(dtype)


def _procrustes(n: int = 16, m: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """min_R ‖A R − B‖², R ∈ SO(n): closed form R* = U Vᵀ of svd(Aᵀ B) (det +1 here)."""
    g = torch.Generator().manual_seed(1)
    A = torch.randn(m, n, generator=g, dtype=F64)
    B = A @ _orth(n, 2) + 0.1 * torch.randn(m, n, generator=g, dtype=F64)
    U, _, Vh = torch.linalg.svd(A.T @ B)
    r_star = U @ Vh
    assert torch.linalg.det(r_star) > 0  # reachable from I along SO(n)
    return A, B, r_star


def _run(opt_cls: type, lr: float, steps: int = 200, **kw: object) -> torch.Tensor:
    A, B, _ = _procrustes()
    R = torch.nn.Parameter(torch.eye(A.shape[1]))
    opt = opt_cls([R], lr=lr, **kw)
    Af, Bf = A.float(), B.float()
    for _ in range(steps):
        opt.zero_grad()
        loss = (Af @ R - Bf).pow(2).sum() / A.shape[0]
        loss.backward()
        opt.step()
    return R.detach().double()


def _orth_err(R: torch.Tensor) -> float:
    return float((R @ R.T - torch.eye(R.shape[0], dtype=R.dtype)).abs().max())


@pytest.mark.parametrize("lr", [0.05, 1.5])  # 1.5: the step is capped at 1/‖W‖₁ (SpinQuant's regime)
def test_one_step_matches_closed_form_cayley(lr: float) -> None:
    n = 12
    R0 = _orth(n, 0)
    grad = torch.randn(n, n, generator=torch.Generator().manual_seed(3), dtype=F64)
    p = torch.nn.Parameter(R0.clone())
    p.grad = grad.clone()
    CayleySGD([p], lr=lr).step()
    # independent float64 reference: X = Pᵀ, M = −∇ᵀ, W = Ŵ − Ŵᵀ, Ŵ = M Xᵀ − ½ X Xᵀ M Xᵀ
    X, M = (R0 / (R0.norm(dim=1, keepdim=True) + 1e-8)).T, -grad.T  # SpinQuant's unit-row normalization
    w_hat = M @ X.T - 0.5 * X @ X.T @ M @ X.T
    W = w_hat - w_hat.T
    alpha = min(lr, 1.0 / (float(W.abs().sum(0).max()) + 1e-8))
    eye = torch.eye(n, dtype=F64)
    y_star = torch.linalg.solve(eye - alpha / 2 * W, (eye + alpha / 2 * W) @ X)
    assert (
        _orth_err(y_star.T) < 1e-7
    )  # the retraction keeps XᵀX (here 2e-8 off I from the 1e-8 in the row norm)
    # truncation bound after 5 fixed-point iterations: ‖Y5 − Y*‖₂ ≤ (α‖W‖₂/2)^5 ‖Y0 − Y*‖₂, with α‖W‖₂/2 ≤ 1/2
    rho = alpha * float(torch.linalg.matrix_norm(W, 2)) / 2
    assert rho <= 0.5 + 1e-12
    bound = rho**5 * float(torch.linalg.matrix_norm(X + alpha * M - y_star, 2))
    err = float(torch.linalg.matrix_norm(p.detach().T - y_star, 2))
    assert err <= bound * (1 + 1e-9) + 1e-12
    assert float(torch.linalg.matrix_norm(p.detach().T - X, 2)) > 10 * bound  # it did move, beyond the bound
    # and with many iterations it converges to the retraction itself
    q = torch.nn.Parameter(R0.clone())
    q.grad = grad.clone()
    CayleySGD([q], lr=lr, iterations=60).step()
    assert float((q.detach().T - y_star).abs().max()) < 1e-12


def test_stays_orthogonal_and_reaches_svd_optimum() -> None:
    A, B, r_star = _procrustes()
    R = _run(CayleySGD, lr=0.3)
    assert _orth_err(R) < 1e-5  # fp32 iterates, 200 steps
    assert float((R - r_star).abs().max()) < 1e-4
    f = float((A @ R - B).pow(2).sum())
    f_star = float((A @ r_star - B).pow(2).sum())
    assert f <= f_star * (1 + 1e-6)


def test_spinquant_lr_with_cosine_schedule_converges() -> None:
    A, B, r_star = _procrustes()
    R = torch.nn.Parameter(torch.eye(A.shape[1]))
    opt = CayleySGD([R], lr=1.5)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 200)
    for _ in range(200):
        opt.zero_grad()
        ((A.float() @ R - B.float()).pow(2).sum() / A.shape[0]).backward()
        opt.step()
        sched.step()
    Rd = R.detach().double()
    # lr 1.5 caps every step at α = 1/‖W‖₁, where the 5 fixed-point iterations leave a small orthogonality drift
    assert _orth_err(Rd) < 1e-3
    assert float((Rd - r_star).abs().max()) < 1e-3


def test_mutant_without_skew_projection_breaks_orthogonality(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_skew(M: torch.Tensor, X: torch.Tensor) -> torch.Tensor:  # plain (Euclidean) direction M Xᵀ
        return M @ X.transpose(-1, -2)

    monkeypatch.setattr(cs, "cayley_generator", no_skew)
    R = _run(CayleySGD, lr=0.3, qr_every=None)
    assert not _orth_err(R) < 1e-5  # the orthogonality check above catches it


def test_momentum_and_qr_are_deterministic() -> None:
    a = _run(CayleySGD, lr=0.3, steps=120, momentum=0.9, qr_every=50)
    b = _run(CayleySGD, lr=0.3, steps=120, momentum=0.9, qr_every=50)
    assert torch.equal(a, b)
    assert _orth_err(a) < 1e-5


def test_qr_reorthonormalize_is_sign_fixed_qr() -> None:
    X = torch.randn(10, 4, generator=torch.Generator().manual_seed(5), dtype=F64)
    Q = cs.qr_reorthonormalize(X)
    assert torch.allclose(Q.T @ Q, torch.eye(4, dtype=F64), atol=1e-12)
    R = Q.T @ X  # upper triangular with positive diagonal
    assert torch.allclose(torch.tril(R, -1), torch.zeros_like(R), atol=1e-12)
    assert bool((torch.diagonal(R) > 0).all())


def test_bad_inputs_raise_and_failed_step_leaves_state() -> None:
    p = torch.nn.Parameter(torch.eye(4))
    with pytest.raises(ValueError, match="lr"):
        CayleySGD([p], lr=0.0)
    with pytest.raises(ValueError, match="iterations"):
        CayleySGD([p], lr=0.1, iterations=0)
    with pytest.raises(ValueError, match="qr_every"):
        CayleySGD([p], lr=0.1, qr_every=0)
    with pytest.raises(ValueError, match="rows <= cols"):
        CayleySGD([torch.nn.Parameter(torch.zeros(5, 3))], lr=0.1)
    opt = CayleySGD([p], lr=0.1)
    p.grad = torch.full((4, 4), float("nan"))
    before = p.detach().clone()
    with pytest.raises(ValueError, match="non-finite"):
        opt.step()
    assert torch.equal(p.detach(), before) and len(opt.state) == 0
