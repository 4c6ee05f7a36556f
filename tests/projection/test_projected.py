"""Projected: the applied update of every wrapped optimizer avoids the protected subspace; optimizer surface."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import nn

from orthokit.projection import Projected, SubspaceMemory


def _optimizers() -> list[tuple[str, Callable[..., torch.optim.Optimizer]]]:
    opts: list[tuple[str, Callable[..., torch.optim.Optimizer]]] = [
        ("sgd", lambda ps: torch.optim.SGD(ps, lr=0.1)),
        ("sgd_momentum_wd", lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.05)),
        ("adamw_wd", lambda ps: torch.optim.AdamW(ps, lr=0.05, weight_decay=0.5)),
        ("adam_amsgrad", lambda ps: torch.optim.Adam(ps, lr=0.05, amsgrad=True)),
    ]
    try:  # orthokit's Muon, when the optim package is present in this checkout
        from orthokit.optim import Muon

        # Muon orthogonalises 2-D parameters only: the protected bias is then not optimized at all
        opts.append(("muon", lambda ps: Muon([p for p in ps if p.ndim == 2], lr=0.05, weight_decay=0.1)))
    except Exception:  # noqa: BLE001 - optional dependency inside the repo
        pass
    return opts


def _model() -> nn.Sequential:
    return nn.Sequential(nn.Linear(16, 24), nn.Tanh(), nn.Linear(24, 8))


def _old_inputs(k: int = 5, n: int = 200) -> torch.Tensor:
    basis = torch.linalg.qr(torch.randn(16, k))[0]
    return torch.randn(n, k) @ basis.T


def _memory(model: nn.Module, x_old: torch.Tensor) -> SubspaceMemory:
    mem = SubspaceMemory(model, layers="0")
    mem.collect_activations(model, [x_old], threshold=1.0 - 1e-7, criterion="minimal")
    return mem


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int = 4) -> None:
    for _ in range(steps):
        x = torch.randn(32, 16)
        loss = (model(x) - 1.0).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("name,make", _optimizers(), ids=[n for n, _ in _optimizers()])
def test_applied_update_orthogonal_for_every_optimizer(name: str, make: Callable) -> None:
    model = _model()
    x_old = _old_inputs()
    mem = _memory(model, x_old)
    assert mem.basis("0").shape[1] == 6  # 5 input directions + the bias coordinate
    with torch.no_grad():
        h0 = model[0](x_old).clone()
        w0 = model[0].weight.clone()
        w2 = model[2].weight.clone()
    opt = Projected(make(model.parameters()), mem)
    _train(model, opt)
    with torch.no_grad():
        h1 = model[0](x_old)
    rel = float((h1 - h0).norm() / h0.norm())
    assert rel < 1e-5, f"{name}: protected outputs changed by {rel:.2e}"
    # the optimizer did real work: the protected weight moved (off the subspace) and the free layer moved
    assert float((model[0].weight - w0).detach().norm()) > 1e-3
    assert float((model[2].weight - w2).detach().norm()) > 1e-3


def test_gradient_projection_is_not_enough_for_adamw() -> None:
    """Documents why where='update' is the default: projecting gradients before AdamW leaks."""
    model = _model()
    x_old = _old_inputs()
    mem = _memory(model, x_old)
    with torch.no_grad():
        h0 = model[0](x_old).clone()
    opt = Projected(torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.5), mem, where="gradient")
    _train(model, opt)
    with torch.no_grad():
        rel = float((model[0](x_old) - h0).norm() / h0.norm())
    assert rel > 1e-3


def test_gradient_and_update_projection_agree_for_plain_sgd() -> None:
    model_a = _model()
    model_b = copy.deepcopy(model_a)
    x_old = _old_inputs()
    mem_a, mem_b = _memory(model_a, x_old), _memory(model_b, x_old)
    opt_a = Projected(torch.optim.SGD(model_a.parameters(), lr=0.1), mem_a, where="update")
    opt_b = Projected(torch.optim.SGD(model_b.parameters(), lr=0.1), mem_b, where="gradient")
    torch.manual_seed(5)
    _train(model_a, opt_a)
    torch.manual_seed(5)
    _train(model_b, opt_b)
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        torch.testing.assert_close(pa, pb, atol=1e-5, rtol=1e-5)


def test_empty_memory_is_bit_identical_noop() -> None:
    model_a = _model()
    model_b = copy.deepcopy(model_a)
    mem = SubspaceMemory(model_a)
    assert mem.is_empty
    opt_a = Projected(torch.optim.AdamW(model_a.parameters(), lr=0.01, weight_decay=0.1), mem)
    opt_b = torch.optim.AdamW(model_b.parameters(), lr=0.01, weight_decay=0.1)
    torch.manual_seed(7)
    _train(model_a, opt_a)
    torch.manual_seed(7)
    _train(model_b, opt_b)
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(pa, pb)


def test_scaled_mode_update() -> None:
    model = _model()
    x_old = _old_inputs()
    mem = SubspaceMemory(model, layers="0")
    mem.collect_activations(model, [x_old], threshold=0.999)
    w0 = torch.cat([model[0].weight, model[0].bias[:, None]], 1).detach().clone()
    opt = Projected(torch.optim.SGD(model.parameters(), lr=0.1), mem, mode="scaled")
    x = torch.randn(32, 16)
    loss = model(x).pow(2).mean()
    loss.backward()
    g = torch.cat([model[0].weight.grad, model[0].bias.grad[:, None]], 1).clone()
    opt.step()
    w1 = torch.cat([model[0].weight, model[0].bias[:, None]], 1).detach()
    m, lam = mem.basis("0"), mem.importance("0")
    expected = w0 - 0.1 * (g - g @ m @ torch.diag(lam) @ m.T)
    torch.testing.assert_close(w1, expected, atol=1e-6, rtol=1e-5)


def test_gradient_accumulation() -> None:
    """Two accumulated micro-batches == one batch of both (projection is linear and applied once per step)."""
    model_a = _model()
    model_b = copy.deepcopy(model_a)
    x_old = _old_inputs()
    opt_a = Projected(torch.optim.AdamW(model_a.parameters(), lr=0.05), _memory(model_a, x_old))
    opt_b = Projected(torch.optim.AdamW(model_b.parameters(), lr=0.05), _memory(model_b, x_old))
    with torch.no_grad():
        h0 = model_a[0](x_old).clone()
    for _ in range(3):
        x = torch.randn(32, 16)
        for chunk in x.split(16):
            (model_a(chunk).pow(2).mean() / 2).backward()
        opt_a.step()
        opt_a.zero_grad()
        model_b(x).pow(2).mean().backward()
        opt_b.step()
        opt_b.zero_grad()
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        torch.testing.assert_close(pa, pb, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        assert float((model_a[0](x_old) - h0).norm() / h0.norm()) < 1e-5


def test_non_finite_gradient_raises_and_changes_nothing() -> None:
    model = _model()
    mem = _memory(model, _old_inputs())
    opt = Projected(torch.optim.AdamW(model.parameters(), lr=0.05), mem)
    model(torch.randn(4, 16)).sum().backward()
    model[2].weight.grad[0, 0] = float("nan")
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"non-finite gradient .* '2.weight'"):
        opt.step()
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b)
    assert len(opt.state) == 0
    # huge but finite gradients overflow the fast 2-norm check; they must not be reported as non-finite
    model[2].weight.grad.fill_(1e30)
    opt.step()
    assert bool(torch.isfinite(model[2].weight).all())


def test_optimizer_surface_state_dict_and_scheduler() -> None:
    model = _model()
    x_old = _old_inputs()
    mem = _memory(model, x_old)
    inner = torch.optim.AdamW(model.parameters(), lr=0.1)
    opt = Projected(inner, mem)
    assert opt.param_groups is inner.param_groups and isinstance(opt, torch.optim.Optimizer)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    _train(model, opt, steps=2)
    sched.step()
    assert inner.param_groups[0]["lr"] == pytest.approx(0.05)
    sd = copy.deepcopy(opt.state_dict())  # torch optimizers return live state tensors
    # fresh copy resumes identically
    model2 = copy.deepcopy(model)
    mem2 = SubspaceMemory(model2, layers="0")
    opt2 = Projected(torch.optim.AdamW(model2.parameters(), lr=0.1), mem2)
    opt2.load_state_dict(sd)
    torch.testing.assert_close(mem2.basis("0"), mem.basis("0"), atol=0, rtol=0)
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.05)
    torch.manual_seed(9)
    _train(model, opt, steps=2)
    torch.manual_seed(9)
    _train(model2, opt2, steps=2)
    for pa, pb in zip(model.parameters(), model2.parameters()):
        assert torch.equal(pa, pb)
    # zero_grad and step pre-hooks behave like a torch optimizer
    calls: list[int] = []
    opt.register_step_pre_hook(lambda *_: calls.append(1))
    model(torch.randn(2, 16)).sum().backward()
    opt.step()
    opt.zero_grad()
    assert calls == [1] and all(p.grad is None for p in model.parameters())


def test_closure_and_bias_freeze() -> None:
    model = _model()
    x_old = _old_inputs()
    mem = SubspaceMemory(model, layers="0", bias="freeze")
    mem.collect_activations(model, [x_old], threshold=1.0 - 1e-7, criterion="minimal")
    b0 = model[0].bias.detach().clone()
    with torch.no_grad():
        h0 = model[0](x_old).clone()
    opt = Projected(torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1), mem)
    x = torch.randn(8, 16)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor)
    assert torch.equal(model[0].bias, b0)
    with torch.no_grad():
        assert float((model[0](x_old) - h0).norm() / h0.norm()) < 1e-5


def test_constructor_errors() -> None:
    model = _model()
    mem = SubspaceMemory(model)
    inner = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="Optimizer"):
        Projected(object(), mem)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mode"):
        Projected(inner, mem, mode="soft")
    with pytest.raises(ValueError, match="where"):
        Projected(inner, mem, where="params")
    with pytest.raises(TypeError, match="already wrapped"):
        Projected(Projected(inner, mem), mem)


def test_memory_of_another_model_is_an_error() -> None:
    model, other = _model(), _model()
    mem = _memory(model, _old_inputs())
    opt = Projected(torch.optim.SGD(other.parameters(), lr=0.1), mem)
    other(torch.randn(4, 16)).sum().backward()
    before = [p.detach().clone() for p in other.parameters()]
    with pytest.raises(ValueError, match="different models"):
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(other.parameters(), before))
