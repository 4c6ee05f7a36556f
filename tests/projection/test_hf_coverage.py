"""Whole-model coverage of GPM-family projection on a tiny Llama: embedding rows of the ids old tasks used do not
move (new ids do), RMSNorm gains follow ``freeze_1d``, embeddings follow ``embeddings=``, and trainable parameters
that are neither protected nor frozen are named once in a ``UserWarning`` when training starts."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from orthokit.integrations.hf import ProjectionCallback  # noqa: E402
from orthokit.projection import GPM, SGP, SubspaceMemory  # noqa: E402
from orthokit.projection.memory import warn_uncovered  # noqa: E402

VOCAB = 32
OLD_IDS = torch.tensor([1, 3, 4, 9, 12])  # the only ids task A uses


def _llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg)


def _old_batches() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": OLD_IDS[torch.randint(0, len(OLD_IDS), (4, 8), generator=g)]} for _ in range(2)]


def _train(model: LlamaForCausalLM, opt: torch.optim.Optimizer, steps: int = 3) -> None:
    g = torch.Generator().manual_seed(2)
    for _ in range(steps):
        ids = torch.randint(0, VOCAB, (4, 8), generator=g)  # new task: every id
        opt.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()


def _norm_weights(model: LlamaForCausalLM) -> list[torch.Tensor]:
    return [p for n, p in model.named_parameters() if "norm" in n]


def test_old_token_rows_fixed_new_rows_trained() -> None:
    model = _llama()
    gpm = GPM(model, threshold=0.99)
    gpm.after_task(_old_batches())
    # recorded rows = exactly the ids the old batches contain (closed form: torch.unique)
    seen = torch.unique(torch.cat([b["input_ids"].flatten() for b in _old_batches()]))
    assert gpm.memory.embedding_names == ["model.embed_tokens"]
    assert torch.equal(gpm.memory.embedding_rows("model.embed_tokens"), seen)
    emb = model.model.embed_tokens.weight
    before = emb.detach().clone()
    _train(model, gpm.wrap(torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)))
    moved = (emb.detach() - before).abs().amax(dim=1)
    assert torch.equal(emb.detach()[seen], before[seen])  # bit-identical old rows (weight decay included)
    new = torch.tensor([i for i in range(VOCAB) if i not in set(seen.tolist())])
    assert bool((moved[new] > 1e-4).all())


def test_tied_head_rows_and_hidden_basis_commute() -> None:
    # tied lm_head: new rows are also right-projected off the final hidden-state basis, old rows zeroed
    model = _llama()
    gpm = GPM(model, threshold=0.999)
    gpm.after_task(_old_batches())
    head = gpm.memory.basis("lm_head").double()
    d = torch.randn(VOCAB, 16, dtype=torch.float64)
    ref = d - (d @ head) @ head.T  # float64 reference: right projection, then zero old rows
    ref[OLD_IDS] = 0
    w = model.model.embed_tokens.weight
    d32 = d.float()
    gpm.memory.project_({w: d32})
    assert torch.allclose(d32.double(), ref, atol=1e-5)


@pytest.mark.parametrize("freeze_1d, frozen", [("norm", True), ("none", False)])
def test_norm_gains_follow_freeze_1d(freeze_1d: str, frozen: bool) -> None:
    model = _llama()
    gpm = GPM(model, threshold=0.99, freeze_1d=freeze_1d)
    gpm.after_task(_old_batches())
    before = [p.detach().clone() for p in _norm_weights(model)]
    assert len(before) == 3  # input/post-attention RMSNorm + final norm (LlamaRMSNorm is not nn.RMSNorm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        _train(model, gpm.wrap(torch.optim.AdamW(model.parameters(), lr=1e-2)))
    same = [torch.equal(p.detach(), b) for p, b in zip(_norm_weights(model), before)]
    assert all(same) if frozen else not any(same)


def test_embeddings_freeze_and_none_options() -> None:
    model = _llama()
    gpm = GPM(model, threshold=0.99, embeddings="freeze")
    assert gpm.memory.embedding_names == []
    gpm.after_task(_old_batches())
    emb = model.model.embed_tokens.weight
    before = emb.detach().clone()
    _train(model, gpm.wrap(torch.optim.AdamW(model.parameters(), lr=1e-2)))
    assert torch.equal(emb.detach(), before)
    with pytest.raises(ValueError, match="embeddings must be 'rows', 'freeze' or 'none', got 'row'"):
        GPM(_llama(), embeddings="row")
    assert SGP(_llama()).memory.embedding_names == ["model.embed_tokens"]  # SGP inherits the default


def test_uncovered_warning_fires_once_and_names_params() -> None:
    model = _llama()
    gpm = GPM(model, threshold=0.99, embeddings="none", freeze_1d="none")
    gpm.after_task(_old_batches())
    opt = gpm.wrap(torch.optim.AdamW(model.parameters(), lr=1e-2))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        _train(model, opt, steps=3)
    msgs = [
        str(w.message)
        for w in rec
        if issubclass(w.category, UserWarning) and "neither protected" in str(w.message)
    ]
    assert len(msgs) == 1
    # the tied embedding is the lm_head weight (projected as a Linear), so only the three norm gains are free
    assert "Projected: 3 trainable parameters" in msgs[0]
    for name in ("model.layers.0.input_layernorm.weight", "model.norm.weight"):
        assert name in msgs[0]
    # the same model with the defaults (rows + norm) is fully covered: no warning
    model2 = _llama()
    gpm2 = GPM(model2, threshold=0.99)
    gpm2.after_task(_old_batches())
    assert gpm2.memory.uncovered_parameters(gpm2.frozen_parameters()) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        _train(model2, gpm2.wrap(torch.optim.AdamW(model2.parameters(), lr=1e-2)), steps=1)


def test_uncovered_warning_truncates_and_callback_warns_once() -> None:
    with pytest.warns(UserWarning, match=r"12 trainable parameters .* p9, \.\.\. \(2 more\)"):
        warn_uncovered([f"p{i}" for i in range(12)], "X")
    model = _llama()
    gpm = GPM(model, threshold=0.99, freeze_1d="none")
    gpm.after_task(_old_batches())
    cb = ProjectionCallback(gpm)
    args = type("A", (), {"output_dir": "unused"})()
    state = type("S", (), {"global_step": 0})()
    with pytest.warns(UserWarning, match="ProjectionCallback: 3 trainable parameters"):
        cb.on_train_begin(args, state, None, model=model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        cb.on_train_begin(args, state, None, model=model)  # once


def test_rows_state_round_trip_and_mismatch() -> None:
    model = _llama()
    gpm = GPM(model, threshold=0.99)
    gpm.after_task(_old_batches())
    sd = gpm.state_dict()
    fresh = GPM(_llama(), threshold=0.99)
    fresh.load_state_dict(sd)
    assert torch.equal(fresh.memory.embedding_rows("model.embed_tokens"), OLD_IDS)
    plain = SubspaceMemory(_llama())
    with pytest.raises(ValueError, match=r"embedding rows of \['model.embed_tokens'\], this memory of \[\]"):
        plain.load_state_dict(sd["memory"])
    with pytest.raises(ValueError, match=r"row ids must be in \[0, 32\)"):
        gpm.memory.protect_rows("model.embed_tokens", [40])
    assert torch.equal(gpm.memory.embedding_rows("model.embed_tokens"), OLD_IDS)  # untouched
