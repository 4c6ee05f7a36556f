"""The AdamW fallback for non-matrix parameters (issue 10): every orthokit optimizer takes ``model.parameters()``."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn

from orthokit.optim import OPTIMIZERS, Muon, NorMuon, create_optimizer, hybrid
from orthokit.optim._fallback import DEFAULT_FALLBACK_LR


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 4))


def _roles(opt: torch.optim.Optimizer) -> list[tuple[str, str | None, int]]:
    return [(g["algorithm"], g.get("role"), len(g["params"])) for g in opt.param_groups]


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_every_optimizer_takes_model_parameters(name: str) -> None:
    m = _mlp()
    opt = create_optimizer(name, m.parameters(), **OPTIMIZERS.capabilities(name)["extra_kwargs"])
    assert _roles(opt) == [("ortho", None, 2), ("adamw", "fallback", 4)]
    before = [p.detach().clone() for p in m.parameters()]
    m(torch.randn(5, 6)).square().mean().backward()
    opt.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, m.parameters()))  # every parameter moved


def test_fallback_group_is_adamw_against_torch() -> None:
    """The fallback's update equals torch.optim.AdamW (bias-corrected, decoupled decay) on the 1-D params."""
    torch.manual_seed(1)
    w, b = (
        nn.Parameter(torch.randn(5, 3, dtype=torch.float64)),
        nn.Parameter(torch.randn(5, dtype=torch.float64)),
    )
    ref = nn.Parameter(b.detach().clone())
    opt = Muon(
        [w, b], lr=0.02, weight_decay=0.1, fallback_lr=1e-2, fallback_betas=(0.8, 0.9), fallback_eps=1e-6
    )
    torch_opt = torch.optim.AdamW([ref], lr=1e-2, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.1)
    for _ in range(4):
        g = torch.randn(5, dtype=torch.float64)
        w.grad, b.grad, ref.grad = torch.randn(5, 3, dtype=torch.float64), g.clone(), g.clone()
        opt.step()
        torch_opt.step()
    torch.testing.assert_close(b.detach(), ref.detach(), rtol=1e-12, atol=1e-12)


def test_fallback_lr_rule_and_weight_decay_kept() -> None:
    m = _mlp()
    groups = [
        {"params": [m[0].weight, m[2].weight], "weight_decay": 0.1},
        {"params": [m[0].bias, m[1].weight, m[1].bias, m[2].bias], "weight_decay": 0.0},
    ]
    opt = Muon(copy.copy(groups), lr=0.02)
    # the no-decay group falls back entirely: converted in place, no empty orthogonalized group is left
    assert _roles(opt) == [("ortho", None, 2), ("adamw", "fallback", 4)]
    assert opt.param_groups[1]["lr"] == DEFAULT_FALLBACK_LR and opt.param_groups[1]["weight_decay"] == 0.0
    # RMS-matched scale: the fallback shares the group's lr (Moonlight); explicit options win
    opt = Muon(_mlp().parameters(), lr=2e-3, scale="match_rms_adamw", weight_decay=0.1)
    assert opt.param_groups[1]["lr"] == 2e-3 and opt.param_groups[1]["weight_decay"] == 0.1
    opt = Muon(_mlp().parameters(), fallback_lr=1e-3, fallback_weight_decay=0.0, weight_decay=0.1)
    assert (opt.param_groups[1]["lr"], opt.param_groups[1]["weight_decay"]) == (1e-3, 0.0)


def test_mixed_group_splits_and_names_follow() -> None:
    m = _mlp()
    opt = NorMuon(list(m.named_parameters()), lr=0.02)
    assert _roles(opt) == [("ortho", None, 2), ("adamw", "fallback", 4)]
    assert opt.param_groups[1]["param_names"] == ["0.bias", "1.weight", "1.bias", "2.bias"]
    assert opt.param_name(m[1].weight) == "1.weight"


def test_fallback_error_keeps_the_old_message() -> None:
    with pytest.raises(ValueError, match=r"'param_groups\[0\]\[1\]' has shape \(8,\).*route 1-D parameters"):
        Muon(_mlp().parameters(), fallback="error")
    with pytest.raises(ValueError, match="fallback must be one of"):
        Muon(_mlp().parameters(), fallback="sgd")
    with pytest.raises(ValueError, match="fallback_betas"):
        Muon(_mlp().parameters(), fallback_betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="fallback_lr"):
        Muon(_mlp().parameters(), fallback_lr=-1.0)


def test_empty_matrix_falls_back_and_bad_split_still_raises() -> None:
    e = nn.Parameter(torch.zeros(0, 4))
    opt = Muon([nn.Parameter(torch.randn(4, 4)), e])
    assert _roles(opt) == [("ortho", None, 1), ("adamw", "fallback", 1)]
    with pytest.raises(ValueError, match="cannot be split"):  # a configuration error is not a shape fallback
        Muon([{"params": [nn.Parameter(torch.randn(10, 4)), nn.Parameter(torch.zeros(3))], "split": 3}])


