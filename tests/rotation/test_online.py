"""OnlineRotatedLinear: exactness against a float64 closed form, unwrap and state-dict round trips, refusals."""

from __future__ import annotations

import tempfile

import pytest
import torch
from torch import nn

from orthokit.rotation import online as online_mod
from orthokit.rotation.online import OnlineRotatedLinear, online_rotated_linears, unwrap_all, wrap_linear
from orthokit.rotation.registry import ROTATIONS, make_rotation

SIZES = (12, 16, 172)  # Paley order, power of two, block-diagonal Hadamard fallback (128 ⊕ 44)


def _linear(n_in: int, n_out: int = 7, *, seed: int = 0, bias: bool = True) -> nn.Linear:
    torch.manual_seed(seed)
    lin = nn.Linear(n_in, n_out, bias=bias)
    with torch.no_grad():
        lin.weight.normal_()
        if bias:
            lin.bias.normal_()
    return lin


def _reference(lin: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """x Wᵀ + b in float64 (closed form, no rotation)."""
    y = x.double() @ lin.weight.detach().double().T
    return y + lin.bias.detach().double() if lin.bias is not None else y


def _supported(name: str, n: int) -> bool:
    try:
        make_rotation(name, n)
    except ValueError:  # e.g. two_block_hadamard needs a Hadamard order (172 is not one)
        return False
    return True


CASES = [(name, n) for name in ROTATIONS.names() for n in SIZES if _supported(name, n)]


@pytest.mark.parametrize(("name", "n"), CASES)
def test_wrap_is_exact_and_fuses_w_times_q(name: str, n: int) -> None:
    lin = _linear(n)
    w0 = lin.weight.detach().clone()
    rot = make_rotation(name, n, seed=5)
    mod = OnlineRotatedLinear.wrap(lin, rot)
    x = torch.randn(3, 4, n)
    ref = _reference(lin, x)
    err = (mod(x).double() - ref).abs().max() / ref.abs().max()
    assert err < 1e-5, err
    # the inner weight is W·Q computed in float64, then cast once
    expect = (w0.double() @ rot.matrix(torch.float64)).float()
    assert torch.allclose(mod.linear.weight, expect, atol=1e-6, rtol=0)
    assert torch.equal(lin.weight, w0), "wrap must not modify its argument"
    assert mod.linear is not lin and mod.in_features == n and mod.out_features == 7


def test_forward_hook_on_inner_linear_sees_rotated_input() -> None:
    lin = _linear(16)
    rot = make_rotation("haar", 16, seed=2)
    mod = OnlineRotatedLinear.wrap(lin, rot)
    seen: list[torch.Tensor] = []
    mod.linear.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    x = torch.randn(5, 16, dtype=torch.float64).float()
    mod(x)
    assert torch.allclose(seen[0].double(), x.double() @ rot.matrix(), atol=1e-6)


def test_unwrap_round_trip_is_exact_and_leaves_wrapper() -> None:
    lin = _linear(172, bias=False)
    mod = OnlineRotatedLinear.wrap(lin, make_rotation("hadamard", 172, seed=1))
    inner_before = mod.linear.weight.detach().clone()
    back = mod.unwrap()
    assert type(back) is nn.Linear and back.bias is None
    assert torch.allclose(back.weight, lin.weight, atol=2e-6, rtol=0)
    assert torch.equal(mod.linear.weight, inner_before)


def test_low_precision_weight_is_fused_in_float64() -> None:
    lin = _linear(64).to(torch.bfloat16)
    rot = make_rotation("hadamard", 64, seed=0)
    mod = OnlineRotatedLinear.wrap(lin, rot)
    assert mod.linear.weight.dtype == torch.bfloat16
    expect = (lin.weight.double() @ rot.matrix()).to(torch.bfloat16)
    assert torch.equal(mod.linear.weight, expect)


def test_gradients_flow_to_inner_weight_and_input() -> None:
    mod = OnlineRotatedLinear.wrap(_linear(16), make_rotation("hadamard", 16, seed=0))
    x = torch.randn(4, 16, requires_grad=True)
    mod(x).square().sum().backward()
    assert mod.linear.weight.grad is not None and x.grad is not None
    # d/dx of sum((xWᵀ+b)²) is the same as for the unwrapped layer
    lin = mod.unwrap()
    x2 = x.detach().clone().requires_grad_(True)
    lin(x2).square().sum().backward()
    assert torch.allclose(x.grad, x2.grad, atol=1e-4)


def _net(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 16), nn.GELU(), nn.Linear(16, 12), nn.GELU(), nn.Linear(12, 3))


