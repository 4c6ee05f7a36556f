"""GPM end to end: reference-code equivalence of one projected SGD step, schedules, forgetting on permuted digits."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from orthokit.bench.models import MLP
from orthokit.projection import GPM, PROJECTIONS


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    return x, y


def _train(
    model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, epochs: int
) -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=g)
        for idx in perm.split(16):
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()


@torch.no_grad()
def _acc(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(1) == y).float().mean())


def test_registered() -> None:
    assert "gpm" in PROJECTIONS
    caps = PROJECTIONS.capabilities("gpm")
    assert caps["subspace"] == "activation" and caps["guarantee"] == "exact"
    assert PROJECTIONS.get("gradient_projection_memory") is GPM


def test_one_step_equals_reference_train_projected() -> None:
    """GPM's train_projected: grad ← grad − grad·(M Mᵀ) with a dense projector, then plain SGD."""
    model = MLP([20, 30, 5])
    ref = copy.deepcopy(model)
    gpm = GPM(model, threshold=[0.9, 0.95], max_samples=None)
    gpm.after_task([torch.randn(64, 20)])
    feature_mat = [gpm.memory.basis(n) @ gpm.memory.basis(n).T for n in gpm.memory.layer_names]
    opt = gpm.wrap(torch.optim.SGD(model.parameters(), lr=0.05))
    x, y = torch.randn(10, 20), torch.randint(0, 5, (10,))
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    nn.functional.cross_entropy(ref(x), y).backward()
    with torch.no_grad():
        for p, fm in zip([p for p in ref.parameters()], feature_mat):
            p -= 0.05 * (p.grad - p.grad @ fm)
    for a, b in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_threshold_schedule_and_state() -> None:
    model = MLP([20, 30, 5])
    eps_seen: list[float] = []

    def schedule(t: int, name: str) -> float:
        eps = 0.97 + 0.003 * t  # GPM's CIFAR-100 schedule
        eps_seen.append(eps)
        return eps

    gpm = GPM(model, threshold=schedule)
    gpm.after_task([torch.randn(50, 20)])
    gpm.after_task([torch.randn(50, 20)])
    assert eps_seen == pytest.approx([0.97, 0.97, 0.973, 0.973])
    other = GPM(MLP([20, 30, 5]))
    other.load_state_dict(gpm.state_dict())
    assert [s.k for s in other.summary()] == [s.k for s in gpm.summary()]


@pytest.mark.slow
def test_gpm_reduces_forgetting_on_permuted_digits() -> None:
    x, y = _digits()
    g = torch.Generator().manual_seed(1)
    perm = torch.randperm(64, generator=g)
    x2 = x[:, perm]
    tr, te = slice(0, 1400), slice(1400, None)
    torch.manual_seed(0)
    base = MLP([64, 64, 64, 10])
    _train(base, torch.optim.SGD(base.parameters(), lr=0.1), x[tr], y[tr], epochs=3)
    acc1 = _acc(base, x[te], y[te])
    assert acc1 > 0.85

    finetune = copy.deepcopy(base)
    _train(finetune, torch.optim.SGD(finetune.parameters(), lr=0.1), x2[tr], y[tr], epochs=3)

    model = copy.deepcopy(base)
    gpm = GPM(model, threshold=[0.95, 0.99, 0.99], max_samples=300)
    gpm.after_task([x[tr]])
    _train(model, gpm.wrap(torch.optim.SGD(model.parameters(), lr=0.1)), x2[tr], y[tr], epochs=3)

    forget_ft = acc1 - _acc(finetune, x[te], y[te])
    forget_gpm = acc1 - _acc(model, x[te], y[te])
    print(f"acc1={acc1:.3f} forgetting: fine-tune {forget_ft:.3f}, GPM {forget_gpm:.3f}")
    assert forget_gpm < 0.5 * forget_ft, (forget_gpm, forget_ft)
    assert _acc(model, x2[te], y[te]) > 0.6  # still learns the new task


def test_whole_network_outputs_on_memorized_samples_unchanged() -> None:
    """With ε → 1 every layer's old inputs are inside its basis, so (by induction over layers) the network's
    outputs on the old samples stay fixed under any optimizer — here AdamW with weight decay."""
    model = MLP([20, 30, 30, 5])
    x_old = torch.randn(8, 20)
    gpm = GPM(model, threshold=1.0 - 1e-10, criterion="minimal", max_samples=None)
    added = gpm.after_task([x_old])
    assert all(0 < k <= 8 for k in added.values())
    with torch.no_grad():
        y0 = model(x_old).clone()
    opt = gpm.wrap(torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.2))
    w_before = [p.detach().clone() for p in model.parameters()]
    for _ in range(5):
        x, y = torch.randn(16, 20), torch.randint(0, 5, (16,))
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        rel = float((model(x_old) - y0).norm() / y0.norm())
    assert rel < 1e-5
    assert all(float((p.detach() - w).norm()) > 1e-2 for p, w in zip(model.parameters(), w_before))


# ------------------------------------------------------------------ issue 9: threshold means what it says
def _eight_dim_inputs(n: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 8, generator=g) @ torch.randn(8, 16, generator=g)


def _adamw_steps(model: nn.Module, opt: torch.optim.Optimizer, n: int = 10) -> None:
    g = torch.Generator().manual_seed(3)
    for _ in range(n):
        opt.zero_grad()
        model(torch.randn(32, 16, generator=g)).pow(2).sum().backward()
        opt.step()


