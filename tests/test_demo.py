"""make demo: the report opens with the summary table (one row per pillar) and a readable machine line; section
pieces carry no single-seed "±"/"wins", sane headings, no empty plot panel, unsafe schedules flagged and clipped.

The sections' training runs take minutes, so the report test swaps each pillar's ``demo`` for one returning a
Section built by that pillar's real summary code from a small synthetic result; the pieces are tested one by one.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

import orthokit.bench.continual as C
import orthokit.bench.merge_quality as MQ
import orthokit.bench.polar as P
from orthokit import demo as D
from orthokit.bench.report import Section

FAMILIES = [
    "polar",
    "optim",
    "continual",
    "merge",
    "align",
    "align_canonical",
    "align_losses",
    "steer",
    "diag_capacity",
    "diag_conflict",
    "vsa",
    "dictionary",
    "rotation_quant",
]


def _polar_res() -> dict[str, Any]:
    rows = []
    for mat, smin in (("gaussian 256x256", 3e-3), ("near-rank-1 256x256", 1e-6)):
        for meth, dt, lo, hi, ratio in (
            ("torch.optim.Muon NS5 (anchor)", "bfloat16", 0.70, 1.20, 1.0),
            ("orthokit polar (default: Polar Express, 5 steps)", "float32", 0.90, 1.10, 0.5),
            ("orthokit polar (default: Polar Express, 5 steps)", "bfloat16", 0.88, 1.12, 1.5),
            ("orthokit newton_schulz cans", "bfloat16", 0.60, 7.0, 1.1),
        ):
            rows.append(
                dict(matrix=mat, method=meth, dtype=dt, sigma_min=lo, sigma_max=hi, input_sigma_min=smin)
                | dict(rel_error=0.1, alignment=0.9, time_s=0.01 * ratio, ratio_vs_torch_bf16=ratio)
            )
    return {"rows": rows, "quick": True, "machine": {}, "batched": [], "gram": [], "elapsed_s": 1.0}


def _pres() -> dict[str, Any]:
    def run(label: str, new: float, old: float) -> dict[str, Any]:
        return {"label": label, "status": "ok", "seconds": 1.0, "curve": [(0, 3.0, 2.2), (10, new, old)]}

    return {
        "start": {"new": 3.0, "old": 2.2},
        "runs": {"finetune": run("Fine-tune (AdamW)", 2.1, 3.1), "gpm": run("GPM", 2.6, 2.6)},
    }


def _merge_res(n_seeds: int) -> dict[str, Any]:
    def row(label: str, mean: float) -> dict[str, Any]:
        return dict(label=label, mean=mean, std=0.0, delta_vs_ta=mean - 0.8, wins_vs_ta=n_seeds)

    rows = [row("task_arithmetic", 0.8), row("dc_merge", 0.85)]
    for r in rows:
        r |= dict(choices=[0.4] * n_seeds, merge_s=0.001, per_seed=[r["mean"]] * n_seeds)
    return {"seeds": list(range(n_seeds)), "summary": {"vision_full": rows}}


def _fake_sections() -> dict[str, Section]:
    pres = _pres()
    ours, anchor, verdict = P.demo_summary(_polar_res())
    mo, ma, mv = MQ.demo_summary(_merge_res(1))
    lm = C._lm_markdown(None, pres, C.DEMO_LM, False)
    return {
        "polar": Section("Polar", "polar", "σ-range", ours, anchor, verdict, body=P._markdown(_polar_res())),
        "optim": Section("Optim", "optim", "val loss", "Muon 2.10", "AdamW 2.30", "faster", body="| x |"),
        "continual": Section("Continual", "continual", "forgetting", "+0.4", "+0.9", "less", body=lm),
        "merge": Section("Merge", "merge", "accuracy", mo, ma, mv, body=MQ.markdown.__doc__ or ""),
        "align": Section(
            "Compat", "align (compat)", "new/old top-1", "OCA 90 %", "indep. 5 %", "3/4", body="| a |"
        ),
        "align_canonical": Section("Maps", "align (maps)", "top-1", "0.96", "none 0.82", "ok", body="| b |"),
        "align_losses": Section("Losses", "align (losses)", "acc", "EBV 97 %", "CE 96 %", "+1", body="| c |"),
        "steer": Section(
            "Steer", "steer", "NLL at success 0.5", "1.9", "addition 2.2", "lower", body="| d |"
        ),
        "diag_capacity": Section(
            "Capacity", "diagnostics (ε)", "ε", "0.20", "null 0.10", "high-ε", body="| e |"
        ),
        "diag_conflict": Section(
            "Conflict", "diagnostics (GC)", "Spearman", "-0.1", "norm 0.3", "weak", body="| f |"
        ),
        "vsa": Section("VSA", "vsa", "‖v‖ at depth 20", "1.00", "gaussian 1.07", "exact", body="| g |"),
        "dictionary": Section("Dict", "dictionary", "rel. error", "0.37", "batch 0.35", "+6 %", body="| h |"),
        "rotation_quant": Section(
            "Rot", "rotation", "W4A4 damage", "0.10", "none 0.25", "-61 %", body="| i |"
        ),
    }


def test_every_pillar_has_a_demo_section_returning_a_section() -> None:
    assert D.SECTIONS == FAMILIES
    for name in D.SECTIONS:
        mod = importlib.import_module(f"orthokit.bench.{name}")
        sig = inspect.signature(mod.demo)
        assert list(sig.parameters) == ["out_dir"], name
        assert sig.return_annotation in (Section, "Section"), name


def test_report_opens_with_the_summary_and_a_readable_machine_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fakes = _fake_sections()
    for name, sec in fakes.items():
        monkeypatch.setattr(importlib.import_module(f"orthokit.bench.{name}"), "demo", lambda out, s=sec: s)
    assert D.main(["--out", str(tmp_path)]) == 0
    text = (tmp_path / "report.md").read_text(encoding="utf-8")
    head = text.splitlines()[
        :24
    ]  # the first screen: title, summary table (one row per section), machine line
    table = [ln for ln in head if ln.startswith("| ")]
    assert table[0].startswith("| family |")
    rows = [ln.split("|")[1].strip() for ln in table[1:]]
    assert rows == [fakes[n].family for n in FAMILIES]  # one row per section, in order
    machine = next(ln for ln in head if ln.startswith("Machine: "))
    assert "{" not in machine and "torch" in machine and "core" in machine
    assert "± 0.000" not in text and "wins 1/1" not in text
    assert text.count("<details>") == text.count("</details>") == len(FAMILIES)
    assert "(b Fine-tune" not in text
    for h in re.findall(r"^#+ .*$", text, flags=re.M):
        assert h.count("(") == h.count(")"), h
    with pytest.raises(SystemExit):  # unknown section names are rejected by the parser
        D.main(["--out", str(tmp_path), "--only", "nope"])


def test_polar_flags_unsafe_schedules_and_clips_the_plot(monkeypatch: pytest.MonkeyPatch) -> None:
    res = _polar_res()
    md = P._markdown(res)
    cans = [ln for ln in md.splitlines() if "cans" in ln]
    assert cans and all("unsafe" in ln for ln in cans)
    assert not any("unsafe" in ln for ln in md.splitlines() if "default" in ln)
    ours, anchor, verdict = P.demo_summary(res)
    assert "[0.90, 1.10]" in ours and "[0.70, 1.20]" in anchor  # acceptance matrix only (σ_min ≥ 1e-3)
    assert "0.50×" in verdict and "cans" in verdict
    figs: list[Any] = []
    monkeypatch.setattr(P, "atomic_savefig", lambda fig, path, **kw: figs.append(fig))
    P._plot(res, Path("unused.png"))
    assert figs[0].axes[0].get_xlim()[1] <= P.UNSAFE_SIGMA_MAX + 0.05  # σ_max 7 does not stretch the axis


def test_continual_lm_headings_and_single_panel(monkeypatch: pytest.MonkeyPatch) -> None:
    pres = _pres()
    md = C._lm_markdown(None, pres, C.DEMO_LM, False)
    assert "**(b)" not in md and "(b " not in md and "Unlearning" not in md
    assert "+0.900" in md  # fine-tune's old-task loss increase 2.2 → 3.1
    figs: list[Any] = []
    monkeypatch.setattr(C, "atomic_savefig", lambda fig, path, **kw: figs.append(fig))
    C._lm_plot(None, pres, Path("unused.png"))
    assert len(figs[0].axes) == 1 and figs[0].axes[0].lines  # no empty panel (a)
    runs = [
        {"status": "ok", "R": [[90.0], [80.0, 95.0], [70.0, 85.0, 96.0]], "seed": 0, "method": "finetune"}
    ]
    rows = [dict(label="FT", status="ok", ACC=[84.0], BWT=[-15.0], LA=[94.0], seconds=[3.0], seeds=[0])]
    rows[0] |= dict(memory_floats=0, dims={}, note="")
    title = C._classification_markdown("pmnist", rows, runs, 1, True, 10000).splitlines()[0]
    assert "3 tasks" in title and "10 tasks" not in title
    assert "±" not in C._classification_markdown("pmnist", rows, runs, 1, True, 10000)


def test_merge_quality_one_seed_has_no_spread_or_wins() -> None:
    one = MQ._fmt_rows(_merge_res(1)["summary"]["vision_full"], 1)
    assert all("±" not in c and "/1" not in c for row in one for c in row)
    assert MQ.demo_summary(_merge_res(1)) == ("dc_merge 0.850", "task arithmetic 0.800", "+5.0 pts")
    two = MQ._fmt_rows(_merge_res(2)["summary"]["vision_full"], 2)
    assert "± 0.000" in two[1][1] and "(2/2)" in two[1][2]
    assert "wins 2/2" in MQ.demo_summary(_merge_res(2))[2]
