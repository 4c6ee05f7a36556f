"""The ``orthokit`` command line: a thin layer over the library.

orthokit bench {polar,optim,continual,merge,align,align_canonical,align_losses} [options]
                                                  run a benchmark (results in ./orthokit_results, or --out DIR)
orthokit merge CONFIG.yaml OUT_DIR [--dry-run]            merge checkpoints from a mergekit-style config
orthokit demo [--out DIR]                                 the end-to-end demo report
"""

from __future__ import annotations

import argparse
import importlib
import sys

BENCHMARKS = (
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
    "rotation_exact",
    "rotation_quant",
    "rotation_speed",
)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="orthokit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bench", help="run a benchmark", add_help=False)
    b.add_argument("name", choices=BENCHMARKS)
    sub.add_parser("merge", help="merge checkpoints from a YAML config", add_help=False)
    sub.add_parser("demo", help="run the demo and write its report", add_help=False)
    if not argv or argv[0] in {"-h", "--help"}:
        parser.print_help()
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "bench":
        if not rest or rest[0] not in BENCHMARKS:
            parser.error(f"bench needs one of: {', '.join(BENCHMARKS)}")
        mod = importlib.import_module(f"orthokit.bench.{rest[0]}")
        return int(mod.main(rest[1:]) or 0)
    if cmd == "merge":
        from orthokit.merge.cli import main as merge_main

        return int(merge_main(rest) or 0)
    if cmd == "demo":
        from orthokit.demo import main as demo_main

        return int(demo_main(rest) or 0)
    parser.error(f"unknown command {cmd!r}")
    return 2


def run() -> int:
    """``main()`` for a console script: a closed stdout pipe (``orthokit merge --list-methods | head``) ends
    quietly with status 141 (128 + SIGPIPE) instead of a traceback."""
    import os

    try:
        return main()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python would fail again flushing stdout at exit
        return 141


if __name__ == "__main__":
    raise SystemExit(run())