@pytest.mark.parametrize(("criterion", "k", "max_change"), [("minimal", 8, 1e-5), ("gpm_code", 7, None)])
def test_threshold_keeps_whole_eight_dim_subspace(criterion: str, k: int, max_change: float | None) -> None:
    """Inputs spanning 8 dims at threshold 0.999: the default keeps 8 and 10 AdamW+wd steps leave the outputs on
    them unchanged (< 1e-5 relative); the reference code's first-task rule keeps 7 and the outputs move."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 12, bias=False))
    x = _eight_dim_inputs()
    gpm = GPM(model, threshold=0.999, max_samples=None, criterion=criterion)
    assert gpm.after_task([x]) == {"0": k}
    before = model(x).detach().clone()
    _adamw_steps(model, gpm.wrap(torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)))
    with torch.no_grad():
        change = float((model(x) - before).norm() / before.norm())
    if max_change is not None:
        assert change < max_change
    else:
        assert change > 1e-3  # one remembered direction is left free


def test_default_criterion_is_the_papers_energy_rule() -> None:
    """Independent float64 reference: smallest r with Σ_{i≤r} σ_i²/‖R‖² ≥ ε (GPM Eq. 5), checked on the SVD."""
    x = _eight_dim_inputs().double()
    s2 = torch.linalg.svdvals(x) ** 2
    ratios = torch.cumsum(s2 / s2.sum(), 0)
    for eps in (0.5, 0.9, 0.99):
        expect = int((ratios < eps).sum()) + 1
        model = nn.Sequential(nn.Linear(16, 12, bias=False)).double()
        gpm = GPM(model, threshold=eps, max_samples=None)
        assert gpm.after_task([x])["0"] == expect, eps


def test_rank_one_memory_keeps_its_direction_and_zero_warns() -> None:
    model = nn.Sequential(nn.Linear(16, 12, bias=False))
    one = _eight_dim_inputs(1)
    assert GPM(model, threshold=0.97).after_task([one]) == {"0": 1}
    with pytest.warns(RuntimeWarning, match="0 basis directions"):
        assert GPM(model, threshold=0.97, criterion="gpm_code").after_task([one]) == {"0": 0}


def test_old_criterion_name_is_refused() -> None:
    with pytest.raises(ValueError, match="gpm_code"):
        GPM(nn.Linear(3, 2), criterion="gpm")


def test_replaced_layer_is_followed_or_refused() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))
    x = _eight_dim_inputs()
    gpm = GPM(model, layers=["0"], threshold=0.9999, max_samples=None)
    gpm.after_task([x])
    model[0] = nn.Linear(16, 12)  # same shapes: re-attached, protected from now on
    opt = gpm.wrap(torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1))
    before = model[0](x).detach().clone()
    with pytest.warns(UserWarning, match="replaced"):
        _adamw_steps(model, opt, n=3)
    assert float((model[0](x) - before).norm() / before.norm()) < 1e-5
    model[0] = nn.Linear(16, 10)  # incompatible: refused at the next step, nothing modified
    model[2] = nn.Linear(10, 4)
    opt = gpm.wrap(torch.optim.SGD(model.parameters(), lr=0.1))
    snap = [p.detach().clone() for p in model.parameters()]
    model(x).sum().backward()
    with pytest.raises(ValueError, match="replaced by an incompatible"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), snap))


# ------------------------------------------------------------------ issue 15: 1-D / BatchNorm parameters
def _bn_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(16, 12, bias=False),
        nn.BatchNorm1d(12, track_running_stats=False),
        nn.ReLU(),
        nn.Linear(12, 4),
    )


@pytest.mark.parametrize("where", ["update", "gradient"])
def test_batchnorm_frozen_after_first_task_by_default(where: str) -> None:
    model = _bn_model()
    gpm = GPM(model, threshold=0.99)
    bn = model[1]
    # first task: nothing frozen (BN trains)
    w0 = bn.weight.detach().clone()
    _adamw_steps_bn(model, gpm.wrap(torch.optim.SGD(model.parameters(), lr=0.1), where=where))
    assert not torch.equal(bn.weight, w0)
    gpm.after_task([_eight_dim_inputs()])
    w1, b1 = bn.weight.detach().clone(), bn.bias.detach().clone()
    head = model[3].bias.detach().clone()
    _adamw_steps_bn(model, gpm.wrap(torch.optim.SGD(model.parameters(), lr=0.1), where=where))
    assert torch.equal(bn.weight, w1) and torch.equal(bn.bias, b1)
    assert not torch.equal(model[3].bias, head)  # only normalisation 1-D params are frozen ("norm")


def test_freeze_1d_options() -> None:
    for policy, bn_moves, head_moves in (("none", True, True), ("all", False, False)):
        model = _bn_model()
        gpm = GPM(
            model, layers=["0"], threshold=0.99, freeze_1d=policy
        )  # head unprotected: "all" freezes its bias
        gpm.after_task([_eight_dim_inputs()])
        w, h = model[1].weight.detach().clone(), model[3].bias.detach().clone()
        _adamw_steps_bn(model, gpm.wrap(torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)))
        assert (not torch.equal(model[1].weight, w)) == bn_moves, policy
        assert (not torch.equal(model[3].bias, h)) == head_moves, policy
    with pytest.raises(ValueError, match="freeze_1d"):
        GPM(_bn_model(), freeze_1d="bn")


def _adamw_steps_bn(model: nn.Module, opt: torch.optim.Optimizer, n: int = 3) -> None:
    g = torch.Generator().manual_seed(4)
    for _ in range(n):
        opt.zero_grad()
        x, y = torch.randn(16, 16, generator=g), torch.randint(0, 4, (16,), generator=g)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
