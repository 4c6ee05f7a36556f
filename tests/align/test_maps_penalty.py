"""λ-orthogonality penalty: zero on the λ-orthogonal set, the closed form in singular values, gradients."""

from __future__ import annotations

import pytest
import torch

from orthokit.align.lambda_orthogonal import lambda_orthogonality_gap, lambda_orthogonality_penalty


def _sv_reference(W: torch.Tensor, lam: float, norm: str) -> float:
    s = torch.linalg.svdvals(W.double())
    dev = s**2 - 1
    gap = float(dev.abs().max()) if norm == "spectral" else float(dev.pow(2).sum().sqrt())
    return max(0.0, gap - lam) ** 2


@pytest.mark.parametrize("shape", [(5, 5), (3, 7), (8, 4)])
@pytest.mark.parametrize("norm", ["fro", "spectral"])
def test_penalty_matches_singular_value_form(shape: tuple[int, int], norm: str) -> None:
    g = torch.Generator().manual_seed(0)
    W = torch.randn(*shape, generator=g, dtype=torch.float64) / shape[0] ** 0.5
    for lam in (0.0, 0.3, 1.0):
        got = float(lambda_orthogonality_penalty(W, lam, norm=norm))
        assert got == pytest.approx(_sv_reference(W, lam, norm), rel=1e-10, abs=1e-14)


def test_zero_inside_tolerance_and_on_orthogonal() -> None:
    Q = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))[0]
    assert float(lambda_orthogonality_penalty(Q, 0.0)) < 1e-24
    semi = Q[:, :3]  # 6×3 orthonormal columns
    assert float(lambda_orthogonality_penalty(semi, 0.0)) < 1e-24
    assert float(lambda_orthogonality_penalty(semi.T, 0.0)) < 1e-24
    # σ = 1.02 for all: gap = (1.0404 − 1)·√6 ≈ 0.099 < 0.1 → zero, but > 0.09 → positive
    assert float(lambda_orthogonality_penalty(1.02 * Q, 0.1)) == 0.0
    assert float(lambda_orthogonality_penalty(1.02 * Q, 0.09)) > 0.0


def test_gradient_matches_finite_differences() -> None:
    g = torch.Generator().manual_seed(1)
    W = (
        torch.eye(4, dtype=torch.float64) + 0.4 * torch.randn(4, 4, generator=g, dtype=torch.float64)
    ).requires_grad_()
    assert torch.autograd.gradcheck(lambda w: lambda_orthogonality_penalty(w, 0.2), (W,))
    Q = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))[0].requires_grad_()
    lambda_orthogonality_penalty(Q, 0.0).backward()
    assert torch.isfinite(Q.grad).all() and float(Q.grad.abs().max()) < 1e-12


def test_descending_the_penalty_reaches_the_tolerance() -> None:
    W = (1.5 * torch.eye(3, dtype=torch.float64)).requires_grad_()
    for _ in range(300):  # plain gradient descent (torch.optim would import torch._dynamo: seconds)
        (grad,) = torch.autograd.grad(lambda_orthogonality_penalty(W, 0.5), W)
        with torch.no_grad():
            W -= 0.05 * grad
    assert float(lambda_orthogonality_gap(W.detach())) == pytest.approx(0.5, abs=1e-3)


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="lam"):
        lambda_orthogonality_penalty(torch.eye(2), -0.1)
    with pytest.raises(TypeError, match="lam"):
        lambda_orthogonality_penalty(torch.eye(2), None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="W must be a 2-D"):
        lambda_orthogonality_penalty(torch.ones(2, 2, 2), 0.1)
    with pytest.raises(ValueError, match="norm"):
        lambda_orthogonality_penalty(torch.eye(2), 0.1, norm="nuc")
