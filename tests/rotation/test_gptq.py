"""GPTQ against an independent float64 Optimal-Brain-Quantization reference (explicit inverse + Schur updates)."""

from __future__ import annotations

import pytest
import torch

from orthokit.rotation.gptq import HessianAccumulator, gptq_quantize
from orthokit.rotation.quant import fake_quantize, find_qparams, quantize_weight


def _obq_reference(
    w, h, bits, *, group_size=None, sym=True, percdamp=0.01, act_order=False, static_groups=False
):
    """Column-by-column OBQ in float64: full H⁻¹, error feedback to all later columns, Schur-complement removal."""
    W = w.to(torch.float64).clone()
    H = h.to(torch.float64).clone()
    n = W.shape[1]
    params = find_qparams(W, bits, sym=sym) if group_size is None else None
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    static = (
        [find_qparams(W[:, i : i + group_size], bits, sym=sym) for i in range(0, n, group_size)]
        if static_groups
        else []
    )
    order = list(range(n))
    if act_order:
        order = torch.argsort(torch.diagonal(H), descending=True, stable=True).tolist()
    W = W[:, order]
    H = H[order][:, order]
    H = H + percdamp * torch.diagonal(H).mean() * torch.eye(n, dtype=torch.float64)
    Hinv = torch.linalg.inv(H)
    Q = torch.zeros_like(W)
    for j in range(n):
        if group_size is not None:
            if static_groups:
                params = static[order[j] // group_size]
            elif j % group_size == 0:
                params = find_qparams(W[:, j : j + group_size], bits, sym=sym)
        q = fake_quantize(W[:, j : j + 1], *params, bits, sym=sym)[:, 0]
        Q[:, j] = q
        d = Hinv[j, j]
        W[:, j:] -= torch.outer((W[:, j] - q) / d, Hinv[j, j:])
        Hinv = Hinv - torch.outer(Hinv[:, j], Hinv[j, :]) / d
    out = torch.empty_like(Q)
    out[:, order] = Q
    return out


def _problem(seed: int, rows: int = 8, cols: int = 24, dead: int | None = None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(400, cols, generator=g, dtype=torch.float64) @ torch.randn(
        cols, cols, generator=g, dtype=torch.float64
    )
    x = x * torch.linspace(0.2, 3.0, cols, dtype=torch.float64)  # unequal diagonal: act_order permutes
    if dead is not None:
        x[:, dead] = 0.0
    w = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    acc = HessianAccumulator(cols)
    acc.add(x)
    return x, w, acc.hessian


CONFIGS = [
    dict(),
    dict(sym=False),
    dict(act_order=True),
    dict(group_size=6),  # groups cross the block boundaries (block_size=5)
    dict(group_size=6, sym=False, act_order=True),
    dict(group_size=8, act_order=True, static_groups=True),
]


def _agrees(impl, cfg, seed=0, bits=3, block_size=5, dead=None) -> bool:
    _, w, h = _problem(seed, dead=dead)
    got = impl(w, h, bits, block_size=block_size, **cfg)
    ref = _obq_reference(w, h, bits, **cfg)
    return bool(torch.allclose(got, ref, rtol=0, atol=1e-10))


@pytest.mark.parametrize(
    "cfg", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default"
)
def test_matches_obq_reference(cfg) -> None:
    assert _agrees(gptq_quantize, cfg)
    assert _agrees(gptq_quantize, cfg, seed=1, bits=4, block_size=128)


def test_mutant_without_error_feedback_is_caught() -> None:
    def no_feedback(w, h, bits, *, block_size, group_size=None, sym=True, **_):
        return quantize_weight(w, bits, group_size=group_size, sym=sym)

    assert not _agrees(no_feedback, {})
    assert not _agrees(no_feedback, {"group_size": 6})


def test_mutant_undamped_is_caught() -> None:
    def undamped(w, h, bits, **kw):
        return gptq_quantize(w, h, bits, **{**kw, "percdamp": 0.0})

    assert not _agrees(undamped, {})


def test_dead_columns() -> None:
    _, w, h = _problem(2, dead=3)
    assert h[3, 3] == 0
    q = gptq_quantize(w, h, 4, block_size=5)
    assert bool((q[:, 3] == 0).all())
    assert torch.allclose(q, _obq_reference(w, h, 4), rtol=0, atol=1e-10)


def test_act_order_restores_column_order() -> None:
    # Diagonal H: no cross-column feedback, so any processing order must give plain RTN in the original order.
    w = torch.randn(6, 16, dtype=torch.float64)
    h = torch.diag(torch.rand(16, dtype=torch.float64) + 0.1)
    assert torch.allclose(gptq_quantize(w, h, 3, act_order=True), quantize_weight(w, 3), rtol=0, atol=1e-12)


def test_layer_output_error_beats_rtn() -> None:
    x, w, h = _problem(5, rows=32, cols=48)
    for bits, gs in ((3, None), (4, None), (3, 16)):
        rtn = (x @ (w - quantize_weight(w, bits, group_size=gs)).T).norm()
        gq = (x @ (w - gptq_quantize(w, h, bits, group_size=gs)).T).norm()
        assert gq < 0.9 * rtn, (bits, gs, float(gq / rtn))


def test_dtype_and_input_untouched() -> None:
    _, w, h = _problem(3)
    w32, h0 = w.float(), h.clone()
    q = gptq_quantize(w32, h, 4, clip=True)
    assert q.dtype == torch.float32 and torch.equal(h, h0) and torch.equal(w32, w.float())


def test_hessian_accumulator_matches_closed_form() -> None:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(3, 10, 6, generator=g)
    r = torch.rand(3, 10, generator=g)
    acc, acc_split = HessianAccumulator(6), HessianAccumulator(6)
    acc.add(x, r)
    acc_split.add(x[:1], r[:1])
    acc_split.add(x[1:], r[1:])
    xd = x.reshape(-1, 6).double()
    ref = 2.0 / 30 * (xd * r.reshape(-1, 1).double()).T @ xd
    assert torch.allclose(acc.hessian, ref, rtol=1e-12, atol=1e-12)
    assert torch.allclose(acc_split.hessian, ref, rtol=1e-12, atol=1e-12)
    assert acc.n_tokens == 30


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        (dict(bits=1), "bits"),
        (dict(group_size=5), "group_size"),
        (dict(block_size=0), "block_size"),
        (dict(static_groups=True), "static_groups"),
        (dict(percdamp=-0.1), "percdamp"),
        (dict(hessian=torch.zeros(3, 3)), "hessian"),
        (dict(weight=torch.tensor([[float("nan")] * 8])), "non-finite"),
        (dict(hessian=-torch.eye(8), percdamp=0.0), "positive definite"),
    ],
)
def test_errors(kw, msg) -> None:
    args = dict(weight=torch.randn(2, 8), hessian=torch.eye(8), bits=4)
    args.update(kw)
    with pytest.raises(ValueError, match=msg):
        gptq_quantize(args.pop("weight"), args.pop("hessian"), args.pop("bits"), **args)


def test_accumulator_errors() -> None:
    acc = HessianAccumulator(4)
    with pytest.raises(ValueError, match="n_features"):
        acc.add(torch.randn(2, 3))
    with pytest.raises(ValueError, match="weights"):
        acc.add(torch.randn(2, 4), torch.tensor([1.0, -1.0]))
    assert acc.n_tokens == 0
