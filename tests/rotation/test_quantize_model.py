"""quantize_model: weights/activations/KV on tiny Llama-family and BERT models, sequential GPTQ Hessians, errors."""

from __future__ import annotations

import copy
import functools
import importlib
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from orthokit.rotation import gptq as gptq_mod
from orthokit.rotation.quant import quantize_activation, quantize_weight
from orthokit.rotation.quantize_model import _discover_groups, quantize_model
from tests.rotation._models import tiny_ids, tiny_model, tiny_padded_inputs

# the submodule (the package exports the function of the same name)
qm_mod = importlib.import_module("orthokit.rotation.quantize_model")


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Hundreds of tiny matmuls: on a loaded 2-core host two intra-op threads make them 10-50x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _linears(m: nn.Module) -> dict[str, nn.Linear]:
    return {n: x for n, x in m.named_modules() if isinstance(x, nn.Linear)}


@pytest.mark.parametrize("family", ["llama_gqa", "bert"])
def test_rtn_weights_match_quantize_weight(family: str) -> None:
    m = tiny_model(family)
    before = {n: x.weight.detach().clone() for n, x in _linears(m).items()}
    q, rep = quantize_model(m, w_bits=3, group_size=4, sym=False)
    for n, lin in _linears(q).items():
        if n == "lm_head":
            assert torch.equal(lin.weight, before[n]) and "lm_head" in rep.skipped
            continue
        ref = quantize_weight(before[n], 3, group_size=4, sym=False)
        assert torch.equal(lin.weight.data, ref), n
        rel = float((ref.double() - before[n].double()).norm() / before[n].double().norm())
        assert rep.weight_rel_error[n] == pytest.approx(rel, rel=1e-12)
    for n, lin in _linears(m).items():  # the input model is untouched (deep copy)
        assert torch.equal(lin.weight, before[n])


def test_activation_hooks_exact_and_removable() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    x = torch.randn(5, 16)
    q, rep = quantize_model(net, w_bits=4, a_bits=4, a_sym=False, a_clip_ratio=0.9, skip=())
    w0, b0, w2, b2 = (t.detach().double() for t in (q[0].weight, q[0].bias, q[2].weight, q[2].bias))
    xa = quantize_activation(x.double(), 4, sym=False, clip_ratio=0.9)
    h = torch.relu(xa @ w0.T + b0)
    ref = quantize_activation(h, 4, sym=False, clip_ratio=0.9) @ w2.T + b2
    assert torch.allclose(q(x).double(), ref, atol=1e-5)
    assert rep.act_quantized == ["0", "2"]
    rep.remove()
    plain = torch.relu(x.double() @ w0.T + b0) @ w2.T + b2
    assert torch.allclose(q(x).double(), plain, atol=1e-5) and rep.act_quantized == []


def test_activation_ste_gradient_flows() -> None:
    net = nn.Sequential(nn.Linear(8, 4))
    q, _ = quantize_model(net, a_bits=4, skip=())
    x = torch.randn(3, 8, requires_grad=True)
    q(x).sum().backward()
    assert torch.allclose(x.grad, q[0].weight.sum(0).expand(3, 8))


def test_kv_quant_changes_scores_consistently_with_cache() -> None:
    m = tiny_model("llama_gqa")
    ids = tiny_ids(2, 12)
    fp = m(ids).logits
    q8, _ = quantize_model(m, kv_bits=8)
    q3, rep = quantize_model(m, kv_bits=3)
    assert rep.kv_quantized == ["model.layers.0.self_attn", "model.layers.1.self_attn"]
    err8 = float((q8(ids).logits - fp).norm() / fp.norm())
    err3 = float((q3(ids).logits - fp).norm() / fp.norm())
    assert 0 < err8 < 0.02 < err3, (err8, err3)
    # Per-token KV grids: incremental decoding with the cache gives the full forward's logits.
    full = q3(ids).logits
    out = q3(ids[:, :8], use_cache=True)
    step = q3(ids[:, 8:], past_key_values=out.past_key_values, use_cache=True).logits
    assert torch.allclose(step, full[:, 8:], atol=1e-5)
    rep.remove()
    assert torch.allclose(q3(ids).logits, fp, atol=1e-5)


