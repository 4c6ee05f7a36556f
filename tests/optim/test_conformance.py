"""Conformance suite: every optimizer in ``OPTIMIZERS`` must pass these (parametrized over the registry).

Construction: ``cls(params, lr=caps["default_lr"], **caps["extra_kwargs"], **overrides)`` where overrides use the
framework's common kwargs (``batched``, ``skip_nonfinite``, ``weight_decay``).
"""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch

from orthokit.optim import OPTIMIZERS, NonFiniteGradientError

NAMES = OPTIMIZERS.names()
SHAPES = {"a": (16, 8), "b": (16, 8), "c": (8, 24), "d": (12, 12)}


def _make(name: str, params, **overrides):
    caps = OPTIMIZERS.capabilities(name)
    kw = dict(caps["extra_kwargs"])
    kw.setdefault("lr", caps["default_lr"])
    kw.update(overrides)
    return OPTIMIZERS.get(name)(params, **kw)


def _problem(dtype=torch.float32, seed=0):
    """Named matrix params + a least-squares loss per matrix (targets from a random planted solution)."""
    g = torch.Generator().manual_seed(seed)
    params, data = {}, {}
    for k, (m, n) in SHAPES.items():
        params[k] = torch.nn.Parameter((torch.randn(m, n, generator=g) * 0.5).to(dtype))
        A = torch.randn(32, n, generator=g)
        W_star = torch.randn(m, n, generator=g) * 0.5
        data[k] = (A, A @ W_star.T)
    return params, data


def _loss(params, data):
    return sum(((A @ params[k].float().T - B) ** 2).mean() for k, (A, B) in data.items())


def _set_grads(params, data):
    for p in params.values():
        p.grad = None
    _loss(params, data).backward()


def _run(opt, params, data, steps):
    for _ in range(steps):
        _set_grads(params, data)
        opt.step()


def _snapshot(params):
    return {k: p.detach().clone() for k, p in params.items()}


def _assert_params_equal(p1, p2):
    for k in p1:
        assert torch.equal(p1[k], p2[k]), f"param {k} differs"


@pytest.fixture(params=NAMES)
def name(request):
    return request.param


def test_registry_capabilities_are_complete(name):
    caps = OPTIMIZERS.capabilities(name)
    for key in ("default_lr", "state_keys", "supports_batched", "extra_kwargs"):
        assert key in caps, f"{name} registration lacks {key}"
    assert caps["default_lr"] > 0


def test_loss_decreases(name):
    params, data = _problem()
    opt = _make(name, list(params.items()))
    l0 = _loss(params, data).item()
    _run(opt, params, data, 25)
    l1 = _loss(params, data).item()
    assert l1 < 0.75 * l0, (l0, l1)


def test_state_dict_resume_is_bit_identical(name):
    params, data = _problem()
    opt = _make(name, list(params.items()), weight_decay=0.01)
    _run(opt, params, data, 3)
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "params": _snapshot(params)}, buf)
    _run(opt, params, data, 4)
    uninterrupted = _snapshot(params)

    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    params2, _ = _problem()
    with torch.no_grad():
        for k, p in params2.items():
            p.copy_(ckpt["params"][k])
    opt2 = _make(name, list(params2.items()), weight_decay=0.01)
    opt2.load_state_dict(ckpt["opt"])
    _run(opt2, params2, data, 4)
    _assert_params_equal(uninterrupted, _snapshot(params2))


def test_state_keys_present(name):
    params, data = _problem()
    opt = _make(name, list(params.items()))
    _run(opt, params, data, 1)
    keys = OPTIMIZERS.capabilities(name)["state_keys"]
    for p in params.values():
        for k in keys:
            assert k in opt.state[p], f"state key {k!r} missing"


def test_param_groups_behave_like_separate_optimizers(name):
    lr = OPTIMIZERS.capabilities(name)["default_lr"]
    params, data = _problem()
    groups = [
        {"params": [params["a"], params["c"]], "lr": lr},
        {"params": [params["b"], params["d"]], "lr": lr * 0.5, "weight_decay": 0.1},
    ]
    opt = _make(name, groups)
    _run(opt, params, data, 3)

    params2, _ = _problem()
    o1 = _make(name, [params2["a"], params2["c"]], lr=lr)
    o2 = _make(name, [params2["b"], params2["d"]], lr=lr * 0.5, weight_decay=0.1)
    for _ in range(3):
        _set_grads(params2, data)
        o1.step()
        o2.step()
    _assert_params_equal(_snapshot(params), _snapshot(params2))


