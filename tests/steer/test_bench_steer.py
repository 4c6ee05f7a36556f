"""The steering benchmark's quick path: files, the ablation equivalence, norm preservation, a mutant result."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from orthokit.bench.steer import continuation_nll, distinct_n, main, norm_violations  # noqa: E402


@pytest.fixture(scope="module")
def quick_result(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("steer")
    assert main(["--quick", "--out", str(out)]) == 0
    return out, json.loads((out / "steer_quick.json").read_text())


def test_quick_run_writes_files_and_sane_numbers(quick_result: tuple[Path, dict]) -> None:
    from orthokit.steer.registry import STEERERS

    out, res = quick_result
    for ext in ("md", "json", "png"):
        assert (out / f"steer_quick.{ext}").stat().st_size > 0
    assert (out / "cache").is_dir()
    # every registered method is either swept or listed with a reason
    assert set(STEERERS.names()) <= set(res["methods"]) | set(res["skipped"])
    assert "addition" in res["methods"]
    assert res["ablation_max_abs_diff"] <= 1e-5
    assert res["norm_check"] == []
    for pts in res["methods"].values():
        for p in pts:
            assert 0.0 <= p["success"] <= 1.0 and p["nll"] > 0 and len(p["drift"]) == 2
    assert res["classifier_val_acc"] > 0.6
    md = (out / "steer_quick.md").read_text()
    assert "At matched success" in md and "Steerable vs decodable" in md


def test_norm_check_rejects_a_mutant_result(quick_result: tuple[Path, dict]) -> None:
    """A 'norm-preserving' method whose steered block changed the norm must be reported."""
    _, res = quick_result
    rot = next(n for n in ("selective", "angular") if n in res["methods"])
    bad = copy.deepcopy(res)
    first = bad["method_layers"][rot][0]
    bad["methods"][rot][0]["drift"][first] = 0.05
    assert norm_violations(bad) and not norm_violations(res)


def test_fluency_and_distinct_against_hand_computation() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=20,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=16,
        max_position_embeddings=16,
    )
    model = LlamaForCausalLM(cfg).eval()
    prompts, cont = torch.randint(0, 20, (2, 4)), torch.randint(0, 20, (2, 3))
    ids = torch.cat([prompts, cont], 1)
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits.double(), -1)
    ref = torch.stack([-logp[b, 3 + t, cont[b, t]] for b in range(2) for t in range(3)]).view(2, 3).mean(1)
    assert torch.allclose(continuation_nll(model, prompts, cont).double(), ref, atol=1e-5)
    assert distinct_n("abababab", 4) == pytest.approx(2 / 5)
    assert distinct_n("abcdefgh", 4) == 1.0
