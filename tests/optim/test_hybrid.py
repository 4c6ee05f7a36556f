"""hybrid(): one optimizer, correct routing (embeddings, heads, tied weights, 1-D, first conv, QKV, experts)."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from orthokit.bench.models import CharGPT, SmallCNN
from orthokit.optim import Muon, describe, hybrid, route_parameters


def _routes(model, **kw):
    return {r.name: r for r, _ in route_parameters(model, **kw)}


def test_chargpt_routing():
    model = CharGPT(30, d_model=16, n_layer=2, n_head=2, block_size=8)
    r = _routes(model)
    for i in range(2):
        for k in ("qkv", "proj", "fc", "fc_out"):
            assert r[f"blocks.{i}.{k}.weight"].rule == "ortho"
        for k in ("ln1.weight", "ln1.bias", "ln2.weight"):
            assert r[f"blocks.{i}.{k}"].rule == "adamw" and not r[f"blocks.{i}.{k}"].decay
    assert r["tok_emb.weight"].rule == "adamw" and "embedding" in r["tok_emb.weight"].reason
    assert r["pos_emb.weight"].rule == "adamw"
    assert r["lm_head.weight"].rule == "adamw" and "head" in r["lm_head.weight"].reason


class _TiedLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 6)
        self.hidden = nn.Linear(6, 6)
        self.proj = nn.Linear(6, 11, bias=False)
        self.proj.weight = self.emb.weight

    def forward(self, idx):
        return self.proj(torch.tanh(self.hidden(self.emb(idx))))


class _UntiedVocabOut(nn.Module):
    """Final Linear onto the vocabulary with an unusual name: detected by out_features == num_embeddings."""

    def __init__(self):
        super().__init__()
        self.tokens = nn.Embedding(13, 6)
        self.mix = nn.Linear(6, 6)
        self.to_vocab = nn.Linear(6, 13)
        self.pos = nn.Parameter(torch.zeros(4, 6))  # raw parameter, not an embedding by name


def test_tied_and_untied_heads():
    r = _routes(_TiedLM())
    assert "proj.weight" not in r  # deduplicated
    assert r["emb.weight"].rule == "adamw" and "tied with proj.weight" in r["emb.weight"].reason
    assert r["hidden.weight"].rule == "ortho"
    r = _routes(_UntiedVocabOut())
    assert r["to_vocab.weight"].rule == "adamw" and "output head" in r["to_vocab.weight"].reason
    assert r["mix.weight"].rule == "ortho"
    assert r["pos"].rule == "ortho"  # nothing marks it as an embedding → a plain matrix
    assert _routes(_UntiedVocabOut(), adamw=["^pos$"])["pos"].rule == "adamw"


def test_cnn_first_conv_adamw_rest_flattened():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.Flatten(), nn.Linear(16, 10))
    r = _routes(model)
    assert r["0.weight"].rule == "adamw" and "first convolution" in r["0.weight"].reason
    assert r["2.weight"].rule == "ortho" and r["2.weight"].flatten is True
    # the classifier named '4' is found by structure: last Linear of the Sequential, its 10 outputs feed nothing
    assert r["4.weight"].rule == "adamw" and "last Linear of the Sequential" in r["4.weight"].reason
    assert _routes(model, ortho=r"^4\.")["4.weight"].rule == "ortho"
    assert _routes(model, first_conv="ortho")["0.weight"].rule == "ortho"
    opt = hybrid(model, lr=0.02)
    v = opt.matrix_view(model[2].weight)
    assert (v.m, v.n) == (16, 8 * 9)


def test_small_cnn_trains_with_hybrid():
    model = SmallCNN()
    opt = hybrid(model, lr=0.02, adamw_lr=3e-3)
    x = torch.randn(8, 1, 28, 28)
    y = torch.randint(0, 10, (8,))
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_conv1d_flattened_and_experts_batched_and_qkv_split():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv1d(2, 4, 3)
            self.conv = nn.Conv1d(4, 8, 3)
            self.experts = nn.Parameter(torch.randn(3, 8, 5))
            self.attn = nn.MultiheadAttention(8, 2)
            self.qkv = nn.Linear(8, 24)

    m = M()
    # qkv is the last Linear and its 24 outputs feed no layer: structurally a head, so force it to ortho
    assert _routes(m)["qkv.weight"].rule == "adamw"
    opt = hybrid(m, split_qkv={r"qkv\.weight$": 3}, ortho=r"^qkv\.weight$")
    assert (lambda v: (v.mats, v.m, v.n))(opt.matrix_view(m.conv.weight)) == (1, 8, 12)
    assert (lambda v: (v.mats, v.m, v.n))(opt.matrix_view(m.experts)) == (3, 8, 5)
    assert (lambda v: (v.mats, v.m, v.n))(opt.matrix_view(m.attn.in_proj_weight)) == (3, 8, 8)
    assert (lambda v: (v.mats, v.m, v.n))(opt.matrix_view(m.qkv.weight)) == (3, 8, 8)
    with pytest.raises(ValueError, match="split_qkv"):
        hybrid(m, split_qkv={"qkv": 0})


def test_one_optimizer_one_state_dict_and_resume():
    torch.manual_seed(0)
    model = CharGPT(20, d_model=16, n_layer=1, n_head=2, block_size=8)
    opt = hybrid(model, lr=0.02, adamw_lr=3e-3, weight_decay=0.01, adamw_wd=0.1)
    assert isinstance(opt, Muon)
    roles = {g["role"]: g for g in opt.param_groups}
    assert set(roles) == {"ortho", "adamw", "adamw_no_decay"}
    assert roles["adamw"]["lr"] == 3e-3 and roles["adamw"]["weight_decay"] == 0.1
    assert roles["adamw_no_decay"]["weight_decay"] == 0.0
    assert roles["ortho"]["weight_decay"] == 0.01
    idx = torch.randint(0, 20, (4, 8))

    def step(m, o):
        o.zero_grad()
        m(idx, idx)[1].backward()
        o.step()

    for _ in range(2):
        step(model, opt)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    sd = opt.state_dict()
    assert len(sd["state"]) == len(list(model.parameters()))
    for _ in range(2):
        step(model, opt)
    buf.seek(0)
    ck = torch.load(buf, weights_only=True)
    model2 = CharGPT(20, d_model=16, n_layer=1, n_head=2, block_size=8)
    model2.load_state_dict(ck["model"])
    opt2 = hybrid(model2, lr=0.02, adamw_lr=3e-3, weight_decay=0.01, adamw_wd=0.1)
    opt2.load_state_dict(ck["opt"])
    for _ in range(2):
        step(model2, opt2)
    for (n, a), b in zip(model.named_parameters(), model2.parameters()):
        assert torch.equal(a, b), n


def test_adamw_lr_default_follows_scale_convention():
    m = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    assert [g["lr"] for g in hybrid(m, lr=0.02).param_groups] == [0.02, 3e-4]
    assert [g["lr"] for g in hybrid(m, lr=1e-3, scale="match_rms_adamw").param_groups] == [1e-3, 1e-3]
    # the rule reads the effective scale: AdaMuon/ROOT default to match_rms_adamw, so AdamW shares their lr
    for name, lr in (("adamuon", 0.02), ("root", 1e-3)):
        assert [g["lr"] for g in hybrid(m, name).param_groups] == [lr, lr], name
    assert [g["lr"] for g in hybrid(m, "root", scale="keller").param_groups] == [1e-3, 3e-4]
    assert [g["lr"] for g in hybrid(m, "dion").param_groups] == [0.01, 3e-4]


def test_forcing_1d_into_muon_raises_naming_param():
    m = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    with pytest.raises(ValueError, match="'1.weight'"):
        hybrid(m, ortho=[r"^1\.weight$"])


def test_frozen_params_excluded_and_described():
    m = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    m[0].weight.requires_grad_(False)
    opt = hybrid(m)
    assert all(p is not m[0].weight for g in opt.param_groups for p in g["params"])
    text = describe(opt)
    assert "0.weight" in text and "frozen" in text


def test_describe_table():
    model = CharGPT(30, d_model=16, n_layer=1, n_head=2, block_size=8)
    text = describe(hybrid(model, lr=0.02, scale="match_rms_adamw"))
    lines = {ln.split()[0]: ln for ln in text.splitlines()[2:-1]}
    assert (
        "muon" in lines["blocks.0.fc.weight"]
        and f"match_rms_adamw={0.2 * math.sqrt(64):.3g}" in lines["blocks.0.fc.weight"]
    )
    assert "adamw" in lines["tok_emb.weight"] and "embedding" in lines["tok_emb.weight"]
    n_ortho = sum(p.numel() for n, p in model.named_parameters() if n.startswith("blocks") and p.dim() == 2)
    assert f"{n_ortho:,} of" in text.splitlines()[-1]
    with pytest.raises(TypeError):
        describe(torch.optim.SGD(model.parameters(), lr=0.1))


def test_describe_plain_muon_without_routes():
    w = torch.nn.Parameter(torch.randn(6, 3))
    text = describe(Muon([("w", w)]))
    assert "w" in text and "6×3" in text and "orthogonalized group" in text


def test_bad_inputs():
    with pytest.raises(TypeError, match="nn.Module"):
        hybrid([torch.nn.Parameter(torch.randn(2, 2))])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="first_conv"):
        hybrid(nn.Linear(2, 2), first_conv="sgd")
    with pytest.raises(ValueError, match="unknown optimizer"):
        hybrid(nn.Linear(2, 2), optimizer="adamw_plus")
    frozen = nn.Linear(2, 2)
    frozen.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        hybrid(frozen)


def test_hf_conv1d_in_out_layout_matches_linear_transposed():
    """GPT-2's Conv1D stores (in, out): routed with layout='in_out', its update is the Linear update transposed."""
    pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D

    class HF(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_fc = Conv1D(64, 16)  # nf=64 outputs, nx=16 inputs → weight (16, 64)

    class Lin(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(16, 64, bias=False)

    hf, lin = HF(), Lin()
    with torch.no_grad():
        lin.fc.weight.copy_(hf.c_fc.weight.T)
    r = _routes(hf)
    assert r["c_fc.weight"].rule == "ortho" and r["c_fc.weight"].layout == "in_out"
    o_hf = hybrid(hf, lr=0.1, ns_method="svd", ns_dtype=torch.float64)
    # a lone Linear(16, 64) is structurally an output head; force it to the orthogonalized rule for the comparison
    o_lin = hybrid(lin, lr=0.1, ns_method="svd", ns_dtype=torch.float64, ortho=r"^fc\.weight$")
    v = o_hf.matrix_view(hf.c_fc.weight)
    assert (v.fan_out, v.fan_in) == (64, 16) and v.transposed
    for _ in range(2):
        G = torch.randn(64, 16)
        hf.c_fc.weight.grad = G.T.clone()
        lin.fc.weight.grad = G.clone()
        o_hf.step()
        o_lin.step()
    torch.testing.assert_close(hf.c_fc.weight.detach().T, lin.fc.weight.detach(), rtol=1e-6, atol=1e-6)
    assert "(in×out)" in describe(o_hf) and "keller=2" in describe(o_hf)
    with pytest.raises(ValueError, match="in_out"):
        Muon([{"params": [torch.nn.Parameter(torch.randn(6, 4))], "layout": "in_out", "split": 2}])


# ---- output heads by structure (issue 9 item 6) -------------------------------------------------------------


def test_sequential_mlp_head_is_adamw_hidden_square_layers_stay_ortho():
    mlp = nn.Sequential(
        nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 5)
    )
    r = _routes(mlp)
    assert r["1.weight"].rule == "ortho" and r["3.weight"].rule == "ortho"
    assert r["5.weight"].rule == "adamw" and r["5.weight"].reason.startswith(
        "output head: last Linear of the Seq"
    )
    assert "output head: last Linear of the Sequential model" in describe(hybrid(mlp))
    # a square last layer cannot be told from a hidden one by structure: not taken, unless example_input is given
    sq = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    assert _routes(sq)["2.weight"].rule == "ortho"
    r = _routes(sq, example_input=torch.randn(2, 8))
    assert r["2.weight"].rule == "adamw" and "example_input" in r["2.weight"].reason
    assert r["0.weight"].rule == "ortho"


class _ResNetLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.layer1 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.proj = nn.Linear(8, 8)  # a hidden square Linear registered before the head
        self.fc = nn.Linear(8, 7)

    def forward(self, x):
        x = self.layer1(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.relu(self.proj(x.mean(dim=(2, 3)))))


def test_resnet_like_fc_head_by_structure_and_by_forward_hook():
    model = _ResNetLike()
    r = _routes(model)
    assert (
        r["fc.weight"].rule == "adamw" and "last Linear in registration order ('fc')" in r["fc.weight"].reason
    )
    assert r["proj.weight"].rule == "ortho" and r["layer1.0.weight"].rule == "ortho"
    assert r["conv1.weight"].rule == "adamw"  # first conv
    # the hook path finds the same head, in eval mode, restoring training flags and touching no buffer
    model.train()
    stats = [b.clone() for b in model.buffers()]
    r = _routes(model, example_input=torch.randn(2, 3, 6, 6))
    assert r["fc.weight"].rule == "adamw" and "producing the model's output" in r["fc.weight"].reason
    assert r["proj.weight"].rule == "ortho"
    assert all(m.training for m in model.modules())
    assert all(torch.equal(a, b) for a, b in zip(stats, model.buffers()))
    with pytest.raises(ValueError, match="example_input"):
        route_parameters(model, example_input=torch.randn(2, 5))


class _TinyGPT(nn.Module):
    """Tied head built as a new Parameter over the embedding's storage (not the same Parameter object)."""

    def __init__(self, vocab=17, d=8):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.blocks = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = nn.Parameter(self.wte.weight.data)  # same storage, different Parameter

    def forward(self, idx):
        return self.head(self.blocks(self.wte(idx)))


def test_tiny_gpt_head_tied_by_storage():
    model = _TinyGPT()
    r = _routes(model)
    assert (
        r["head.weight"].rule == "adamw"
        and r["head.weight"].reason == "tied to embedding 'wte' (shares its storage)"
    )
    assert r["blocks.0.weight"].rule == "ortho" and r["blocks.2.weight"].rule == "ortho"
    assert "tied to embedding 'wte'" in describe(hybrid(model))


def _tiny_gpt2(tie: bool):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(
        vocab_size=50, n_positions=16, n_embd=32, n_layer=1, n_head=2, tie_word_embeddings=tie
    )
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg)