def test_params_without_grad_are_skipped(name):
    params, data = _problem()
    frozen = torch.nn.Parameter(torch.randn(6, 5))
    before = frozen.detach().clone()
    opt = _make(name, [*params.values(), frozen], weight_decay=0.1)
    _run(opt, params, data, 2)
    assert frozen.grad is None
    assert torch.equal(frozen.detach(), before)
    assert len(opt.state[frozen]) == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_param_dtype_is_kept(name, dtype):
    params, data = _problem(dtype)
    opt = _make(name, list(params.items()))
    l0 = _loss(params, data).item()
    _run(opt, params, data, 5)
    for p in params.values():
        assert p.dtype == dtype
        assert torch.isfinite(p).all()
    assert _loss(params, data).item() < l0


def test_tensor_lr_and_lr_scheduler(name):
    lr = OPTIMIZERS.capabilities(name)["default_lr"]
    params, data = _problem()
    opt = _make(name, list(params.items()), lr=torch.tensor(lr))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 if step < 2 else 0.0)
    for _ in range(2):
        _set_grads(params, data)
        opt.step()
        sched.step()
    assert float(opt.param_groups[0]["lr"]) == 0.0
    frozen_at = _snapshot(params)
    _run(opt, params, data, 2)  # lr = 0 ⇒ the parameters must not move
    _assert_params_equal(frozen_at, _snapshot(params))

    # tensor lr follows the same trajectory as float lr
    pa, _ = _problem()
    pb, _ = _problem()
    oa = _make(name, list(pa.items()), lr=lr)
    ob = _make(name, list(pb.items()), lr=torch.tensor(lr))
    _run(oa, pa, data, 3)
    _run(ob, pb, data, 3)
    for k in pa:  # fp32 round-off only (the float-lr path fuses the shape scale into the final add)
        torch.testing.assert_close(pa[k].detach(), pb[k].detach(), rtol=1e-5, atol=1e-5)


def _state_snapshot(opt):
    return copy.deepcopy(opt.state_dict()["state"])


def _assert_state_equal(s1, s2):
    assert s1.keys() == s2.keys()
    for i in s1:
        assert s1[i].keys() == s2[i].keys()
        for k in s1[i]:
            v1, v2 = s1[i][k], s2[i][k]
            if isinstance(v1, torch.Tensor):
                assert torch.equal(v1, v2), f"state {i}/{k} changed"
            else:
                assert v1 == v2


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_gradient_raises_and_corrupts_nothing(name, bad):
    params, data = _problem()
    opt = _make(name, list(params.items()))
    _run(opt, params, data, 2)
    p_before, s_before = _snapshot(params), _state_snapshot(opt)
    _set_grads(params, data)
    params["c"].grad[1, 2] = bad
    with pytest.raises(NonFiniteGradientError, match="'c'"):
        opt.step()
    _assert_params_equal(p_before, _snapshot(params))
    _assert_state_equal(s_before, _state_snapshot(opt))


def test_nonfinite_gradient_skipped_with_warning(name):
    params, data = _problem()
    opt = _make(name, list(params.items()), skip_nonfinite=True)
    _run(opt, params, data, 2)
    p_before, s_before = _snapshot(params), _state_snapshot(opt)
    _set_grads(params, data)
    params["a"].grad[0, 0] = float("nan")
    with pytest.warns(RuntimeWarning, match="non-finite"):
        opt.step()
    _assert_params_equal(p_before, _snapshot(params))
    _assert_state_equal(s_before, _state_snapshot(opt))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _run(opt, params, data, 1)  # a finite step proceeds normally
    assert not torch.equal(p_before["a"], params["a"].detach())


def test_batched_equals_per_parameter_reference(name):
    if not OPTIMIZERS.capabilities(name)["supports_batched"]:
        # the optimizer must still accept batched=False and run
        params, data = _problem()
        _run(_make(name, list(params.items()), batched=False), params, data, 2)
        return
    pa, data = _problem()
    pb, _ = _problem()
    oa = _make(name, list(pa.items()), batched=True)
    ob = _make(name, list(pb.items()), batched=False)
    _run(oa, pa, data, 4)
    _run(ob, pb, data, 4)
    for k in pa:
        torch.testing.assert_close(pa[k].detach(), pb[k].detach(), rtol=1e-5, atol=1e-6)


