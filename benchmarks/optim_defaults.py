"""Re-run the optimizer quality benchmark for the methods whose defaults changed (issue 15: NAMO, NAMO-D, FISMO,
AuON, Hybrid-AuON) with lr grids centred on the new constructor defaults, and write
``benchmarks/results/optim_quality_defaults.{md,json}`` with the previous numbers (``optim_quality.json``) side by
side.

Usage: ``OMP_NUM_THREADS=1 python benchmarks/optim_defaults.py [--seeds 2] [--workers 2] [--out DIR]`` (results
in ``--out``, default ``./orthokit_results``).
Uses ``orthokit.bench.optim.run_quality`` unchanged (same tasks, budgets, schedule, AdamW routing); AdamW runs
once per seed at its previous best lr to give the "steps to AdamW's loss" target.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from orthokit.bench import optim as bench
from orthokit.bench.report import (
    add_out_argument,
    announce,
    atomic_write_json,
    atomic_write_text,
    machine_info,
    results_dir,
)

GRIDS: dict[str, tuple[float, float, float]] = {
    "namo": (3e-3, 1e-2, 3e-2),  # default 1e-2 (official)
    "namo_d": (3e-3, 1e-2, 3e-2),  # default 1e-2 (official)
    "fismo": (0.01, 0.02, 0.05),  # default 0.02
    "auon": (0.03, 0.08, 0.24),  # default 0.08 (README), 0.24 (released class default)
    "hybrid_auon": (0.03, 0.08, 0.24),  # default 0.08
}
ADAMW_LR = {"charlm": 3e-3, "mnist": 1e-2}  # AdamW's best lr in optim_quality.md


def _fmt(x: float | None, nd: int = 4) -> str:
    if x is None:
        return "–"
    return "diverged" if x == float("inf") else f"{x:.{nd}f}"


def _md(new: dict, old: dict, cmd: str, minutes: float) -> str:
    out = [
        "# Optimizer quality with the new (reference) defaults — issue 15",
        "",
        f"Command: `{cmd}` ({minutes:.1f} min on a shared 2-core CPU). Same tasks, budgets and schedule as "
        "`optim_quality.md` (`orthokit.bench.optim.run_quality`; hidden matrices → the optimizer, the rest → AdamW "
        "3e-3, weight decay 0); lr sweep on seed 0, extra seeds at the best lr. *Old* = `optim_quality.md` "
        "(previous defaults and lr grid).",
        "",
    ]
    for task, t in new["tasks"].items():
        cfg = t["config"]
        out += [
            f"## {task}: {cfg['steps']} steps, AdamW target {_fmt(t['adamw_target'])}",
            "",
            "| optimizer | old best lr | old final val loss | old steps to AdamW | new best lr | new final val loss "
            "(mean ± half-range) | new steps to AdamW | new sweep (seed 0) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        old_sum = old.get(task, {}).get("summary", {})
        for name in GRIDS:
            s = t["summary"].get(name)
            if s is None:
                continue
            o = old_sum.get(name, {})
            fin = s["finals"]
            spread = (
                (max(fin) - min(fin)) / 2 if len(fin) > 1 and all(f != float("inf") for f in fin) else 0.0
            )
            sweep = ", ".join(
                f"{k}: {_fmt(v, 3)}" for k, v in sorted(s["sweep"].items(), key=lambda kv: float(kv[0]))
            )
            old_steps = o.get("steps_to_adamw")
            out.append(
                f"| {name} | {o.get('best_lr', '–')} | {_fmt(o.get('mean'))} | {old_steps or 'not reached'} | "
                f"{s['best_lr']:g} | {_fmt(s['mean'])} ± {spread:.4f} (n={len(fin)}) | "
                f"{s['steps_to_adamw'] or 'not reached'} | {sweep} |"
            )
        out.append("")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tasks", nargs="*", default=["charlm", "mnist"])
    add_out_argument(ap)
    ap.add_argument(
        "--previous",
        default="benchmarks/results/optim_quality.json",
        help="optim_quality.json with the numbers before the default changes (compared side by side)",
    )
    ap.add_argument("--optimizers", nargs="*", default=list(GRIDS), help="subset of the changed optimizers")
    ap.add_argument("--grid", action="append", default=[], metavar="NAME=LR,LR,LR", help="override a grid")
    ap.add_argument("--stem", default="optim_quality_defaults", help="output file stem")
    args = ap.parse_args(argv)
    for spec in args.grid:
        name, vals = spec.split("=", 1)
        GRIDS[name] = tuple(float(v) for v in vals.split(","))  # type: ignore[assignment]
    for name in list(GRIDS):
        if name not in args.optimizers:
            del GRIDS[name]
    bench.LR_GRIDS.update(GRIDS)
    t0 = time.perf_counter()
    cfgs = [c for c in bench._configs(False) if c.task in args.tasks]
    res = bench.run_quality(
        workers=args.workers,
        optimizers=["adamw", *GRIDS],
        seeds=args.seeds,
        configs=cfgs,
        fixed_lrs={task: {"adamw": lr} for task, lr in ADAMW_LR.items()},
    )
    minutes = (time.perf_counter() - t0) / 60
    old_path = Path(args.previous)
    old = json.loads(old_path.read_text())["quality"]["tasks"] if old_path.exists() else {}
    out = results_dir(args.out)
    cmd = "OMP_NUM_THREADS=1 python benchmarks/optim_defaults.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    atomic_write_json(out / f"{args.stem}.json", {"machine": machine_info(), "quality": res})
    atomic_write_text(out / f"{args.stem}.md", _md(res, old, cmd.strip(), minutes))
    print(f"done in {minutes:.1f} min")
    announce([out / f"{args.stem}.md", out / f"{args.stem}.json"], "optim_defaults")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
