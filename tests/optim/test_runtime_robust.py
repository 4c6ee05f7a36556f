"""Runtime robustness of OrthogonalOptimizer: hyperparameter checks, validated load_state_dict, transactional
steps (a failed step leaves parameters and state exactly as before), chain caching, huge finite gradients."""

from __future__ import annotations

import copy

import pytest
import torch

import orthokit
from orthokit.optim import AdaMuon, Muon, NorMuon
from orthokit.optim.base import NonFiniteUpdateError
from orthokit.optim.transforms import Transform


def _named(seed: int = 0, shapes=((8, 4), (6, 10))):
    g = torch.Generator().manual_seed(seed)
    return [
        (f"layer{i}.weight", torch.nn.Parameter(torch.randn(*s, generator=g))) for i, s in enumerate(shapes)
    ]


def _grads(params, seed: int):
    g = torch.Generator().manual_seed(seed)
    for _, p in params:
        p.grad = torch.randn(p.shape, generator=g)


def _train(opt, params, steps: int, seed: int = 1):
    for t in range(steps):
        _grads(params, seed + t)
        opt.step()


def _snap(opt, params):
    return copy.deepcopy(opt.state_dict()), [p.detach().clone() for _, p in params]


def _assert_same(opt, params, snap):
    sd, ps = snap
    now = opt.state_dict()
    assert now["param_groups"] == sd["param_groups"]
    assert now["state"].keys() == sd["state"].keys()
    for i in sd["state"]:
        for k, v in sd["state"][i].items():
            assert torch.equal(now["state"][i][k], v), f"state {i}/{k} changed"
    for (_, p), q in zip(params, ps):
        assert torch.equal(p.detach(), q)


# ------------------------------------------------------------------ hyperparameters
@pytest.mark.parametrize("lr", [float("inf"), float("nan"), -1.0, torch.tensor(float("inf"))])
def test_non_finite_or_negative_lr_rejected(lr):
    with pytest.raises(ValueError, match="lr"):
        Muon(_named(), lr=lr)


@pytest.mark.parametrize(
    "cls, kw, what",
    [
        (Muon, {"weight_decay": float("inf")}, "weight_decay"),
        (NorMuon, {"eps": float("inf")}, "eps"),
        (AdaMuon, {"eps": float("nan")}, "eps"),
    ],
)
def test_non_finite_hyperparameters_rejected(cls, kw, what):
    with pytest.raises(ValueError, match=what):
        cls(_named(), **kw)


def test_non_finite_lr_in_added_group_rejected_and_nothing_added():
    opt = Muon([p for _, p in _named()])
    extra = torch.nn.Parameter(torch.randn(3, 3))
    with pytest.raises(ValueError, match="lr"):
        opt.add_param_group({"params": [extra], "lr": float("inf")})
    assert len(opt.param_groups) == 1
    opt.add_param_group({"params": [extra], "lr": 0.01})  # the parameter was not left registered
    assert len(opt.param_groups) == 2


# ------------------------------------------------------------------ load_state_dict
def test_load_from_other_class_rejected_untouched():
    pa, pb = _named(), _named()
    src = NorMuon(pa)
    _train(src, pa, 2)
    dst = Muon(pb)
    _train(dst, pb, 1)
    before = _snap(dst, pb)
    with pytest.raises(ValueError, match="NorMuon.*Muon"):
        dst.load_state_dict(src.state_dict())
    _assert_same(dst, pb, before)


def test_load_from_other_width_names_the_parameter_untouched():
    pa = _named(shapes=((8, 4), (6, 10)))
    pb = _named(shapes=((8, 4), (6, 12)))  # layer1 is wider
    src = Muon(pa)
    _train(src, pa, 2)
    dst = Muon(pb)
    before = _snap(dst, pb)
    with pytest.raises(ValueError, match=r"'layer1\.weight'.*momentum_buffer.*\(6, 10\).*\(6, 12\)"):
        dst.load_state_dict(src.state_dict())
    _assert_same(dst, pb, before)


