"""Small helpers shared by the benchmarks: atomic writes, markdown tables, robust timing.

Example:
    >>> import os, tempfile
    >>> from orthokit.bench.report import md_table, atomic_write_text, time_call
    >>> t = time_call(lambda: torch.randn(256, 256) @ torch.randn(256, 256), repeats=5)
    >>> out = os.path.join(tempfile.mkdtemp(), "out.md")
    >>> atomic_write_text(out, md_table(["method", "ms"], [["matmul", f"{1e3 * t:.2f}"]]))
    >>> open(out).read().splitlines()[0]
    '| method | ms |'
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
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
]


def results_dir() -> Path:
    """``benchmarks/results`` of the repository (created if missing)."""
    d = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
    d.mkdir(parents=True, exist_ok=True)
    return d


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
