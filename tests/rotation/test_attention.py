"""The ``"orthokit"`` attention implementation: exact q/k rotation, KV-quant hook, generate with a cache, BERT.

The reference is always the same model without the hook (sdpa or eager), never the hook itself.
"""

from __future__ import annotations

import pytest
import torch

from orthokit.rotation.attention import ATTN_NAME, attention_modules, install_attention, uninstall_attention
from orthokit.rotation.registry import make_rotation
from tests.rotation._models import tiny_ids, tiny_model, tiny_padded_inputs


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def _out(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        o = model(**inputs)
    return o.logits if getattr(o, "logits", None) is not None else o.last_hidden_state


class _Scaled:
    """A mutant 'rotation' (not orthogonal: 1.5·Q) — must change the scores."""

    def __init__(self, n: int) -> None:
        self.r = make_rotation("haar", n, seed=9)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return 1.5 * self.r.apply(x)


@pytest.mark.parametrize("family", ["llama_gqa", "qwen2", "bert"])
@pytest.mark.parametrize("base", ["sdpa", "eager"])
def test_install_is_exact_and_qk_rotation_is_exact(family: str, base: str) -> None:
    model = tiny_model(family, attn_implementation=base)
    inputs = tiny_padded_inputs()
    mask = inputs["attention_mask"].bool()
    ref = _out(model, inputs)[mask]
    names = install_attention(model)
    assert install_attention(model) == names and len(names) == 2  # idempotent
    assert model.config._attn_implementation == ATTN_NAME
    mods = attention_modules(model)
    assert all(m._orthokit_base_impl == base for m in mods.values())
    assert _rel(_out(model, inputs)[mask], ref) < 1e-5
    head_dim = 16
    for m in mods.values():
        m._orthokit_qk_rotation = make_rotation("haar", head_dim, seed=3)
    assert _rel(_out(model, inputs)[mask], ref) < 1e-5
    for m in mods.values():
        m._orthokit_qk_rotation = _Scaled(head_dim)
    assert _rel(_out(model, inputs)[mask], ref) > 1e-3  # the test can fail: a non-orthogonal map is caught
    uninstall_attention(model)
    assert model.config._attn_implementation == base
    assert not any(k.startswith("_orthokit") for m in model.modules() for k in m.__dict__)
    assert _rel(_out(model, inputs)[mask], ref) < 1e-6


def test_kv_quant_callable_is_invoked_and_takes_effect() -> None:
    model = tiny_model("llama_gqa")
    ids = {"input_ids": tiny_ids()}
    ref = _out(model, ids)
    install_attention(model)
    calls: list[tuple[tuple[int, ...], tuple[int, ...]]] = []

    def quant(k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append((tuple(k.shape), tuple(v.shape)))
        return k, torch.round(v * 4) / 4  # a crude 2-level-per-unit grid

    for m in attention_modules(model).values():
        m._orthokit_kv_quant = quant
    got = _out(model, ids)
    assert calls == [((2, 2, 16, 16), (2, 2, 16, 16))] * 2  # per layer: (batch, kv heads, tokens, head_dim)
    assert _rel(got, ref) > 1e-3


def test_generate_with_dynamic_cache_is_exact_and_sees_full_keys() -> None:
    model = tiny_model("llama_gqa")
    prompt = tiny_ids(1, 5, seed=2)
    ref = model.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
    install_attention(model)
    lengths: list[int] = []

    def spy(k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lengths.append(k.shape[2])
        return k, v

    mods = list(attention_modules(model).values())
    for m in mods:
        m._orthokit_qk_rotation = make_rotation("hadamard", 16, seed=1)
    mods[0]._orthokit_kv_quant = spy
    got = model.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(got, ref)
    assert lengths == [5, 6, 7, 8, 9, 10]  # the whole cached K on every step


def test_unsupported_base_implementation_is_refused_untouched() -> None:
    model = tiny_model("llama")
    model.config._attn_implementation = "flex_attention"
    with pytest.raises(ValueError, match="attention implementation 'flex_attention' is not supported"):
        install_attention(model)
    assert model.config._attn_implementation == "flex_attention"
    assert not any(k.startswith("_orthokit") for m in model.modules() for k in m.__dict__)


def test_install_refuses_a_model_without_attention() -> None:
    with pytest.raises(ValueError, match="model:"):
        install_attention(torch.nn.Linear(3, 3))


def test_kv_quantizer_sees_rotated_keys_and_rotated_query_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """Order of the hooks: R3 first, then the KV quantizer (QuaRot/SpinQuant quantize the *rotated* K), and the
    kernel gets the rotated q. Pass 1 records the unrotated post-RoPE q/k; pass 2 must see ``q Q`` / ``k Q``."""
    import orthokit.rotation.attention as attn_mod

    model = tiny_model("llama_gqa", attn_implementation="eager")
    ids = {"input_ids": tiny_ids(1, 6)}
    install_attention(model)
    mods = list(attention_modules(model).values())
    rot = make_rotation("haar", 16, seed=4)
    quant_k: list[list[torch.Tensor]] = [[], []]
    kernel_q: list[list[torch.Tensor]] = [[], []]
    phase = [0]
    real_base = attn_mod._base_function

    def base_spy(module: torch.nn.Module, impl: str):  # noqa: ANN202
        fn = real_base(module, impl)

        def wrapped(mod, q, k, v, mask, **kw):  # noqa: ANN001, ANN202
            kernel_q[phase[0]].append(q.detach().clone())
            return fn(mod, q, k, v, mask, **kw)

        return wrapped

    def spy(k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        quant_k[phase[0]].append(k.detach().clone())
        return k, v

    monkeypatch.setattr(attn_mod, "_base_function", base_spy)
    for m in mods:
        m._orthokit_kv_quant = spy
    ref = _out(model, ids)
    phase[0] = 1
    for m in mods:
        m._orthokit_qk_rotation = rot
    got = _out(model, ids)
    assert _rel(got, ref) < 1e-5  # the spy quantizer is the identity: rotation stays exact
    q64 = rot.matrix(torch.float64)
    for layer in range(2):
        k0, k1 = quant_k[0][layer].double(), quant_k[1][layer].double()
        q0, q1 = kernel_q[0][layer].double(), kernel_q[1][layer].double()
        assert float((k1 - k0 @ q64).abs().max()) < 1e-4 * float(k0.abs().max())  # quantizer got rot.apply(K)
        assert float((q1 - q0 @ q64).abs().max()) < 1e-4 * float(q0.abs().max())  # kernel got rot.apply(Q)
        assert float((k1 - k0).abs().max()) > 1e-2 * float(k0.abs().max())  # and the rotation is not a no-op
