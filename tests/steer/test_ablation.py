"""Directional ablation: the hook form (`ablate`) equals weight orthogonalization, and mutants of either fail.

The family's "ablation equivalence" invariant: on tiny random Llama, GPT-2, GPT-NeoX and Qwen2 models, logits and
every block's output under `ablate(model, r)` agree with the `orthogonalize_weights(model, r)` model to 1e-5 in
float32 and 1e-10 in float64, and no residual state keeps a component along r̂. Mutants — hooking only the block
outputs, forgetting the biases or the position embeddings, projecting a Linear weight on its input axis, a head left
tied — must fail the same check functions.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import pytest
import torch
from torch import Tensor, nn

from orthokit.steer._hooks import as_direction, residual_layers, steer
from orthokit.steer.ablation import (
    DirectionalAblation,
    _project_out,
    ablate,
    apply_tensors,
    orthogonalize_weights,
    orthogonalized_tensors,
    residual_writers,
)
from orthokit.steer.directions import collect_residuals
from orthokit.steer.registry import STEERERS

from ._models import EXTRA, FAMILIES, HIDDEN, available, tiny_ids, tiny_model

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _direction(seed: int = 2) -> Tensor:
    return torch.randn(HIDDEN, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _run(model: nn.Module, ids: Tensor) -> tuple[Tensor, Tensor]:
    """Logits and all block outputs [L, N, d]."""
    with torch.no_grad():
        return model(ids).logits, collect_residuals(model, ids)


def check_equivalence(
    model: nn.Module,
    hooks: Callable[[nn.Module], AbstractContextManager[object]],
    edited: nn.Module,
    tol: float,
) -> None:
    """The hooked model and the weight-edited model agree: logits to ``tol`` absolute, block outputs relative."""
    ids = tiny_ids(2, 9)
    with hooks(model):
        logits_h, states_h = _run(model, ids)
    logits_w, states_w = _run(edited, ids)
    err = float((logits_h - logits_w).abs().max())
    # block outputs are larger than logits (norm ~30 per row here): compared relative to their largest entry
    rel = float((states_h - states_w).abs().max() / states_w.abs().max())
    assert err < tol, (
        f"hook ablation and weight orthogonalization differ by {err:.3g} in logits (tolerance {tol:g})"
    )
    assert rel < tol, (
        f"hook ablation and weight orthogonalization differ by {rel:.3g} (relative) in block outputs"
    )


def check_stream_orthogonal(model: nn.Module, r: Tensor, tol: float) -> None:
    """Every block output of ``model`` (as it runs now) is ⟂ r̂ relative to its norm."""
    _, states = _run(model, tiny_ids(2, 9))
    unit = as_direction(r).to(states.dtype)
    rel = float(((states @ unit).abs() / states.norm(dim=-1)).max())
    assert rel < tol, f"residual stream keeps a component {rel:.3g} along the ablated direction"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("family", FAMILIES)
def test_hook_ablation_equals_weight_orthogonalization(family: str, dtype: torch.dtype) -> None:
    model = tiny_model(family, dtype=dtype)
    r = _direction()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        edited = orthogonalize_weights(model, r, inplace=False)
    check_equivalence(model, lambda m: ablate(m, r), edited, TOL[dtype])
    check_stream_orthogonal(edited, r, 10 * TOL[dtype])
    with ablate(model, r):
        check_stream_orthogonal(model, r, 10 * TOL[dtype])
    base, _ = _run(model, tiny_ids(2, 9))
    assert float((base - _run(edited, tiny_ids(2, 9))[0]).abs().max()) > 1e-2  # the ablation does something


def _mutant_block_outputs_only(r: Tensor) -> Callable[[nn.Module], AbstractContextManager[object]]:
    return lambda m: steer(m, DirectionalAblation(r))


def _mutant_weights(
    model: nn.Module, r: Tensor, drop: Callable[[str], bool], wrong_axis: bool = False
) -> nn.Module:
    import copy

    m = copy.deepcopy(model)
    w = residual_writers(m)
    new = {k: v for k, v in orthogonalized_tensors(w, as_direction(r)).items() if not drop(k)}
    if wrong_axis:
        for k, (p, _) in list(new.items()):
            if k.endswith("o_proj.weight") or k.endswith("down_proj.weight"):
                new[k] = (p, _project_out(p, as_direction(r), -1) if p.shape[1] == HIDDEN else p)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        apply_tensors(m, new)
    return m


@pytest.mark.parametrize(
    ("family", "mutant"),
    [
        ("llama", "block_outputs_only"),
        ("gpt2", "block_outputs_only"),
        ("gpt2", "no_biases"),
        ("gpt_neox", "no_biases"),
        ("gpt2", "no_position_embeddings"),
        ("llama", "no_embeddings"),
        ("llama", "linear_input_axis"),
    ],
)
def test_mutants_fail_the_equivalence_check(family: str, mutant: str) -> None:
    model = tiny_model(family)
    r = _direction()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        good = orthogonalize_weights(model, r, inplace=False)
    hooks: Callable[[nn.Module], AbstractContextManager[object]] = lambda m: ablate(m, r)  # noqa: E731
    edited = good
    if mutant == "block_outputs_only":
        hooks = _mutant_block_outputs_only(r)
    elif mutant == "no_biases":
        edited = _mutant_weights(model, r, lambda k: k.endswith(".bias"))
    elif mutant == "no_position_embeddings":
        edited = _mutant_weights(model, r, lambda k: k == "transformer.wpe.weight")
    elif mutant == "no_embeddings":
        edited = _mutant_weights(model, r, lambda k: "embed" in k)
    else:
        edited = _mutant_weights(model, r, lambda k: False, wrong_axis=True)
    with pytest.raises(AssertionError, match="differ by"):
        check_equivalence(model, hooks, edited, TOL[torch.float32])


def test_mutant_block_output_hook_leaves_the_direction_inside_blocks() -> None:
    """Hooking block outputs only: the stream between blocks is clean, yet the logits differ from the real ablation."""
    model = tiny_model("llama")
    r = _direction()
    with steer(model, DirectionalAblation(r)):
        check_stream_orthogonal(model, r, 1e-4)  # passes: block outputs are projected...
    with pytest.raises(AssertionError, match="differ by"):  # ...but it is not the ablation
        check_equivalence(
            model, _mutant_block_outputs_only(r), orthogonalize_weights(model, r, inplace=False), 1e-5
        )


@pytest.mark.parametrize("family", ["gpt2", "qwen2"])
def test_tied_head_is_untied_and_left_unchanged(family: str) -> None:
    model = tiny_model(family)
    head = model.get_output_embeddings().weight
    emb = model.get_input_embeddings().weight
    assert head is emb
    original = emb.detach().clone()
    with pytest.warns(UserWarning, match="untied"):
        out = orthogonalize_weights(model, _direction())
    assert out is model
    assert model.get_output_embeddings().weight is not model.get_input_embeddings().weight
    assert torch.equal(model.get_output_embeddings().weight, original)
    assert not torch.equal(model.get_input_embeddings().weight, original)
    assert model.config.tie_word_embeddings is False


def test_inplace_false_leaves_the_model_untouched_and_save_load_round_trips() -> None:
    model = tiny_model("gpt2")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r = _direction()
    with pytest.warns(UserWarning, match="untied"):
        edited = orthogonalize_weights(model, r, inplace=False)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert model.lm_head.weight is model.transformer.wte.weight
    from transformers import GPT2LMHeadModel

    with tempfile.TemporaryDirectory() as tmp:
        edited.save_pretrained(tmp)
        loaded = GPT2LMHeadModel.from_pretrained(tmp, attn_implementation="eager").eval()
    ids = tiny_ids()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, edited(ids).logits, rtol=0, atol=0)
    assert loaded.lm_head.weight is not loaded.transformer.wte.weight


POST_NORM_NAMES = {
    "gemma2": ("post_attention_layernorm", "post_feedforward_layernorm"),
    "olmo2": ("post_attention_layernorm", "post_feedforward_layernorm"),
    "olmo3": ("post_attention_layernorm", "post_feedforward_layernorm"),
    "exaone4": ("post_attention_layernorm", "post_feedforward_layernorm"),
    "glm4": ("post_self_attn_layernorm", "post_mlp_layernorm"),
}


@pytest.mark.parametrize("family", EXTRA)
def test_post_norm_blocks_ablate_by_hooks_and_refuse_weight_edit(family: str) -> None:
    """Gemma2, OLMo2/3, Exaone4, GLM4 normalise each write: found structurally, hooked, weight edit refused."""
    if not available(family):
        pytest.skip(f"{family} is not in this transformers version")
    model = tiny_model(family)
    r = _direction()
    names = [n.rsplit(".", 1)[-1] for n, _ in residual_writers(model).post_norms]
    assert names == list(POST_NORM_NAMES[family]) * 2
    with ablate(model, r):
        check_stream_orthogonal(model, r, 1e-5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=rf"{POST_NORM_NAMES[family][0]}.*use ablate"):
        orthogonalize_weights(model, r)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("family", FAMILIES + EXTRA)
def test_ablate_removes_the_direction_from_every_block_output(family: str) -> None:
    """The purpose of ``ablate``, on every supported architecture, without relying on its own verification."""
    if not available(family):
        pytest.skip(f"{family} is not in this transformers version")
    model = tiny_model(family, dtype=torch.float64)
    r = _direction(5)
    with ablate(model, r, verify=False):
        check_stream_orthogonal(model, r, 1e-12)


def _name_only_post_norms(
    model: nn.Module, emb: nn.Module, blocks: list[nn.Module], projections: object
) -> dict:
    """Mutant of the post-norm detection: the old name rule (Gemma2's three norms must all exist)."""
    names = {id(m): n for n, m in model.named_modules()}
    out = {}
    for b in blocks:
        kids = dict(b.named_children())
        if {"post_attention_layernorm", "post_feedforward_layernorm", "pre_feedforward_layernorm"} <= set(
            kids
        ):
            p = names[id(b)]
            out[f"{p}.self_attn.o_proj"] = (f"{p}.post_attention_layernorm", kids["post_attention_layernorm"])
            out[f"{p}.mlp.down_proj"] = (
                f"{p}.post_feedforward_layernorm",
                kids["post_feedforward_layernorm"],
            )
    return out


@pytest.mark.parametrize("family", ["olmo2", "glm4"])
def test_mutant_name_only_post_norm_detection_is_rejected(
    family: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reviewer's bug: hooks on the projections of a post-norm block leave r̂ in the stream (0.16-0.31 logit
    error in float64). The stream check rejects it, and ``ablate``'s own verification refuses it."""
    import orthokit.steer.ablation as abl

    if not available(family):
        pytest.skip(f"{family} is not in this transformers version")
    model = tiny_model(family, dtype=torch.float64)
    r = _direction()
    monkeypatch.setattr(abl, "_post_norms", _name_only_post_norms)
    assert not residual_writers(model).post_norms
    with ablate(model, r, verify=False), pytest.raises(AssertionError, match="keeps a component"):
        check_stream_orthogonal(model, r, 1e-6)
    n0 = [len(b._forward_pre_hooks) for b in residual_layers(model)]
    with pytest.raises(ValueError, match=r"ablate\(\) left a component .* in the output of block 0"):
        ablate(model, r)
    assert [len(b._forward_pre_hooks) for b in residual_layers(model)] == n0  # hooks removed on refusal


def test_probe_restores_training_mode_and_meta_is_refused() -> None:
    import transformers as tf

    model = tiny_model("olmo2" if available("olmo2") else "gemma2").train()
    with ablate(model, _direction()):
        assert all(m.training for m in model.modules())
    with torch.device("meta"):
        meta = tf.LlamaForCausalLM(
            tf.LlamaConfig(
                vocab_size=32,
                hidden_size=16,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=32,
            )
        )
    with pytest.raises(ValueError, match="LlamaForCausalLM is on the meta device"):
        ablate(meta, torch.ones(16))


def test_failed_orthogonalization_leaves_the_model_untouched() -> None:
    model = tiny_model("gpt2")
    with torch.no_grad():
        model.transformer.h[1].mlp.c_proj.weight[0, 0] = float("inf")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"transformer\.h\.1\.mlp\.c_proj\.weight gives NaN/inf"):
        orthogonalize_weights(model, _direction())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert model.lm_head.weight is model.transformer.wte.weight


