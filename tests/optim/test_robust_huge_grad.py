"""Huge finite gradients (issue 9 item 5): one fp32 gradient of 1e20 entries must not corrupt NAMO, NAMO-D,
FISMO, ARO, AuON or Hybrid-AuON; the next normal steps behave normally; a step that cannot be computed raises a
clear error and leaves parameters and state exactly as before."""

from __future__ import annotations

import copy

import pytest
import torch

from orthokit.optim import ARO, FISMO, NAMO, NAMOD, AuON, HybridAuON
from orthokit.optim._normalizers import StepComputationError

CASES = {
    "namo": (NAMO, {}),
    "namo_d": (NAMOD, {}),
    "fismo": (FISMO, {}),
    "aro": (ARO, {}),
    "auon": (AuON, {}),
    "auon_paper_form": (AuON, {"normalize": True, "gamma": 1.0, "scale": "keller"}),
    "hybrid_auon": (HybridAuON, {}),
}


def _finite_state(opt: torch.optim.Optimizer, w: torch.Tensor) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in opt.state[w].values() if torch.is_tensor(v))


def _snapshot(opt: torch.optim.Optimizer, w: torch.Tensor) -> tuple[torch.Tensor, dict]:
    return w.detach().clone(), copy.deepcopy(opt.state_dict())


def _same(a: tuple[torch.Tensor, dict], b: tuple[torch.Tensor, dict]) -> bool:
    if not torch.equal(a[0], b[0]):
        return False
    sa, sb = a[1]["state"], b[1]["state"]
    return sa.keys() == sb.keys() and all(
        sa[i].keys() == sb[i].keys() and all(torch.equal(sa[i][k], sb[i][k]) for k in sa[i]) for i in sa
    )


@pytest.mark.parametrize("name", list(CASES))
def test_one_huge_gradient_then_normal_steps(name: str) -> None:
    cls, kw = CASES[name]
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(12, 8))
    opt = cls([w], lr=0.01, **kw)
    for _ in range(3):
        w.grad = torch.randn(12, 8) * 0.1
        opt.step()
    before = w.detach().clone()
    w.grad = torch.randn(12, 8) * 1e20  # finite in fp32, ‖G‖² ≈ 1e42 is not
    opt.step()
    assert bool(torch.isfinite(w).all()) and _finite_state(opt, w)
    assert float((w.detach() - before).abs().max()) > 0  # no zero update
    for _ in range(5):
        before = w.detach().clone()
        w.grad = torch.randn(12, 8) * 0.1
        opt.step()
        assert bool(torch.isfinite(w).all()) and _finite_state(opt, w)
        assert float((w.detach() - before).abs().max()) > 0  # no stall


@pytest.mark.parametrize("name", ["namo", "namo_d", "fismo", "aro", "auon_paper_form", "hybrid_auon"])
def test_huge_gradient_gives_the_same_direction_as_a_normal_one(name: str) -> None:
    """On a fresh optimizer these rules are invariant to the gradient's scale: 1e20·G moves W like G."""
    cls, kw = CASES[name]
    torch.manual_seed(1)
    w0 = torch.randn(10, 6)
    g = torch.randn(10, 6)
    out = []
    for c in (1.0, 1e20):
        w = torch.nn.Parameter(w0.clone())
        opt = cls([w], lr=0.01, **kw)
        w.grad = g * c
        opt.step()
        out.append(w.detach() - w0)
    torch.testing.assert_close(out[1], out[0], rtol=1e-4, atol=1e-6)


def test_failed_fismo_factorization_leaves_everything_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    w = torch.nn.Parameter(torch.randn(6, 4))
    opt = FISMO([w], lr=0.02)
    for _ in range(2):
        w.grad = torch.randn(6, 4)
        opt.step()
    snap = _snapshot(opt, w)

    def broken(*a: object, **k: object) -> None:
        raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")

    monkeypatch.setattr(torch.linalg, "eigh", broken)
    w.grad = torch.randn(6, 4)
    with pytest.raises(StepComputationError, match="no parameter or state was modified"):
        opt.step()
    assert _same(snap, _snapshot(opt, w))
    monkeypatch.undo()
    opt.step()  # and the optimizer still works afterwards
    assert bool(torch.isfinite(w).all()) and not torch.equal(w.detach(), snap[0])


@pytest.mark.parametrize("name", ["namo", "namo_d"])
def test_nonfinite_namo_step_leaves_everything_untouched(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import orthokit.optim.namo as namo_mod

    cls, kw = CASES[name]
    w = torch.nn.Parameter(torch.randn(6, 4))
    opt = cls([w], lr=0.02, weight_decay=0.1, cap=False)
    w.grad = torch.randn(6, 4)
    opt.step()
    snap = _snapshot(opt, w)
    monkeypatch.setattr(namo_mod, "namo_bias_correction", lambda *a: float("inf"))
    w.grad = torch.randn(6, 4)
    with pytest.raises(StepComputationError, match="no parameter or state was modified"):
        opt.step()
    assert _same(snap, _snapshot(opt, w))


def test_nonfinite_aro_rotation_leaves_everything_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    import orthokit.optim.aro as aro_mod

    w = torch.nn.Parameter(torch.randn(6, 4))
    opt = ARO([w], lr=0.01)
    w.grad = torch.randn(6, 4)
    opt.step()
    snap = _snapshot(opt, w)
    monkeypatch.setattr(aro_mod, "_qr_positive", lambda a: torch.full_like(a, float("nan")))
    w.grad = torch.randn(6, 4)
    with pytest.raises(StepComputationError):
        opt.step()
    assert _same(snap, _snapshot(opt, w))


@pytest.mark.parametrize("name", ["fismo", "namo", "namo_d", "aro", "auon", "hybrid_auon"])
def test_step_after_a_failed_step_is_normal(name: str) -> None:
    """A step that fails before its commit stage leaves nothing staged for the next step (chains are cached)."""
    from orthokit.optim import create_optimizer

    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(12, 16))
    opt = create_optimizer(name, [w])
    w.grad = torch.randn(12, 16)
    opt.step()
    w.grad = torch.randn(12, 16).sign() * 3e38
    try:
        opt.step()
    except (ValueError, FloatingPointError):
        pass
    for _ in range(2):
        w.grad = torch.randn(12, 16)
        opt.step()  # must not raise
    assert torch.isfinite(w).all()
