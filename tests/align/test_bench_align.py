"""The MNIST backward-compatibility benchmark (``orthokit.bench.align``): a tiny end-to-end run through the CLI,
the wiring of the three settings, the summary statistics and verdicts, and one-line errors on bad input."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import orthokit.bench.align as A
from orthokit.bench.report import Section

TINY = [
    "--n-train",
    "600",
    "--n-old",
    "200",
    "--old-steps",
    "3",
    "--new-steps",
    "2",
    "--n-query",
    "60",
    "--n-gallery",
    "240",
]


def test_tiny_cli_run_writes_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "res"
    argv = [*TINY, "--methods", "independent", "bct", "--seeds", "0", "1", "--out", str(out)]
    assert A.main(argv) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["align_compat.json", "align_compat.md", "align_compat.png"]
    printed = capsys.readouterr().out
    assert "[align] machine:" in printed
    assert all(str((out / n).resolve()) in printed for n in names)
    res = json.loads((out / "align_compat.json").read_text())
    assert res["seeds"] == [0, 1] and res["config"]["new_steps"] == 2
    assert list(res["methods"]) == ["independent", "bct"]
    for seed in res["per_seed"]:
        for m in ("independent", "bct"):
            row = seed["methods"][m]
            for st in A.SETTINGS:
                assert set(row[st]) == set(A.METRIC_KEYS)
                assert all(0.0 <= v <= 1.0 for v in row[st].values())
            assert row["train_s"] > 0 and row["extra_parameters"] >= 0
    # the old model and its old/old row are shared by every method of a seed
    s0 = res["per_seed"][0]
    assert s0["methods"]["independent"]["old/old"] == s0["methods"]["bct"]["old/old"] == s0["old"]["old/old"]
    assert set(res["goals"]["criterion"]) == {"bct"}
    md = (out / "align_compat.md").read_text()
    assert "Theirs (CIFAR-100, ResNet-50)" in md and "| BT² | 33.6 | 38.7 | 62.4 |" in md
    assert "criterion new/old > old/old" in md and "![compatibility](align_compat.png)" in md


class _PerfectlyCompatible(nn.Module):
    """A stand-in method whose compatible feature IS the old model's feature: new/old must equal old/old."""

    def __init__(self, backbone: nn.Module, old: nn.Module) -> None:
        super().__init__()
        self.backbone, self.old = backbone, old
        self.head = nn.Linear(backbone.feat_dim, 10)

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        return nn.functional.cross_entropy(self.head(self.backbone(x)), y)

    def new_features(self, x: Tensor) -> Tensor:
        return self.backbone(x)

    def compatible_features(self, x: Tensor) -> Tensor:
        return self.old(x)

    def extra_parameters(self) -> int:
        return 7


