"""Conformance of the model rewriters: every supported family × every registered rotation is exact, and three
broken rewriters (mutants) are caught by ``rotate_model``'s own proof, leaving the input model untouched.

Exactness is checked independently of the proof built into ``rotate_model``: on other inputs than the proof's,
against the unrotated model, and (decoders) through ``generate``.
"""

from __future__ import annotations

import pytest
import torch

import orthokit.rotation.llama as llama_mod
from orthokit.rotation.online import OnlineRotatedLinear
from orthokit.rotation.registry import ROTATIONS
from orthokit.rotation.rewrite import rotate_model
from tests.rotation._models import DECODERS, FAMILIES, tiny_ids, tiny_model, tiny_padded_inputs

RTOL = 1e-4
VARIANTS = {"default": {}, "offline_only": {"online": (), "r2": False}}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def _out(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        o = model(**inputs)
    y = o.logits if getattr(o, "logits", None) is not None else o.last_hidden_state
    return y[inputs["attention_mask"].bool()] if "attention_mask" in inputs else y


def _check_inputs() -> list[dict[str, torch.Tensor]]:
    return [{"input_ids": tiny_ids(3, 11, seed=7)}, tiny_padded_inputs(2, 12, seed=8)]


@pytest.mark.parametrize("rotation", ROTATIONS.names())
@pytest.mark.parametrize("family", FAMILIES)
def test_rotated_model_is_exact(family: str, rotation: str) -> None:
    """Every family × every registered rotation, default online sites and R2."""
    model = tiny_model(family)
    cases = _check_inputs()
    refs = [_out(model, c) for c in cases]
    rotated, rep = rotate_model(model, rotation, seed=1)
    assert rep.checked and rep.max_rel_error <= RTOL, rep.max_rel_error
    for c, ref in zip(cases, refs, strict=True):
        assert _rel(_out(rotated, c), ref) <= RTOL


@pytest.mark.parametrize("family", FAMILIES)
def test_variants_are_exact_and_generate_identically(family: str) -> None:
    """Purely offline (online=(), r2=False) and default rewrites: outputs and greedy generate() tokens."""
    model = tiny_model(family)
    cases = _check_inputs()
    refs = [_out(model, c) for c in cases]
    prompt = tiny_ids(1, 4, seed=9)
    decoder = family in DECODERS
    ref_tokens = (
        model.generate(prompt, max_new_tokens=5, do_sample=False, pad_token_id=0) if decoder else None
    )
    for variant, kw in VARIANTS.items():
        rotated, rep = rotate_model(model, "hadamard", seed=2, **kw)
        assert rep.checked and rep.max_rel_error <= RTOL, (variant, rep.max_rel_error)
        for c, ref in zip(cases, refs, strict=True):
            assert _rel(_out(rotated, c), ref) <= RTOL, variant
        if decoder:
            got = rotated.generate(prompt, max_new_tokens=5, do_sample=False, pad_token_id=0)
            assert torch.equal(got, ref_tokens), variant


@pytest.mark.parametrize("rotation", ROTATIONS.names())
def test_rewrite_is_deterministic_from_seed(rotation: str) -> None:
    model = tiny_model("llama_gqa")
    a, ra = rotate_model(model, rotation, seed=4, check=False)
    b, rb = rotate_model(model, rotation, seed=4, check=False)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa if isinstance(sa[k], torch.Tensor))
    for key in ra.rotations:
        assert torch.equal(ra.rotations[key].matrix(), rb.rotations[key].matrix())
    c, _ = rotate_model(model, rotation, seed=5, check=False)
    differs = not torch.equal(c.state_dict()["model.embed_tokens.weight"], sa["model.embed_tokens.weight"])
    assert differs == (rotation != "identity")


# ------------------------------------------------------------------------------------------------------- mutants
def _no_gain_fusion(model: torch.nn.Module, dims: object) -> dict[str, torch.Tensor]:
    """Mutant: forgets to fold the RMSNorm gains (γ stays in the norms, readers untouched)."""
    return {k: v.detach().to(torch.float64) for k, v in model.state_dict().items() if v.is_floating_point()}


_real_rotate_params = llama_mod.rotate_llama_params


def _o_proj_with_q(params, config, r1, r2=None, **kw):  # type: ignore[no-untyped-def]
    """Mutant: o_proj's output side rotated by Q instead of Qᵀ (W ← Q W instead of Qᵀ W)."""
    out = _real_rotate_params(params, config, r1, r2, **kw)
    for key in list(out):
        if ".o_proj.weight" in key:
            out[key] = r1 @ r1 @ out[key]
    return out


MUTANTS = {
    # GQA + untied, and biases + tied head: the two structurally different decoder shapes
    "no_gain_fusion": ("_fused_params", _no_gain_fusion, ("llama_gqa", "qwen2")),
    "o_proj_q_not_qT": ("rotate_llama_params", _o_proj_with_q, ("llama_gqa", "qwen2")),
    "no_untie": ("untie_head", lambda *a, **k: False, ("llama_tied", "qwen2")),
}
_CASES = [(name, fam) for name, (_, _, fams) in MUTANTS.items() for fam in fams]


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize(("mutant", "family"), _CASES)
def test_mutant_rewriter_fails_the_proof_and_model_is_untouched(
    mutant: str, family: str, inplace: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tiny_model(family)
    tied = family in ("llama_tied", "qwen2")
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    attr, fake, _ = MUTANTS[mutant]
    monkeypatch.setattr(llama_mod, attr, fake)
    with pytest.raises(ValueError, match="rotate_model: equivalence check failed"):
        rotate_model(model, "haar", seed=1, inplace=inplace)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())
    assert not any(isinstance(m, OnlineRotatedLinear) for m in model.modules())
    assert model.config._attn_implementation == "sdpa"
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    assert bool(model.config.tie_word_embeddings) == tied
    monkeypatch.undo()
    _, rep = rotate_model(model, "haar", seed=1, inplace=inplace)  # control: the real rewriter passes
    assert rep.max_rel_error <= RTOL
