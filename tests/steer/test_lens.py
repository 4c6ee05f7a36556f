"""Logit lens, tuned lens and direction decodability: closed-form references, sklearn's AUROC, and a mutant."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from orthokit.steer.lens import TunedLens, decodability, final_norm_and_head, logit_lens, residual_states


def _llama(seed: int = 0, vocab: int = 48, d: int = 16, layers: int = 3, init: float = 0.02) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=d,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=2 * d,
        max_position_embeddings=64,
        initializer_range=init,
    )
    return LlamaForCausalLM(cfg).eval()


def _gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(1)
    return GPT2LMHeadModel(GPT2Config(vocab_size=40, n_positions=32, n_embd=16, n_layer=2, n_head=2)).eval()


def _neox() -> nn.Module:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(2)
    cfg = GPTNeoXConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    return GPTNeoXForCausalLM(cfg).eval()


def last_layer_gap(model: nn.Module, lens_fn: Callable[[nn.Module, Tensor], Tensor]) -> float:
    """The conformance check: the lens at the last block's output must reproduce the model's logits."""
    ids = torch.randint(0, model.config.vocab_size, (2, 10), generator=torch.Generator().manual_seed(0))
    hs = residual_states(model, ids)
    with torch.no_grad():
        return float((lens_fn(model, hs[-1]) - model(ids).logits).abs().max())


@pytest.mark.parametrize("build", [_llama, _gpt2, _neox], ids=["llama", "gpt2", "gpt_neox"])
def test_logit_lens_at_last_layer_equals_model_logits(build: Callable[[], nn.Module]) -> None:
    model = build()
    assert last_layer_gap(model, logit_lens) < 1e-5


def test_mutant_lens_without_final_norm_is_rejected() -> None:
    def no_norm(model: nn.Module, h: Tensor) -> Tensor:
        return final_norm_and_head(model)[1](h)

    assert last_layer_gap(_llama(), no_norm) > 1e-2


def test_logit_lens_matches_float64_rmsnorm_formula() -> None:
    model = _llama()
    norm, head = final_norm_and_head(model)
    h = torch.randn(5, 16)
    h64 = h.double()
    ref = (h64 / torch.sqrt((h64**2).mean(-1, keepdim=True) + norm.variance_epsilon)) * norm.weight.double()
    ref = ref @ head.weight.double().T
    with torch.no_grad():
        assert torch.allclose(logit_lens(model, h).double(), ref, atol=1e-5)


def test_residual_states_first_is_embedding_and_shapes() -> None:
    model = _llama()
    ids = torch.randint(0, 48, (3, 7))
    hs = residual_states(model, ids)
    assert hs.shape == (4, 3, 7, 16)
    assert torch.equal(hs[0], model.model.embed_tokens(ids).detach())


def _batches(n: int, seed: int, vocab: int = 48) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (8, 16), generator=g) for _ in range(n)]


def test_tuned_lens_identity_init_equals_logit_lens_and_training_reduces_kl() -> None:
    model = _llama(init=0.3)  # large init: the blocks move the residual stream, so the logit lens is far off
    before_params = {k: v.clone() for k, v in model.state_dict().items()}
    lens = TunedLens(model)
    ids = _batches(1, 99)[0]
    hs = residual_states(model, ids)
    with torch.no_grad():
        for i in range(len(hs)):
            assert torch.equal(lens(hs[i], i), logit_lens(model, hs[i]))
    kl_logit = lens.kl_to_final(ids, tuned=False)
    assert torch.allclose(lens.kl_to_final(ids), kl_logit)
    hist = lens.fit(_batches(30, 0))
    assert len(hist) == 30 and hist[-1] < hist[0]
    kl_tuned = lens.kl_to_final(ids)  # held-out tokens
    assert float(kl_tuned.mean()) < 0.8 * float(kl_logit.mean()), (kl_tuned, kl_logit)
    # the model is read, not trained: parameters identical, no gradients left behind, grad flags restored
    for k, v in model.state_dict().items():
        assert torch.equal(v, before_params[k]), k
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert set(lens.state_dict()) == {f"translators.{i}.{w}" for i in range(3) for w in ("weight", "bias")}


def test_tuned_lens_bad_input_leaves_state() -> None:
    model = _llama()
    lens = TunedLens(model)
    with pytest.raises(ValueError, match="idx"):
        lens(torch.randn(2, 16), 4)
    with pytest.raises(ValueError, match="hidden size"):
        lens(torch.randn(2, 15), 0)
    with pytest.raises(ValueError, match="lr"):
        lens.fit(_batches(1, 0), lr=float("nan"))
    with pytest.raises(ValueError, match="input_ids"):
        lens.fit([torch.randn(2, 3)])
    with pytest.raises(ValueError, match="NaN"):
        logit_lens(model, torch.full((16,), float("nan")))
    with pytest.raises(TypeError, match="nn.Module"):
        final_norm_and_head("model")  # type: ignore[arg-type]
    assert all(float(t.weight.detach().abs().sum()) == 0 for t in lens.translators)


def test_decodability_auroc_matches_sklearn_and_separates_directions() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    model = _llama()
    norm, head = final_norm_and_head(model)
    targets = [3, 7, 11, 20, 31]
    e = torch.nn.functional.normalize(torch.randn(16, generator=torch.Generator().manual_seed(9)), dim=0)
    with torch.no_grad():  # plant: the target rows of the unembedding share a component along e
        head.weight[targets] += 0.2 * e
    v = (e / norm.weight).detach()  # its logit-lens read-out is W_U e (the norm gain undone)
    good = decodability(v, model, 1, targets)
    bad = decodability(-v, model, 1, targets)
    rnd = decodability(torch.randn(16, generator=torch.Generator().manual_seed(3)), model, 1, targets)
    assert good["auroc"] > 0.95 and bad["auroc"] < 0.05 and 0.0 <= rnd["auroc"] <= 1.0
    assert good["top_k_share"] >= 0.4 and good["top_k_chance"] == pytest.approx(5 / 48)
    with torch.no_grad():
        scores = logit_lens(model, v).double().numpy()
    y = [int(i in targets) for i in range(48)]
    assert rnd["auroc"] == pytest.approx(
        metrics.roc_auc_score(
            y,
            logit_lens(model, torch.randn(16, generator=torch.Generator().manual_seed(3)))
            .detach()
            .double()
            .numpy(),
        ),
        abs=1e-9,
    )
    assert good["auroc"] == pytest.approx(metrics.roc_auc_score(y, scores), abs=1e-9)
    # the shift read-out on states: the logit lens is a normalised read, so the shift of a large v approaches v's read
    states = residual_states(model, _batches(1, 5)[0])[2]
    shift = decodability(50 * v, model, 1, targets, states=states)
    assert shift["auroc"] > 0.9


def test_decodability_with_tuned_lens_and_errors() -> None:
    model = _llama()
    lens = TunedLens(model)
    v = torch.randn(16)
    assert decodability(v, model, 0, [1, 2], lens=lens) == decodability(v, model, 0, [1, 2])
    with pytest.raises(ValueError, match="layer"):
        decodability(v, model, 3, [1])
    with pytest.raises(ValueError, match="target_tokens"):
        decodability(v, model, 0, [48])
    with pytest.raises(ValueError, match="target_tokens is empty"):
        decodability(v, model, 0, [])
    with pytest.raises(ValueError, match="hidden size"):
        decodability(torch.randn(8), model, 0, [1])
    with pytest.raises(ValueError, match="lens"):
        decodability(v, model, 0, [1], lens=TunedLens(_llama(seed=5)))
