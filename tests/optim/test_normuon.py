"""NorMuon: neuron-wise second-moment normalization vs a float64 loop reference (arXiv:2510.05491)."""

from __future__ import annotations

import pytest
import torch

from orthokit.optim.normuon import normuon_normalize, normuon_state_shape


def _polar64(x: torch.Tensor) -> torch.Tensor:
    u, _, vh = torch.linalg.svd(x.double(), full_matrices=False)
    return u @ vh


def _reference(
    o: torch.Tensor, v: torch.Tensor, beta2: float, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    o = o.double()
    m, n = o.shape
    nu = o.pow(2).sum().sqrt()
    v_new = v.clone().double()
    out = torch.empty_like(o)
    for i in range(m):
        v_new[i, 0] = beta2 * v_new[i, 0] + (1 - beta2) * sum(o[i, j] ** 2 for j in range(n)) / n
        out[i] = o[i] / (v_new[i, 0].sqrt() + eps)
    out = out * nu / (out.pow(2).sum().sqrt() + eps)
    return out, v_new


@pytest.mark.parametrize("shape", [(12, 7), (5, 9)])
def test_matches_float64_reference_over_steps(shape: tuple[int, int]) -> None:
    v = torch.zeros(shape[0], 1, dtype=torch.float64)
    v_ref = v.clone()
    for _ in range(3):
        o = _polar64(torch.randn(*shape, dtype=torch.float64))
        out = normuon_normalize(o, v, beta2=0.9, eps=1e-10)
        ref, v_ref = _reference(o, v_ref, 0.9, 1e-10)
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(v, v_ref, rtol=1e-12, atol=1e-14)


def test_frobenius_norm_restored_and_rows_equalized() -> None:
    # a polar factor with very unequal row norms: after one step (v = (1-β)·row mean) all rows have equal norm
    x = torch.randn(16, 64) * torch.linspace(0.1, 3.0, 16)[:, None]
    o = _polar64(x).float()
    o = o * torch.linspace(0.2, 1.0, 16)[:, None]  # unequal rows
    v = torch.zeros(16, 1)
    out = normuon_normalize(o, v, beta2=0.95)
    assert out.norm().item() == pytest.approx(o.norm().item(), rel=1e-5)
    row = out.norm(dim=1)
    assert (row.max() / row.min()).item() == pytest.approx(1.0, abs=1e-4)


def test_axis_longer_uses_columns_for_wide_and_bf16_keeps_dtype() -> None:
    assert normuon_state_shape((8, 32), "longer") == (1, 32)
    assert normuon_state_shape((32, 8), "longer") == (32, 1)
    o = _polar64(torch.randn(8, 32)).to(torch.bfloat16)
    v = torch.zeros(1, 32)
    out = normuon_normalize(o, v, axis="longer")
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(v, 0.05 * o.float().pow(2).mean(0, keepdim=True))
    ref, _ = _reference(o.float().T, torch.zeros(32, 1), 0.95, 1e-10)
    torch.testing.assert_close(out.float(), ref.T.float(), rtol=2e-2, atol=2e-2)


def test_batched_equals_per_matrix() -> None:
    o = _polar64(torch.randn(3, 6, 10))
    v = torch.zeros(3, 6, 1, dtype=torch.float64)
    out = normuon_normalize(o, v)
    for i in range(3):
        vi = torch.zeros(6, 1, dtype=torch.float64)
        torch.testing.assert_close(out[i], normuon_normalize(o[i], vi))
        torch.testing.assert_close(v[i], vi)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="state has shape"):
        normuon_normalize(torch.randn(4, 3), torch.zeros(3, 1))
    with pytest.raises(ValueError, match="axis"):
        normuon_state_shape((4, 3), "col")
    with pytest.raises(ValueError, match="beta2"):
        normuon_normalize(torch.randn(4, 3), torch.zeros(4, 1), beta2=1.0)
    with pytest.raises(ValueError, match="matrices"):
        normuon_normalize(torch.randn(4), torch.zeros(4, 1))


def _step(opt_cls, w0: torch.Tensor, grads: list[torch.Tensor], **kw) -> torch.Tensor:
    w = torch.nn.Parameter(w0.clone())
    opt = opt_cls([w], **kw)
    for g in grads:
        w.grad = g.clone()
        opt.step()
    return w.detach()


def test_optimizer_step_equals_manual_float64() -> None:
    from orthokit.optim.normuon import NorMuon

    w0 = torch.randn(12, 7, dtype=torch.float64)
    g1, g2 = torch.randn(12, 7, dtype=torch.float64), torch.randn(12, 7, dtype=torch.float64)
    lr, mu, wd = 0.05, 0.9, 0.1
    w = _step(NorMuon, w0, [g1, g2], lr=lr, momentum=mu, weight_decay=wd, ns_method="svd", beta2=0.8)
    m, v, ref = torch.zeros_like(w0), torch.zeros(12, 1, dtype=torch.float64), w0.clone()
    for g in (g1, g2):
        m = mu * m + (1 - mu) * g
        o = normuon_normalize(_polar64((1 - mu) * g + mu * m), v, beta2=0.8)
        ref = ref * (1 - lr * wd) - lr * (12 / 7) ** 0.5 * o
    torch.testing.assert_close(w, ref, rtol=1e-10, atol=1e-10)


def test_optimizer_rejects_bad_hyperparameters() -> None:
    from orthokit.optim.normuon import NorMuon

    p = [torch.nn.Parameter(torch.randn(4, 3))]
    with pytest.raises(ValueError, match="beta2"):
        NorMuon(p, beta2=1.5)
    with pytest.raises(ValueError, match="axis"):
        NorMuon(p, axis="col")
    with pytest.raises(ValueError, match="eps"):
        NorMuon(p, eps=0.0)
