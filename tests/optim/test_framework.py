"""Framework: transforms (vs closed forms), matrix views, batching, AdamW groups, gradient checks, registry."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from orthokit.optim import OPTIMIZERS, Muon, NonFiniteGradientError, OrthogonalOptimizer
from orthokit.optim import transforms as T
from orthokit.optim.distributed import assign_owners, resolve_dist_context
from orthokit.optim.registry import create_optimizer, register_optimizer


# ----------------------------------------------------------------------------- transforms
@pytest.mark.parametrize("convention", ["ema", "sum"])
@pytest.mark.parametrize("nesterov", [True, False])
def test_momentum_closed_form(convention, nesterov):
    mu = 0.8
    t = T.momentum(mu, nesterov=nesterov, convention=convention)
    gs = [torch.randn(3, 4, dtype=torch.float64) for _ in range(3)]
    st = [t.init(gs[0], {})]
    M = torch.zeros(3, 4, dtype=torch.float64)
    for g in gs:
        g_in = g.clone()
        u = t.update([g], st, [g], {})[0]
        assert torch.equal(g, g_in)  # input not modified
        M = mu * M + ((1 - mu) * g if convention == "ema" else g)
        if nesterov:
            U = (1 - mu) * g + mu * M if convention == "ema" else g + mu * M
        else:
            U = M
        torch.testing.assert_close(u, U)
        torch.testing.assert_close(st[0]["momentum_buffer"], M)


def test_momentum_validation():
    with pytest.raises(ValueError, match="beta"):
        T.momentum(1.0)
    with pytest.raises(ValueError, match="convention"):
        T.momentum(0.9, convention="lerp")


def test_orthogonalize_does_not_alias_or_modify_input():
    u = torch.randn(6, 4)
    u0 = u.clone()
    out = T.orthogonalize("polar_express").update([u], [{}], [torch.zeros(6, 4)], {})[0]
    assert torch.equal(u, u0)
    assert out.data_ptr() != u.data_ptr()
    out.mul_(2)  # mutating the output must not touch the input
    assert torch.equal(u, u0)


def test_orthogonalize_validation():
    with pytest.raises(ValueError, match="orthogonalizer"):
        T.orthogonalize("nope")
    with pytest.raises(ValueError, match="ns_steps"):
        T.orthogonalize(steps=0)
    with pytest.raises(ValueError, match="ns_dtype"):
        T.orthogonalize(dtype="int32")
    with pytest.raises(TypeError):
        T.orthogonalize(3)  # type: ignore[arg-type]


def test_resolve_polar_method_and_dtype():
    assert T.resolve_polar_method("polar_express") == ("polar_express", {})
    assert T.resolve_polar_method("Quintic") == ("newton_schulz", {"schedule": "quintic"})
    assert T.resolve_ns_dtype("auto", torch.device("cpu")) == torch.float32
    assert T.resolve_ns_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert T.resolve_ns_dtype("float16", torch.device("cpu")) == torch.float16
    assert T.resolve_ns_dtype(None, torch.device("cpu")) is None


def test_auto_dtype_on_cpu_is_the_measured_choice(monkeypatch):
    """CPU "auto": whatever the dispatch measured faster (faked here), the override wins, the optimizer obeys."""
    import importlib

    from orthokit.linalg import dispatch

    cpu = torch.device("cpu")
    big, small = (4, 768, 3072), (16, 32)
    timings = {"fp32": 1.0, "bf16": 0.25}  # fake clock: bf16 4× faster
    monkeypatch.setattr(dispatch, "_time_once", lambda label, fn, device: timings[label])
    dispatch.set_probing(True)
    try:
        assert T.resolve_ns_dtype("auto", cpu, big) == torch.bfloat16
        assert T.resolve_ns_dtype("auto", cpu, small) == torch.float32  # tiny: fixed rule
        assert T.resolve_ns_dtype("auto", cpu) == torch.float32  # shape unknown → fp32
        assert T.resolve_ns_dtype(torch.float32, cpu, big) == torch.float32  # explicit wins
        assert T.resolve_ns_dtype("auto", torch.device("cuda"), small) == torch.bfloat16
        monkeypatch.setenv("ORTHOKIT_CPU_BF16", "0")
        assert T.resolve_ns_dtype("auto", cpu, big) == torch.float32  # the override beats the measurement
        monkeypatch.delenv("ORTHOKIT_CPU_BF16")
        # and the optimizer actually iterates in the resolved dtype
        LP = importlib.import_module("orthokit.linalg.polar")
        seen = []
        real = LP.polar
        monkeypatch.setattr(LP, "polar", lambda X, **kw: seen.append(kw["dtype"]) or real(X, **kw))
        p = torch.nn.Parameter(torch.randn(256, 300))
        p.grad = torch.randn(256, 300)
        q = torch.nn.Parameter(torch.randn(32, 48))
        q.grad = torch.randn(32, 48)
        from orthokit.optim import Muon

        Muon([p, q], lr=0.01).step()
        assert sorted(map(str, seen)) == ["torch.bfloat16", "torch.float32"]
    finally:
        dispatch.set_probing(None)


@pytest.mark.parametrize(
    "mode, m, n, expected",
    [
        ("keller", 3072, 768, 2.0),
        ("keller", 768, 3072, 1.0),
        ("match_rms_adamw", 768, 3072, 0.2 * math.sqrt(3072)),
        ("spectral", 768, 3072, 0.5),
        ("none", 5, 7, 1.0),
    ],
)
def test_shape_scale(mode, m, n, expected):
    assert T.shape_scale(mode, m, n) == pytest.approx(expected, rel=1e-15)


def test_shape_scale_rejects_unknown():
    with pytest.raises(ValueError, match="scale mode"):
        T.shape_scale("moonlight", 2, 2)
    with pytest.raises(ValueError, match="scale mode"):
        T.scale_by_shape("moonlight")


def test_decoupled_weight_decay_tensor_lr_and_passthrough():
    p = [torch.full((2, 2), 2.0)]
    u = [torch.ones(2, 2)]
    out = T.decoupled_weight_decay().update(u, [{}], p, {"lr": torch.tensor(0.5), "weight_decay": 0.2})
    assert out is u
    torch.testing.assert_close(p[0], torch.full((2, 2), 2.0 * 0.9))


def test_adam_transform_matches_torch_adamw():
    """algorithm='adamw' groups reproduce torch.optim.AdamW (same betas/eps/wd)."""
    W0 = torch.randn(5, 3, dtype=torch.float64)
    b0 = torch.randn(3, dtype=torch.float64)
    ours = [torch.nn.Parameter(W0.clone()), torch.nn.Parameter(b0.clone())]
    ref = [torch.nn.Parameter(W0.clone()), torch.nn.Parameter(b0.clone())]
    o1 = Muon(
        [
            {
                "params": ours,
                "algorithm": "adamw",
                "lr": 1e-2,
                "betas": (0.9, 0.99),
                "eps": 1e-8,
                "weight_decay": 0.1,
            }
        ]
    )
    o2 = torch.optim.AdamW(ref, lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    for _ in range(6):
        gs = [torch.randn(5, 3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)]
        for p, q, g in zip(ours, ref, gs):
            p.grad, q.grad = g.clone(), g.clone()
        o1.step()
        o2.step()
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-12, atol=1e-12)
    assert set(o1.state[ours[0]]) == {"step", "exp_avg", "exp_avg_sq"}


def test_adamw_group_needs_explicit_lr_and_valid_betas():
    w = torch.nn.Parameter(torch.randn(3))
    with pytest.raises(ValueError, match="lr"):
        Muon([{"params": [w], "algorithm": "adamw"}])
    with pytest.raises(ValueError, match="betas"):
        Muon([{"params": [w], "algorithm": "adamw", "lr": 1e-3, "betas": (0.9, 1.0)}])
    with pytest.raises(ValueError, match="algorithm"):
        Muon([{"params": [w], "algorithm": "sgd", "lr": 1e-3}])


# ----------------------------------------------------------------------------- views & batching
def test_matrix_views():
    ps = {
        "lin": torch.nn.Parameter(torch.randn(6, 4)),
        "conv2d": torch.nn.Parameter(torch.randn(8, 3, 3, 3)),
        "experts": torch.nn.Parameter(torch.randn(5, 6, 4)),
        "conv1d": torch.nn.Parameter(torch.randn(8, 4, 3)),
        "qkv": torch.nn.Parameter(torch.randn(12, 4)),
    }
    opt = Muon(
        [
            {"params": [("lin", ps["lin"]), ("conv2d", ps["conv2d"]), ("experts", ps["experts"])]},
            {"params": [("conv1d", ps["conv1d"])], "flatten": True},
            {"params": [("qkv", ps["qkv"])], "split": 3},
        ]
    )
    got = {k: (v.mats, v.m, v.n) for k, v in ((k, opt.matrix_view(p)) for k, p in ps.items())}
    assert got == {
        "lin": (1, 6, 4),
        "conv2d": (1, 8, 27),
        "experts": (5, 6, 4),
        "conv1d": (1, 8, 12),
        "qkv": (3, 4, 4),
    }
    assert opt.param_name(ps["qkv"]) == "qkv"


def test_batched_equals_reference_mixed_shapes():
    shapes = [(16, 8), (16, 8), (8, 16), (4, 16, 8), (16, 2, 2, 2), (16, 8)]
    W0 = [torch.randn(*s) for s in shapes]
    grads = [[torch.randn(*s) for s in shapes] for _ in range(3)]
    runs = []
    for batched in (True, False):
        ps = [torch.nn.Parameter(w.clone()) for w in W0]
        opt = Muon(ps, lr=0.02, weight_decay=0.1, batched=batched)
        for gs in grads:
            for p, g in zip(ps, gs):
                p.grad = g.clone()
            opt.step()
        runs.append([p.detach() for p in ps])
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # and the batched path really groups same-shape matrices
    calls = []
    import importlib

    P = importlib.import_module("orthokit.linalg.polar")

    orig = P.polar

    def spy(G, *a, **k):
        calls.append(tuple(G.shape))
        return orig(G, *a, **k)

    ps = [torch.nn.Parameter(w.clone()) for w in W0]
    opt = Muon(ps, lr=0.02)
    for p, g in zip(ps, grads[0]):
        p.grad = g
    P.polar = spy
    try:
        opt.step()
    finally:
        P.polar = orig
    # 16×8 matrices: 3 plain params + 4 experts + 1 flattened conv kernel → ONE call on 8 matrices
    assert sorted(calls) == [(1, 8, 16), (8, 16, 8)]


# ----------------------------------------------------------------------------- gradient checks
def test_sparse_and_complex_gradients_raise_naming_param():
    w = torch.nn.Parameter(torch.randn(4, 3))
    opt = Muon([("layer.w", w)])
    w.grad = torch.randn(4, 3).to_sparse()
    with pytest.raises(ValueError, match="'layer.w'.*sparse"):
        opt.step()
    with pytest.raises(ValueError, match="'c'.*complex"):
        Muon([("c", torch.nn.Parameter(torch.randn(3, 3, dtype=torch.complex64)))])


def test_nonfinite_check_is_before_any_mutation_across_groups():
    a, b = torch.nn.Parameter(torch.randn(4, 4)), torch.nn.Parameter(torch.randn(4, 4))
    opt = Muon([{"params": [("a", a)]}, {"params": [("b", b)], "weight_decay": 0.5}])
    a.grad, b.grad = torch.randn(4, 4), torch.randn(4, 4)
    b.grad[0, 0] = float("inf")
    a0 = a.detach().clone()
    with pytest.raises(NonFiniteGradientError, match="'b'"):
        opt.step()
    assert torch.equal(a.detach(), a0) and len(opt.state[a]) == 0


def test_huge_finite_gradient_is_not_flagged():
    w = torch.nn.Parameter(torch.zeros(4, 4))
    opt = Muon([w], lr=0.1)
    w.grad = torch.full((4, 4), 1e30)  # the norm overflows fp32 but every entry is finite
    opt.step()
    # the step equals the one from the unscaled gradient (polar is scale invariant) ...
    v = torch.nn.Parameter(torch.zeros(4, 4))
    v.grad = torch.full((4, 4), 1e3)  # (large enough that the normalization's additive 1e-6 is negligible)
    Muon([v], lr=0.1).step()
    torch.testing.assert_close(w.detach(), v.detach(), atol=1e-6, rtol=0)
    # ... and the closed form: rank-1 all-ones → polar factor ones/4, times PE-5's σ-map (within [0.858, 1.142])
    ratio = -w.detach() / (0.1 * torch.full((4, 4), 0.25))
    assert 0.85 < float(ratio.min()) and float(ratio.max()) < 1.15


# ----------------------------------------------------------------------------- a custom variant
class _RowNormalize(T.Transform):
    name = "row_normalize"

    def update(self, updates, states, params, group):
        out = []
        for u, p in zip(updates, params):
            v = self.optimizer.matrix_view(p)
            X = v.as_matrices(u)
            out.append((X / X.norm(dim=-1, keepdim=True).clamp_min(1e-12)).reshape(v.shape))
        return out


class _RowMuon(OrthogonalOptimizer):
    def __init__(self, params, lr=0.02, **kw):
        super().__init__(params, dict(lr=lr, weight_decay=0.0), **kw)

    def transforms(self, group):
        return [T.momentum(0.9), T.orthogonalize("svd"), _RowNormalize(), T.decoupled_weight_decay()]


def test_custom_variant_composes_transforms():
    w = torch.nn.Parameter(torch.zeros(5, 8, dtype=torch.float64))
    opt = _RowMuon([w], lr=1.0)
    G = torch.randn(5, 8, dtype=torch.float64)
    w.grad = G
    opt.step()
    U, _, Vh = torch.linalg.svd(0.1 * G + 0.9 * 0.1 * G, full_matrices=False)
    O = U @ Vh
    torch.testing.assert_close(-w.detach(), O / O.norm(dim=-1, keepdim=True))


def test_base_without_transforms_raises():
    class Bare(OrthogonalOptimizer):
        def __init__(self, params):
            super().__init__(params, dict(lr=0.1))

    w = torch.nn.Parameter(torch.randn(3, 3))
    opt = Bare([w])
    w.grad = torch.randn(3, 3)
    with pytest.raises(NotImplementedError, match="transforms"):
        opt.step()


# ----------------------------------------------------------------------------- registry & distributed helpers
def test_registry_helpers():
    assert "muon" in OPTIMIZERS
    with pytest.raises(ValueError, match="Valid names"):
        create_optimizer("moun", [torch.nn.Parameter(torch.randn(2, 2))])
    with pytest.raises(ValueError, match="default_lr"):
        register_optimizer("x_invalid", default_lr=0.0)


def test_assign_owners_balanced_round_robin():
    assert assign_owners([10, 40, 20, 30], 2) == [1, 0, 0, 1]
    owners = assign_owners([100] * 7, 3)
    assert sorted(owners.count(r) for r in range(3)) == [2, 2, 3]
    with pytest.raises(ValueError):
        assign_owners([1], 0)


def test_resolve_dist_context_single_process():
    assert resolve_dist_context(False) is None
    assert resolve_dist_context("auto") is None
    with pytest.raises(ValueError, match="process group"):
        resolve_dist_context(True)
    with pytest.raises(ValueError, match="distributed"):
        resolve_dist_context("always")


def test_deepcopy_and_pickle_keep_views_and_names():
    import copy
    import io

    w = torch.nn.Parameter(torch.randn(12, 4))
    opt = Muon([{"params": [("qkv", w)], "split": 3}], lr=0.05)
    w.grad = torch.randn(12, 4)
    opt.step()
    twin = copy.deepcopy(opt)
    p2 = twin.param_groups[0]["params"][0]
    assert p2 is not w and torch.equal(p2, w)
    assert twin.matrix_view(p2).mats == 3 and twin.param_name(p2) == "qkv"
    p2.grad = w.grad.clone()
    twin.step()
    opt.step()
    assert torch.equal(p2, w)
    buf = io.BytesIO()
    torch.save(opt, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert loaded.matrix_view(loaded.param_groups[0]["params"][0]).mats == 3


@settings(max_examples=15)
@given(
    dims=st.lists(st.tuples(st.integers(1, 3), st.integers(2, 9), st.integers(2, 9)), min_size=1, max_size=6),
    seed=st.integers(0, 2**16),
)
def test_batched_equals_reference_property(dims, seed):
    """For any mix of shapes (including repeated ones and expert stacks), batched == per-parameter."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(m, n) if e == 1 else (e, m, n) for e, m, n in dims]
    shapes = shapes + shapes[:2]  # force repeated shapes into the same bucket
    W0 = [torch.randn(*s, generator=g) for s in shapes]
    G = [torch.randn(*s, generator=g) for s in shapes]
    outs = []
    for batched in (True, False):
        ps = [torch.nn.Parameter(w.clone()) for w in W0]
        opt = Muon(ps, lr=0.05, weight_decay=0.1, batched=batched)
        for _ in range(2):
            for p, gr in zip(ps, G):
                p.grad = gr.clone()
            opt.step()
        outs.append(ps)
    for a, b in zip(*outs):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-6)
