"""Function vectors (Todd et al., ICLR 2024): the head split of the out-projection input, the FV against a float64
brute-force sum written here, the batched indirect effect against a one-head patch, a planted answer-carrying head
ranking first, and adding the FV after its layer — each with a mutant the check must reject."""

from __future__ import annotations

import pytest
import torch

from orthokit.steer._hooks import residual_layers
from orthokit.steer.function_vectors import (
    FunctionVector,
    attention_out_projections,
    function_vector,
    head_indirect_effects,
    mean_head_activations,
)

from ._models import tiny_model

H, HD, VOCAB = 4, 16, 256


def _prompts(seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (6, 8), generator=g), torch.randint(0, VOCAB, (5, 8), generator=g)


def _last_token_proj_inputs(model: torch.nn.Module, ids: torch.Tensor) -> list[torch.Tensor]:
    """Test-side capture: per layer, the out-projection input at the last token of each prompt, [n, H*HD]."""
    projs = attention_out_projections(model)
    got: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(projs))}
    hs = [
        p.register_forward_pre_hook(lambda _m, a, i=i: got[i].append(a[0][0, -1].double()))
        for i, p in enumerate(projs)
    ]
    try:
        with torch.no_grad():
            for row in ids:
                model(row[None])
    finally:
        for h in hs:
            h.remove()
    return [torch.stack(got[i]) for i in range(len(projs))]


