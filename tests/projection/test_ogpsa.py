"""OGPSA: per-tensor projection off the reference-gradient subspace, refresh schedule, optimiser-correct update."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from orthokit.projection.ogpsa import OGPSA, project_out, reference_gradient_bases, reference_groups


def _loss(m: nn.Module, b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return F.mse_loss(m(b[0]), b[1])


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def _batches(n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(8, 6, generator=g, dtype=torch.float64),
            torch.randn(8, 3, generator=g, dtype=torch.float64),
        )
        for _ in range(n)
    ]


def _ref_grads(model: nn.Module, batches: list, rank: int) -> dict[str, list[torch.Tensor]]:
    out: dict[str, list[torch.Tensor]] = {n: [] for n, _ in model.named_parameters()}
    for grp in reference_groups(len(batches), rank):  # contiguous groups, one per reference dataset
        model.zero_grad()
        sum(_loss(model, batches[i]) for i in grp).backward()
        for n, p in model.named_parameters():
            out[n].append(p.grad.detach().reshape(-1).clone())
    model.zero_grad()
    return out


def test_project_out_matches_float64_projector_and_is_idempotent() -> None:
    g = torch.randn(7, 3, dtype=torch.float64)
    U = torch.linalg.qr(torch.randn(21, 4, dtype=torch.float64)).Q
    ref = ((torch.eye(21, dtype=torch.float64) - U @ U.T) @ g.reshape(-1)).reshape(7, 3)
    out = project_out(g, U)
    assert torch.allclose(out, ref, atol=1e-13)
    assert torch.allclose(project_out(out, U), out, atol=1e-13)
    assert (U.T @ out.reshape(-1)).abs().max() < 1e-13


def test_threshold_mode_removes_only_conflicting_components() -> None:
    U = torch.eye(3, dtype=torch.float64)[:, :2]
    g = torch.tensor([-2.0, 3.0, 5.0], dtype=torch.float64)
    out = project_out(g, U, rule="threshold", scale=0.5)
    assert torch.allclose(out, torch.tensor([0.0, 3.0, 5.0], dtype=torch.float64))
    out = project_out(
        -g * torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64), U, rule="threshold", scale=0.5
    )
    assert torch.allclose(out, torch.tensor([1.0, 1.5, -2.5], dtype=torch.float64))
    with pytest.raises(ValueError, match="rule"):
        project_out(g, U, rule="nope")
    with pytest.raises(ValueError, match="basis must be"):
        project_out(g, torch.eye(4)[:, :1])


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_reference_bases_are_orthonormal_and_span_reference_gradients(rank: int) -> None:
    model, batches = _model(), _batches(6, 0)
    bases = reference_gradient_bases(model, _loss, batches, rank=rank, dtype=torch.float64)
    grads = _ref_grads(model, batches, rank)
    for n, p in model.named_parameters():
        B = bases[n]
        assert B.shape == (p.numel(), rank)
        assert torch.allclose(B.T @ B, torch.eye(rank, dtype=torch.float64), atol=1e-12)
        for v in grads[n]:  # every reference direction lies in the span
            assert (v - B @ (B.T @ v)).norm() < 1e-10 * v.norm()
        assert p.grad is None  # .grad untouched


def test_sgd_step_is_first_order_invariant_for_reference_loss() -> None:
    torch.manual_seed(1)
    model, ref, new = _model(), _batches(2, 1), _batches(1, 2)[0]
    opt = OGPSA(
        torch.optim.SGD(model.parameters(), lr=0.1),
        model,
        loss_fn=_loss,
        reference_batches=ref,
        rank=2,
        refresh_every=0,
    )
    before = [p.detach().clone() for p in model.parameters()]
    _loss(model, new).backward()
    opt.step()
    # compare Δθ with the reference gradients at the *old* point (the ones the bases were built from)
    after = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p, b in zip(model.parameters(), before):
            p.copy_(b)
    grads = _ref_grads(model, ref, 2)
    for (n, _), a, b in zip(model.named_parameters(), after, before):
        d = (a - b).reshape(-1)
        assert d.norm() > 1e-6  # it did move
        for v in grads[n]:
            assert abs(float(v @ d)) < 1e-12 * float(v.norm() * d.norm()) + 1e-15


def test_update_projection_is_exact_for_adamw_while_gradient_projection_is_not() -> None:
    torch.manual_seed(2)
    ref, data = _batches(1, 3), _batches(5, 4)
    cos = {}
    for where in ("gradient", "update"):
        model = _model()
        torch.manual_seed(5)
        opt = OGPSA(
            torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1),
            model,
            loss_fn=_loss,
            reference_batches=ref,
            refresh_every=0,
            where=where,
        )
        worst = 0.0
        for b in data:
            before = [p.detach().clone() for p in model.parameters()]
            opt.zero_grad()
            _loss(model, b).backward()
            opt.step()
            for (n, p), pb in zip(model.named_parameters(), before):
                u = opt.bases[n][:, 0]
                d = (p.detach() - pb).reshape(-1)
                worst = max(worst, abs(float(u @ d)) / float(d.norm()))
        cos[where] = worst
    assert cos["update"] < 1e-12
    assert cos["gradient"] > 1e-3


def test_refresh_schedule_and_state_round_trip() -> None:
    model = _model()
    calls = {"n": 0}

    def counting(m: nn.Module, b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        calls["n"] += 1
        return _loss(m, b)

    opt = OGPSA(
        torch.optim.SGD(model.parameters(), lr=0.01),
        model,
        loss_fn=counting,
        reference_batches=_batches(2, 0),
        refresh_every=3,
    )
    for b in _batches(7, 9):
        opt.zero_grad()
        _loss(model, b).backward()
        opt.step()
    assert opt.refreshes == 3  # steps 0, 3, 6
    assert calls["n"] == 3 * 2
    st = opt.state_dict()
    opt2 = OGPSA(
        torch.optim.SGD(model.parameters(), lr=0.01),
        model,
        loss_fn=_loss,
        reference_batches=_batches(2, 0),
        refresh_every=3,
    )
    opt2.load_state_dict(st)
    assert opt2.steps == 7 and all(torch.equal(opt2.bases[k], v) for k, v in opt.bases.items())
    assert set(st) == {"state", "param_groups", "projection"}
    leaves = st["projection"]
    assert "reference" not in leaves and set(leaves["bases"]) == {n for n, _ in model.named_parameters()}
    assert opt.memory_floats() == sum(p.numel() for p in model.parameters())


def test_errors() -> None:
    model = _model()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    kw = {"loss_fn": _loss, "reference_batches": _batches(1, 0)}
    with pytest.raises(TypeError):
        OGPSA("sgd", model, **kw)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rule"):
        OGPSA(sgd, model, rule="x", **kw)
    with pytest.raises(ValueError, match="where"):
        OGPSA(sgd, model, where="x", **kw)
    with pytest.raises(TypeError, match="project"):
        OGPSA(sgd, model, project="update", **kw)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        OGPSA(sgd, model, _loss, _batches(1, 0))  # type: ignore[misc]
    with pytest.raises(ValueError, match="rank"):
        OGPSA(sgd, model, rank=2, **kw)
    with pytest.raises(ValueError, match="none of model"):
        OGPSA(torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1), model, **kw)
    with pytest.raises(ValueError, match="scalar"):
        reference_gradient_bases(model, lambda m, b: m(b[0]), _batches(1, 0))


def test_wrapper_protocol_scheduler_and_pickle() -> None:
    import pickle

    model = _model()
    opt = OGPSA(
        torch.optim.SGD(model.parameters(), lr=0.1), model, loss_fn=_loss, reference_batches=_batches(2, 0)
    )
    assert isinstance(opt, torch.optim.Optimizer)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    _loss(model, _batches(1, 3)[0]).backward()
    opt.step()
    sched.step()
    assert opt.optimizer.param_groups[0]["lr"] == 0.05
    clone = pickle.loads(pickle.dumps(opt))
    assert clone.steps == 1 and set(clone.bases) == set(opt.bases)
