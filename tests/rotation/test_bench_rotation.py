"""Rotation benchmarks: metric functions against closed forms, exactness rows (with a non-exact mutant), the
quantization benchmark end to end on a small config, and tamper detection by its consistency check."""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from orthokit.bench import rotation_exact as rx
from orthokit.bench import rotation_quant as rq

# ----------------------------------------------------------------------------------------------- metrics


def test_kl_per_token_closed_form() -> None:
    p = [0.7, 0.2, 0.1]
    q = [0.5, 0.25, 0.25]
    ref = torch.tensor([[math.log(x) for x in p]], dtype=torch.float64)
    out = torch.tensor(
        [[math.log(x) + 3.0 for x in q]], dtype=torch.float64
    )  # logits: softmax is shift-invariant
    want = sum(a * math.log(a / b) for a, b in zip(p, q))
    got = rq.kl_per_token(ref, out)
    assert got.shape == (1,)
    assert got.item() == pytest.approx(want, rel=1e-12)
    assert rq.kl_per_token(ref, ref).item() == pytest.approx(0.0, abs=1e-15)
    with pytest.raises(ValueError, match="shapes differ"):
        rq.kl_per_token(ref, out[:, :2])


def test_top1_and_cosine_closed_form() -> None:
    ref = torch.tensor([[3.0, 1.0], [0.0, 2.0], [5.0, 4.0], [1.0, 0.0]])
    q = torch.tensor([[2.0, 1.0], [3.0, 2.0], [5.0, 6.0], [1.0, 0.5]])  # rows 0 and 3 keep their argmax
    assert rq.top1_agreement(ref, q) == 0.5
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[1.0, 1.0], [0.0, -1.0]])
    assert rq.mean_cosine(a, b) == pytest.approx((1 / math.sqrt(2) - 1.0) / 2, rel=1e-12)


def test_knn_agreement_closed_form() -> None:
    # five unit vectors at angles 0, 10, 20, 90, 100 degrees: 2-NN sets are known by hand
    ang = torch.tensor([0.0, 10.0, 20.0, 90.0, 100.0]) * math.pi / 180
    e = torch.stack([ang.cos(), ang.sin()], 1)
    assert rq.knn_agreement(e, e, k=2) == 1.0
    # move point 2 next to point 3 (angle 80): 2-NN before -> after, by hand
    ang2 = ang.clone()
    ang2[2] = 80 * math.pi / 180
    e2 = torch.stack([ang2.cos(), ang2.sin()], 1)
    before = {0: {1, 2}, 1: {0, 2}, 2: {1, 0}, 3: {4, 2}, 4: {3, 2}}
    after = {0: {1, 2}, 1: {0, 2}, 2: {3, 4}, 3: {2, 4}, 4: {3, 2}}  # angles 0,10,80,90,100
    want = sum(len(before[i] & after[i]) / 2 for i in range(5)) / 5
    assert rq.knn_agreement(e, e2, k=2) == pytest.approx(want)
    with pytest.raises(ValueError, match="k must be"):
        rq.knn_agreement(e, e, k=5)


def test_damage_removed_and_max_rel_change() -> None:
    assert rq.damage_removed(0.3, 1.2) == pytest.approx(0.75)
    assert math.isnan(rq.damage_removed(0.3, 0.0))
    ref = torch.tensor([[[1.0, -2.0]], [[100.0, 0.0]]])
    out = ref + torch.tensor([[[0.0, 0.1]], [[50.0, 0.0]]])
    assert rx.max_rel_change(ref, out) == pytest.approx(0.5)
    assert rx.max_rel_change(ref, out, mask=torch.tensor([[1], [0]])) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="all zeros"):
        rx.max_rel_change(torch.zeros(3), torch.ones(3))


