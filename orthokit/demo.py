"""``make demo``: real training/merging on the bundled data, one markdown report with numbers and plots.

Each pillar contributes a section through ``orthokit.bench.<pillar>.demo(out_dir) -> Section``
(:class:`orthokit.bench.report.Section`: a headline row measured in that run against its anchor, a short intro,
figures and the long tables). The report opens with the summary table (one row per pillar) and a one-line
description of the machine; each section's tables follow, collapsed in ``<details>`` blocks. The report is
written atomically to ``<out>/report.md`` (default ``demo_report/``).

Example:
    >>> import tempfile
    >>> from orthokit.bench.report import Section
    >>> from orthokit.demo import render
    >>> s = Section("Polar", "polar", "σ-range", "[0.9, 1.1]", "[0.7, 1.2]", "tighter", body="| a |")
    >>> text = render([s], total_s=1.0)
    >>> text.splitlines()[0], "| polar | σ-range | [0.9, 1.1] | [0.7, 1.2] | tighter |" in text
    ('# orthokit demo report', True)
"""

from __future__ import annotations

import argparse
import importlib
import time
from collections.abc import Sequence
from pathlib import Path

from orthokit.bench.report import Section, atomic_write_text, machine_line, md_table

__all__ = ["SECTIONS", "main", "render", "run_section"]

# pillars in report order; each module exposes demo(out_dir: Path) -> Section
SECTIONS: list[str] = [
    "polar",
    "optim",
    "continual",
    "merge",  # includes merge_quality
    "align",  # backward-compatible training (MNIST)
    "align_canonical",  # MiniLM layer-k -> final alignment maps
    "align_losses",  # OPL / EBV / Grassmann vs cross-entropy
    "steer",  # steering a char-level transformers Llama: success vs fluency per method
    "diag_capacity",  # ε / capacity of real embedding matrices, factor orthogonality of MiniLM
    "diag_conflict",  # Geometry Conflict vs measured forgetting (permuted MNIST)
    "vsa",  # MBAT binding: norm over nesting depth, JSON path decoding
    "dictionary",  # online Frank-Wolfe orthogonal DL vs batch on MNIST patches
    "rotation_quant",  # quantization damage with/without rotations on stories260K and MiniLM, outlier plot
]


def run_section(name: str, out: Path) -> Section:
    """Run one section (``name`` in :data:`SECTIONS`) writing its files into ``out``; returns its Section."""
    if name not in SECTIONS:
        raise ValueError(f"unknown demo section {name!r}; valid: {', '.join(SECTIONS)}")
    mod = importlib.import_module(f"orthokit.bench.{name}")
    sec = mod.demo(out)
    if not isinstance(sec, Section):
        raise TypeError(f"orthokit.bench.{name}.demo returned {type(sec).__name__}, expected Section")
    return sec


def render(sections: Sequence[Section], total_s: float, times: dict[str, float] | None = None) -> str:
    """The report: title, summary table (one row per section), machine line, then every section with its
    figures visible and its long tables collapsed."""
    times = times or {}
    head = [
        "# orthokit demo report",
        "",
        md_table(
            ["family", "measured in this run", "orthokit", "anchor", "verdict"],
            [s.summary_row() for s in sections],
        ),
        "",
        f"Machine: {machine_line()}. Wall time {total_s / 60:.1f} min"
        + (" (" + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()) + ")" if times else "")
        + ". One seed per run: differences of a few tenths of a point are within noise.",
        "",
    ]
    parts = ["\n".join(head)]
    for s in sections:
        block = [f"## {s.title}", ""]
        if s.intro:
            block += [s.intro, ""]
        block += [f"![{s.family}]({f})\n" for f in s.figures]
        block += ["<details><summary>Full tables</summary>", "", s.body.strip(), "", "</details>", ""]
        parts.append("\n".join(block))
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    """``python -m orthokit.demo [--out DIR] [--only SECTION ...]``."""
    ap = argparse.ArgumentParser(prog="orthokit demo")
    ap.add_argument("--out", default="demo_report", help="output folder (default: demo_report)")
    ap.add_argument("--only", nargs="*", default=None, choices=SECTIONS, help="run only these sections")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sections: list[Section] = []
    times: dict[str, float] = {}
    t_all = time.perf_counter()
    for name in SECTIONS:
        if args.only and name not in args.only:
            continue
        t0 = time.perf_counter()
        print(f"[demo] {name} ...", flush=True)
        sections.append(run_section(name, out))
        times[name] = time.perf_counter() - t0
        print(f"[demo] {name} done in {times[name]:.1f}s", flush=True)
    report = out / "report.md"
    atomic_write_text(report, render(sections, time.perf_counter() - t_all, times))
    print(f"[demo] report written to {report.resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