def _weight_and_bias(proj: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Out-projection as W [out, in] (Linear) — GPT-2's Conv1D stores [in, out]."""
    W = proj.weight.detach().double()
    W = W if isinstance(proj, torch.nn.Linear) else W.T
    b = getattr(proj, "bias", None)
    return W, None if b is None else b.detach().double()


def brute_force_fv(model: torch.nn.Module, clean: torch.Tensor, heads: list, bias: bool) -> torch.Tensor:
    """Σ over heads of W^O[:, head slice] · mean last-token head output (+ the bias once per head if ``bias``)."""
    acts = _last_token_proj_inputs(model, clean)
    projs = attention_out_projections(model)
    v = torch.zeros(
        projs[0].weight.shape[0 if isinstance(projs[0], torch.nn.Linear) else 1], dtype=torch.float64
    )
    for layer, head, _ in heads:
        W, b = _weight_and_bias(projs[layer])
        sl = slice(head * HD, (head + 1) * HD)
        v += W[:, sl] @ acts[layer][:, sl].mean(0)
        if bias and b is not None:
            v += b
    return v


def check_fv(model: torch.nn.Module, clean: torch.Tensor, fv: FunctionVector, bias: bool = True) -> None:
    ref = brute_force_fv(model, clean, fv.heads, bias)
    assert torch.allclose(fv.vector.double(), ref, atol=1e-9), "function vector != brute-force head sum"


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@torch.no_grad()
def test_out_projection_is_the_sum_of_head_slices(family: str) -> None:
    """The decomposition the FV relies on: o_proj(concat heads) = Σ_j W^O[:, j] a_j + bias."""
    model = tiny_model(family, dtype=torch.float64)
    proj = attention_out_projections(model)[1]
    x = torch.randn(1, 1, H * HD, dtype=torch.float64)
    W, b = _weight_and_bias(proj)
    parts = sum(W[:, j * HD : (j + 1) * HD] @ x[0, 0, j * HD : (j + 1) * HD] for j in range(H))
    assert torch.allclose(proj(x)[0, 0], parts + (0 if b is None else b), atol=1e-12)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_function_vector_equals_brute_force_and_mutant(family: str) -> None:
    model = tiny_model(family, dtype=torch.float64)
    clean, corrupted = _prompts()
    fv = function_vector(model, clean, corrupted, [7] * 5, top_k=3)
    assert len(fv.heads) == 3 and fv.layer == 0 and fv.vector.dtype == torch.float64
    assert [h[2] for h in fv.heads] == sorted((h[2] for h in fv.heads), reverse=True)
    check_fv(model, clean, fv)
    nobias = function_vector(model, clean, corrupted, [7] * 5, top_k=3, out_proj_bias=False)
    check_fv(model, clean, nobias, bias=False)
    if family == "gpt2":  # Conv1D has a bias: the reference adds it once per head
        assert not torch.allclose(fv.vector, nobias.vector)
    wrong_head = [(layer, (head + 1) % H, s) for layer, head, s in fv.heads]  # mutant: off-by-one head slice
    mutant = FunctionVector(brute_force_fv(model, clean, wrong_head, True), fv.heads, fv.layer, fv.aie)
    with pytest.raises(AssertionError, match="brute-force"):
        check_fv(model, clean, mutant)


def test_mean_activations_match_capture() -> None:
    model = tiny_model("gpt_neox", dtype=torch.float64)
    clean, _ = _prompts()
    means = mean_head_activations(model, clean)
    ref = _last_token_proj_inputs(model, clean)
    for layer in range(len(ref)):
        assert torch.allclose(means[layer].reshape(-1), ref[layer].mean(0), atol=1e-12)
    # variable-length prompts as a list give the same per-prompt last-token means
    ragged = [clean[0, :5], clean[1], clean[2, :3]]
    m2 = mean_head_activations(model, ragged, layers=[1])
    per = [_last_token_proj_inputs(model, r[None])[1][0] for r in ragged]
    assert torch.allclose(m2[1].reshape(-1), torch.stack(per).mean(0), atol=1e-12)
    assert torch.count_nonzero(m2[0]) == 0


@torch.no_grad()
def test_batched_indirect_effect_equals_single_head_patch() -> None:
    model = tiny_model("llama", dtype=torch.float64)
    clean, corrupted = _prompts()
    means = mean_head_activations(model, clean)
    p, y, layer, head = corrupted[0], 11, 1, 2
    base = torch.softmax(model(p[None]).logits[0, -1], -1)[y]

    def patch(_m, a):  # noqa: ANN001, ANN202
        x = a[0].clone()
        x[0, -1, head * HD : (head + 1) * HD] = means[layer, head]
        return (x,)

    h = attention_out_projections(model)[layer].register_forward_pre_hook(patch)
    try:
        patched = torch.softmax(model(p[None]).logits[0, -1], -1)[y]
    finally:
        h.remove()
    aie = head_indirect_effects(model, means, p[None], [y], layers=[layer])
    assert float(aie[layer, head]) == pytest.approx(float(patched - base), abs=1e-12)
    assert torch.isnan(aie[0]).all()


def _planted_model() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, int]:
    """Head (1, 2) writes the answer's unembedding direction in proportion to (its clean mean − corrupted mean)."""
    model = tiny_model("llama", dtype=torch.float64)
    clean, corrupted = _prompts()
    y = 7
    means = mean_head_activations(model, clean)
    corrupt_mean = _last_token_proj_inputs(model, corrupted)[1].mean(0).reshape(H, HD)
    delta = means[1, 2] - corrupt_mean[2]
    u = model.model.norm.weight.detach() * model.lm_head.weight[y].detach()
    with torch.no_grad():
        attention_out_projections(model)[1].weight[:, 2 * HD : 3 * HD] = (
            60.0 * torch.outer(u / u.norm(), delta) / delta.norm() ** 2
        )
    return model, clean, corrupted, y


def check_planted_first(aie: torch.Tensor) -> None:
    flat = torch.nan_to_num(aie, nan=-1.0).flatten()
    assert int(flat.argmax()) == 1 * H + 2, "the planted head does not have the largest AIE"


def test_planted_head_ranks_first_and_mutant() -> None:
    model, clean, corrupted, y = _planted_model()
    means = mean_head_activations(model, clean)
    check_planted_first(head_indirect_effects(model, means, corrupted, [y] * 5))
    fv = function_vector(model, clean, corrupted, [y] * 5, top_k=1)
    assert fv.heads[0][:2] == (1, 2)
    # mutant: patch each head with its neighbour's mean (a head-indexing bug) -> the planted head loses its effect
    with pytest.raises(AssertionError, match="planted"):
        check_planted_first(head_indirect_effects(model, means.roll(1, dims=1), corrupted, [y] * 5))