def test_state_dict_round_trip_restores_rotation() -> None:
    net = _net(0)
    x = torch.randn(6, 12)
    wrap_linear(net, "2", make_rotation("hadamard", 16, seed=11))
    wrap_linear(net, "4", make_rotation("haar", 12, seed=12))
    y = net(x)
    sd = net.state_dict()
    assert {"2._extra_state", "4._extra_state", "2.linear.weight"} <= set(sd)
    fresh = _net(1)  # other weights, and other rotations (other seeds, other family)
    wrap_linear(fresh, "2", make_rotation("identity", 16))
    wrap_linear(fresh, "4", make_rotation("hadamard", 12, seed=99))
    assert not torch.allclose(fresh(x), y)
    fresh.load_state_dict(sd)
    assert torch.allclose(fresh(x), y, atol=1e-6)
    assert fresh[2].rotation.name == "hadamard" and fresh[2].rotation.seed == 11
    assert fresh[4].rotation.name == "haar" and fresh[4].rotation.seed == 12
    assert torch.equal(fresh[4].rotation.matrix(), net[4].rotation.matrix())


def test_state_dict_is_tensors_only_and_survives_safetensors() -> None:
    from safetensors.torch import load_file, save_file

    net = _net(0)
    wrap_linear(net, "2", make_rotation("hadamard", 16, seed=11))
    x = torch.randn(3, 12)
    y = net(x)
    sd = net.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in sd.values())
    with tempfile.TemporaryDirectory() as d:
        save_file({k: v.contiguous() for k, v in sd.items()}, f"{d}/m.safetensors")
        loaded = load_file(f"{d}/m.safetensors")
    fresh = _net(3)
    wrap_linear(fresh, "2", make_rotation("haar", 16, seed=1))
    fresh.load_state_dict(loaded)
    assert fresh[2].rotation.name == "hadamard" and fresh[2].rotation.seed == 11
    assert torch.allclose(fresh(x), y, atol=1e-6)


def test_set_extra_state_rejects_bad_state_and_keeps_rotation() -> None:
    mod = OnlineRotatedLinear.wrap(_linear(16), make_rotation("hadamard", 16, seed=3))
    before = mod.rotation
    with pytest.raises(ValueError, match="extra state"):
        mod.set_extra_state({"n": 16})
    with pytest.raises(ValueError, match="size 12"):
        mod.set_extra_state({**mod.rotation_state(), "n": 12})
    with pytest.raises(ValueError, match="not an orthokit rotation"):
        mod.set_extra_state({**mod.rotation_state(), "class": "os:system"})
    with pytest.raises(ValueError, match="cannot decode"):
        mod.set_extra_state(mod.get_extra_state()[:-7])
    with pytest.raises(ValueError, match="uint8"):
        mod.set_extra_state(torch.zeros(3))
    assert mod.rotation is before