def test_hooks_removed_leave_the_model_bit_identical() -> None:
    model = tiny_model("gpt_neox")
    ids = tiny_ids()
    ref, _ = _run(model, ids)
    handle = ablate(model, _direction())
    assert handle.active and isinstance(handle.steerer, DirectionalAblation)
    handle.remove()
    handle.remove()
    assert torch.equal(_run(model, ids)[0], ref)


def test_directional_ablation_closed_form_and_registry() -> None:
    g = torch.Generator().manual_seed(0)
    r = torch.randn(12, generator=g, dtype=torch.float64)
    h = torch.randn(5, 3, 12, generator=g, dtype=torch.float64)
    s = DirectionalAblation(3.0 * r)
    out = s.edit(h)
    unit = r / torch.sqrt((r * r).sum())
    ref = h - torch.einsum("...d,d->...", h, unit)[..., None] * unit
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-14)
    torch.testing.assert_close(s.edit(out), out, rtol=0, atol=1e-14)  # idempotent
    assert STEERERS.get("ablation") is DirectionalAblation
    assert STEERERS.capabilities("ablation")["kind"] == "projection"


def test_errors() -> None:
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="hidden size is 64"):
        ablate(model, torch.ones(3))
    with pytest.raises(ValueError, match="hidden size is 64"):
        orthogonalize_weights(model, torch.ones(65))
    with pytest.raises(ValueError, match="zero vector"):
        orthogonalize_weights(model, torch.zeros(64))

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mixer = nn.Linear(8, 8)

    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = type("C", (), {"num_hidden_layers": 2})()
            self.embed = nn.Embedding(10, 8)
            self.layers = nn.ModuleList([Block(), Block()])

        def get_input_embeddings(self) -> nn.Module:
            return self.embed

    with pytest.raises(
        ValueError, match=r"Odd: block 0 \(Block\) has no attention output projection; searched"
    ):
        orthogonalize_weights(Odd(), torch.ones(8))
    assert len(residual_layers(model)) == 2