def test_rejected_group_leaves_optimizer_untouched() -> None:
    opt = Muon([nn.Parameter(torch.randn(4, 4))])
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match="cannot be split"):
        opt.add_param_group(
            {"params": [nn.Parameter(torch.randn(10, 4)), nn.Parameter(torch.zeros(3))], "split": 3}
        )
    assert len(opt.param_groups) == 1 and opt.state_dict()["param_groups"] == before["param_groups"]


def test_one_info_line(caplog: pytest.LogCaptureFixture) -> None:
    m = _mlp()
    with caplog.at_level(logging.INFO, logger="orthokit.optim"):
        Muon([{"params": [m[0].weight, m[0].bias]}, {"params": [m[1].weight, m[1].bias, m[2].bias]}])
    lines = [r.getMessage() for r in caplog.records if "fallback" in r.getMessage()]
    assert len(lines) == 1 and "Muon: 4 parameter(s) (28 elements)" in lines[0]


def test_state_dict_round_trip_and_resume_bit_identical() -> None:
    def run(steps: int, resume_from: dict | None = None, model_state: dict | None = None):
        m = _mlp()
        if model_state is not None:
            m.load_state_dict(model_state)
        opt = Muon(m.parameters(), lr=0.02, weight_decay=0.01, ns_dtype=torch.float32)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 3))
        if resume_from is not None:
            opt.load_state_dict(resume_from["opt"])
            sched.load_state_dict(resume_from["sched"])
        g = torch.Generator().manual_seed(7)
        xs = [torch.randn(5, 6, generator=g) for _ in range(4)]
        start = 0 if resume_from is None else resume_from["step"]
        for k in range(start, steps):
            m(xs[k]).square().mean().backward()
            opt.step()
            sched.step()
            opt.zero_grad()
        return m, opt, sched

    m_full, _, _ = run(4)
    m_half, opt_half, sched_half = run(2)
    ckpt = copy.deepcopy({"opt": opt_half.state_dict(), "sched": sched_half.state_dict(), "step": 2})
    assert ckpt["opt"]["param_groups"][1]["role"] == "fallback"
    assert set(ckpt["opt"]["state"][ckpt["opt"]["param_groups"][1]["params"][0]]) == {
        "step",
        "exp_avg",
        "exp_avg_sq",
    }
    m_res, _, _ = run(4, resume_from=ckpt, model_state=copy.deepcopy(m_half.state_dict()))
    for a, b in zip(m_full.parameters(), m_res.parameters()):
        assert torch.equal(a, b)


def test_scheduler_scales_the_fallback_group() -> None:
    opt = Muon(_mlp().parameters(), lr=0.02)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5)
    assert [g["lr"] for g in opt.param_groups] == [0.01, DEFAULT_FALLBACK_LR * 0.5]
    assert [g["initial_lr"] for g in opt.param_groups] == [0.02, DEFAULT_FALLBACK_LR]
    del sched


def test_hybrid_still_refuses_forcing_1d_into_ortho() -> None:
    with pytest.raises(ValueError, match="'1.weight'"):
        hybrid(_mlp(), ortho=[r"^1\.weight$"])


def test_unsafe_ns_schedules_are_refused_with_the_safe_choices() -> None:
    from orthokit.linalg.schedules import scalar_map

    # float64 closed form: CANS sends a normalized σ 0.39 % above 1 far beyond 1.5; cubic5 flips its sign
    assert float(scalar_map("cans", 1 + 2**-8)) > 1e50 and float(scalar_map("cubic5", 1 + 2**-8)) < 0
    assert 0.88 < float(scalar_map("cans", 1.0)) < 1.12  # ... while on the unit interval it looks fine
    for bad in ("cans", "cubic5"):
        with pytest.raises(
            ValueError, match=rf"ns_method='{bad}'.*use one of deepseek_v4, keller, polar_express"
        ):
            Muon([nn.Parameter(torch.randn(4, 4))], ns_method=bad)
    Muon([nn.Parameter(torch.randn(4, 4))], ns_method="quintic")  # the margin does not touch the standards


def test_describe_sees_through_optimizer_wrappers() -> None:
    """Trainer hands back accelerate's AcceleratedOptimizer and projection returns Projected: both keep the real
    optimizer in ``.optimizer``; describe() reports it instead of raising."""
    import torch

    from orthokit.optim import Muon, describe
    from orthokit.projection import Projected, SubspaceMemory

    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Linear(4, 3))
    inner = Muon(model.parameters(), lr=0.02)
    wrapped = Projected(inner, SubspaceMemory(model))
    assert describe(wrapped) == describe(inner)
    with pytest.raises(TypeError, match="got SGD"):
        describe(torch.optim.SGD(model.parameters(), lr=0.1))
