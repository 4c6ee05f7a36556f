"""Hadamard-transform speed benchmark: orthokit's transform vs a dense ``x @ H`` vs the ``hadamard-transform`` package.

For every size ``d`` (powers of two, 256 … 16384; quick: ≤ 2048) a float32 batch of ``4096`` rows (quick: 256) is
transformed by

* ``orthokit auto`` — :func:`orthokit.linalg.hadamard_transform` with ``method="auto"`` (the measured dispatch,
  its probe done in the warm-up), the method the issue asks to be fastest for ``d ≥ 1024`` on CPU;
* each explicit orthokit method: ``kron`` (one small GEMM per Kronecker factor of ``H_d``), ``fwht`` (butterfly);
* ``dense x @ H`` — one BLAS GEMM with ``H_d/√d`` precomputed (skipped above ``d = 4096`` in the full run: at
  ``d = 8192`` one call is ~0.3 TFLOP);
* ``hadamard-transform`` 0.2.0 (amitport, pure torch butterfly; PyPI), if importable, else the row says
  "not installed".

All methods of one size are timed in interleaved rounds (:func:`orthokit.bench.report.time_interleaved`, 7 by
default); the table gives the median wall time, its spread (min–max over the rounds) and the ratio of medians to
``orthokit auto`` in the same run, at 1 thread and at the default thread count (``--threads`` picks others). A
row where ``orthokit auto`` and the explicit method it dispatched to (the same code) differ by more than 20 %
(:data:`NOISE_TOL`) is flagged **noisy**: its timings say more about the shared host than about the methods. The
host load (``os.getloadavg()``) before and after the run is recorded. A correctness row per size gives each method's max abs difference to the float64
reference ``x @ hadamard_matrix(d)`` on 64 rows. A second table times the methods on small sizes (the fixed
rule's dense/kron crossover) and on Paley orders ``c·2^b`` (no package supports those without zero-padding,
which is not orthogonal).

Run: ``python benchmarks/rotation_speed.py [--quick] [--threads 1,2] [--rounds N] [--out DIR]``; writes ``rotation_speed{,_quick}.{md,json}``
into ``--out`` (default ``./orthokit_results``; committed results: ``--out benchmarks/results``).

Example:
    >>> import tempfile
    >>> from orthokit.bench.rotation_speed import time_sizes
    >>> rows = time_sizes([256], batch=32, rounds=1, threads=1)
    >>> rows[0]["d"], sorted(rows[0]["ms"])[:2]
    (256, ['dense x @ H', 'hadamard-transform 0.2.0'])
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any

import torch

from orthokit.bench.report import (
    add_out_argument,
    announce,
    atomic_write_json,
    atomic_write_text,
    machine_info,
    machine_line,
    md_table,
    result_stem,
    results_dir,
    time_interleaved,
)
from orthokit.linalg import dispatch
from orthokit.linalg.hadamard import hadamard_construction, hadamard_matrix, hadamard_transform

__all__ = ["main", "time_sizes", "correctness", "OURS", "PKG"]

OURS = "orthokit auto"
PKG = "hadamard-transform 0.2.0"
DENSE = "dense x @ H"
FULL_SIZES = (256, 512, 1024, 2048, 4096, 8192, 16384)
QUICK_SIZES = (256, 512, 1024, 2048)
#: the dense GEMM is timed only up to this size in the full run (d = 8192, 4096 rows: ~0.3 TFLOP per call).
DENSE_MAX = 4096
#: extra sizes: the fixed rule's small-d crossover, and Paley orders c·2^b (768 = 12·64, 2560 = 20·128,
#: 6144 = 12·512).
EXTRA_FULL = (64, 128, 768, 2560, 6144)
EXTRA_QUICK = (128, 768)
#: rows and interleaved rounds of the full and the quick run.
FULL_BATCH, FULL_ROUNDS = 4096, 7
QUICK_BATCH, QUICK_ROUNDS = 256, 7
#: a row is flagged noisy when ``orthokit auto`` and the method it chose differ by more than this (relative).
NOISE_TOL = 0.20
#: the dispatch's method name → its column in the table.
_COLUMN = {"kron": "orthokit kron", "fwht": "orthokit fwht", "dense": DENSE}


def _package() -> tuple[Callable[[torch.Tensor], torch.Tensor] | None, str]:
    try:
        import hadamard_transform as pkg

        return pkg.hadamard_transform, metadata.version("hadamard-transform")
    except ImportError:
        return None, "not installed"


def _methods(d: int, x: torch.Tensor, with_dense: bool, with_pkg: bool) -> dict[str, Callable[[], Any]]:
    fns: dict[str, Callable[[], Any]] = {
        OURS: lambda: hadamard_transform(x),
        "orthokit kron": lambda: hadamard_transform(x, method="kron"),
        "orthokit fwht": lambda: hadamard_transform(x, method="fwht"),
    }
    if with_dense:
        H = hadamard_matrix(d)
        fns[DENSE] = lambda: x @ H
    pkg, _ = _package()
    if with_pkg and pkg is not None:
        fns[PKG] = lambda: pkg(x)
    return fns


def _auto_choice(d: int) -> str:
    for dec in reversed(dispatch.dispatch_decisions()):
        if dec.kind == "hadamard" and len(dec.key) > 2 and dec.key[2] == d:
            return str(dec.choice)
    return "?"


def time_sizes(
    sizes: Sequence[int],
    batch: int,
    rounds: int,
    threads: int,
    dense_max: int = DENSE_MAX,
    with_pkg: bool = True,
    verbose: bool = False,
) -> list[dict[str, Any]]:
    """Time every method on a float32 ``[batch, d]`` input per ``d`` with ``threads`` torch threads.

    Returns one dict per size: ``d``, ``threads``, ``batch``, ``rounds``, ``ms`` (median per method), ``min_ms`` /
    ``max_ms`` (spread over the rounds), ``ratio`` (median of the method / median of ``orthokit auto``), ``auto``
    (the dispatch's choice), ``auto_gap`` (relative difference of ``orthokit auto`` and the column of the method it
    chose), ``noisy`` (``auto_gap > NOISE_TOL``), ``fastest``.
    """
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    out = []
    try:
        for d in sizes:
            g = torch.Generator().manual_seed(d)
            x = torch.randn(batch, d, generator=g)
            pow2 = d & (d - 1) == 0
            fns = _methods(d, x, d <= dense_max, with_pkg and pow2)
            r = rounds if d <= 4096 else max(3, rounds // 2)
            raw: dict[str, list[float]] = {}
            med, _ = time_interleaved(fns, rounds=r, warmup=1, times_out=raw)
            ms = {k: 1e3 * v for k, v in med.items()}
            lo = {k: 1e3 * min(v) for k, v in raw.items()}
            hi = {k: 1e3 * max(v) for k, v in raw.items()}
            if with_pkg and pow2 and PKG not in ms:
                ms[PKG] = lo[PKG] = hi[PKG] = float("nan")
            auto = _auto_choice(d)
            col = _COLUMN.get(auto)
            gap = (
                abs(ms[OURS] - ms[col]) / min(ms[OURS], ms[col])
                if col in ms and not math.isnan(ms[col])
                else float("nan")
            )
            out.append(
                {
                    "d": d,
                    "construction": hadamard_construction(d),
                    "threads": threads,
                    "batch": batch,
                    "rounds": r,
                    "ms": ms,
                    "min_ms": lo,
                    "max_ms": hi,
                    "ratio": {k: v / ms[OURS] for k, v in ms.items()},
                    "auto": auto,
                    "auto_gap": gap,
                    "noisy": bool(gap > NOISE_TOL),
                    "fastest": min((k for k in ms if not math.isnan(ms[k])), key=lambda k: ms[k]),
                }
            )
            del x, fns
            if verbose:
                print(
                    f"[rotation_speed] d={d}, {threads} thread(s): {out[-1]['fastest']} fastest", flush=True
                )
    finally:
        torch.set_num_threads(old)
    return out


def correctness(sizes: Sequence[int], rows: int = 64) -> list[dict[str, Any]]:
    """Max abs difference of every method (float32 input) to the float64 reference ``x @ hadamard_matrix(d)``."""
    pkg, _ = _package()
    out = []
    for d in sizes:
        g = torch.Generator().manual_seed(d + 1)
        x = torch.randn(rows, d, generator=g)
        ref = x.double() @ hadamard_matrix(d, dtype=torch.float64)
        errs = {
            m: float((hadamard_transform(x, method=meth).double() - ref).abs().max())
            for m, meth in ((OURS, "auto"), ("orthokit kron", "kron"), ("orthokit fwht", "fwht"))
        }
        errs[DENSE] = float(((x @ hadamard_matrix(d)).double() - ref).abs().max())
        if pkg is not None and d & (d - 1) == 0:
            errs[PKG] = float((pkg(x).double() - ref).abs().max())
        out.append({"d": d, "max_abs_err": errs})
    return out


def _fmt(v: float) -> str:
    return "–" if math.isnan(v) else f"{v:.2f}" if v < 100 else f"{v:.0f}"


def _table(rows: list[dict[str, Any]], pkg_version: str) -> str:
    names = [OURS, "orthokit kron", "orthokit fwht", DENSE, PKG]
    head = ["d", "threads", "batch", "auto →"] + [f"{n} ms [min–max] (×auto)" for n in names] + ["fastest"]
    body = []
    for r in rows:
        cells = []
        for n in names:
            if n == PKG and pkg_version == "not installed":
                cells.append("not installed")
            elif n not in r["ms"] or math.isnan(r["ms"][n]):
                cells.append("–")
            else:
                spread = f" [{_fmt(r['min_ms'][n])}–{_fmt(r['max_ms'][n])}]" if "min_ms" in r else ""
                cells.append(f"{_fmt(r['ms'][n])}{spread} ({r['ratio'][n]:.2f})")
        noisy = f" **noisy** (auto vs {r['auto']}: {100 * r['auto_gap']:.0f} %)" if r.get("noisy") else ""
        body.append([r["d"], r["threads"], r["batch"], r["auto"], *cells, r["fastest"] + noisy])
    return md_table(head, body)


def _verdict(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for r in rows:
        if r["d"] < 1024:
            continue
        rivals = {k: v for k, v in r["ms"].items() if k in (DENSE, PKG) and not math.isnan(v)}
        if not rivals:
            continue
        best = min(rivals, key=lambda k: rivals[k])
        ok = r["ms"][OURS] <= rivals[best]
        caveat = " — noisy row, not evidence" if r.get("noisy") else ""
        lines.append(
            f"d={r['d']}, {r['threads']} thread(s): orthokit auto {_fmt(r['ms'][OURS])} ms vs best rival "
            f"{best} {_fmt(rivals[best])} ms → {'FASTEST' if ok else 'NOT fastest'} "
            f"({rivals[best] / r['ms'][OURS]:.2f}× rival/ours){caveat}"
        )
    return lines


def _write(
    paths: list[Any],
    quick: bool,
    pkg_version: str,
    rows: list[dict[str, Any]],
    extra_rows: list[dict[str, Any]],
    corr: list[dict[str, Any]],
    thread_counts: list[int],
    load: dict[str, list[float]] | None = None,
) -> str:
    verdict = _verdict(rows)
    corr_names = [OURS, "orthokit kron", "orthokit fwht", DENSE, PKG]
    corr_table = md_table(
        ["d"] + [f"{n} max abs err" for n in corr_names],
        [
            [c["d"]] + [f"{c['max_abs_err'][n]:.1e}" if n in c["max_abs_err"] else "–" for n in corr_names]
            for c in corr
        ],
    )
    done = sorted({r["threads"] for r in rows})
    load = load or {}
    load_line = "Host load (`os.getloadavg()`, 1/5/15 min): " + "; ".join(
        f"{k} {', '.join(f'{v:.2f}' for v in vals)}" for k, vals in load.items()
    )
    noisy = [f"d={r['d']}/{r['threads']}t" for r in rows + extra_rows if r.get("noisy")]
    md = "\n\n".join(
        [
            "# Hadamard transform speed (fp32, CPU)",
            f"Machine: {machine_line()}",
            load_line + f" (on {os.cpu_count()} logical cores shared with other jobs).",
            f"`hadamard-transform` package: {pkg_version}. Median wall time per call over interleaved rounds "
            f"({rows[0]['rounds'] if rows else '?'} for d ≤ 4096, fewer above), [min–max] over the rounds; "
            "(×auto) = ratio of medians to `orthokit auto` in the same run; `auto →` = the dispatch's choice. "
            f"A row is **noisy** when `orthokit auto` and the method it chose (the same code) differ by more than "
            f"{100 * NOISE_TOL:.0f} %: noisy rows are not evidence. Thread counts measured: {done} of "
            f"{thread_counts}. Noisy rows: {', '.join(noisy) or 'none'}.",
            _table(rows, pkg_version),
            "## Goal: fastest of the three (ours, dense, hadamard-transform) for d ≥ 1024\n\n"
            + "\n".join(f"- {v}" for v in verdict),
            "## Small sizes (fixed-rule crossover) and Paley orders c·2^b (no package supports these)",
            _table(extra_rows, "n/a"),
            "## Correctness: max abs difference to float64 `x @ hadamard_matrix(d)` (64 rows, fp32 input)",
            corr_table,
            "Regenerate: `OMP_NUM_THREADS=1 python benchmarks/rotation_speed.py --threads 1 --out benchmarks/results`.",
        ]
    )
    payload = {
        "machine": machine_info(),
        "machine_line": machine_line(),
        "package": pkg_version,
        "quick": quick,
        "threads_done": done,
        "loadavg": load,
        "noisy_rows": noisy,
        "rows": rows,
        "extra_rows": extra_rows,
        "correctness": corr,
        "verdict": verdict,
        "dispatch": [
            {"key": [str(k) for k in d.key], "choice": d.choice, "times_ms": d.times_ms, "reason": d.reason}
            for d in dispatch.dispatch_decisions()
        ],
    }
    atomic_write_text(paths[0], md + "\n")
    atomic_write_json(paths[1], payload)
    return md


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns 0. ``--quick``: d ≤ 2048, batch 256, 3 rounds."""
    ap = argparse.ArgumentParser(prog="rotation_speed", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="d ≤ 2048, batch 256 (seconds)")
    ap.add_argument(
        "--threads", default=None, help="comma-separated thread counts (default: 1 and the default)"
    )
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds per size (default 7)")
    add_out_argument(ap)
    args = ap.parse_args(argv)
    out = results_dir(args.out)
    sizes, extra = (QUICK_SIZES, EXTRA_QUICK) if args.quick else (FULL_SIZES, EXTRA_FULL)
    batch, rounds = (QUICK_BATCH, QUICK_ROUNDS) if args.quick else (FULL_BATCH, FULL_ROUNDS)
    if args.rounds is not None:
        if args.rounds < 1:
            raise ValueError(f"--rounds must be >= 1, got {args.rounds}")
        rounds = args.rounds
    default_threads = torch.get_num_threads()
    if args.threads is None:
        thread_counts = sorted({1, default_threads})
    else:
        try:
            thread_counts = sorted({int(t) for t in args.threads.split(",")})
        except ValueError:
            raise ValueError(f"--threads must be comma-separated ints, got {args.threads!r}") from None
        if thread_counts[0] < 1:
            raise ValueError(f"--threads must be positive, got {args.threads!r}")
    load = {"start": list(os.getloadavg())}
    _, pkg_version = _package()
    print(machine_line(), flush=True)
    rows: list[dict[str, Any]] = []
    extra_rows: list[dict[str, Any]] = []
    corr = correctness(list(sizes) + [d for d in extra if d not in sizes])
    stem = result_stem("rotation_speed", args.quick)
    paths = [out / f"{stem}.md", out / f"{stem}.json"]
    # results are (re)written after each thread count: a long run keeps what it measured
    for t in thread_counts:  # dispatch decisions are keyed by thread count: no cache clearing needed
        rows += time_sizes(sizes, batch, rounds, t, verbose=True)
        extra_rows += time_sizes(extra, batch, rounds, t, dense_max=8192, with_pkg=False, verbose=True)
        print(f"[rotation_speed] {t} thread(s) done", flush=True)
        load["end"] = list(os.getloadavg())
        md = _write(paths, args.quick, pkg_version, rows, extra_rows, corr, thread_counts, load)
    print(md, flush=True)
    announce(paths, "rotation_speed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