def _rel_along(states: Tensor, r: Tensor) -> Tensor:
    """Per-block max relative component along r̂ of block outputs [L, N, d]."""
    unit = as_direction(r).to(states.dtype)
    return ((states @ unit).abs() / states.norm(dim=-1)).amax(dim=-1)


@pytest.mark.parametrize("order", ["steer_first", "ablate_first"])
def test_ablate_composes_with_a_steering_hook_in_either_order(order: str) -> None:
    """Reviewer's case: activation addition at block 0 then ablate() was refused (the addition's component was
    blamed on the architecture). Both orders now register, agree, and give the closed form: block 0's output is
    the ablated output plus α v̂ (so its component along r̂ is α v̂·r̂), later blocks are ⟂ r̂. A recorder hook
    registered earlier does not see the probe passes, and every foreign hook is back in its place and order."""
    model = tiny_model("llama", dtype=torch.float64)
    ids = tiny_ids(2, 9)
    r, v, alpha = _direction(2), _direction(5), 4.0
    with torch.no_grad():
        model(ids, output_hidden_states=True)  # transformers installs its own output-capturing hooks
    calls: list[int] = []
    rec = residual_layers(model)[1].register_forward_hook(lambda *_: calls.append(1))
    keys0 = [list(b._forward_hooks) for b in residual_layers(model)]
    with ablate(model, r):
        _, ablated = _run(model, ids)
    if order == "steer_first":
        hs = steer(model, "addition", direction=v, alpha=alpha, layers=[0])
        ha = ablate(model, r)
    else:
        ha = ablate(model, r)
        hs = steer(model, "addition", direction=v, alpha=alpha, layers=[0])
    assert len(calls) == 2  # the two forwards of the earlier _run only: the probes ran with it suspended
    _, states = _run(model, ids)
    ha.remove()
    hs.remove()
    rec.remove()
    assert [list(b._forward_hooks) for b in residual_layers(model)] == keys0[:1] + [keys0[1][:-1]]
    vhat = as_direction(v)
    torch.testing.assert_close(states[0], ablated[0] + alpha * vhat, rtol=0, atol=1e-10)
    along0 = states[0] @ as_direction(r)
    torch.testing.assert_close(along0, torch.full_like(along0, alpha * float(vhat @ as_direction(r))))
    assert float(_rel_along(states[1:], r).max()) < 1e-9


