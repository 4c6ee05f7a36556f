"""SGP: scaled projection with importances from the float64 reference formula; limits α → ∞ (GPM)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from orthokit.bench.models import MLP
from orthokit.projection import GPM, PROJECTIONS, SGP, sgp_importance


def _spectrum_inputs(n: int = 200) -> torch.Tensor:
    return torch.randn(n, 16) * torch.logspace(0, -2, 16)


def test_registered() -> None:
    caps = PROJECTIONS.capabilities("sgp")
    assert caps["subspace"] == "activation" and caps["mode"] == "scaled"
    assert PROJECTIONS.get("scaled_gradient_projection") is SGP


def test_first_task_importance_formula_float64() -> None:
    model = MLP([16, 8]).double()
    x = _spectrum_inputs().double()
    sgp = SGP(model, threshold=0.99, scale_coff=5.0, max_samples=None, bias="ignore")
    sgp.after_task([x])
    s = torch.linalg.svdvals(x.T)  # singular values of R = [x_1 … x_N]
    k = sgp.memory.basis("layers.0").shape[1]
    lam_ref = (6.0 * s[:k]) / (5.0 * s[:k] + s[0])
    torch.testing.assert_close(sgp.memory.importance("layers.0").double(), lam_ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(sgp_importance(s[:k], 5.0), lam_ref)


def test_scaled_step_formula_and_partial_protection() -> None:
    model = MLP([16, 8])
    x_old = _spectrum_inputs()
    sgp = SGP(model, threshold=0.99, max_samples=None)
    sgp.after_task([x_old])
    m, lam = sgp.memory.basis("layers.0"), sgp.memory.importance("layers.0")
    assert 0 < float(lam.min()) < 1.0 and float(lam.max()) == pytest.approx(1.0)
    w0 = model.layers[0].weight.detach().clone()
    opt = sgp.wrap(torch.optim.SGD(model.parameters(), lr=0.1))
    x = torch.randn(32, 16)
    model(x).pow(2).mean().backward()
    g = model.layers[0].weight.grad.clone()
    opt.step()
    # bias-free layer: the basis is bias-augmented only when there is a bias
    assert m.shape[0] == 16
    torch.testing.assert_close(
        model.layers[0].weight.detach(), w0 - 0.1 * (g - g @ m @ torch.diag(lam) @ m.T), atol=1e-6, rtol=1e-5
    )
    # component along direction i shrinks by exactly (1 − λ_i)
    dw = (model.layers[0].weight - w0).detach()
    torch.testing.assert_close(dw @ m, -0.1 * (g @ m) * (1 - lam), atol=1e-6, rtol=1e-4)


def test_large_alpha_recovers_gpm() -> None:
    model_a = MLP([16, 12, 4])
    model_b = copy.deepcopy(model_a)
    x_old = _spectrum_inputs()
    sgp = SGP(model_a, threshold=0.97, scale_coff=1e12)
    gpm = GPM(model_b, threshold=0.97, max_samples=125)
    sgp.after_task([x_old])
    gpm.after_task([x_old])
    opt_a = sgp.wrap(torch.optim.AdamW(model_a.parameters(), lr=0.01))
    opt_b = gpm.wrap(torch.optim.AdamW(model_b.parameters(), lr=0.01))
    for _ in range(3):
        x = torch.randn(16, 16)
        for model, opt in ((model_a, opt_a), (model_b, opt_b)):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_incremental_importances_stay_in_unit_interval() -> None:
    model = MLP([16, 12, 4])
    sgp = SGP(model, threshold=lambda t, _: 0.9 + 0.03 * t)
    for _ in range(3):
        sgp.after_task([_spectrum_inputs(60)])
    for name in sgp.memory.layer_names:
        lam = sgp.memory.importance(name)
        assert lam.shape == (sgp.memory.basis(name).shape[1],)
        assert bool((lam >= 0).all()) and bool((lam <= 1).all())
    with pytest.raises(ValueError, match="scale_coff"):
        SGP(model, scale_coff=-1.0)


def test_sgp_model_without_layers_of_kind() -> None:
    with pytest.raises(ValueError, match="no layer of type"):
        SGP(nn.Sequential(nn.ReLU()), layers=nn.Linear)