def test_kv_spy_sees_per_head_grids(monkeypatch: pytest.MonkeyPatch) -> None:
    m = tiny_model("mistral")
    q, _ = quantize_model(m, kv_bits=2)
    seen = []
    orig = qm_mod.quantize_kv

    def spy(k, v, bits, **kw):
        kq, vq = orig(k, v, bits, **kw)
        seen.append((k.shape, kq, v.shape, vq))
        return kq, vq

    monkeypatch.setattr(qm_mod, "quantize_kv", spy)
    q(tiny_ids(1, 6))
    kshape, kq, vshape, vq = seen[0]
    assert kshape == vshape == (1, 2, 6, 16)  # (batch, kv heads, seq, head_dim)
    for t in (kq, vq):
        assert max(int(r.unique().numel()) for r in t.reshape(-1, 16)) <= 4


def test_kv_quantizer_output_v_reaches_attention(monkeypatch: pytest.MonkeyPatch) -> None:
    """The quantized V (not the original) is what attention uses: a quantizer that maps V to 0 zeroes the input
    of o_proj (no bias), and KVQuantizer returns quantize_kv's values for both K and V."""
    k, v = torch.randn(1, 2, 5, 16), torch.randn(1, 2, 5, 16)
    kq, vq = qm_mod.KVQuantizer(3)(k, v)
    rk, rv = qm_mod.quantize_kv(k, v, 3)
    assert torch.equal(kq, rk) and torch.equal(vq, rv) and not torch.equal(vq, v)
    m = tiny_model("llama_gqa")
    q, _ = quantize_model(m, kv_bits=4)
    monkeypatch.setattr(qm_mod, "quantize_kv", lambda k, v, bits, **kw: (k, torch.zeros_like(v)))
    seen = {}
    q.model.layers[0].self_attn.o_proj.register_forward_pre_hook(lambda _m, a: seen.setdefault("x", a[0]))
    q(tiny_ids(1, 6))
    assert seen["x"].abs().max() == 0


def test_group_discovery_order() -> None:
    m = tiny_model("llama")
    groups, counts = _discover_groups(
        m, {n: x for n, x in _linears(m).items() if n != "lm_head"}, {"input_ids": tiny_ids(1, 5)}
    )
    p = "model.layers.0."
    assert groups[:4] == [
        [p + "self_attn.q_proj", p + "self_attn.k_proj", p + "self_attn.v_proj"],
        [p + "self_attn.o_proj"],
        [p + "mlp.gate_proj", p + "mlp.up_proj"],
        [p + "mlp.down_proj"],
    ]
    assert len(groups) == 8 and set(counts.values()) == {1}