def test_grad_not_mutated_and_zero_grad_is_safe(name):
    params, data = _problem()
    opt = _make(name, list(params.items()))
    _set_grads(params, data)
    grads = {k: p.grad.clone() for k, p in params.items()}
    opt.step()
    for k, p in params.items():
        assert torch.equal(p.grad, grads[k]), f"grad of {k} was modified"
    for p in params.values():
        p.grad = torch.zeros_like(p)
    opt.step()
    for p in params.values():
        assert torch.isfinite(p).all()


def test_hybrid_routes_with_every_optimizer(name):
    from orthokit.optim import hybrid

    model = torch.nn.Sequential(
        torch.nn.Embedding(20, 8), torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 20)
    )
    caps = OPTIMIZERS.capabilities(name)
    opt = hybrid(model, optimizer=name, lr=caps["default_lr"], adamw_lr=1e-3, **caps["extra_kwargs"])
    idx = torch.randint(0, 20, (4, 6))
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(idx).reshape(-1, 20), idx.reshape(-1)).backward()
        opt.step()
    for b, p in zip(before, model.parameters()):
        assert not torch.equal(b, p.detach())
        assert torch.isfinite(p).all()


# ---------------------------------------------------------------------------------------------------------------
# Purpose: the orthogonalized direction of one step is the float64 polar factor (within the orthogonalizer's
# documented accuracy). Used by tests/optim/test_mutants.py on deliberately broken optimizers, which must fail it.
PURPOSE_SHAPES = {"wide": (12, 20), "tall": (20, 12)}


def _well_conditioned(m: int, n: int, seed: int, kappa: float = 5.0) -> torch.Tensor:
    """``U diag(σ) Vᵀ`` with σ log-spaced in [1/κ, 1] (float64)."""
    g = torch.Generator().manual_seed(seed)
    r = min(m, n)
    U = torch.linalg.qr(torch.randn(m, r, generator=g, dtype=torch.float64)).Q
    V = torch.linalg.qr(torch.randn(n, r, generator=g, dtype=torch.float64)).Q
    s = torch.logspace(0, -torch.log10(torch.tensor(kappa)).item(), r, dtype=torch.float64)
    return (U * s) @ V.T


def _polar64(X: torch.Tensor) -> torch.Tensor:
    U, _, Vh = torch.linalg.svd(X.double(), full_matrices=False)
    return U @ Vh


def guaranteed_sigma_range(ns_method: str, ns_steps: int | None) -> tuple[float, float]:
    """Output σ-range the orthogonalizer guarantees for normalized inputs with σ in [lower, 1] (its own docs)."""
    from orthokit.linalg.coefficients import polar_express_coefficients
    from orthokit.linalg.polar import POLAR_METHODS
    from orthokit.linalg.schedules import get_schedule, validate_schedule
    from orthokit.optim.transforms import resolve_polar_method

    method, opts = resolve_polar_method(ns_method)
    if POLAR_METHODS.capabilities(method).get("exact"):
        return 1.0 - 1e-6, 1.0 + 1e-6
    if method == "polar_express":
        k = 5 if ns_steps is None else ns_steps
        coeffs = (
            get_schedule("polar_express").coefficients
            if k == 5
            else polar_express_coefficients(1e-3, k, 0.02, 0.02)
        )
        chk = validate_schedule(coeffs, lower=1e-3)
    else:
        chk = validate_schedule(opts["schedule"], ns_steps)
    return chk.out_min, chk.out_max