@pytest.mark.parametrize("family", ["olmo2", "glm4"])
def test_true_failure_is_refused_even_with_a_foreign_hook(
    family: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mutant (name-only post-norm detection) is still refused with a steering hook present, and the refusal
    says the probe ran with ablate's hooks only."""
    import orthokit.steer.ablation as abl

    if not available(family):
        pytest.skip(f"{family} is not in this transformers version")
    model = tiny_model(family, dtype=torch.float64)
    monkeypatch.setattr(abl, "_post_norms", _name_only_post_norms)
    with (
        steer(model, "addition", direction=_direction(5), alpha=4.0, layers=[0]),
        pytest.raises(ValueError, match=r"left a component .*ablate's hooks only, other hooks suspended"),
    ):
        ablate(model, _direction())


def test_training_mode_with_residual_dropout_warns() -> None:
    """GPT-2 (resid_pdrop 0.1) in train(): dropout after the writes leaves a component along r̂ (measured here),
    so ablate() warns; in eval mode, or with only attention-probability dropout, it does not."""
    import transformers as tf

    r = _direction()
    model = tiny_model("gpt2").train()
    with pytest.warns(
        UserWarning, match=r"training mode with residual dropout \(block 0: attn.resid_dropout"
    ):
        h = ablate(model, r)
    with h:
        torch.manual_seed(0)
        _, states = _run(model, tiny_ids(2, 9))
    assert float(_rel_along(states, r).max()) > 1e-3  # the documented limitation is real
    for m in (
        tiny_model("gpt2").eval(),
        tf.GPT2LMHeadModel(
            tf.GPT2Config(n_embd=HIDDEN, n_layer=2, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0)
        ).train(),
        tiny_model("llama").train(),
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ablate(m, r).remove()