def _record_hessians(monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    orig = gptq_mod.gptq_quantize

    def rec(w, h, **kw):
        seen.append(h.clone())
        return orig(w, h, **kw)

    monkeypatch.setattr(qm_mod, "gptq_quantize", rec)
    return seen


@pytest.mark.parametrize(("family", "cache"), [("llama_gqa", True), ("bert", True), ("llama_gqa", False)])
def test_gptq_is_sequential(family: str, cache: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each linear's Hessian = 2/n Σ x xᵀ of its inputs in the FINAL model: every earlier group was already
    quantized when it was collected, and its own quantization cannot change its input. Padding is excluded.
    ``cache=False``: the fallback (no verified block chain) re-runs every pass from the inputs."""
    if not cache:
        monkeypatch.setattr(qm_mod, "_block_chain", lambda *_a: None)
    m = tiny_model(family)
    calib = tiny_padded_inputs(3, 10)
    seen = _record_hessians(monkeypatch)
    two = [
        {k: v[:2] for k, v in calib.items()},
        {k: v[2:] for k, v in calib.items()},
    ]  # cached block inputs x 2
    q, rep = quantize_model(m, w_bits=3, method="gptq", calib=two)
    names = list(rep.weight_rel_error)
    assert len(seen) == len(names)
    per_batch: dict[str, list[torch.Tensor]] = {}
    hooks = [
        lin.register_forward_pre_hook(lambda _m, a, n=n: per_batch.setdefault(n, []).append(a[0].detach()))
        for n, lin in _linears(q).items()
        if n in rep.weight_rel_error
    ]
    with torch.no_grad():
        for b in two:
            q(**b)
    for h in hooks:
        h.remove()
    inputs = {n: torch.cat(xs) for n, xs in per_batch.items()}
    order = {n: i for i, n in enumerate(names)}
    mask = calib["attention_mask"].double()
    for n, x in inputs.items():
        x = x.double()
        if x.dim() == 3:
            ref = (
                2.0
                / mask.numel()
                * (x * mask[..., None]).reshape(-1, x.shape[-1]).T
                @ x.reshape(-1, x.shape[-1])
            )
        else:  # BERT pooler: one token per sequence, unweighted
            ref = 2.0 / x.shape[0] * x.T @ x
        assert torch.allclose(seen[order[n]], ref, rtol=1e-9, atol=1e-9), n


def test_sequential_gptq_caches_block_inputs() -> None:
    """Block inputs are cached as in the reference: each decoder layer runs about (groups + 1) times per batch
    (4 groups on Llama), not once per group of every later layer (2·L·(L+1) from the embeddings)."""
    m = tiny_model("llama", num_hidden_layers=4)
    entries = [0]
    for (
        layer
    ) in m.model.layers:  # the first submodule a layer's computation calls (a skipped layer calls none)
        layer.input_layernorm.register_forward_pre_hook(lambda *_: entries.__setitem__(0, entries[0] + 1))
    quantize_model(m, w_bits=4, method="gptq", calib=tiny_ids(4, 8), calib_batch_size=2)
    n_layers, n_batches = 4, 2
    assert entries[0] <= n_batches * 5 * n_layers + 2 * n_layers, entries  # + group discovery and chain check


def _gptq_weights(
    model: nn.Module, calib: object, cache: bool, monkeypatch: pytest.MonkeyPatch, **kw: object
) -> dict[str, torch.Tensor]:
    """Quantized parameters with block-input caching on, or off (``cache=False``: every pass re-runs the model's
    own full forward from the inputs — the reference the cache must reproduce bit for bit)."""
    with monkeypatch.context() as mp:
        mp.setattr(qm_mod, "_sequential_gptq", functools.partial(qm_mod._sequential_gptq, cache_blocks=cache))
        q, _ = quantize_model(model, w_bits=3, method="gptq", calib=calib, **kw)
    return {n: p.detach().clone() for n, p in q.named_parameters()}


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for n in a:
        assert torch.equal(a[n], b[n]), (n, float((a[n] - b[n]).abs().max()))


def _scale_out(out: object, f: float, inplace: bool) -> object:
    h = out[0] if isinstance(out, tuple) else out
    if inplace:
        h.mul_(f)
        return None
    return (h * f, *out[1:]) if isinstance(out, tuple) else h * f


@pytest.mark.parametrize("kind", ["out_of_place", "in_place", "global"])
def test_block_cache_with_user_forward_hooks_equals_uncached(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forward hooks on decoder blocks (steering, scaling) changed the cached block outputs, and replaying them
    through ``Module.__call__`` ran the hooks a second time: other Hessians than the model's own forward
    (reviewer rC #2). Hooked models now take the uncached path; GPTQ weights equal it exactly."""
    from torch.nn.modules.module import register_module_forward_hook

    m = tiny_model("llama", num_hidden_layers=3)
    layer_cls = type(m.model.layers[0])
    if kind == "out_of_place":
        handles = [m.model.layers[0].register_forward_hook(lambda _m, _a, out: _scale_out(out, 2.0, False))]
    elif kind == "in_place":
        handles = [m.model.layers[1].register_forward_hook(lambda _m, _a, out: _scale_out(out, 0.5, True))]
    else:  # a global hook on every module, acting on the decoder layers
        handles = [
            register_module_forward_hook(
                lambda mod, _a, out: _scale_out(out, 2.0, False) if isinstance(mod, layer_cls) else None
            )
        ]
    try:
        ids = tiny_ids(4, 8)
        _assert_same(
            _gptq_weights(m, ids, True, monkeypatch, calib_batch_size=2),
            _gptq_weights(m, ids, False, monkeypatch, calib_batch_size=2),
        )
    finally:
        for h in handles:
            h.remove()


class _SharedBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(16, 32), nn.Linear(32, 16)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.down(torch.relu(self.up(h)))


class _ReusesBlock0(nn.Module):
    """Calls ``layers[0]`` twice (weight sharing): its blocks are no call-once chain."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.layers = nn.ModuleList([_SharedBlock(), _SharedBlock()])
        self.head = nn.Linear(16, 50)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.layers[0](self.layers[0](self.emb(input_ids)))
        return self.head(self.layers[1](h))


def test_block_chain_verification_refuses_a_reused_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """``_block_chain`` verifies by a forward pass that every block runs once, in order, fed by the previous one;
    a model calling block 0 twice fails it and is quantized uncached. Without the verification (reviewer rC #3's
    mutant) the second call of block 0 is replayed from the first call's output and layers[1] gets wrong inputs."""
    torch.manual_seed(0)
    net = _ReusesBlock0().eval()
    ids = torch.randint(0, 50, (4, 8), generator=torch.Generator().manual_seed(1))
    _assert_same(
        _gptq_weights(net, ids, True, monkeypatch, calib_batch_size=2, skip=("head",)),
        _gptq_weights(net, ids, False, monkeypatch, calib_batch_size=2, skip=("head",)),
    )
    assert qm_mod._block_chain(net, [["layers.0.up"], ["layers.1.up"]], {"input_ids": ids}) is None


@pytest.fixture(scope="module")
def stories():
    """stories260K (a real trained tiny Llama) and 24 sequences it samples itself (16 calibration, 8 held out)."""
    from orthokit.bench.data import DataNotFoundError, data_dir
    from orthokit.io import load_llama2c

    try:
        path = data_dir() / "models" / "stories260K.bin"
    except DataNotFoundError:
        pytest.skip("bundled data not found")
    if not path.exists():
        pytest.skip("stories260K.bin not found")
    m = load_llama2c(path)
    torch.manual_seed(0)
    with torch.no_grad():
        seqs = m.generate(torch.ones(1, 1, dtype=torch.long), do_sample=True, max_new_tokens=47,
                          num_return_sequences=24, pad_token_id=0)  # fmt: skip
    return m, seqs[:16], seqs[16:]


def _kl(m, q, ids) -> float:
    with torch.no_grad():
        lp, lq = m(ids).logits.log_softmax(-1), q(ids).logits.log_softmax(-1)
    return float((lp.exp() * (lp - lq)).sum(-1).mean())


def test_gptq_and_rsq_beat_rtn_on_stories260k(stories) -> None:
    """Real trained weights and activations (never a random model for a benefit): at W4 per-channel, GPTQ's and
    RSQ's KL to fp32 on held-out self-sampled text is well below RTN's (the no-error-feedback mutant)."""
    m, calib, held = stories
    kl = {
        meth: _kl(m, quantize_model(m, w_bits=4, method=meth, calib=calib)[0], held)
        for meth in ("rtn", "gptq", "rsq")
    }
    assert kl["gptq"] < 0.92 * kl["rtn"] and kl["rsq"] < 0.92 * kl["rtn"], kl


def test_rsq_equals_gptq_when_weights_are_flat() -> None:
    m = tiny_model("qwen2", num_hidden_layers=1)
    calib = tiny_ids(4, 10)
    a, _ = quantize_model(m, w_bits=3, method="gptq", calib=calib)
    b, rep = quantize_model(m, w_bits=3, method="rsq", calib=calib, rsq_r_min=1.0, rsq_r_max=1.0)
    c, _ = quantize_model(m, w_bits=3, method="rsq", calib=calib)
    for (n, x), y in zip(_linears(a).items(), _linears(b).values()):
        assert torch.allclose(x.weight, y.weight, atol=1e-6), n
    assert any(
        not torch.equal(x.weight, z.weight) for x, z in zip(_linears(a).values(), _linears(c).values())
    )
    assert rep.config["rsq_r_min"] == 1.0 and b.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("layer", [0, 1])
def test_rsq_hessian_uses_own_layers_attention_concentration(
    layer: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Layer ℓ's q_proj Hessian = 2/n Σ r x xᵀ with r from layer ℓ's OWN attention on its current input (earlier
    layers already quantized, layer ℓ not yet): rebuilt from ``output_attentions`` of the final model with layers
    ≥ ℓ restored to full precision. Layer 1 catches a mutant that reuses layer 0's attention everywhere."""
    m = tiny_model("llama", attn_implementation="eager")
    ids = tiny_ids(2, 9)
    seen = _record_hessians(monkeypatch)
    q, rep = quantize_model(m, w_bits=4, method="rsq", calib=ids, rsq_r_min=0.05)
    ref_model = copy.deepcopy(q)
    for n, lin in _linears(ref_model).items():
        if n.startswith("model.layers.") and int(n.split(".")[2]) >= layer:
            lin.weight.data = m.get_submodule(n).weight.data.clone()
    x0 = {}
    q_proj = ref_model.model.layers[layer].self_attn.q_proj
    h = q_proj.register_forward_pre_hook(lambda _m, a: x0.setdefault("x", a[0]))
    with torch.no_grad():
        probs = ref_model(ids, output_attentions=True).attentions[layer].double()
    h.remove()
    s = probs.sum(dim=(1, 2))  # over heads and queries
    r = (s - s.amin(1, keepdim=True)) / (s.amax(1, keepdim=True) - s.amin(1, keepdim=True)) * (
        1 - 0.05
    ) + 0.05
    r = r / r.mean(1, keepdim=True)
    x = x0["x"].double().reshape(-1, 64)
    ref = 2.0 / x.shape[0] * (x * r.reshape(-1, 1)).T @ x
    i = list(rep.weight_rel_error).index(f"model.layers.{layer}.self_attn.q_proj")
    assert torch.allclose(seen[i], ref, rtol=1e-6, atol=1e-6)  # fp32 attention probabilities
    plain = 2.0 / x.shape[0] * x.T @ x
    assert not torch.allclose(seen[i], plain, rtol=1e-2, atol=1e-2)  # the weighting matters


def test_rsq_padding_does_not_change_a_sequences_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """quantize_model passes the attention mask to AttnCon: a sequence alone and right-padded in a batch gets the
    same layer-1 token weights (layer 0 skipped, so layer 1 sees the same fp32 input in both calls)."""
    m = tiny_model("llama")
    a, b = tiny_ids(1, 8, seed=3), tiny_ids(1, 16, seed=4)
    ids = torch.cat([torch.cat([a, torch.zeros(1, 8, dtype=torch.long)], 1), b])
    mask = torch.ones_like(ids)
    mask[0, 8:] = 0
    seen: list[torch.Tensor] = []
    orig = qm_mod.rsq_token_weights

    def rec(s, mk=None, **kw):
        seen.append(orig(s, mk, **kw))
        return seen[-1]

    monkeypatch.setattr(qm_mod, "rsq_token_weights", rec)
    kw = dict(w_bits=4, method="rsq", skip=("lm_head", "model.layers.0"))
    quantize_model(m, calib=[{"input_ids": a}], **kw)
    quantize_model(m, calib=[{"input_ids": ids, "attention_mask": mask}], **kw)
    alone, padded = seen[0], seen[1]
    assert alone.shape == (1, 8) and padded.shape == (2, 16)
    assert torch.allclose(padded[0, :8], alone[0], atol=1e-5)


def test_online_rotated_inner_linear_is_quantized() -> None:
    from orthokit.rotation.online import wrap_linear
    from orthokit.rotation.registry import make_rotation

    m = tiny_model("bert")
    ids = tiny_ids(2, 8)
    wrap_linear(m.encoder.layer[0], "output.dense", make_rotation("hadamard", 128, seed=0))
    seen = {}
    inner = m.encoder.layer[0].output.dense.linear
    q, rep = quantize_model(m, w_bits=4, a_bits=4)
    assert "encoder.layer.0.output.dense.linear" in rep.weight_rel_error
    qi = q.encoder.layer[0].output.dense.linear
    assert torch.equal(qi.weight.data, quantize_weight(inner.weight.data, 4))
    qi.register_forward_hook(lambda _m, a, o: seen.update(x=a[0]))
    q(ids)
    x = seen["x"]  # the rotated, then per-token quantized input: ≤ 16 levels per token
    assert max(int(r.unique().numel()) for r in x.reshape(-1, 128)) <= 16


def test_errors_leave_model_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    m = tiny_model("llama")
    before = {n: x.weight.detach().clone() for n, x in _linears(m).items()}
    cases = [
        (dict(w_bits=1), ValueError, "w_bits"),
        (dict(a_bits=9), ValueError, "a_bits"),
        (dict(kv_bits=4.0), TypeError, "kv_bits"),
        (dict(w_bits=4, method="awq"), ValueError, "method"),
        (dict(w_bits=4, method="gptq"), ValueError, "calib"),
        (dict(w_bits=4, group_size=48), ValueError, "group_size=48 does not divide in_features=64"),
        (dict(w_bits=4, method="gptq", calib=torch.randn(2, 5)), ValueError, "calib"),
        (dict(kv_bits=4, kv_group_size=5), ValueError, "kv_group_size"),
        (dict(skip="lm_head"), TypeError, "skip"),
    ]
    for kw, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            quantize_model(m, inplace=True, **kw)
    m.model.layers[1].mlp.up_proj.weight.data[0, 0] = float("nan")
    with pytest.raises(ValueError, match="model.layers.1.mlp.up_proj"):
        quantize_model(m, w_bits=4, inplace=True)
    m.model.layers[1].mlp.up_proj.weight.data[0, 0] = before["model.layers.1.mlp.up_proj"][0, 0]
    # A failure in the middle of sequential GPTQ (inplace) restores every weight, hook and attention setting.
    calls = {"n": 0}
    orig = gptq_mod.gptq_quantize

    def flaky(w, h, **kw):
        calls["n"] += 1
        if calls["n"] == 5:
            raise ValueError("boom")
        return orig(w, h, **kw)

    monkeypatch.setattr(qm_mod, "gptq_quantize", flaky)
    with pytest.raises(ValueError, match="boom"):
        quantize_model(m, w_bits=4, a_bits=4, kv_bits=4, method="gptq", calib=tiny_ids(2, 6), inplace=True)
    for n, x in _linears(m).items():
        assert torch.equal(x.weight, before[n]), n
        assert not x._forward_pre_hooks
    assert m.config._attn_implementation == "sdpa"


def test_model_with_leftover_quantizers_is_refused() -> None:
    """A deep copy would keep an earlier call's activation hooks and KV quantizers where no report can remove
    them: such a model is refused (copy or inplace) until the earlier report's remove()."""
    m = tiny_model("llama")
    ids = tiny_ids(2, 10)
    fp = m(ids).logits
    q1, r1 = quantize_model(m, a_bits=4, kv_bits=4)
    for kw in (dict(), dict(inplace=True), dict(w_bits=4, method="gptq", calib=ids)):
        with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn .*QuantReport\.remove"):
            quantize_model(q1, **kw)
    qa, ra = quantize_model(m, a_bits=4)  # activation hooks alone are found too
    with pytest.raises(ValueError, match="activation quantizer"):
        quantize_model(qa)
    r1.remove()
    q2, r2 = quantize_model(q1, w_bits=16)
    assert torch.allclose(q2(ids).logits, fp, atol=1e-5)  # nothing left on the copy
    w4, _ = quantize_model(m, w_bits=4)  # quantized weights carry no hook: accepted
    w4a8, r3 = quantize_model(w4, a_bits=8)
    assert r3.act_quantized


def test_inplace_and_summary() -> None:
    m = tiny_model("llama_tied")
    ids = tiny_ids(2, 8)
    q, rep = quantize_model(m, w_bits=4, a_bits=8, kv_bits=4, inplace=True, w_clip=True)
    assert q is m and m.model.embed_tokens.weight is m.lm_head.weight  # skipped tied head stays tied
    assert "W4A8KV4" in rep.summary() and 0 < rep.mean_weight_rel_error < 0.2
    assert torch.isfinite(m(ids).logits).all()


def test_after_rotate_model_quantizes_inner_linears_and_rotated_kv() -> None:
    from orthokit.rotation.rewrite import rotate_model

    m = tiny_model("llama_gqa")
    ids = tiny_ids(2, 10)
    fp = m(ids).logits
    r, _ = rotate_model(m, "hadamard", seed=0)
    same, rep16 = quantize_model(r)
    assert torch.allclose(same(ids).logits, fp, rtol=1e-4, atol=1e-4) and not rep16.weight_rel_error
    q, rep = quantize_model(r, w_bits=8, a_bits=8, kv_bits=8, method="gptq", calib=tiny_ids(4, 12, seed=5))
    assert (
        "model.layers.0.mlp.down_proj.linear" in rep.weight_rel_error
    )  # the online-rotated down_proj's inner linear
    attn = q.model.layers[0].self_attn
    assert attn._orthokit_qk_rotation is not None and attn._orthokit_kv_quant is not None
    err = float((q(ids).logits - fp).norm() / fp.norm())
    assert 0 < err < 0.05, err


class _TwoBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used, self.unused = nn.Linear(12, 6), nn.Linear(12, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x)


def test_gptq_on_any_module_with_rtn_fallback_for_uncalled_linears() -> None:
    torch.manual_seed(0)
    m = _TwoBranch()
    x = torch.randn(64, 12) @ torch.randn(12, 12)
    q, rep = quantize_model(m, w_bits=3, method="gptq", calib=[{"x": x}], skip=())
    h = 2.0 / 64 * x.double().T @ x.double()
    assert torch.allclose(q.used.weight, gptq_mod.gptq_quantize(m.used.weight.data, h, 3), atol=1e-6)
    assert torch.equal(q.unused.weight.data, quantize_weight(m.unused.weight.data, 3))
    assert rep.config["rtn_fallback"] == ["unused"]
