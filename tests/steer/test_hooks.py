"""The hook machinery of orthokit.steer: block discovery, tuple/tensor outputs, dtype, positions, removal, errors."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn

from orthokit.steer._hooks import Steerer, SteeringHandle, as_direction, residual_layers, steer
from orthokit.steer.addition import ActivationAddition

from ._models import FAMILIES, HIDDEN, tiny_ids, tiny_model


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    return {f: tiny_model(f) for f in FAMILIES}


def _states_after(model: nn.Module, ids: Tensor) -> list[Tensor]:
    """Reference residual states after each block, from output_hidden_states (entries 1..L-1 are raw)."""
    with torch.no_grad():
        return list(model(ids, output_hidden_states=True).hidden_states)


def _nhooks(model: nn.Module) -> list[int]:
    """Forward hooks per block (transformers 5 installs its own output-capturing hooks on first use)."""
    return [len(b._forward_hooks) for b in residual_layers(model)]


EXPECTED_PATH = {
    "llama": "model.layers",
    "gpt2": "transformer.h",
    "gpt_neox": "gpt_neox.layers",
    "qwen2": "model.layers",
}


@pytest.mark.parametrize("family", FAMILIES)
def test_residual_layers_finds_the_decoder_blocks(models: dict[str, nn.Module], family: str) -> None:
    model = models[family]
    blocks = residual_layers(model)
    expected = list(model.get_submodule(EXPECTED_PATH[family]))
    assert len(blocks) == 2 and all(a is b for a, b in zip(blocks, expected))


def test_residual_layers_errors() -> None:
    with pytest.raises(ValueError, match="no .config"):
        residual_layers(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        residual_layers("model")  # type: ignore[arg-type]

    class Fake(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = type("C", (), {"num_hidden_layers": 3})()
            self.blocks = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])

    with pytest.raises(ValueError, match="num_hidden_layers=3"):
        residual_layers(Fake())


@pytest.mark.parametrize("family", FAMILIES)
def test_addition_hook_shifts_the_block_output_exactly(models: dict[str, nn.Module], family: str) -> None:
    """After steering block 0, its output equals the unsteered output + α r̂ (closed form, all positions)."""
    model = models[family]
    ids = tiny_ids()
    r = torch.randn(HIDDEN, generator=torch.Generator().manual_seed(3))
    base = _states_after(model, ids)
    captured: dict[str, Tensor] = {}
    blocks = residual_layers(model)
    with steer(model, "addition", direction=r, alpha=2.5, layers=[0]):
        # a hook registered after the steerer sees the steered output (composition in registration order)
        h = blocks[0].register_forward_hook(
            lambda m, a, o: captured.__setitem__("h", o[0] if isinstance(o, tuple) else o)
        )
        with torch.no_grad():
            model(ids)
        h.remove()
    expected = base[1] + 2.5 * r / r.norm()
    torch.testing.assert_close(captured["h"], expected, rtol=0, atol=1e-5)


def test_positions_last_edits_only_the_last_position(models: dict[str, nn.Module]) -> None:
    model = models["llama"]
    ids = tiny_ids()
    r = torch.randn(HIDDEN, generator=torch.Generator().manual_seed(4))
    base = _states_after(model, ids)
    out: dict[str, Tensor] = {}
    blocks = residual_layers(model)
    with steer(model, ActivationAddition(r, alpha=3.0), layers=[0], positions="last"):
        h = blocks[0].register_forward_hook(lambda m, a, o: out.__setitem__("h", o))
        with torch.no_grad():
            model(ids)
        h.remove()
    torch.testing.assert_close(out["h"][:, :-1], base[1][:, :-1], rtol=0, atol=0)
    torch.testing.assert_close(out["h"][:, -1], base[1][:, -1] + 3.0 * r / r.norm(), rtol=0, atol=1e-5)


def test_positions_last_with_kv_cache_generation_edits_every_new_token(models: dict[str, nn.Module]) -> None:
    """With a KV cache each decoding forward holds one token: "last" edits the last prompt token, then each new one."""
    model = models["llama"]
    ids = tiny_ids(1, 5)
    r = torch.randn(HIDDEN, generator=torch.Generator().manual_seed(5))
    kw = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        plain = model.generate(ids, **kw)
        with steer(model, "addition", direction=r, alpha=40.0, layers=[1], positions="last"):
            last = model.generate(ids, **kw)
        # the same edits without a cache: the full sequence re-run, editing the last position each time
        seq = ids
        for _ in range(4):
            with steer(model, "addition", direction=r, alpha=40.0, layers=[1], positions="last"):
                nxt = model(seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    # editing the LAST block's output changes no cached K/V (they are computed from block inputs), so the cached
    # generation editing each new token equals the uncached re-runs editing the last position, token for token
    assert not torch.equal(plain, last)
    assert torch.equal(last, seq)


def test_tuple_and_tensor_block_outputs() -> None:
    """Blocks returning a tuple (older transformers) are edited on element 0; the rest passes through."""

    class TupleBlock(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x: Tensor) -> tuple[Tensor, str]:
            return self.lin(x), "extra"

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = type("C", (), {"num_hidden_layers": 1})()
            self.layers = nn.ModuleList([TupleBlock()])

        def forward(self, x: Tensor) -> tuple[Tensor, str]:
            return self.layers[0](x)

    m = Model()
    x = torch.randn(3, 4)
    ref, _ = m(x)
    with steer(m, "addition", direction=torch.tensor([1.0, 0, 0, 0]), alpha=2.0):
        out, extra = m(x)
    assert extra == "extra"
    torch.testing.assert_close(out, ref + torch.tensor([2.0, 0, 0, 0]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_dtype_is_kept_and_half_precision_edited_in_float32(dtype: torch.dtype) -> None:
    model = tiny_model("llama", dtype=dtype)
    ids = tiny_ids()
    seen: list[torch.dtype] = []

    class Spy(Steerer):
        name = "spy"

        def edit(self, h: Tensor) -> Tensor:
            seen.append(h.dtype)
            return h

    blocks = residual_layers(model)
    out: dict[str, Tensor] = {}
    with steer(model, Spy(), layers=[0]):
        h = blocks[0].register_forward_hook(lambda m, a, o: out.__setitem__("h", o))
        with torch.no_grad():
            model(ids)
        h.remove()
    assert seen == [torch.float32 if dtype == torch.bfloat16 else torch.float64]
    assert out["h"].dtype == dtype


def test_handles_compose_in_registration_order_and_remove_idempotently(models: dict[str, nn.Module]) -> None:
    model = models["gpt2"]
    ids = tiny_ids()
    with torch.no_grad():
        ref = model(ids).logits.clone()
    r1 = torch.randn(HIDDEN, generator=torch.Generator().manual_seed(6))
    r2 = torch.randn(HIDDEN, generator=torch.Generator().manual_seed(7))
    h1 = steer(model, "addition", direction=r1, alpha=3.0, layers=[0])
    h2 = steer(model, "addition", direction=r2, alpha=-2.0, layers=[0])
    with torch.no_grad():
        both = model(ids).logits
    h1.remove()
    h2.remove()
    h2.remove()
    assert not h1.active and not h2.active
    v = 3.0 * r1 / r1.norm() - 2.0 * r2 / r2.norm()
    with torch.no_grad(), steer(model, "addition", direction=v, alpha=float(v.norm()), layers=[0]):
        one = model(ids).logits
        assert torch.allclose(both, one, atol=1e-5)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref)


def test_context_manager_removes_on_exception(models: dict[str, nn.Module]) -> None:
    model = models["llama"]
    ids = tiny_ids()
    with torch.no_grad():
        ref = model(ids).logits.clone()
    n0 = _nhooks(model)
    with pytest.raises(RuntimeError, match="boom"):
        with steer(model, "addition", direction=torch.randn(HIDDEN), alpha=5.0) as handle:
            assert isinstance(handle, SteeringHandle) and handle.active
            raise RuntimeError("boom")
    assert not handle.active
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref)
    assert _nhooks(model) == n0


class _Bad(Steerer):
    name = "bad"

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def edit(self, h: Tensor) -> Tensor:
        if self.mode == "shape":
            return h[..., :-1]
        if self.mode == "dtype":
            return h.double() if h.dtype != torch.float64 else h.float()
        if self.mode == "nan":
            return h * float("nan")
        return h.sum(-1)


@pytest.mark.parametrize(
    ("mode", "match"), [("shape", "returned shape"), ("dtype", "returned dtype"), ("nan", "NaN or inf")]
)
def test_bad_edit_raises_a_clear_error_from_inside_the_hook(
    models: dict[str, nn.Module], mode: str, match: str
) -> None:
    model = models["llama"]
    n0 = _nhooks(model)
    with (
        steer(model, _Bad(mode), layers=[1]),
        pytest.raises(ValueError, match=rf"steerer 'bad' at layer 1: .*{match}"),
    ):
        model(tiny_ids())
    assert _nhooks(model) == n0


def test_steer_argument_errors(models: dict[str, nn.Module]) -> None:
    model = models["llama"]
    r = torch.randn(HIDDEN)
    n0 = _nhooks(model)
    with pytest.raises(ValueError, match="unknown steering method 'nope'"):
        steer(model, "nope")
    with pytest.raises(TypeError, match="only accepted with a steerer name"):
        steer(model, ActivationAddition(r), alpha=2.0)
    with pytest.raises(TypeError, match="steerer must be"):
        steer(model, 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positions must be one of"):
        steer(model, ActivationAddition(r), positions="first")
    with pytest.raises(ValueError, match="layer 2 out of range"):
        steer(model, ActivationAddition(r), layers=[2])
    with pytest.raises(ValueError, match="listed twice"):
        steer(model, ActivationAddition(r), layers=[1, -1])
    with pytest.raises(TypeError, match="sequence of ints"):
        steer(model, ActivationAddition(r), layers=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="layers is empty"):
        steer(model, ActivationAddition(r), layers=[])
    assert _nhooks(model) == n0
    handle = steer(model, ActivationAddition(r), layers=[-1])
    assert _nhooks(model) == [n0[0], n0[1] + 1]
    handle.remove()


def test_as_direction_errors() -> None:
    torch.testing.assert_close(
        as_direction(torch.tensor([3.0, 4.0])), torch.tensor([0.6, 0.8], dtype=torch.float64)
    )
    with pytest.raises(TypeError, match="direction must be a torch.Tensor"):
        as_direction([1.0, 2.0])
    with pytest.raises(ValueError, match="1-D"):
        as_direction(torch.ones(2, 2))
    with pytest.raises(ValueError, match="zero vector"):
        as_direction(torch.zeros(3))
    with pytest.raises(ValueError, match="NaN or inf"):
        as_direction(torch.tensor([1.0, float("inf")]))
    with pytest.raises(TypeError, match="floating-point"):
        as_direction(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="hidden size is 4"):
        as_direction(torch.ones(3), dim=4)


def test_encoders_and_encoder_decoders_are_refused() -> None:
    """Only decoder-only causal LMs: BertModel (encoder) and T5 (encoder-decoder) are refused before any hook."""
    import transformers as tf

    bert = tf.BertModel(
        tf.BertConfig(
            vocab_size=32, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32
        )
    )
    with pytest.raises(ValueError, match=r"BertModel \(model_type 'bert'\) is not a decoder-only causal LM"):
        steer(bert, "addition", direction=torch.randn(16))
    assert all(not b._forward_hooks for b in bert.encoder.layer)
    t5 = tf.T5ForConditionalGeneration(
        tf.T5Config(vocab_size=32, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2)
    )
    with pytest.raises(ValueError, match="T5ForConditionalGeneration .* is an encoder-decoder model"):
        residual_layers(t5)
    # an encoder family run as a decoder (causal self-attention) is a decoder-only causal LM
    bert_dec = tf.BertLMHeadModel(
        tf.BertConfig(
            vocab_size=32,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            is_decoder=True,
        )
    )
    assert len(residual_layers(bert_dec)) == 2


def test_direction_of_the_wrong_length_is_refused_at_registration(models: dict[str, nn.Module]) -> None:
    model = models["llama"]
    n0 = _nhooks(model)
    with pytest.raises(ValueError, match=r"direction has length 63 .* hidden size 64"):
        steer(model, "addition", direction=torch.randn(63), alpha=1.0)
    with pytest.raises(ValueError, match=r"direction has length 65 .*'ablation'.* hidden size 64"):
        steer(model, "ablation", direction=torch.randn(65))
    assert _nhooks(model) == n0


class _PerLayerGain(Steerer):
    """A custom steerer with a non-direction 1-D tensor attribute (per-layer strengths of length 3 != d)."""

    name = "per_layer_gain"

    def __init__(self, v: Tensor, alphas: Tensor) -> None:
        self.v = v
        self.alphas = alphas

    def edit(self, h: Tensor) -> Tensor:
        return h + self.alphas[0].to(h.dtype) * self.v.to(h.dtype)


def test_only_direction_like_attributes_are_length_checked(models: dict[str, nn.Module]) -> None:
    """A strength vector ``alphas`` [3] is not a direction: accepted; a direction-named ``v`` [63] is refused."""
    model = models["llama"]
    ids = tiny_ids()
    v = torch.randn(HIDDEN)
    with torch.no_grad():
        base = model(ids).logits
        with steer(model, _PerLayerGain(v, torch.tensor([1.0, 2.0, 3.0])), layers=[0]):
            out = model(ids).logits
        ref_h = steer(model, "addition", direction=v, alpha=float(v.norm()), layers=[0])
        ref = model(ids).logits
        ref_h.remove()
    assert (out - base).abs().max() > 1e-3
    torch.testing.assert_close(
        out, ref, rtol=1e-5, atol=1e-5
    )  # h + 1·v == addition of unit(v) with alpha=‖v‖
    n0 = _nhooks(model)
    with pytest.raises(ValueError, match=r"direction has length 63 .*attribute 'v'.* hidden size 64"):
        steer(model, _PerLayerGain(torch.randn(63), torch.tensor([1.0, 2.0, 3.0])))
    assert _nhooks(model) == n0


def test_check_finite_flag_and_meta_device(models: dict[str, nn.Module]) -> None:
    model = models["llama"]
    with steer(model, _Bad("nan"), layers=[1], check_finite=False), torch.no_grad():
        assert not bool(torch.isfinite(model(tiny_ids()).logits).all())  # no check: NaN flows through
    with pytest.raises(TypeError, match="check_finite must be a bool"):
        steer(model, ActivationAddition(torch.randn(HIDDEN)), check_finite=1)  # type: ignore[arg-type]
    import transformers as tf

    with torch.device("meta"):
        meta = tf.LlamaForCausalLM(
            tf.LlamaConfig(
                vocab_size=VOCAB_META,
                hidden_size=16,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=32,
            )
        )
    with steer(meta, "addition", direction=torch.randn(16), alpha=1.0), torch.no_grad():
        out = meta(torch.zeros(1, 3, dtype=torch.long, device="meta")).logits
    assert out.device.type == "meta" and out.shape == (1, 3, VOCAB_META)


VOCAB_META = 32


def test_one_finiteness_check_per_edit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hook syncs with the host once per edit (the input is inspected only when the output is non-finite)."""
    from orthokit.steer._hooks import _apply_edit

    calls: list[int] = []
    real = torch.isfinite

    def counting(x: Tensor) -> Tensor:
        calls.append(1)
        return real(x)

    monkeypatch.setattr(torch, "isfinite", counting)
    h = torch.randn(2, 3, HIDDEN)
    _apply_edit(lambda x: x + 1.0, h, "w")
    assert len(calls) == 1
    _apply_edit(lambda x: x + 1.0, h, "w", check_finite=False)
    assert len(calls) == 1