def test_set_extra_state_checks_rotation_subclass_before_calling_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A non-Rotation ``orthokit`` class is refused before its ``from_state_dict`` runs; a bad ``n`` is named."""
    from orthokit.rotation import kv_cache

    called: list[object] = []
    monkeypatch.setattr(
        kv_cache.KVCalibration, "from_state_dict", classmethod(lambda cls, d: called.append(d))
    )
    mod = OnlineRotatedLinear.wrap(_linear(8), make_rotation("hadamard", 8, seed=1))
    before = mod.rotation
    good = mod.rotation_state()
    with pytest.raises(ValueError, match="not a Rotation subclass"):
        mod.set_extra_state({**good, "class": "orthokit.rotation.kv_cache:KVCalibration"})
    assert called == []  # never invoked
    with pytest.raises(ValueError, match="not a Rotation subclass"):
        mod.set_extra_state({**good, "class": "orthokit.rotation.registry:ROTATIONS"})
    for bad_n in ("x", 8.0, True, None):
        with pytest.raises(ValueError, match="size 'n' must be an int"):
            mod.set_extra_state({**good, "n": bad_n})
    assert mod.rotation is before
    mod.set_extra_state(good)  # the genuine state still loads
    assert mod.rotation.seed == 1


def test_repr_names_the_rotation() -> None:
    mod = OnlineRotatedLinear.wrap(_linear(12), make_rotation("hadamard", 12, seed=4))
    assert "rotation=hadamard(n=12, seed=4)" in repr(mod)


def test_refusals() -> None:
    lin = _linear(16)
    rot = make_rotation("hadamard", 16)
    mod = OnlineRotatedLinear.wrap(lin, rot)
    with pytest.raises(TypeError, match="double wrapping"):
        OnlineRotatedLinear.wrap(mod, rot)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="nn.Linear"):
        OnlineRotatedLinear.wrap(nn.Conv1d(16, 4, 1), rot)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="size 12 does not match linear.in_features 16"):
        OnlineRotatedLinear.wrap(lin, make_rotation("hadamard", 12))
    with pytest.raises(TypeError, match="rotation"):
        OnlineRotatedLinear.wrap(lin, torch.eye(16))  # type: ignore[arg-type]


def test_wrap_linear_and_unwrap_all() -> None:
    outer = nn.Sequential(_net(0), nn.Linear(3, 2))
    x = torch.randn(4, 12)
    y = outer(x)
    wrap_linear(outer, "0.0", make_rotation("hadamard", 12, seed=0))
    wrap_linear(outer, "1", make_rotation("hadamard", 3, seed=0))
    assert set(online_rotated_linears(outer)) == {"0.0", "1"}
    assert torch.allclose(outer(x), y, atol=1e-6)
    # refusals leave the tree unchanged
    before = repr(outer)
    with pytest.raises(ValueError, match="already an OnlineRotatedLinear"):
        wrap_linear(outer, "1", make_rotation("hadamard", 3))
    with pytest.raises(TypeError, match="GELU, not an nn.Linear"):
        wrap_linear(outer, "0.1", make_rotation("hadamard", 16))
    with pytest.raises(ValueError, match="no submodule"):
        wrap_linear(outer, "7.0", make_rotation("hadamard", 16))
    with pytest.raises(ValueError, match="size 8 does not match"):
        wrap_linear(outer, "0.2", make_rotation("hadamard", 8))
    assert repr(outer) == before
    assert sorted(unwrap_all(outer)) == ["0.0", "1"]
    assert not online_rotated_linears(outer)
    assert torch.allclose(outer(x), y, atol=1e-6)
    with pytest.raises(ValueError, match="call model.unwrap"):
        unwrap_all(OnlineRotatedLinear.wrap(_linear(4), make_rotation("hadamard", 4)))


def test_mutant_wrapper_without_weight_fusion_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A wrapper that forgets W ← W·Q must fail the same exactness check the real one passes."""
    lin = _linear(16)
    x = torch.randn(8, 16)
    ref = _reference(lin, x)
    monkeypatch.setattr(online_mod, "_fused_weight", lambda w, rotation, transpose: w.detach().clone())
    mutant = OnlineRotatedLinear.wrap(lin, make_rotation("hadamard", 16, seed=0))
    err = (mutant(x).double() - ref).abs().max() / ref.abs().max()
    assert err > 1e-2
