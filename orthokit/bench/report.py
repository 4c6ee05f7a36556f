"""Small helpers shared by the benchmarks: atomic writes, markdown tables, robust timing.

Example:
    >>> import os, tempfile
    >>> from orthokit.bench.report import md_table, atomic_write_text, time_call, result_stem
    >>> t = time_call(lambda: torch.randn(256, 256) @ torch.randn(256, 256), repeats=5)
    >>> out = os.path.join(tempfile.mkdtemp(), "out.md")
    >>> atomic_write_text(out, md_table(["method", "ms"], [["matmul", f"{1e3 * t:.2f}"]]))
    >>> open(out).read().splitlines()[0]
    '| method | ms |'
    >>> result_stem("polar", quick=True)
    'polar_quick'
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from orthokit._fs import publish_mode

__all__ = [
    "atomic_write_text",
    "atomic_write_json",
    "atomic_savefig",
    "md_table",
    "time_call",
    "machine_info",
    "results_dir",
    "add_out_argument",
    "result_stem",
    "announce",
    "DEFAULT_OUT",
    "Section",
    "machine_line",
]

#: default output folder of every benchmark, relative to the current working directory (never the package).
DEFAULT_OUT = "orthokit_results"


def results_dir(out: str | os.PathLike | None = None) -> Path:
    """The benchmark output folder: ``out``, or ``./orthokit_results`` under the current working directory;
    created if missing and returned as an absolute path. The repository's committed results live in
    ``benchmarks/results`` and are written only when a maintainer passes ``--out benchmarks/results``."""
    d = Path(out if out is not None else DEFAULT_OUT).expanduser().resolve()
    if d.exists() and not d.is_dir():
        raise ValueError(f"--out {str(out)!r} exists and is not a folder")
    d.mkdir(parents=True, exist_ok=True)
    return d


def add_out_argument(ap: Any) -> None:
    """Add the shared ``--out DIR`` option (default ``./orthokit_results``) to an ``argparse`` parser."""

    def folder(text: str) -> str:  # argparse turns the error into one usage line instead of a traceback
        if Path(text).exists() and not Path(text).is_dir():
            raise argparse.ArgumentTypeError(f"{text!r} exists and is not a folder")
        return text

    ap.add_argument(
        "--out",
        default=DEFAULT_OUT,
        type=folder,
        metavar="DIR",
        help=f"output folder, created if missing (default ./{DEFAULT_OUT}; the committed results: "
        "--out benchmarks/results)",
    )


def result_stem(stem: str, quick: bool) -> str:
    """File stem of a result: quick runs are written as ``<stem>_quick`` so they never replace full results."""
    return f"{stem}_quick" if quick and not stem.endswith("_quick") else stem


def announce(paths: Sequence[str | os.PathLike], prog: str = "orthokit bench") -> None:
    """Print the absolute path of every file a benchmark wrote (the last lines of its output)."""
    print(f"[{prog}] results written to:", flush=True)
    for p in paths:
        print(f"  {Path(p).resolve()}", flush=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        publish_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """JSON version of :func:`atomic_write_text` (indented, non-finite floats as strings)."""
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def atomic_savefig(fig: Any, path: str | os.PathLike, **kw: Any) -> None:
    """Save a matplotlib figure atomically (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        fig.savefig(tmp, **kw)
        publish_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines)


def time_call(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1, min_time: float = 0.0) -> float:
    """Median wall time in seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    t_start = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - t_start) < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= 10 * max(repeats, 1):
            break
    return statistics.median(times)


def time_interleaved(
    fns: dict[str, Callable[[], Any]],
    rounds: int = 5,
    warmup: int = 1,
    anchor: str | None = None,
    times_out: dict[str, list[float]] | None = None,
) -> tuple[dict[str, float], dict[str, float]]:
    """Median wall times of several callables measured in interleaved rounds (each round calls every
    function once, in a rotated order), so slow drifts of a shared machine hit all of them alike.

    Returns ``(median seconds per name, median per-round ratio to anchor per name)``; the ratios are
    empty when ``anchor`` is None. The per-round ratio is more robust than a ratio of medians when
    the machine's speed changes between rounds. ``times_out`` (if given) receives every round's times.
    """
    names = list(fns)
    for _ in range(warmup):
        for nm in names:
            fns[nm]()
    times: dict[str, list[float]] = {nm: [] for nm in names}
    for r in range(max(rounds, 1)):
        k = r % len(names)
        for nm in names[k:] + names[:k]:
            t0 = time.perf_counter()
            fns[nm]()
            times[nm].append(time.perf_counter() - t0)
    if times_out is not None:
        times_out.update(times)
    med = {nm: statistics.median(v) for nm, v in times.items()}
    ratios: dict[str, float] = {}
    if anchor is not None:
        ref = times[anchor]
        ratios = {nm: statistics.median(t / a for t, a in zip(v, ref)) for nm, v in times.items()}
    return med, ratios


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


@dataclass(frozen=True)
class Section:
    """One ``make demo`` section: a headline row for the report's summary table plus the section's body.

    ``family`` names the pillar, ``metric`` what was measured, ``ours`` / ``anchor`` the two numbers as text
    (measured in this run), ``verdict`` a few words comparing them; ``body`` is the long markdown (collapsed in
    the report), ``figures`` the PNG file names shown above it, ``intro`` one or two visible sentences.
    """

    title: str
    family: str
    metric: str
    ours: str
    anchor: str
    verdict: str
    body: str
    intro: str = ""
    figures: tuple[str, ...] = field(default_factory=tuple)

    def summary_row(self) -> list[str]:
        """The row of the summary table: family, metric, orthokit, anchor, verdict."""
        return [self.family, self.metric, self.ours, self.anchor, self.verdict]


def machine_line() -> str:
    """One human-readable line: CPU model, cores, the SIMD flags that matter for the kernels, torch version.

    Example:
        >>> from orthokit.bench.report import machine_line
        >>> line = machine_line()
        >>> "torch" in line and "{" not in line
        True
    """
    from orthokit.linalg._hw import cpu_has_fast_bf16, cpu_info

    cpu = cpu_info()
    flags = [f.upper().replace("_", ".") for f in cpu["flags"]]
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return (
        f"{cpu['model']}, {cpu['logical_cpus']} logical cores ({', '.join(flags) or 'no AVX'}; bf16 matmul "
        f"{'measured faster' if cpu_has_fast_bf16() else 'measured slower'} than fp32) · torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s) · Python {platform.python_version()} on {platform.system()}"
        + (f" · GPU {gpu}" if gpu else " · no GPU")
    )
