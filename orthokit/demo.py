"""``make demo``: real training/merging on the bundled data, one markdown report with numbers and plots.

Each pillar contributes a section through ``orthokit.bench.<pillar>.demo(out_dir) -> str`` (markdown);
the sections run in order and the report is written atomically to ``demo_report/report.md``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import time
from pathlib import Path

# pillars in report order; each module exposes demo(out_dir: Path) -> str
SECTIONS: list[str] = ["polar", "optim", "continual", "merge"]  # merge includes merge_quality


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="orthokit demo")
    ap.add_argument("--out", default="demo_report", help="output folder (default: demo_report)")
    ap.add_argument("--only", nargs="*", default=None, help="run only these sections")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    parts = ["# orthokit demo report\n"]
    for name in SECTIONS:
        if args.only and name not in args.only:
            continue
        t0 = time.perf_counter()
        print(f"[demo] {name} ...", flush=True)
        mod = importlib.import_module(f"orthokit.bench.{name}")
        parts.append(mod.demo(out))
        print(f"[demo] {name} done in {time.perf_counter() - t0:.1f}s", flush=True)
    report = out / "report.md"
    tmp = report.with_suffix(".md.tmp")
    tmp.write_text("\n\n".join(parts) + "\n", encoding="utf-8")
    os.replace(tmp, report)
    print(f"[demo] report written to {report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
