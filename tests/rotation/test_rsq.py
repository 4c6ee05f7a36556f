"""RSQ attention concentration and token weights against explicit Python references (float64)."""

from __future__ import annotations

import pytest
import torch

from orthokit.rotation.rsq import attention_concentration, eager_attention, rsq_token_weights


def _causal_probs(b: int, h: int, t: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(b, h, t, t, generator=g, dtype=torch.float64)
    scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    return scores.softmax(-1)


def _ref_concentration(p: torch.Tensor) -> list[list[float]]:
    b, h, t, _ = p.shape
    return [
        [sum(float(p[i, m, q, j]) for m in range(h) for q in range(t)) for j in range(t)] for i in range(b)
    ]


def _ref_weights(s: list[float], valid: list[bool], r_min: float, r_max: float) -> list[float]:
    v = [x for x, ok in zip(s, valid) if ok]
    lo, hi = min(v), max(v)
    r = [((x - lo) / (hi - lo) * (r_max - r_min) + r_min) if hi > lo else 1.0 for x in s]
    mean = sum(x for x, ok in zip(r, valid) if ok) / len(v)
    return [x / mean if ok else 0.0 for x, ok in zip(r, valid)]


def test_concentration_sums_heads_and_queries() -> None:
    p = _causal_probs(2, 3, 7)
    got = attention_concentration(p)
    assert torch.allclose(got.double(), torch.tensor(_ref_concentration(p), dtype=torch.float64), atol=1e-5)
    # Mutant: summing over keys gives heads·1 for every token (rows of a softmax sum to 1) -- not AttnCon.
    mutant = p.sum(dim=(1, 3))
    assert not torch.allclose(got.double(), mutant, atol=1e-3)
    # Causal attention: the first token is seen by every query, so it concentrates the most mass on average.
    assert float(got[:, 0].mean()) > float(got[:, 1:].mean())


@pytest.mark.parametrize(("r_min", "r_max"), [(0.01, 1.0), (0.2, 0.8), (0.5, 0.5)])
def test_token_weights_reference(r_min: float, r_max: float) -> None:
    g = torch.Generator().manual_seed(1)
    s = torch.rand(3, 9, generator=g, dtype=torch.float64) * 5
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0
    got = rsq_token_weights(s, mask, r_min=r_min, r_max=r_max)
    for b in range(3):
        ref = _ref_weights(s[b].tolist(), [bool(x) for x in mask[b]], r_min, r_max)
        assert torch.allclose(got[b], torch.tensor(ref, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(got.sum(1), mask.sum(1).double())  # unit mean over valid tokens
    assert bool((got[1, 6:] == 0).all())


def test_token_weights_degenerate_and_order() -> None:
    w = rsq_token_weights(torch.full((1, 4), 2.0))
    assert torch.equal(w, torch.ones(1, 4))
    w = rsq_token_weights(torch.tensor([[3.0, 1.0, 2.0]]))
    assert w[0, 0] > w[0, 2] > w[0, 1] > 0


def test_errors() -> None:
    with pytest.raises(ValueError, match="4-D"):
        attention_concentration(torch.rand(2, 3, 4))
    with pytest.raises(ValueError, match="r_min"):
        rsq_token_weights(torch.rand(1, 3), r_min=0.9, r_max=0.5)
    with pytest.raises(ValueError, match="mask"):
        rsq_token_weights(torch.rand(2, 3), torch.ones(2, 4))


def test_eager_probe_with_orthokit_attention_installed() -> None:
    from orthokit.rotation.attention import install_attention
    from tests.rotation._models import tiny_ids, tiny_model

    m = tiny_model("llama_gqa", num_hidden_layers=1)
    install_attention(m)
    attn = m.model.layers[0].self_attn
    base = attn._orthokit_base_impl
    ids = tiny_ids(2, 7)
    with eager_attention(m, attn) as probs:
        m(ids)
    assert probs[0].shape == (2, 4, 7, 7)
    assert torch.allclose(probs[0].sum(-1), torch.ones(2, 4, 7), atol=1e-5)  # rows are probabilities
    assert bool((probs[0].triu(1) == 0).all())  # causal
    assert attn._orthokit_base_impl == base and m.config._attn_implementation == "orthokit"


def test_concentration_masks_padded_queries() -> None:
    p = _causal_probs(2, 3, 6, seed=3)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    got = attention_concentration(p, mask)
    ref = [
        [sum(float(p[i, m, q, j]) for m in range(3) for q in range(6) if mask[i, q]) for j in range(6)]
        for i in range(2)
    ]
    assert torch.allclose(got.double(), torch.tensor(ref, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(got[0], attention_concentration(p)[0])  # an unpadded row is unchanged
    with pytest.raises(ValueError, match="mask"):
        attention_concentration(p, torch.ones(2, 5))


def test_padding_does_not_change_a_sequences_weights() -> None:
    """The same 8 tokens alone, and right-padded to 16 in a batch with another sequence, get the same RSQ weights
    (layer 1 of a tiny Llama; without the query mask the padded queries' mass moves them by up to ~0.8)."""
    from orthokit.rotation.quantize_model import _raise_stop, _run
    from tests.rotation._models import tiny_ids, tiny_model

    m = tiny_model("llama")
    attn = m.model.layers[1].self_attn
    a, b = tiny_ids(1, 8, seed=3), tiny_ids(1, 16, seed=4)

    def weights(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with eager_attention(m, attn) as probs:
            h = attn.register_forward_hook(_raise_stop)
            try:
                _run(m, batch)
            finally:
                h.remove()
        mask = batch.get("attention_mask")
        return rsq_token_weights(attention_concentration(probs[0], mask), mask)

    alone = weights({"input_ids": a})[0]
    ids = torch.cat([torch.cat([a, torch.zeros(1, 8, dtype=torch.long)], 1), b])
    mask = torch.ones_like(ids)
    mask[0, 8:] = 0
    padded = weights({"input_ids": ids, "attention_mask": mask})
    assert torch.allclose(padded[0, :8], alone, atol=1e-5)
    assert bool((padded[0, 8:] == 0).all())