@torch.no_grad()
def test_steer_adds_vector_after_its_layer_at_last_token() -> None:
    model = tiny_model("llama", dtype=torch.float64)
    clean, corrupted = _prompts()
    fv = function_vector(model, clean, corrupted, [7] * 5, top_k=2, edit_layer=1)
    block = residual_layers(model)[1]
    seen: list[torch.Tensor] = []

    def grab(_m, _a, o):  # noqa: ANN001, ANN202
        seen.append((o[0] if isinstance(o, tuple) else o).clone())

    h = block.register_forward_hook(grab)
    try:
        plain = model(clean[:1]).logits
    finally:
        h.remove()
    with fv.steer(model, scale=2.0):
        h = block.register_forward_hook(grab)  # registered after the steering hook: sees the edited state
        try:
            steered = model(clean[:1]).logits
        finally:
            h.remove()
    want = seen[0].clone()
    want[:, -1] += 2.0 * fv.vector
    assert torch.allclose(seen[1], want, atol=1e-10)
    assert torch.equal(steered[:, :-1], plain[:, :-1]) and not torch.allclose(steered[:, -1], plain[:, -1])
    assert torch.equal(model(clean[:1]).logits, plain)


def test_model_mode_and_hooks_restored() -> None:
    model = tiny_model("gpt2", dtype=torch.float64).train()
    clean, corrupted = _prompts()
    function_vector(model, clean, corrupted, [1] * 5, top_k=2)
    assert model.training and torch.is_grad_enabled()
    assert all(not p._forward_pre_hooks for p in attention_out_projections(model))


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"top_k": 0}, ValueError, "top_k"),
        ({"top_k": 9, "layers": [0]}, ValueError, "top_k"),
        ({"answer_ids": [1, 2]}, ValueError, "answer_ids has 2 entries"),
        ({"answer_ids": [1, 2, 3, 4, VOCAB]}, ValueError, "outside"),
        ({"answer_ids": torch.ones(5)}, TypeError, "answer_ids"),
        ({"layers": [5]}, ValueError, "layers"),
        ({"edit_layer": 2}, ValueError, "edit_layer"),
        ({"corrupted_ids": torch.full((2, 3), VOCAB)}, ValueError, "corrupted_ids"),
        ({"icl_prompts_ids": torch.ones(3, 4)}, TypeError, "icl_prompts_ids"),
        ({"out_proj_bias": 1}, TypeError, "out_proj_bias"),
    ],
)
def test_bad_arguments(kwargs: dict, exc: type, match: str) -> None:
    model = tiny_model("gpt2", dtype=torch.float64)
    clean, corrupted = _prompts()
    args = {"icl_prompts_ids": clean, "corrupted_ids": corrupted, "answer_ids": [1] * 5, "top_k": 2}
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        function_vector(model, **args)


@pytest.mark.parametrize(
    ("family", "name"), [("llama", "o_proj"), ("gpt2", "c_proj"), ("gpt_neox", "dense"), ("qwen2", "o_proj")]
)
def test_out_projection_discovery(family: str, name: str) -> None:
    model = tiny_model(family)
    projs = attention_out_projections(model)
    blocks = residual_layers(model)
    assert len(projs) == len(blocks)
    for block, proj in zip(blocks, projs):
        qual = [n for n, m in block.named_modules() if m is proj]
        assert qual and qual[0].endswith(name) and "mlp" not in qual[0]


def test_no_attention_projection_is_a_clear_error() -> None:
    model = tiny_model("gpt2")
    for block in residual_layers(model):
        block.attn.c_proj = torch.nn.Identity()  # type: ignore[assignment]
    with pytest.raises(ValueError, match="no attention out-projection"):
        attention_out_projections(model)