def test_load_with_other_group_sizes_rejected():
    pa = _named(shapes=((8, 4), (6, 10)))
    pb = _named(shapes=((8, 4),))
    src = Muon(pa)
    with pytest.raises(ValueError, match="parameter"):
        Muon(pb).load_state_dict(src.state_dict())


def test_state_dict_records_class_and_plain_torch_checkpoint_still_loads():
    pa, pb = _named(), _named()
    src = Muon(pa)
    _train(src, pa, 2)
    sd = src.state_dict()
    assert sd["orthokit"]["class"] == "Muon"
    legacy = {k: v for k, v in sd.items() if k != "orthokit"}
    dst = Muon(pb)
    dst.load_state_dict(legacy)
    for (_, p), (_, q) in zip(pa, pb):
        assert torch.equal(dst.state[q]["momentum_buffer"], src.state[p]["momentum_buffer"])


# ------------------------------------------------------------------ transactional step
class _Boom(Transform):
    """Raises (or returns NaN) on demand; placed after momentum so state has already been mutated."""

    name = "boom"
    touches_params = False

    def __init__(self) -> None:
        self.mode = "ok"

    def update(self, updates, states, params, group):  # noqa: ANN001, ANN201
        if self.mode == "raise":
            raise RuntimeError("factorization failed")
        if self.mode == "nan":
            return [u * float("nan") if i == 1 else u for i, u in enumerate(updates)]
        return updates


class _ParamWriter(Transform):
    """A transform that writes parameters in place (like a staged commit) — must be snapshotted."""

    name = "param_writer"

    def update(self, updates, states, params, group):  # noqa: ANN001, ANN201
        torch._foreach_mul_(params, 0.5)
        return updates


BOOM = _Boom()


class BoomMuon(Muon):
    def transforms(self, group):  # noqa: ANN001, ANN201
        chain = list(super().transforms(group))
        return [chain[0], _ParamWriter(), chain[1], BOOM, *chain[2:]]


@pytest.mark.parametrize("mode, exc", [("raise", RuntimeError), ("nan", NonFiniteUpdateError)])
def test_failed_step_leaves_params_and_state_untouched(mode, exc):
    params = _named()
    opt = BoomMuon(params, lr=0.02, weight_decay=0.1)
    BOOM.mode = "ok"
    _train(opt, params, 2)
    before = _snap(opt, params)
    _grads(params, 99)
    BOOM.mode = mode
    try:
        with pytest.raises(exc, match="factorization|layer1.weight"):
            opt.step()
    finally:
        BOOM.mode = "ok"
    _assert_same(opt, params, before)
    opt.step()  # the optimizer still works afterwards
    assert all(torch.isfinite(p).all() for _, p in params)


def test_failed_first_step_leaves_no_state():
    params = _named()
    opt = BoomMuon(params)
    _grads(params, 3)
    BOOM.mode = "raise"
    try:
        with pytest.raises(RuntimeError):
            opt.step()
    finally:
        BOOM.mode = "ok"
    assert all(len(opt.state[p]) == 0 for _, p in params)


def test_nan_update_skipped_with_warning_when_asked():
    params = _named()
    opt = BoomMuon(params, skip_nonfinite=True)
    _train(opt, params, 1)
    before = _snap(opt, params)
    _grads(params, 5)
    BOOM.mode = "nan"
    try:
        with pytest.warns(RuntimeWarning, match="non-finite update"):
            opt.step()
    finally:
        BOOM.mode = "ok"
    _assert_same(opt, params, before)


def test_transactional_step_equals_plain_step():
    """The snapshot changes nothing on success: same trajectory as transactional=False (bit-identical)."""
    pa, pb = _named(), _named()
    oa, ob = Muon(pa, weight_decay=0.1), Muon(pb, weight_decay=0.1)
    ob.transactional = False
    _train(oa, pa, 3)
    _train(ob, pb, 3)
    for (_, p), (_, q) in zip(pa, pb):
        assert torch.equal(p, q)