def test_activation_stats_closed_form() -> None:
    lin = nn.Linear(4, 2)
    model = nn.Sequential(lin)
    x = torch.tensor([[4.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    st = rq.activation_stats(model, lambda m: m(x), channel_site="0")
    # entries: one 4, seven 0 -> rms = 4/sqrt(8), max/rms = sqrt(8); kurtosis of {4, 0×7}: mean 0.5
    mu = 0.5
    m2 = (3.5**2 + 7 * mu**2) / 8
    m4 = (3.5**4 + 7 * mu**4) / 8
    assert st["max_over_rms"] == pytest.approx(math.sqrt(8))
    assert st["kurtosis"] == pytest.approx(m4 / m2**2)
    assert st["channel_max"] == [4.0, 0.0, 0.0, 0.0]


def test_sample_sequences_deterministic() -> None:
    m = rx.tiny_llama("llama")
    a = rx.sample_sequences(m, 3, 10, seed=5)
    b = rx.sample_sequences(m, 3, 10, seed=5)
    c = rx.sample_sequences(m, 3, 10, seed=6)
    assert a.shape == (3, 10) and torch.equal(a, b) and not torch.equal(a, c)
    assert bool((a[:, 0] == 1).all())


# ----------------------------------------------------------------------------------------------- exactness

_EXACT_SMALL = rx.ExactConfig(tiny=("llama_gqa",), stories=False, minilm=False, rotations=("hadamard",))


def test_exactness_rows_pass_and_report_sites(tmp_path: Path) -> None:
    res = rx.run(tmp_path, cfg=_EXACT_SMALL, log=lambda _s: None)
    assert res["all_passed"] and len(res["rows"]) == 2
    on, off = res["rows"]
    assert on["online_sites"] > 0 and off["online_sites"] == 0
    assert all(r["rel"] <= rx.TOL and r["original_untouched"] for r in res["rows"])
    assert (tmp_path / "rotation_exactness.json").is_file() and (tmp_path / "rotation_exactness.md").is_file()


def test_exactness_mutant_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rewriter that forgets a transpose somewhere (here: perturbs one weight by 1 %) must fail the row."""
    import orthokit.rotation.rewrite as rw

    real = rw.rotate_model

    def mutant(model: nn.Module, *a: Any, **k: Any) -> Any:
        out, rep = real(model, *a, **k)
        with torch.no_grad():
            out.model.layers[0].mlp.down_proj.weight.mul_(1.01)
        return out, rep

    monkeypatch.setattr(rw, "rotate_model", mutant)
    res = rx.run(cfg=replace(_EXACT_SMALL, online_modes=("off",)), log=lambda _s: None, write=False)
    assert not res["all_passed"] and res["rows"][0]["rel"] > rx.TOL


# ----------------------------------------------------------------------------------------------- quant bench

_SMALL = replace(
    rq.QUICK,
    models=("stories260K",),
    configs=("W8A8", "W4A4"),
    rotations=("none", "hadamard"),
    seeds=(0, 1),
    stories_eval=(4, 32),
    stories_calib=(2, 32),
    plot=True,
)


@pytest.fixture(scope="module")
def small_result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return rq.run(tmp_path_factory.mktemp("rq"), cfg=_SMALL, log=lambda _s: None)


def test_quant_small_end_to_end(small_result: dict[str, Any]) -> None:
    res = small_result
    assert res["consistency"] == []
    rows = {(r["config"], r["rotation"]): r for r in res["rows"]}
    assert set(rows) == {(c, r) for c in _SMALL.configs for r in _SMALL.rotations}
    for (_, rot), r in rows.items():
        assert r["seeds"] == ([0] if rot == "none" else [0, 1])
        assert 0.0 <= r["mean"]["top1"] <= 1.0 and r["mean"]["kl"] >= 0.0
    # quantization hurts more at 4 bits than at 8
    assert rows[("W4A4", "none")]["mean"]["kl"] > rows[("W8A8", "none")]["mean"]["kl"] > 0
    # rotation is exact in fp32 and spreads outliers at the linear inputs
    act = {x["rotation"]: x["act"] for x in res["rotated"] if x.get("act")}
    assert act["hadamard"]["max_over_rms"] < act["none"]["max_over_rms"]
    assert all(x["fp32_rel"] <= rx.TOL for x in res["rotated"])
    assert [h["config"] for h in res["headline"]] == ["W4A4"]
    files = [Path(f) for f in res["files"]]
    assert {f.suffix for f in files} == {".json", ".md", ".png"} and all(f.is_file() for f in files)
    assert "THEIRS" in files[1].read_text()


def test_consistency_detects_swapped_none_row(small_result: dict[str, Any]) -> None:
    res = copy.deepcopy(small_result)
    none = next(r for r in res["rows"] if r["rotation"] == "none" and r["config"] == "W4A4")
    had = next(r for r in res["rows"] if r["rotation"] == "hadamard" and r["config"] == "W4A4")
    none["rotation"], had["rotation"] = "hadamard", "none"  # relabel: the rows' contents swap places
    problems = rq.check_consistency(res)
    assert any("'none' row" in p for p in problems)


def test_consistency_detects_swapped_metrics_and_edits(small_result: dict[str, Any]) -> None:
    res = copy.deepcopy(small_result)
    none = next(r for r in res["rows"] if r["rotation"] == "none" and r["config"] == "W4A4")
    had = next(r for r in res["rows"] if r["rotation"] == "hadamard" and r["config"] == "W4A4")
    none["mean"], had["mean"] = had["mean"], none["mean"]  # swap only the summaries
    assert any("mean/std" in p for p in rq.check_consistency(res))
    res2 = copy.deepcopy(small_result)
    r = next(r for r in res2["rows"] if r["rotation"] == "hadamard")
    r["damage_removed"] += 0.1
    assert any("damage_removed" in p for p in rq.check_consistency(res2))
    res3 = copy.deepcopy(small_result)
    res3["goals"][0]["met"] = not res3["goals"][0]["met"]
    assert any("goal verdicts" in p for p in rq.check_consistency(res3))


@pytest.mark.slow
def test_quick_cli(tmp_path: Path) -> None:
    assert rq.main(["--quick", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "rotation_quant_quick.md").is_file()
    assert rx.main(["--quick", "--out", str(tmp_path)]) == 0