def check_polar_direction(factory, *, where: str = "update", seed: int = 0, steps: int = 2) -> dict:
    """Run ``steps`` steps of ``factory(named_params)`` on well-conditioned gradients and check the last step's
    orthogonalized direction against the float64 polar factor ``U Vᵀ`` of the orthogonalizer's input.

    ``where="update"`` (Muon-like): direction = ``−Δp / (lr · keller_scale)``, input = the Nesterov/EMA momentum
    re-computed here in float64 from the gradients (independent of the implementation).
    ``where="orthogonalize"``: direction = output of the chain's ``orthogonalize`` transform, input = its input
    (for methods that rescale the polar factor afterwards, e.g. NorMuon per row, AdaMuon per entry).

    Passes iff, for every shape, all singular values of the direction lie in the orthogonalizer's guaranteed
    range (± 0.02 for fp32 round-off) and the cosine with ``U Vᵀ`` is ≥ 0.99 (for orthogonalizers whose range
    starts below 0.5, the bound that range implies). Raises ``AssertionError`` otherwise.
    """
    params = {k: torch.nn.Parameter(torch.zeros(*s)) for k, s in PURPOSE_SHAPES.items()}
    opt = factory(list(params.items()))
    group = opt.param_groups[0]
    lo, hi = guaranteed_sigma_range(group.get("ns_method", "polar_express"), group.get("ns_steps"))
    grads = [
        {k: _well_conditioned(*s, seed=seed + 10 * t + i) for i, (k, s) in enumerate(PURPOSE_SHAPES.items())}
        for t in range(steps)
    ]
    tapped: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def tap(t, inputs, outputs, ps):  # noqa: ANN001
        if t.name == "orthogonalize":
            for p, i, o in zip(ps, inputs, outputs):
                tapped[id(p)] = (i.detach().double().clone(), o.detach().double().clone())

    handle = opt.register_update_tap(tap)
    before = {}
    for t in range(steps):
        tapped.clear()
        before = {k: p.detach().double().clone() for k, p in params.items()}
        for k, p in params.items():
            p.grad = grads[t][k].float()
        opt.step()
    handle.remove()
    lr = float(group["lr"])
    mu = float(group.get("momentum", 0.95))
    results = {}
    for k, p in params.items():
        m, n = p.shape
        if where == "update":
            direction = -(p.detach().double() - before[k]) / (lr * max(1.0, m / n) ** 0.5)
            M = torch.zeros(m, n, dtype=torch.float64)
            for t in range(steps):  # EMA momentum with Nesterov look-ahead (torch / Keller convention)
                M = mu * M + (1 - mu) * grads[t][k].float().double()
            U_in = (1 - mu) * grads[-1][k].float().double() + mu * M
        elif where == "orthogonalize":
            assert id(p) in tapped, "the chain has no 'orthogonalize' transform (nothing to check)"
            U_in, direction = tapped[id(p)]
        else:
            raise ValueError(f"where must be 'update' or 'orthogonalize', got {where!r}")
        P = _polar64(U_in)
        sig = torch.linalg.svdvals(direction)
        cos = float((direction * P).sum() / (direction.norm() * P.norm()))
        results[k] = (float(sig.min()), float(sig.max()), cos)
        assert lo - 0.02 <= float(sig.min()) and float(sig.max()) <= hi + 0.02, (
            f"{k}: σ of the direction in [{float(sig.min()):.4f}, {float(sig.max()):.4f}], "
            f"orthogonalizer guarantees [{lo:.4f}, {hi:.4f}]"
        )
        # 0.99 where the orthogonalizer promises a tight range (all shipped defaults: PE-5 [0.859, 1.141]);
        # for deliberately coarse ones (e.g. 1 Newton–Schulz step) the bound its σ-range implies (Kantorovich).
        need = 0.99 if lo >= 0.5 else 2 * (lo * hi) ** 0.5 / (lo + hi)
        assert cos >= need, f"{k}: cosine with the float64 polar factor U Vᵀ is {cos:.4f} < {need:.4f}"
    return results


def test_direction_is_the_polar_factor(name):
    """Every optimizer whose update is an orthogonalized direction: one step's direction ≈ float64 U Vᵀ."""
    caps = OPTIMIZERS.capabilities(name)
    direction = caps.get("direction")
    where = caps.get("direction_at")
    if direction is None:
        # Undeclared: check the orthogonalize transform of its chain if it has one (its own schedule's range).
        probe = _make(name, [torch.nn.Parameter(torch.zeros(4, 3))])
        names = [t.name for t in probe.chain(probe.param_groups[0])]
        if "orthogonalize" not in names:
            pytest.skip(f"{name}: declares no 'direction' capability and its chain has no orthogonalize step")
        where = "orthogonalize"
    elif direction != "polar":
        pytest.skip(f"{name}: direction={direction!r} is not a polar factor (tested in its own file)")
    check_polar_direction(lambda ps: _make(name, ps, weight_decay=0.0), where=where)
