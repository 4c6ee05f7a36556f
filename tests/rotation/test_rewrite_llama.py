"""Llama-family rewriter: the pure functional core, rotate_model's report, rollback and hostile inputs.

References are the unrotated model itself (computational invariance: the rotated model must compute the same
function) and float64 closed forms (``E Q``, ``h Q``); nothing is compared with its own implementation.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch.func import functional_call

from orthokit.rotation._functional import fuse_llama_norms, llama_dims, rotate_llama_params
from orthokit.rotation.attention import ATTN_NAME
from orthokit.rotation.llama import UnrotatedFinalNorm, check_llama
from orthokit.rotation.online import OnlineRotatedLinear
from orthokit.rotation.rewrite import relative_error, rewriter_for, rotate_model
from tests.rotation._models import DECODERS, tiny_ids, tiny_model


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).abs().max() / b.detach().double().abs().max())


def _haar(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_unchanged(model: torch.nn.Module, before: dict[str, torch.Tensor], impl: str, tied: bool) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    assert not any(isinstance(m, (OnlineRotatedLinear, UnrotatedFinalNorm)) for m in model.modules())
    assert not any(k.startswith("_orthokit") for m in model.modules() for k in m.__dict__)
    assert model.config._attn_implementation == impl
    if hasattr(model, "lm_head"):
        assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied


# ----------------------------------------------------------------------------------------------- functional core
@pytest.mark.parametrize("family", DECODERS)
def test_rotate_llama_params_exact_with_r2_and_all_scales(family: str) -> None:
    model = tiny_model(family).double()
    ids = tiny_ids()
    ref = model(ids).logits
    fuse_llama_norms(model)
    d = llama_dims(model.config)
    g = torch.Generator().manual_seed(5)

    def pos(n: int) -> torch.Tensor:
        return torch.rand(n, generator=g, dtype=torch.float64) * 1.5 + 0.25

    norm_scales = {
        f"layers.{i}.{n}": pos(d.hidden)
        for i in range(d.n_layers)
        for n in ("input_layernorm", "post_attention_layernorm")
    }
    norm_scales["norm"] = pos(d.hidden)
    params = {k: v.clone() for k, v in model.state_dict().items()}
    new = rotate_llama_params(
        params,
        model.config,
        _haar(d.hidden, 1),
        _haar(d.head_dim, 2),
        norm_scales=norm_scales,
        ffn_scales={i: pos(d.intermediate) for i in range(d.n_layers)},
        ov_scales={i: pos(d.head_dim * d.n_kv_heads) for i in range(d.n_layers)},
    )
    for k, v in params.items():  # inputs untouched
        assert torch.equal(v, model.state_dict()[k])
    model.load_state_dict(new)
    # HF's RMSNorm computes in float32 even in a float64 model: agreement is to ~1e-7, not 1e-15
    assert _rel(model(ids).logits, ref) < 1e-5


@pytest.mark.parametrize("as_list", [False, True])
def test_per_layer_r2_matches_closed_form_and_is_exact_through_rotate_model(as_list: bool) -> None:
    """SpinQuant's R2 is one matrix PER LAYER: layer i's v_proj rows of kv head g become R2_iᵀ W_g (γ folded)."""
    from orthokit.rotation.registry import make_rotation

    model = tiny_model("llama_gqa")
    d = llama_dims(model.config)
    mats = torch.stack([_haar(d.head_dim, 10 + i) for i in range(d.n_layers)])
    r2 = [make_rotation(m, d.head_dim) for m in mats] if as_list else mats
    ids = tiny_ids()
    ref = model(ids).logits
    rotated, rep = rotate_model(model, "identity", r2=r2, online=())
    assert rep.checked and rep.max_rel_error < 1e-5
    assert sorted(k for k in rep.rotations if k.startswith("R2")) == ["R2.layers.0", "R2.layers.1"]
    assert _rel(rotated(ids).logits, ref) < 1e-5
    for i in range(d.n_layers):
        layer = model.model.layers[i]
        w = (layer.self_attn.v_proj.weight * layer.input_layernorm.weight).detach().double()
        want = torch.einsum("ji,gjk->gik", mats[i], w.reshape(d.n_kv_heads, d.head_dim, -1)).reshape(w.shape)
        got = rotated.model.layers[i].self_attn.v_proj.weight.detach().double()
        assert float((got - want).abs().max()) < 1e-6, i
    other = rotated.model.layers[1].self_attn.v_proj.weight.detach().double()
    layer1 = model.model.layers[1]
    w1 = (layer1.self_attn.v_proj.weight * layer1.input_layernorm.weight).detach().double()
    shared = torch.einsum("ji,gjk->gik", mats[0], w1.reshape(d.n_kv_heads, d.head_dim, -1)).reshape(w1.shape)
    assert float((other - shared).abs().max()) > 1e-2  # layer 1 did not get layer 0's R2


@pytest.mark.parametrize(
    ("r2", "exc", "match"),
    [
        (torch.stack([torch.eye(16)] * 3), ValueError, r"r2: per-layer tensor must have shape \(2, 16, 16\)"),
        ([torch.eye(16)], ValueError, r"r2: expected one rotation per layer \(2\), got 1"),
        ([torch.eye(16), torch.ones(16, 16)], ValueError, r"r2\[1\]: .*orthogonal"),
        ([torch.eye(16), "x"], TypeError, r"r2\[1\]: expected"),
    ],
)
def test_per_layer_r2_bad_values_are_named(r2: object, exc: type, match: str) -> None:
    model = tiny_model("llama_gqa")
    before = _state(model)
    with pytest.raises(exc, match=match):
        rotate_model(model, r2=r2, inplace=True)
    _assert_unchanged(model, before, "sdpa", tied=False)
    with pytest.raises(ValueError, match="r2: per-layer"):
        rotate_model(tiny_model("bert"), r2=torch.stack([torch.eye(16)] * 2))


def test_rotate_llama_params_is_not_a_noop_and_matches_closed_form() -> None:
    model = tiny_model("llama_gqa").double()
    fuse_llama_norms(model)
    q = _haar(64, 3)
    before = model.state_dict()
    new = rotate_llama_params(dict(before), model.config, q)
    emb = before["model.embed_tokens.weight"]
    torch.testing.assert_close(new["model.embed_tokens.weight"], emb @ q)
    wo = before["model.layers.1.self_attn.o_proj.weight"]
    torch.testing.assert_close(new["model.layers.1.self_attn.o_proj.weight"], q.T @ wo)
    assert not torch.allclose(new["model.embed_tokens.weight"], emb)


def test_rotate_llama_params_gradients_flow_into_r1_r2_and_scales() -> None:
    model = tiny_model("llama_gqa")
    fuse_llama_norms(model)
    d = llama_dims(model.config)
    r1 = _haar(d.hidden, 1).float().requires_grad_()
    r2 = _haar(d.head_dim, 2).float().requires_grad_()
    s = torch.ones(d.intermediate, requires_grad=True)
    params = {k: v.detach() for k, v in model.state_dict().items()}
    new = rotate_llama_params(params, model.config, r1, r2, ffn_scales={0: s})
    out = functional_call(model, new, (tiny_ids(),))
    out.logits.pow(2).mean().backward()
    for t in (r1, r2, s):
        assert t.grad is not None and bool(torch.isfinite(t.grad).all()) and float(t.grad.abs().max()) > 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"r1": torch.eye(3, dtype=torch.float64)}, "r1: expected shape"),
        ({"r2": torch.eye(5, dtype=torch.float64)}, "r2: expected shape"),
        (
            {"r2": torch.eye(16, dtype=torch.float64).expand(3, 16, 16)},
            r"r2: per-layer tensor must have shape",
        ),
        (
            {"r2": [torch.eye(16, dtype=torch.float64), torch.eye(5, dtype=torch.float64)]},
            r"r2\[1\]: expected",
        ),
        ({"norm_scales": {"layers.9.input_layernorm": torch.ones(64)}}, "norm_scales: unknown key"),
        ({"norm_scales": {"norm": -torch.ones(64)}}, "finite and positive"),
        ({"ffn_scales": {0: torch.ones(3)}}, r"ffn_scales\[0\]: expected a tensor of shape"),
        ({"ov_scales": {7: torch.ones(32)}}, "ov_scales: layer index 7"),
    ],
)
def test_rotate_llama_params_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    model = tiny_model("llama_gqa")
    args = {"r1": torch.eye(64, dtype=torch.float64), **kwargs}
    r1 = args.pop("r1")
    with pytest.raises(ValueError, match=match):
        rotate_llama_params(model.state_dict(), model.config, r1, **args)


def test_fuse_llama_norms_unties_sets_unit_gains_and_is_idempotent() -> None:
    model = tiny_model("qwen2")
    ids = tiny_ids()
    ref = model(ids).logits
    assert model.lm_head.weight is model.model.embed_tokens.weight
    fuse_llama_norms(model)
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    assert not model.config.tie_word_embeddings
    assert all(bool(m.weight.eq(1).all()) for n, m in model.named_modules() if n.endswith("norm"))
    once = _state(model)
    fuse_llama_norms(model)
    assert all(torch.equal(once[k], v) for k, v in model.state_dict().items())
    assert _rel(model(ids).logits, ref) < 1e-5


# ----------------------------------------------------------------------------------------------- rotate_model
def test_rotate_model_report_sites_and_rotations() -> None:
    model = tiny_model("llama_gqa")
    rotated, rep = rotate_model(model, "hadamard", seed=0)
    assert (
        rep.family == "llama" and rep.checked and rep.max_rel_error is not None and rep.max_rel_error < 1e-4
    )
    assert sorted(rep.rotations) == ["R1", "R2", "R3", "R4"]
    assert rep.rotations["R4"].n == 172 and "88 ⊕ 84" in repr(
        rep.rotations["R4"]
    )  # block-diagonal, no padding
    assert sum("R4 online" in s for s in rep.online) == 2 and sum("R3" in s for s in rep.online) == 2
    assert isinstance(rotated.model.layers[0].mlp.down_proj, OnlineRotatedLinear)
    assert rotated.config._attn_implementation == ATTN_NAME
    assert rotated.model.layers[1].self_attn._orthokit_qk_rotation is rep.rotations["R3"]
    d = rep.to_dict()
    assert json.loads(json.dumps(d))["rotations"]["R1"]["n"] == 64
    assert "proof: max rel error" in rep.summary()
    assert model.config._attn_implementation == "sdpa"  # the input (not inplace) is untouched


def test_rotated_residual_stream_is_h_times_r1() -> None:
    """Closed form: every intermediate hidden state of the rotated model is the original one times R1."""
    model = tiny_model("llama")
    q = _haar(64, 7)
    rotated, _ = rotate_model(model, q, online=(), r2=False)
    ids = tiny_ids()
    h0 = model(ids, output_hidden_states=True).hidden_states
    h1 = rotated(ids, output_hidden_states=True).hidden_states
    for a, b in zip(h0[:-1], h1[:-1], strict=True):  # the last entry is after the final norm (fused gain)
        assert _rel(b, a.double() @ q) < 1e-5
    assert _rel(h1[1], h0[1]) > 0.1  # really rotated


def test_rotate_model_inplace_returns_same_object() -> None:
    model = tiny_model("llama_tied")
    ids = tiny_ids()
    ref = model(ids).logits
    out, rep = rotate_model(model, "haar", seed=2, inplace=True)
    assert out is model and rep.checked
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    assert _rel(model(ids).logits, ref) < 1e-4


def test_rotate_model_headless_llama_model() -> None:
    model = tiny_model("llama_gqa", model_class="LlamaModel")
    ids = tiny_ids()
    ref = model(ids).last_hidden_state
    rotated, rep = rotate_model(model, "haar", seed=1)
    assert isinstance(rotated.norm, UnrotatedFinalNorm) and any("norm [R1ᵀ online" in s for s in rep.online)
    assert _rel(rotated(ids).last_hidden_state, ref) < 1e-4


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_rotate_model_half_precision_runs_proof_in_fp32(dtype: torch.dtype) -> None:
    model = tiny_model("llama", dtype=dtype)
    rotated, rep = rotate_model(model, "hadamard")
    assert rep.checked and rep.max_rel_error < 1e-4
    assert rotated.model.embed_tokens.weight.dtype == dtype
    ids = tiny_ids()
    ref, got = model.float()(ids).logits, rotated.float()(ids).logits
    assert _rel(got, ref) < 0.05  # half-precision weight rounding only


@pytest.mark.parametrize("inplace", [False, True])
def test_half_precision_cast_back_overflow_is_refused_and_rolled_back(inplace: bool) -> None:
    """fp16 embedding row ±9000 (representable) aligned with R1's first column becomes 72000 -> inf on cast-back;
    the float32 proof twin cannot see it, the check of the returned half model must."""
    from orthokit.rotation.registry import make_rotation

    model = tiny_model("llama")
    q = make_rotation("hadamard", 64, seed=0).matrix(torch.float64)
    with torch.no_grad():
        model.model.embed_tokens.weight[5] = (72000.0 * q[:, 0]).float()
    model = model.half()
    assert bool(torch.isfinite(model.model.embed_tokens.weight).all())
    before = _state(model)
    with pytest.raises(
        ValueError, match="rotate_model: rotated parameter model.embed_tokens.weight is not finite"
    ):
        rotate_model(model, "hadamard", seed=0, online=(), inplace=inplace)
    _assert_unchanged(model, before, "sdpa", tied=False)
    with pytest.raises(ValueError, match="not finite"):  # also without the proof
        rotate_model(model, "hadamard", seed=0, online=(), check=False, inplace=inplace)
    _assert_unchanged(model, before, "sdpa", tied=False)


def test_rotate_model_custom_inputs_and_check_false() -> None:
    model = tiny_model("mistral")
    ids = tiny_ids(1, 9, seed=4)
    _, rep = rotate_model(model, inputs=ids)
    assert rep.checked
    _, rep = rotate_model(model, inputs={"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    assert rep.checked
    _, rep = rotate_model(model, check=False)
    assert not rep.checked and rep.max_rel_error is None


def test_kv_skipped_for_unsupported_attention_kernel() -> None:
    model = tiny_model("llama")
    model.config._attn_implementation = "flash_attention_2"
    rotated, rep = rotate_model(model, check=False)
    assert "R3" not in rep.rotations and "flash_attention_2" in rep.skipped["R3"]
    assert rotated.config._attn_implementation == "flash_attention_2"


def test_relative_error_is_inf_on_nan() -> None:
    ref = [[torch.ones(2, 3)]]
    assert relative_error(ref, [[torch.full((2, 3), float("nan"))]]) == float("inf")
    assert relative_error(ref, [[torch.ones(2, 3) * 1.5]]) == pytest.approx(0.5)


# ----------------------------------------------------------------------------------------------- hostile inputs
def _gemma2() -> torch.nn.Module:
    import transformers as tf

    cfg = tf.Gemma2Config(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        intermediate_size=48,
    )
    return tf.Gemma2ForCausalLM(cfg).eval()


def _qwen3() -> torch.nn.Module:
    import transformers as tf

    cfg = tf.Qwen3Config(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        intermediate_size=48,
    )
    return tf.Qwen3ForCausalLM(cfg).eval()


def _gpt2() -> torch.nn.Module:
    import transformers as tf

    return tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2)).eval()


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (_gemma2, "layers.0 is not a pre-norm Llama block"),
        (_qwen3, r"self_attn has unsupported modules \['k_norm', 'q_norm'\]"),
        (_gpt2, "GPT2LMHeadModel is not supported"),
    ],
)
def test_unsupported_architectures_are_refused_by_name(build, match: str) -> None:
    model = build()
    before = _state(model)
    with pytest.raises(ValueError, match=match):
        rotate_model(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_gemma_style_one_plus_gain_norm_fails_the_probe() -> None:
    model = tiny_model("llama")

    class OnePlus(torch.nn.Module):
        def __init__(self, w: torch.Tensor) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(w)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (1 + self.weight) * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)

    model.model.layers[1].post_attention_layernorm = OnePlus(torch.zeros(64))
    with pytest.raises(
        ValueError, match=r"layers.1.post_attention_layernorm does not compute γ ⊙ x / rms\(x\)"
    ):
        check_llama(model)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"rotation": torch.ones(64, 64)}, ValueError, "orthogonal"),
        ({"rotation": torch.eye(32)}, ValueError, r"\(64, 64\)"),
        ({"rotation": "nope"}, ValueError, "nope"),
        ({"online": ("down_proj", "linears")}, ValueError, r"online: unknown Llama site\(s\) \['linears'\]"),
        ({"online": 3}, TypeError, "online:"),
        ({"r2": torch.ones(16, 16)}, ValueError, "orthogonal"),
        ({"r2": "yes"}, TypeError, "r2:"),
        ({"rtol": -1.0}, ValueError, "rtol:"),
        ({"seed": 1.5}, TypeError, "seed:"),
        ({"scales": {"bogus": 1}}, ValueError, "scales: unknown key"),
        ({"scales": {"ffn_scales": {0: -torch.ones(172)}}}, ValueError, "positive"),
        ({"inputs": [1, 2]}, TypeError, "inputs:"),
        ({"inputs": torch.ones(2, 3)}, ValueError, "inputs:"),
        ({"inputs": torch.tensor([[300, 1]])}, ValueError, r"inputs: token ids must lie in \[0, 256\)"),
        (
            {"inputs": {"input_ids": tiny_ids(1, 4), "attention_mask": torch.zeros(1, 4, dtype=torch.long)}},
            ValueError,
            "inputs: attention_mask is all zeros",
        ),
        ({"r2": torch.eye(8)}, ValueError, r"r2: .*\(16, 16\)"),
    ],
)
@pytest.mark.parametrize("inplace", [False, True])
def test_hostile_arguments_raise_one_line_and_leave_model_untouched(
    kwargs: dict, exc: type, match: str, inplace: bool
) -> None:
    model = tiny_model("llama_tied")
    before = _state(model)
    with pytest.raises(exc, match=match) as info:
        rotate_model(model, inplace=inplace, **kwargs)
    assert "\n" not in str(info.value)
    _assert_unchanged(model, before, "sdpa", tied=True)


def test_nan_weights_are_refused() -> None:
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[3, 5] = float("nan")
    with pytest.raises(
        ValueError, match=r"model: parameter model.layers.0.mlp.up_proj.weight has non-finite"
    ):
        rotate_model(model)


def test_rotating_twice_is_refused() -> None:
    rotated, _ = rotate_model(tiny_model("llama"))
    with pytest.raises(ValueError, match="already online-rotated"):
        rotate_model(rotated)
    assert rewriter_for(tiny_model("bert")) == "bert"


def test_bert_rejects_scales() -> None:
    with pytest.raises(ValueError, match="scales: OstQuant"):
        rotate_model(tiny_model("bert"), scales={"ffn_scales": {}})


def test_deepcopy_of_rotated_model_still_exact() -> None:
    model = tiny_model("qwen2")
    rotated, _ = rotate_model(model)
    clone = copy.deepcopy(rotated)
    ids = tiny_ids()
    assert _rel(clone(ids).logits, model(ids).logits) < 1e-4


@pytest.mark.parametrize("family", ["llama_tied", "bert"])
def test_failed_proof_inplace_restores_every_object(family: str) -> None:
    """An impossible tolerance makes the proof fail after a complete in-place rewrite: everything comes back."""
    model = tiny_model(family)
    modules = dict(model.named_modules())
    params = {k: (p, p.detach().clone()) for k, p in model.named_parameters(remove_duplicate=False)}
    with pytest.raises(ValueError, match="equivalence check failed"):
        rotate_model(model, "haar", rtol=1e-30, inplace=True)
    assert dict(model.named_modules()) == modules  # the same module objects at the same paths
    for k, p in model.named_parameters(remove_duplicate=False):
        assert p is params[k][0] and torch.equal(p, params[k][1]), k
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize(
    ("family", "model_class", "extra"),
    [("llama_gqa", "LlamaForSequenceClassification", {"num_labels": 3}), ("bert", "BertForMaskedLM", {})],
)
def test_other_head_classes(family: str, model_class: str, extra: dict) -> None:
    model = tiny_model(family, model_class=model_class, **extra)
    ids = tiny_ids()
    ref = model(ids).logits
    rotated, rep = rotate_model(model, "haar", seed=2)
    assert rep.max_rel_error < 1e-4 and _rel(rotated(ids).logits, ref) < 1e-4
