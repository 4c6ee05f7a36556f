"""The steering benchmark on a tiny model and grid: files, the ablation equivalence, norm preservation, Selective's
plan (its own plane and sites, the reference's normalization sites, the no-discriminative-site row), a mutant result.
The ``--quick`` end-to-end run of ``main`` is marked slow."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from orthokit.bench import hf_char  # noqa: E402
from orthokit.bench.steer import (  # noqa: E402
    NO_SITE,
    QUICK,
    Context,
    _grid,
    continuation_nll,
    distinct_n,
    main,
    norm_violations,
    run,
)

#: the test's model and grid: a 2-block hidden-32 Llama trained 30 steps, one strength per method
TINY_MODEL = dataclasses.replace(hf_char.QUICK, steps=30)
TINY = dataclasses.replace(
    QUICK,
    n_cal=8,
    n_prompts=4,
    gen_len=8,
    clf_windows=150,
    lens_steps=3,
    lens_batch=4,
    add_grid=(4.0,),
    angle_grid=(0.0,),
    rotate_grid=(120.0,),
)


@pytest.fixture(scope="module")
def tiny_result(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One tiny run in which the residual-stream calibration finds no discriminative block (forced), so the
    ``selective@block`` row must be the flagged unsteered result while ``selective`` steers its norm sites."""
    import orthokit.steer.selective as sel

    out = tmp_path_factory.mktemp("steer")
    real = sel.plan_selective

    def no_block_site(*args: object, **kw: object) -> sel.SelectivePlan:
        plan = real(*args, **kw)  # type: ignore[arg-type]
        return dataclasses.replace(plan, layers=[]) if kw.get("sites") == "block" else plan

    mp = pytest.MonkeyPatch()
    mp.setattr(sel, "plan_selective", no_block_site)
    try:
        res = run(out, quick=True, cfg=TINY, model_cfg=TINY_MODEL, log=lambda s: None)
    finally:
        mp.undo()
    return out, res


def test_tiny_run_writes_files_and_sane_numbers(tiny_result: tuple[Path, dict]) -> None:
    from orthokit.steer.registry import STEERERS

    out, res = tiny_result
    for ext in ("md", "json", "png"):
        assert (out / f"steer_quick.{ext}").stat().st_size > 0
    assert json.loads((out / "steer_quick.json").read_text())["methods"].keys() == res["methods"].keys()
    assert (out / "cache").is_dir()
    # every registered method is either swept or listed with a reason, plus the named-option rows
    assert set(STEERERS.names()) <= set(res["methods"]) | set(res["skipped"])
    assert {"addition", "angular@all", "selective@block"} <= set(res["methods"])
    assert res["ablation_max_abs_diff"] <= 1e-5
    assert res["norm_check"] == []
    for pts in res["methods"].values():
        for p in pts:
            assert 0.0 <= p["success"] <= 1.0 and p["nll"] > 0 and len(p["drift"]) == 2
    md = (out / "steer_quick.md").read_text()
    assert "At matched success" in md and "Steerable vs decodable" in md


def test_selective_rows_follow_the_plan(tiny_result: tuple[Path, dict]) -> None:
    """``selective`` = the reference configuration at normalization sites, with the count of selected sites;
    no discriminative site -> one flagged unsteered point that never counts as reaching a success level."""
    _, res = tiny_result
    sel = res["selection"]["selective"]
    assert sel["sites"] == "norm" and sel["of"] == 4 and sel["selected"] == len(sel["names"]) > 0
    assert res["method_sites"]["selective"] == "norm" and res["method_sites"]["angular"] == "block"
    assert f"{sel['selected']} of 4 normalization sites selected" in (Path(res["files"][0])).read_text()
    blk = res["methods"]["selective@block"]
    assert res["selection"]["selective@block"]["selected"] == 0
    assert len(blk) == 1 and blk[0]["note"] == NO_SITE and res["method_layers"]["selective@block"] == []
    assert blk[0]["success"] == res["baseline"]["success"] and blk[0]["nll"] == res["baseline"]["nll"]
    assert res["matched"]["selective@block"] is None and res["nll_at_level"]["selective@block"] is None
    assert NO_SITE in (Path(res["files"][0])).read_text()


@torch.no_grad()
def test_selective_grid_uses_the_plans_own_plane_and_sites() -> None:
    """The benchmark's Selective hooks rotate in the plan's plane on the plan's sites (mutant: Angular's plane)."""
    from orthokit.steer.selective import norm_sites, plan_selective

    from ._models import tiny_model

    model = tiny_model("llama", dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    pos, neg = torch.randint(0, 128, (8, 6), generator=g), torch.randint(128, 256, (8, 6), generator=g)
    plans = {s: plan_selective(model, pos, neg, sites=s) for s in ("norm", "block")}
    r = torch.randn(2, 64, generator=g, dtype=torch.float64)
    ctx = Context(
        model=model,
        r=r,
        r_norm=r.norm(dim=-1),
        b1=r[0] / r[0].norm(),  # a different plane: the one Angular uses
        b2=r[1] / r[1].norm(),
        layer=1,
        plans={"selective": plans["norm"], "selective@block": plans["block"]},
        prompt_mean=r,
        target_mean=r,
        cfg=dataclasses.replace(TINY, rotate_grid=(120.0,)),
    )

    def check(name: str, c: Context, plan: object) -> None:
        [(_, make)] = _grid(name, c)
        with make() as handle:
            assert torch.allclose(handle.steerer.b1, plan.b1, atol=1e-12)  # type: ignore[attr-defined]
            assert torch.allclose(handle.steerer.b2, plan.b2, atol=1e-12)  # type: ignore[attr-defined]
            assert len(handle._handles) == len(plan.layers)  # type: ignore[attr-defined]
            if plan.sites == "norm":  # type: ignore[attr-defined]
                mods = [m for _, _, m in norm_sites(model)]
                assert [i for i, m in enumerate(mods) if m._forward_hooks] == plan.layers  # type: ignore[attr-defined]

    for name in ("selective", "selective@block"):
        plan = ctx.plans[name]
        check(name, ctx, plan)
        # mutant: the old benchmark's Selective, rotating in steering_plane(r)'s plane instead of the plan's own
        wrong = dataclasses.replace(ctx, plans={name: dataclasses.replace(plan, b1=ctx.b1, b2=ctx.b2)})
        with pytest.raises(AssertionError):
            check(name, wrong, plan)


def test_norm_check_rejects_a_mutant_result(tiny_result: tuple[Path, dict]) -> None:
    """A 'norm-preserving' method whose steered block changed the norm must be reported."""
    _, res = tiny_result
    assert res["method_sites"]["angular"] == "block"
    for rot in ("angular", "angular@all"):
        bad = copy.deepcopy(res)
        first = bad["method_layers"][rot][0]
        bad["methods"][rot][0]["drift"][first] = 0.05
        assert norm_violations(bad) and not norm_violations(res)


@pytest.mark.slow
def test_quick_main_end_to_end(tmp_path: Path) -> None:
    assert main(["--quick", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "steer_quick.json").read_text())
    assert (
        res["classifier_val_acc"] > 0.6 and res["ablation_max_abs_diff"] <= 1e-5 and res["norm_check"] == []
    )


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