def test_new_old_uses_the_compatible_feature_and_new_new_the_new_one(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_build(name: str, cfg: A.CompatConfig, old: A.OldModel, protos: Any, seed: int, ind: Any) -> Any:
        return _PerfectlyCompatible(A.ConvTrunk(4, cfg.old_dim), old), cfg.old_dim

    monkeypatch.setattr(A, "build_method", fake_build)
    cfg = A.CompatConfig(
        n_train=400, old_steps=2, new_steps=1, n_query=50, n_gallery=200, methods=("independent",)
    )
    r = A.run_seed(cfg, 0, log=lambda s: None)["methods"]["independent"]
    assert r["new/old"] == r["old/old"]
    assert r["new/new"] != r["old/old"]  # a barely trained 4-channel CNN does not rank like the old model
    assert r["extra_parameters"] == 7 and r["compatible_dim"] == cfg.old_dim
    # the per-group top-1 values split the same queries: their query-weighted mean is the overall top-1
    seen = int((A._split(cfg, 0)["yq"] < cfg.old_classes).sum())
    for st in A.SETTINGS:
        mixed = (seen * r[st]["top1_seen"] + (cfg.n_query - seen) * r[st]["top1_unseen"]) / cfg.n_query
        assert math.isclose(mixed, r[st]["top1"], abs_tol=1e-12)


def _seed_rows(seed: int, old: float, new_old: float, new_new: float) -> dict[str, Any]:
    def m(v: float) -> dict[str, float]:
        return {"top1": v, "top5": min(1.0, v + 0.05), "mAP": v / 2, "top1_seen": v, "top1_unseen": v}

    row = {"old/old": m(old), "new/old": m(new_old), "new/new": m(new_new), "train_s": 1.0 + seed}
    return {**row, "extra_parameters": 3, "feat_dim": 64}


def test_summary_statistics_and_verdicts_against_hand_values() -> None:
    seeds = [
        {
            "methods": {
                "independent": _seed_rows(0, 0.80, 0.05, 0.950),
                "oca": _seed_rows(0, 0.80, 0.82, 0.945),
            }
        },
        {
            "methods": {
                "independent": _seed_rows(1, 0.70, 0.06, 0.960),
                "oca": _seed_rows(1, 0.70, 0.69, 0.930),
            }
        },
        {
            "methods": {
                "independent": _seed_rows(2, 0.75, 0.04, 0.940),
                "oca": _seed_rows(2, 0.75, 0.80, 0.940),
            }
        },
    ]
    s = A.summarise(seeds, ["independent", "oca"])
    oca = s["methods"]["oca"]
    assert math.isclose(oca["new/old"]["top1"]["mean"], (0.82 + 0.69 + 0.80) / 3)
    assert math.isclose(oca["new/old"]["top1"]["std"], statistics.stdev([0.82, 0.69, 0.80]))
    assert math.isclose(oca["train_s"]["mean"], 2.0)
    assert oca["criterion_seeds"] == 2  # seed 1 misses (0.69 < 0.70)
    assert oca["criterion"] is True  # mean 0.770 > 0.750
    assert s["goals"]["criterion"] == {"oca": True}
    assert math.isclose(
        s["goals"]["new_new_vs_independent_pts"]["oca"], 100 * (0.9383333333 - 0.95), abs_tol=1e-6
    )
    assert s["goals"]["oca_or_bt2_within_1pt"] is False  # −1.17 pts
    res = {"methods": s["methods"], "goals": s["goals"], "seeds": [0, 1, 2]}
    text = "\n".join(A.verdict_lines(res))
    assert "criterion new/old > old/old **met** (2/3 seeds)" in text
    assert s["goals"]["criterion_map"] == {"oca": True} and oca["criterion_map_seeds"] == 2
    assert "OCA −1.2 pts" in text.replace("-", "−") and "**not met**" in text


def test_demo_returns_a_section_with_its_plot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tiny = A.CompatConfig(
        n_train=400, old_steps=2, new_steps=1, n_query=50, n_gallery=200, methods=("independent", "bct")
    )
    monkeypatch.setattr(A, "DEMO", tiny)
    sec = A.demo(tmp_path)
    assert isinstance(sec, Section) and sec.family == "align (compat)"
    assert sec.figures == ("align_compat_quick.png",) and (tmp_path / "align_compat_quick.png").is_file()
    assert sec.ours.startswith("BCT ") and sec.anchor.startswith("independent new/old ")
    assert "/1, mAP " in sec.verdict and sec.verdict.endswith("/1 compatible methods")
    assert "| independent |" in sec.body


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--methods", "nope"], "unknown compatible-training method 'nope'"),
        (["--n-query", "5000", "--n-gallery", "6000"], "exceeds the 10000 test images"),
        (["--new-steps", "0"], "new_steps must be >= 1"),
    ],
)
def test_bad_arguments_are_one_line_usage_errors(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        A.main([*argv, "--out", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1]
    assert not list(tmp_path.iterdir())  # nothing written


def test_config_check_names_the_field() -> None:
    with pytest.raises(ValueError, match="old_classes"):
        A.CompatConfig(old_classes=10).check()
    with pytest.raises(ValueError, match="metric"):
        A.CompatConfig(metric="dot").check()
    with pytest.raises(ValueError, match="seeds is empty"):
        A.run(A.CompatConfig(), seeds=())


def test_conv_trunk_takes_flat_and_image_batches() -> None:
    t = A.ConvTrunk(2, 5)
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(t(x), t(x.flatten(1)))


def test_variant_row_gets_its_options_and_centroid_prototypes(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    real = A.build_method

    def spy(name: str, cfg: A.CompatConfig, old: A.OldModel, protos: Any, seed: int, ind: Any) -> Any:
        seen[name] = protos
        return real(name, cfg, old, protos, seed, ind)

    monkeypatch.setattr(A, "build_method", spy)
    cfg = A.CompatConfig(
        n_train=400, old_steps=2, new_steps=1, n_query=50, n_gallery=200, methods=("bct", "bct_mlfct")
    )
    A.run_seed(cfg, 0, log=lambda s: None)
    data = A._split(cfg, 0)
    old, _ = A.train_old(cfg, data, 0)
    # plain BCT: the old classifier's rows for digits 0-4; the ml-fct row: class centroids of old features
    assert torch.equal(seen["bct"][: cfg.old_classes], old.classifier.weight)
    feats = nn.functional.normalize(A._features(old, data["x"]).double(), dim=1)
    for c in range(10):
        centroid = nn.functional.normalize(feats[data["y"] == c].mean(0), dim=0)
        assert torch.allclose(seen["bct_mlfct"][c].double(), centroid, atol=1e-5)
    m, _ = real("bct_mlfct", cfg, old, seen["bct_mlfct"], 0)
    assert type(m).__name__ == "BCT" and m.normalize and m.label_smoothing == 0.1
    assert A._label("bct_mlfct") == "BCT (ml-fct head)"


def test_trainable_parameters_against_hand_counts() -> None:
    """Counts of the built (untrained) methods against the layer sizes summed by hand."""
    cfg = A.CompatConfig(new_channels=4, old_channels=2, old_dim=8, extra_dims=2)
    n = A.trainable_parameters(cfg)

    def trunk(c: int, d: int) -> int:  # conv 1→c (5×5), conv c→2c (5×5), fc 2c·7·7 → d
        return (25 * c + c) + (25 * c * 2 * c + 2 * c) + (2 * c * 49 * d + d)

    d, k = 8, 2
    ind = trunk(4, d) + d * 10
    assert n["independent"] == n["bct"] == n["bct_mlfct"] == ind
    assert n["oca"] == trunk(4, d + k) + (d + k) * 10 + (d + k) ** 2 + (d + k)  # wider trunk + Q + bias
    assert n["bt2"] - ind == (d * d + d) + d * d + d * d  # A (+bias), O_p, O_old; independent_model frozen
    assert n["lambda_orthogonal"] - ind == d * d + d


def test_rerender_adds_the_counts_and_keeps_every_measured_number(tmp_path: Path) -> None:
    src = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "align_compat_quick.json"
    orig = json.loads(src.read_text())
    orig.pop("trainable_parameters", None)
    path = tmp_path / "align_compat_quick.json"
    path.write_text(json.dumps(orig))
    res = A.rerender(path)
    back = json.loads(path.read_text())
    assert back == res and {k: v for k, v in back.items() if k != "trainable_parameters"} == orig
    base = back["trainable_parameters"]["independent"]
    assert back["trainable_parameters"]["oca"] - base == 59840 and base == 114304
    md = (tmp_path / "align_compat_quick.md").read_text()
    assert "| +59,840 (+52 %) |" in md and "| 114,304 (base) |" in md
    # dropping the new column gives back the table rendered without the counts, cell for cell
    old_rows = [ln for ln in A.markdown(orig).splitlines() if ln.startswith("| ")]
    new_rows = [ln for ln in md.splitlines() if ln.startswith("| ")][: len(old_rows)]
    width = len(old_rows[0].split("|"))
    for o, r in zip(old_rows, new_rows, strict=True):
        cells = r.split("|")
        if len(cells) == width + 1:
            cells = cells[:4] + cells[5:]
        assert cells == o.split("|")