@pytest.mark.parametrize("tie", [True, False])
def test_transformers_gpt2_head_from_get_output_embeddings(tie):
    model = _tiny_gpt2(tie)
    r = _routes(model)
    assert r["transformer.wte.weight"].rule == "adamw" and r["transformer.wpe.weight"].rule == "adamw"
    assert r["transformer.h.0.attn.c_attn.weight"].rule == "ortho"
    assert r["transformer.h.0.mlp.c_fc.weight"].layout == "in_out"
    if tie:
        assert "lm_head.weight" not in r and "tied with lm_head.weight" in r["transformer.wte.weight"].reason
    else:
        assert r["lm_head.weight"].rule == "adamw"
        assert r["lm_head.weight"].reason == "output head: model.get_output_embeddings()"
    # the forward-hook path agrees (HF ModelOutput is searched for the logits tensor)
    rh = _routes(model, example_input=torch.randint(0, 50, (1, 5)))
    assert {k: v.rule for k, v in rh.items()} == {k: v.rule for k, v in r.items()}


def test_a_linear_feeding_attention_is_not_taken_for_a_head():
    class AttnLast(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2)
            self.inp = nn.Linear(4, 8)  # registered last; its width 8 is read by the attention's raw in_proj

        def forward(self, x):
            h = self.inp(x)
            return self.attn(h, h, h)[0]

    r = _routes(AttnLast())
    assert r["inp.weight"].rule == "ortho" and r["attn.out_proj.weight"].rule == "ortho"
    assert r["attn.in_proj_weight"].rule == "ortho"