def test_weight_decay_matches_closed_form_with_deferred_commit():
    """W ← W(1 − ηλ) − η·s·polar(U): compare with a float64 re-computation of one step."""
    ((name, p),) = _named(shapes=((16, 8),))
    W0 = p.detach().double().clone()
    g = torch.randn(16, 8)
    p.grad = g.clone()
    opt = Muon([(name, p)], lr=0.1, weight_decay=0.5, ns_method="svd")
    opt.step()
    U, _, Vh = torch.linalg.svd(g.double(), full_matrices=False)
    expected = W0 * (1 - 0.1 * 0.5) - 0.1 * (16 / 8) ** 0.5 * (U @ Vh)
    torch.testing.assert_close(p.detach().double(), expected, atol=2e-5, rtol=0)


# ------------------------------------------------------------------ chain caching
def test_chain_built_once_and_rebuilt_when_hyperparameters_change():
    built = []

    class Counting(Muon):
        def transforms(self, group):  # noqa: ANN001, ANN201
            built.append(group["momentum"])
            return super().transforms(group)

    params = _named()
    opt = Counting(params)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for t in range(3):
        _grads(params, t)
        opt.step()
        sched.step()
    assert built == [0.95]  # lr changes do not rebuild
    opt.param_groups[0]["momentum"] = 0.5
    _grads(params, 7)
    opt.step()
    assert built == [0.95, 0.5]


# ------------------------------------------------------------------ huge finite inputs
def test_polar_of_huge_finite_input_equals_polar_of_input():
    G = torch.randn(24, 40)
    torch.testing.assert_close(orthokit.polar(G * 1e20), orthokit.polar(G), atol=1e-5, rtol=0)
    # float64: equal up to the normalization's additive eps (1e-6 against ‖G‖_F ≈ 31, i.e. ~3e-8 relative)
    torch.testing.assert_close(
        orthokit.polar(G.double() * 1e300), orthokit.polar(G.double()), atol=1e-6, rtol=0
    )


@pytest.mark.parametrize("cls", [Muon, NorMuon, AdaMuon])
def test_huge_finite_gradient_gives_the_same_step(cls):
    """The orthogonalized update is scale-invariant: a 1e20× gradient moves the weights exactly as much."""
    pa, pb = _named(), _named()
    oa, ob = cls(pa, lr=0.02), cls(pb, lr=0.02)
    _grads(pa, 4)
    _grads(pb, 4)
    for _, p in pb:
        p.grad.mul_(1e20)
    oa.step()
    ob.step()
    for (_, p), (_, q) in zip(pa, pb):
        assert torch.isfinite(q).all()
        torch.testing.assert_close(p, q, atol=1e-5, rtol=0)


def test_state_overflow_from_a_finite_gradient_is_refused_and_restored() -> None:
    """A finite 1e20 gradient in an AdamW group overflows the fp32 second moment: the step fails cleanly."""
    import pytest as _pytest

    from orthokit.optim import NonFiniteUpdateError, hybrid

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    opt = hybrid(m, "muon")
    m(torch.randn(4, 8)).sum().backward()
    opt.step()
    for p in m.parameters():
        p.grad = torch.randn_like(p)
    m[0].bias.grad[0] = 1e20
    state = {
        id(p): {k: v.clone() for k, v in st.items() if torch.is_tensor(v)} for p, st in opt.state.items()
    }
    params = [p.detach().clone() for p in m.parameters()]
    with _pytest.raises(NonFiniteUpdateError, match="exp_avg_sq"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(params, m.parameters()))
    for p, st in opt.state.items():
        for k, v in state[id(p)].items():
            assert torch.equal(v, st[k]), k
