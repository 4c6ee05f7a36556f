"""Muon: closed-form float64 reference, torch.optim.Muon parity, scaling conventions, views, validation."""

from __future__ import annotations

import math

import pytest
import torch

from orthokit.optim import Muon
from orthokit.optim.transforms import shape_scale


def _polar64(X: torch.Tensor) -> torch.Tensor:
    U, _, Vh = torch.linalg.svd(X.double(), full_matrices=False)
    return U @ Vh


def _reference_muon(W0, grads, lr, mu, wd, nesterov, convention, scale):
    """Float64 Muon from the definition (SVD polar factor)."""
    W = W0.double().clone()
    M = torch.zeros_like(W)
    m, n = W.shape
    s = shape_scale(scale, m, n)
    for G in grads:
        G = G.double()
        if convention == "ema":
            M = mu * M + (1 - mu) * G
            U = (1 - mu) * G + mu * M if nesterov else M
        else:
            M = mu * M + G
            U = G + mu * M if nesterov else M
        W = W * (1 - lr * wd) - lr * s * _polar64(U)
    return W, M


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("convention", ["ema", "sum"])
@pytest.mark.parametrize("scale", ["keller", "match_rms_adamw", "spectral"])
@pytest.mark.parametrize("shape", [(12, 5), (5, 12)])
def test_matches_float64_definition(nesterov, convention, scale, shape):
    W0 = torch.randn(*shape, dtype=torch.float64)
    grads = [torch.randn(*shape, dtype=torch.float64) for _ in range(4)]
    p = torch.nn.Parameter(W0.clone())
    opt = Muon(
        [p],
        lr=0.03,
        momentum=0.9,
        nesterov=nesterov,
        momentum_convention=convention,
        weight_decay=0.1,
        ns_method="svd",
        scale=scale,
        ns_dtype=None,
    )
    for g in grads:
        p.grad = g.clone()
        opt.step()
    W_ref, M_ref = _reference_muon(W0, grads, 0.03, 0.9, 0.1, nesterov, convention, scale)
    torch.testing.assert_close(p.detach(), W_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(opt.state[p]["momentum_buffer"], M_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("adjust", [None, "match_rms_adamw"])
def test_parity_with_torch_optim_muon(adjust):
    """Same NS5 (Keller) schedule, bf16 iteration, same conventions → same trajectory as torch.optim.Muon."""
    shapes = [(32, 16), (16, 48)]
    W0 = [torch.randn(*s) for s in shapes]
    grads = [[torch.randn(*s) for s in shapes] for _ in range(3)]
    ours = [torch.nn.Parameter(w.clone()) for w in W0]
    theirs = [torch.nn.Parameter(w.clone()) for w in W0]
    o1 = Muon(
        ours,
        lr=0.02,
        weight_decay=0.1,
        ns_method="keller",
        ns_dtype=torch.bfloat16,
        scale="keller" if adjust is None else "match_rms_adamw",
    )
    o2 = torch.optim.Muon(theirs, lr=0.02, weight_decay=0.1, adjust_lr_fn=adjust)
    for gs in grads:
        for p, q, g in zip(ours, theirs, gs):
            p.grad, q.grad = g.clone(), g.clone()
        o1.step()
        o2.step()
    for p, q, w0 in zip(ours, theirs, W0):
        # both iterate in bf16; the remaining differences are bf16 round-off of the iteration
        rel = (p - q).norm() / (q - w0).norm()
        assert rel < 2.5e-2, rel  # (a wrong scale or convention gives rel ≳ 0.3)
        torch.testing.assert_close(o1.state[p]["momentum_buffer"], o2.state[q]["momentum_buffer"])


def test_scale_conventions_fix_update_norms():
    """Exact polar factor ⇒ the update's spectral norm is lr·s(m, n) for each named convention."""
    for scale, expected in [
        ("keller", math.sqrt(4.0)),
        ("match_rms_adamw", 0.2 * math.sqrt(64)),
        ("spectral", math.sqrt(64 / 16)),
    ]:
        p = torch.nn.Parameter(torch.zeros(64, 16, dtype=torch.float64))
        opt = Muon([p], lr=0.1, ns_method="svd", scale=scale, ns_dtype=None)
        p.grad = torch.randn(64, 16, dtype=torch.float64)
        opt.step()
        sv = torch.linalg.svdvals(p.detach())
        torch.testing.assert_close(sv, torch.full_like(sv, 0.1 * expected), rtol=1e-9, atol=1e-12)
    # wide matrix: spectral scale < 1 and keller = 1; match_rms_adamw gives update RMS exactly 0.2·lr
    p = torch.nn.Parameter(torch.zeros(16, 64, dtype=torch.float64))
    opt = Muon([p], lr=0.1, ns_method="svd", scale="match_rms_adamw", ns_dtype=None)
    p.grad = torch.randn(16, 64, dtype=torch.float64)
    opt.step()
    rms = p.detach().pow(2).mean().sqrt().item()
    # UVᵀ of a 16×64 matrix has RMS sqrt(16/(16·64)) = 1/8, times 0.2·sqrt(64)·lr ⇒ RMS = 0.2·lr
    assert abs(rms - 0.2 * 0.1) < 1e-12, rms


def test_default_polar_express_is_close_to_exact_polar():
    p = torch.nn.Parameter(torch.zeros(48, 32))
    opt = Muon([p], lr=1.0, nesterov=False, momentum=0.0)
    G = torch.randn(48, 32)
    p.grad = G
    opt.step()
    O = -p.detach() / shape_scale("keller", 48, 32)
    sv = torch.linalg.svdvals(O)
    assert 0.8 < sv.min() and sv.max() < 1.2  # PE-5 band [0.859, 1.141] for σ/‖G‖ ≥ 1e-3
    cos = (O.double() * _polar64(G)).sum() / (O.double().norm() * _polar64(G).norm())
    assert cos > 0.99


def test_does_not_mutate_grad_and_bf16_buffer_not_normalized():
    """torch.optim.Muon normalizes a bf16 momentum buffer in place with nesterov=False; we must not."""
    W = torch.randn(24, 40).bfloat16()
    G1, G2 = torch.randn(24, 40).bfloat16(), torch.randn(24, 40).bfloat16()
    p = torch.nn.Parameter(W.clone())
    opt = Muon([p], lr=0.02, nesterov=False, momentum=0.9)
    p.grad = G1.clone()
    opt.step()
    assert torch.equal(p.grad, G1)
    p.grad = G2.clone()
    opt.step()
    assert torch.equal(p.grad, G2)
    expected = (G1.float() * 0.1 * 0.9 + G2.float() * 0.1).bfloat16()
    buf = opt.state[p]["momentum_buffer"]
    assert buf.dtype == torch.bfloat16 and p.dtype == torch.bfloat16
    torch.testing.assert_close(buf.float(), expected.float(), rtol=2e-2, atol=1e-3)
    assert abs(buf.float().norm().item() - 1.0) > 0.1  # not normalized to unit norm


def test_ema_and_sum_conventions_give_same_trajectory():
    W0 = torch.randn(10, 20, dtype=torch.float64)
    grads = [torch.randn(10, 20, dtype=torch.float64) for _ in range(5)]
    ps = [torch.nn.Parameter(W0.clone()) for _ in range(2)]
    opts = [
        Muon([ps[0]], lr=0.01, momentum_convention="ema", ns_method="svd", ns_dtype=None),
        Muon([ps[1]], lr=0.01, momentum_convention="sum", ns_method="svd", ns_dtype=None),
    ]
    for g in grads:
        for p, o in zip(ps, opts):
            p.grad = g.clone()
            o.step()
    torch.testing.assert_close(ps[0].detach(), ps[1].detach(), rtol=1e-9, atol=1e-9)
    b_ema, b_sum = (opts[i].state[ps[i]]["momentum_buffer"] for i in range(2))
    torch.testing.assert_close(b_ema, (1 - 0.95) * b_sum)


def test_conv_kernel_flattened_with_fan_in_scale():
    p = torch.nn.Parameter(torch.zeros(8, 3, 3, 3, dtype=torch.float64))
    opt = Muon([p], lr=1.0, momentum=0.0, nesterov=False, ns_method="svd", ns_dtype=None)
    G = torch.randn(8, 3, 3, 3, dtype=torch.float64)
    p.grad = G
    opt.step()
    assert opt.matrix_view(p).n == 27 and opt.matrix_view(p).m == 8
    expected = -_polar64(G.reshape(8, 27)).reshape(8, 3, 3, 3) * math.sqrt(max(1, 8 / 27))
    torch.testing.assert_close(p.detach(), expected)


def test_expert_stack_and_split_qkv_are_orthogonalized_blockwise():
    E = torch.nn.Parameter(torch.zeros(4, 6, 10, dtype=torch.float64))
    Q = torch.nn.Parameter(torch.zeros(3 * 8, 16, dtype=torch.float64))
    opt = Muon(
        [{"params": [E]}, {"params": [Q], "split": 3}],
        lr=1.0,
        momentum=0.0,
        nesterov=False,
        ns_method="svd",
        ns_dtype=None,
        scale="none",
    )
    gE, gQ = torch.randn(4, 6, 10, dtype=torch.float64), torch.randn(24, 16, dtype=torch.float64)
    E.grad, Q.grad = gE, gQ
    opt.step()
    for i in range(4):
        torch.testing.assert_close(-E.detach()[i], _polar64(gE[i]))
    for b in range(3):
        torch.testing.assert_close(-Q.detach()[8 * b : 8 * (b + 1)], _polar64(gQ[8 * b : 8 * (b + 1)]))
    # the fused-matrix polar factor is different: the split is not a no-op
    assert not torch.allclose(-Q.detach(), _polar64(gQ))


def test_schedule_names_select_newton_schulz():
    p = torch.nn.Parameter(torch.zeros(16, 32))
    opt = Muon([p], lr=1.0, momentum=0.0, nesterov=False, ns_method="keller", scale="none")
    G = torch.randn(16, 32)
    p.grad = G
    opt.step()
    # independent float64 Keller NS5 (normalize by (‖G‖_F + 1e-7), five quintic steps on the wide matrix)
    X = G.double() / (G.double().norm() + 1e-7)
    for _ in range(5):
        A = X @ X.T
        X = 3.4445 * X + (-4.7750 * A + 2.0315 * A @ A) @ X
    torch.testing.assert_close(-p.detach().double(), X, atol=2e-4, rtol=0)
    # and it is NOT Polar Express (whose σ-range is tighter): the schedule name really switched the method
    pe = torch.nn.Parameter(torch.zeros(16, 32))
    pe.grad = G
    Muon([pe], lr=1.0, momentum=0.0, nesterov=False, scale="none").step()
    assert (pe.detach() - p.detach()).abs().max() > 1e-2


def test_tensor_lr_equals_float_lr():
    W0, G = torch.randn(8, 12), torch.randn(8, 12)
    a, b = torch.nn.Parameter(W0.clone()), torch.nn.Parameter(W0.clone())
    oa = Muon([a], lr=0.05, weight_decay=0.1)
    ob = Muon([b], lr=torch.tensor(0.05), weight_decay=0.1)
    for _ in range(3):
        a.grad, b.grad = G.clone(), G.clone()
        oa.step()
        ob.step()
    torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"momentum": 1.0}, "momentum"),
        ({"momentum": -0.1}, "momentum"),
        ({"nesterov": 1}, "nesterov"),
        ({"momentum_convention": "lerp"}, "momentum_convention"),
        ({"ns_method": "newton"}, "orthogonalizer"),
        ({"ns_steps": 0}, "ns_steps"),
        ({"ns_steps": 100}, "ns_steps"),
        ({"ns_dtype": "int8"}, "ns_dtype"),
        ({"scale": "moonlight"}, "scale"),
        ({"lr": -1.0}, "lr"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"batched": "yes"}, "batched"),
        ({"skip_nonfinite": 1}, "skip_nonfinite"),
        ({"distributed": "yes"}, "distributed"),
        ({"distributed": True}, "process group"),
    ],
)
def test_bad_kwargs_raise_clear_errors(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        Muon([torch.nn.Parameter(torch.randn(4, 4))], **kwargs)


def test_unsafe_schedule_rejected():
    with pytest.raises(ValueError):
        Muon([torch.nn.Parameter(torch.randn(4, 4))], ns_method="root_square")


def test_1d_param_names_the_parameter():
    # fallback="error" keeps the strict behaviour (the default "adamw" moves 1-D params to an AdamW group)
    with pytest.raises(ValueError, match="'norm.weight'.*1-D|'norm.weight'"):
        Muon(
            [
                ("w", torch.nn.Parameter(torch.randn(4, 4))),
                ("norm.weight", torch.nn.Parameter(torch.ones(4))),
            ],
            fallback="error",
        )


def test_split_must_divide_rows():
    with pytest.raises(ValueError, match="cannot be split"):
        Muon([{"params": [torch.nn.Parameter(torch.randn(10, 4))], "split": 3}])


def test_zero_gradient_gives_finite_zero_update():
    p = torch.nn.Parameter(torch.randn(6, 9))
    W0 = p.detach().clone()
    opt = Muon([p], lr=0.1)
    p.grad = torch.zeros(6, 9)
    opt.step()
    assert torch.equal(p.detach(), W0)


def test_registry_entry():
    from orthokit.optim import OPTIMIZERS, create_optimizer

    assert OPTIMIZERS.get("muon") is Muon
    caps = OPTIMIZERS.capabilities("muon")
    assert caps["default_lr"] == 0.02 and caps["state_keys"] == ("momentum_buffer",)
    opt = create_optimizer("muon", [torch.nn.Parameter(torch.randn(3, 3))])
    assert isinstance(opt, Muon) and opt.param_groups[0]["lr"] == 0.02
