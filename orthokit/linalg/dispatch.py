"""Measured dispatch for the polar engine: pick the fastest accurate kernel variant by timing it, once.

Which Newton–Schulz variant is fastest depends on the host far more than on anything a CPU flag reveals: on an
AMX-BF16 CPU bfloat16 matmuls are ~1.5–2× faster than float32, on AVX512-BF16 without AMX ~2.2× faster, on an
AVX2-only CPU ~9× *slower* (768×3072 Gram product, 2 threads: fp32 25 ms, bf16 220 ms). So instead of guessing,
orthokit times the candidates once per process per **key** and caches the decision, like
``torch.backends.cudnn.benchmark``. Four decisions are made this way:

* ``"dtype"`` — the iteration dtype of ``ns_dtype="auto"`` (optimizers) / ``polar(..., dtype="auto")``:
  float32 vs bfloat16 on CPU. CUDA and other accelerators always iterate in bfloat16 (no probe).
* ``"gram"`` — the Gram Newton–Schulz path vs the standard one. Only *accurate* candidates are timed: the Gram
  path is a candidate only for float32/float64 iterations with aspect ratio ``n ≥ 4m`` (in half precision it
  measured a worse σ_min: 0.824 vs 0.858); among the accurate candidates the faster wins.
* ``"batch_mode"`` — one batched ``bmm`` per product vs a loop over the stack (CPU; accelerators batch).
* ``"hadamard"`` — dense ``x @ H`` vs the FWHT butterfly vs Kronecker-blocked GEMMs for
  ``hadamard_transform(method="auto")``
  (:func:`choose_hadamard_method`; its own key and probe, see there).

Key: ``(decision, device type, stacked = batch > 1, m, n bucketed to the next power of two, dtype)``.
A probe runs the real kernel on a random matrix of the first shape seen in that class (scaled down to at most
2¹⁸ entries per matrix — 2¹⁷ and one quintic step for the dtype probe — keeping the aspect ratio, and at most 4
matrices per stack), times every candidate up to 3 times in interleaved order and takes the median; a
candidate 6× slower than the best in its warm-up run, or 3× slower after a timed run, is dropped. A probe
costs a few to a few tens of ms for the winner plus one run of each loser (on an AVX2-only CPU one bf16 step
on 181×724 takes ~0.3 s, so the one-time dtype probe per shape class costs ~0.3 s there). The fixed-rule choice is kept unless another candidate is ≥ 5 % faster,
so noise cannot flip a near-tie back and forth between processes.

**Fixed rule** (no probe): used for tiny matrices (fewer than 2¹⁴ entries, where a probe would cost more than
it can save), when probing is disabled (``ORTHOKIT_DISPATCH=fixed`` or :func:`set_probing(False)
<set_probing>`, for bit-reproducible runs across hosts), and as the incumbent of every probe: float32 on CPU;
Gram path where accurate; batched for stacks of matrices with < 2¹⁴ entries (measured 0.44× the loop's time at
64×32×64) and for any stack on accelerators, a loop otherwise.

Overrides, strongest first: explicit arguments (``dtype=``, ``gram=``, ``batch_mode=``, ``ns_dtype=torch.float32``)
are never second-guessed; ``ORTHOKIT_CPU_BF16=0|1`` fixes the CPU dtype decision; then probing or the fixed rule.
:func:`dispatch_report` shows every decision made so far with the measured times and the reason.

Example:
    >>> import torch
    >>> from orthokit.linalg import dispatch
    >>> dispatch.choose_dtype(torch.device("cpu"), (8, 8))   # tiny: fixed rule, no probe
    torch.float32
    >>> "fixed rule" in dispatch.dispatch_report()
    True
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = [
    "Decision",
    "choose_dtype",
    "choose_gram",
    "choose_batch_mode",
    "choose_hadamard_method",
    "dispatch_report",
    "dispatch_decisions",
    "set_probing",
    "probing_enabled",
    "clear_cache",
    "TINY_ENTRIES",
]

#: matrices with fewer entries than this are never probed (fixed rule).
TINY_ENTRIES = 1 << 14
#: a probe matrix has at most this many entries (the real shape scaled down, aspect ratio kept).
PROBE_MAX_ENTRIES = 1 << 18
#: at most this many matrices in a probed stack.
PROBE_MAX_BATCH = 4
#: timed runs per candidate (median taken).
PROBE_RUNS = 3
#: a candidate slower than this multiple of the best after its first run is dropped.
DROP_FACTOR = 3.0
#: a challenger must beat the fixed-rule choice by this fraction to replace it.
MIN_GAIN = 0.05

_KELLER = ((3.4445, -4.7750, 2.0315),) * 2  # two representative quintic steps for batch-mode probes
#: the dtype probe runs one quintic step (3 products) on at most this many entries: the losing dtype can be
#: 10-60x slower (bf16 without native support), and its one warm-up run is all it costs.
DTYPE_PROBE_MAX_ENTRIES = 1 << 17


@dataclass
class Decision:
    """One cached dispatch decision (see :func:`dispatch_report`)."""

    kind: str
    key: tuple[Any, ...]
    choice: Any
    reason: str
    times_ms: dict[str, float] = field(default_factory=dict)
    probe_shape: tuple[int, ...] | None = None


_cache: dict[tuple[Any, ...], Decision] = {}
_lock = threading.RLock()
_probing: bool | None = None


# ------------------------------------------------------------------------------------------ switches
def set_probing(enabled: bool | None) -> None:
    """Enable/disable probing for this process (``None`` → follow ``ORTHOKIT_DISPATCH``); clears the cache.

    Example:
        >>> set_probing(False); probing_enabled()
        False
        >>> set_probing(None)
    """
    global _probing
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool or None, got {type(enabled).__name__}")
    with _lock:
        _probing = enabled
        _cache.clear()


def probing_enabled() -> bool:
    """Whether decisions are measured (default) or taken from the fixed rule.

    ``ORTHOKIT_DISPATCH=fixed`` (or ``0``/``off``) disables probing unless :func:`set_probing` says otherwise.

    Example:
        >>> isinstance(probing_enabled(), bool)
        True
    """
    if _probing is not None:
        return _probing
    return os.environ.get("ORTHOKIT_DISPATCH", "probe").strip().lower() not in {"fixed", "0", "off", "false"}


def clear_cache() -> None:
    """Forget every decision (the next call probes again).

    Example:
        >>> clear_cache(); dispatch_decisions()
        []
    """
    with _lock:
        _cache.clear()


def _env_cpu_bf16() -> bool | None:
    env = os.environ.get("ORTHOKIT_CPU_BF16")
    if env is not None and env.strip() in {"0", "1"}:
        return env.strip() == "1"
    return None


# ------------------------------------------------------------------------------------------ timing
def _bucket(x: int) -> int:
    return 1 << max(int(x) - 1, 0).bit_length()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


#: the clock probes read (tests replace it with a fake one).
_clock: Callable[[], float] = time.perf_counter


def _time_once(label: str, fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes (tests monkeypatch this, or :data:`_clock`, to inject a fake timer)."""
    _sync(device)
    t0 = _clock()
    fn()
    _sync(device)
    return _clock() - t0


def _measure(cands: dict[str, Callable[[], Any]], device: torch.device) -> dict[str, float]:
    """Median seconds per candidate over up to :data:`PROBE_RUNS` interleaved runs (slow ones dropped early)."""
    warm = {label: _time_once(label, fn, device) for label, fn in cands.items()}  # allocation, kernel choice
    runs: dict[str, list[float]] = {k: [] for k in cands}
    alive = [k for k in cands if warm[k] <= 2 * DROP_FACTOR * min(warm.values())]
    for k in cands:
        if k not in alive:
            runs[k].append(warm[k])  # dropped after its warm-up: report that time
    for r in range(PROBE_RUNS):
        order = alive[r % len(alive) :] + alive[: r % len(alive)]
        for label in order:
            runs[label].append(_time_once(label, cands[label], device))
        best = min(statistics.median(runs[k]) for k in alive)
        alive = [k for k in alive if statistics.median(runs[k]) <= DROP_FACTOR * best]
    return {k: statistics.median(v) for k, v in runs.items()}


def _probe_shape(m: int, n: int, batch: int, cap: int = PROBE_MAX_ENTRIES) -> tuple[int, int, int]:
    b = min(max(batch, 1), PROBE_MAX_BATCH)
    if m * n > cap:
        s = (cap / (m * n)) ** 0.5
        m, n = max(1, round(m * s)), max(1, round(n * s))
    return b, m, n


def _random_input(b: int, m: int, n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    g = torch.Generator(device="cpu").manual_seed(1234)
    X = torch.randn(b, m, n, generator=g).to(device)
    X = X / (1.02 * torch.linalg.vector_norm(X, dim=(-2, -1), keepdim=True))
    return X.to(dtype)


def _decide(
    kind: str,
    key: tuple[Any, ...],
    incumbent: str,
    cands: dict[str, Callable[[], Any]],
    device: torch.device,
    shape: tuple[int, ...],
    values: dict[str, Any],
) -> Decision:
    times = _measure(cands, device)
    best = min(times, key=lambda k: times[k])
    if best != incumbent and times[best] > (1.0 - MIN_GAIN) * times[incumbent]:
        best = incumbent
        why = f"measured; {incumbent} kept (no candidate ≥ {MIN_GAIN:.0%} faster)"
    else:
        why = f"measured; {best} fastest"
    return Decision(
        kind, key, values[best], why, {k: 1e3 * v for k, v in times.items()}, probe_shape=tuple(shape)
    )


def _cached(key: tuple[Any, ...], make: Callable[[], Decision]) -> Any:
    with _lock:
        d = _cache.get(key)
        if d is None:
            d = make()
            _cache[key] = d
        return d.choice


# ------------------------------------------------------------------------------------------ decisions
def choose_dtype(
    device: torch.device,
    shape: Sequence[int] | None = None,
    input_dtype: torch.dtype = torch.float32,
) -> torch.dtype:
    """Iteration dtype for ``"auto"``: bfloat16 on accelerators; on CPU float32 or bfloat16, whichever measured
    faster for this shape class (``ORTHOKIT_CPU_BF16=0|1`` overrides; tiny/unknown shapes → float32).

    Example:
        >>> choose_dtype(torch.device("cuda"), (768, 768))
        torch.bfloat16
    """
    if device.type != "cpu":
        key = ("dtype", device.type)
        return _cached(
            key, lambda: Decision("dtype", key, torch.bfloat16, "accelerator: bf16 (torch.optim.Muon)")
        )
    env = _env_cpu_bf16()
    if env is not None:
        dt = torch.bfloat16 if env else torch.float32
        key = ("dtype", "cpu", "env", env)
        return _cached(key, lambda: Decision("dtype", key, dt, f"override ORTHOKIT_CPU_BF16={int(env)}"))
    if shape is None or len(shape) < 2:
        key = ("dtype", "cpu", "unknown shape")
        return _cached(key, lambda: Decision("dtype", key, torch.float32, "fixed rule: shape unknown → fp32"))
    m, n = sorted((int(shape[-2]), int(shape[-1])))
    batch = 1
    for s in shape[:-2]:
        batch *= int(s)
    key = ("dtype", "cpu", batch > 1, _bucket(m), _bucket(n), input_dtype)
    if m * n < TINY_ENTRIES or not probing_enabled():
        why = "fixed rule: tiny matrix → fp32" if m * n < TINY_ENTRIES else "fixed rule (probing off) → fp32"
        return _cached(key, lambda: Decision("dtype", key, torch.float32, why))

    def make() -> Decision:
        _, pm, pn = _probe_shape(m, n, 1, DTYPE_PROBE_MAX_ENTRIES)
        cands: dict[str, Callable[[], Any]] = {}
        for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            X = _random_input(1, pm, pn, dt, device)[0]
            cands[name] = lambda X=X: _kernels()._ns_2d(X, _KELLER[:1])
        return _decide(
            "dtype", key, "fp32", cands, device, (pm, pn), {"fp32": torch.float32, "bf16": torch.bfloat16}
        )

    return _cached(key, make)


def _kernels() -> Any:
    """The ``orthokit.linalg.polar`` module (looked up at call time so tests can patch its kernels)."""
    import importlib

    return importlib.import_module("orthokit.linalg.polar")


def choose_gram(
    device: torch.device,
    m: int,
    n: int,
    batch: int,
    it_dtype: torch.dtype,
    coeffs: Sequence[tuple[float, float, float]],
    restarts: Sequence[int],
) -> bool:
    """Whether to use the Gram NS path for a wide ``[batch, m, n]`` iteration in ``it_dtype``.

    Accuracy rule first (fp32/fp64 and ``n ≥ 4m``), then the faster of the accurate candidates.

    Example:
        >>> choose_gram(torch.device("cpu"), 64, 64, 1, torch.float32, ((3.0, -3.0, 1.0),), (2,))
        False
    """
    if it_dtype not in (torch.float32, torch.float64) or n < 4 * m:
        key = ("gram", device.type, "inaccurate")
        why = "accuracy rule: Gram path only for fp32/fp64 with n ≥ 4m"
        return _cached(key, lambda: Decision("gram", key, False, why))
    key = ("gram", device.type, batch > 1, _bucket(m), _bucket(n), it_dtype, len(coeffs), tuple(restarts))
    if m * n < TINY_ENTRIES or not probing_enabled():
        why = "fixed rule: accurate here → Gram" + (" (tiny)" if m * n < TINY_ENTRIES else " (probing off)")
        return _cached(key, lambda: Decision("gram", key, True, why))

    def make() -> Decision:
        P = _kernels()
        b, pm, pn = _probe_shape(m, n, 1)
        X = _random_input(1, pm, pn, it_dtype, device)[0]
        cands = {
            "gram": lambda: P._gram_ns(X, coeffs, restarts),
            "standard": lambda: P._ns_2d(X, coeffs),
        }
        return _decide("gram", key, "gram", cands, device, (pm, pn), {"gram": True, "standard": False})

    return _cached(key, make)


def choose_batch_mode(
    device: torch.device,
    m: int,
    n: int,
    batch: int,
    it_dtype: torch.dtype,
    gram: bool = False,
) -> str:
    """``"batched"`` or ``"loop"`` for a stack of ``batch`` wide ``m×n`` matrices iterated in ``it_dtype``.

    Example:
        >>> choose_batch_mode(torch.device("cpu"), 16, 32, 8, torch.float32)   # tiny → fixed rule
        'batched'
    """
    if device.type != "cpu":
        key = ("batch_mode", device.type)
        return _cached(
            key, lambda: Decision("batch_mode", key, "batched", "accelerator: one launch per product")
        )
    key = ("batch_mode", "cpu", batch > 1, _bucket(m), _bucket(n), it_dtype, gram)
    tiny = m * n < TINY_ENTRIES
    if tiny or not probing_enabled() or batch <= 1:
        choice = "batched" if tiny and it_dtype not in (torch.float16, torch.bfloat16) else "loop"
        why = "fixed rule: " + ("tiny" if tiny else "probing off" if batch > 1 else "single matrix")
        return _cached(key, lambda: Decision("batch_mode", key, choice, why))

    def make() -> Decision:
        P = _kernels()
        b, pm, pn = _probe_shape(m, n, batch)
        b = max(b, 2)
        X = _random_input(b, pm, pn, it_dtype, device)
        coeffs = _KELLER

        def loop() -> None:
            for i in range(b):
                (P._gram_ns(X[i], coeffs, (2,)) if gram else P._ns_2d(X[i], coeffs))

        def batched() -> None:
            P._gram_ns(X, coeffs, (2,)) if gram else P._ns_3d(X, coeffs)

        return _decide(
            "batch_mode",
            key,
            "loop",
            {"loop": loop, "batched": batched},
            device,
            (b, pm, pn),
            {"loop": "loop", "batched": "batched"},
        )

    return _cached(key, make)


# ------------------------------------------------------------------------------------------ hadamard
#: fixed rule of :func:`choose_hadamard_method`: dense ``x @ H`` on CPU up to this size, the Kronecker-blocked
#: GEMMs ("kron") above. Measured on the 2-core dev VM (AMD EPYC, AVX2, torch 2.13, fp32, 4096 rows, 1 thread,
#: host load ~2; medians of benchmarks/results/rotation_speed.md): dense 2.08 ms vs kron 3.16 ms at n = 128,
#: kron 3.61 vs dense 8.13 ms at n = 256, 7.05 vs 29.5 ms at 512, 102 vs 1913 ms at 4096 (2 threads: the same
#: crossover); the butterfly 2.5-3.5× slower than kron throughout. Other hosts and thread counts may move the
#: crossover; the probe measures it per thread count (the key includes torch.get_num_threads()); the fixed rule
#: follows the 1-thread crossover.
HADAMARD_FIXED_DENSE_MAX = 128
#: the dense path is never probed (nor chosen) above this size: its cached matrix has n² entries.
HADAMARD_DENSE_MAX_N = 8192
#: the rows bucket of a Hadamard key is capped here (more rows cost the same per row).
HADAMARD_MAX_ROWS = 4096


def _hadamard() -> Any:
    """The ``orthokit.linalg.hadamard`` module (looked up at call time: no import cycle, tests can patch it)."""
    import importlib

    return importlib.import_module("orthokit.linalg.hadamard")


def choose_hadamard_method(device: torch.device, n: int, rows: int, dtype: torch.dtype) -> str:
    """``"dense"`` (``x @ H`` with a cached ``H_n/√n``), ``"fwht"`` (butterfly) or ``"kron"`` (one small GEMM per
    Kronecker factor of ``H_n``) for ``rows`` vectors of size ``n`` computed in ``dtype``, for
    ``hadamard_transform(method="auto")``.

    Fixed rule (incumbent; used off CPU, for tiny work ``n·rows < 2¹⁴``, and with probing off): dense on CPU for
    ``n ≤ HADAMARD_FIXED_DENSE_MAX`` (128), kron otherwise and on accelerators (a few GEMMs instead of ``log₂ n``
    memory-bound passes). Otherwise the candidates are timed once per key ``(device type, n, rows bucketed to a
    power of two ≤ 4096, dtype, torch.get_num_threads())`` (the crossovers move with the thread count) on a random ``[r, n]`` input, ``r = min(rows bucket, max(16, 2¹⁸/n))``: the
    butterfly, kron (when ``H_n`` has more than one Kronecker factor; otherwise kron *is* dense) and dense (only
    for ``n ≤ HADAMARD_DENSE_MAX_N``; the probe's dense matrix is built outside the cache and freed afterwards, so
    a losing dense path leaves no cached matrix behind).

    Example:
        >>> choose_hadamard_method(torch.device("cpu"), 64, 8, torch.float32)   # tiny: fixed rule
        'dense'
        >>> choose_hadamard_method(torch.device("cuda"), 64, 4096, torch.float32)
        'kron'
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"choose_hadamard_method: n must be a positive int, got {n!r}")
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
        raise ValueError(f"choose_hadamard_method: rows must be a non-negative int, got {rows!r}")
    if device.type != "cpu":
        key = ("hadamard", device.type)
        return _cached(key, lambda: Decision("hadamard", key, "kron", "accelerator: kron GEMMs (fixed rule)"))
    key = (
        "hadamard",
        "cpu",
        n,
        min(_bucket(max(rows, 1)), HADAMARD_MAX_ROWS),
        dtype,
        torch.get_num_threads(),
    )
    fixed = "dense" if n <= HADAMARD_FIXED_DENSE_MAX else "kron"
    if n * rows < TINY_ENTRIES or not probing_enabled():
        why = "tiny" if n * rows < TINY_ENTRIES else "probing off"
        return _cached(key, lambda: Decision("hadamard", key, fixed, f"fixed rule ({why}) → {fixed}"))

    def make() -> Decision:
        Hm = _hadamard()
        r = min(key[3], max(16, PROBE_MAX_ENTRIES // n))
        g = torch.Generator(device="cpu").manual_seed(1234)
        X = torch.randn(r, n, generator=g).to(device=device, dtype=dtype)
        cands: dict[str, Callable[[], Any]] = {"fwht": lambda: Hm._apply_kernel(X, "fwht", False)}
        if len(Hm._kron_factors(n, dtype, str(device), False)) > 1:
            cands["kron"] = lambda: Hm._apply_kernel(X, "kron", False)
        if n <= HADAMARD_DENSE_MAX_N:
            H = Hm._dense_matrix.__wrapped__(n, dtype, str(device))  # not the lru cache: freed if dense loses
            cands["dense"] = lambda: X @ H
        incumbent = fixed if fixed in cands else "kron" if "kron" in cands else "dense"
        return _decide("hadamard", key, incumbent, cands, device, (r, n), {k: k for k in cands})

    return _cached(key, make)


# ------------------------------------------------------------------------------------------ report
def dispatch_decisions() -> list[Decision]:
    """Every decision made so far in this process (copies of the cache entries, in insertion order).

    Example:
        >>> isinstance(dispatch_decisions(), list)
        True
    """
    with _lock:
        return list(_cache.values())


def _fmt_key(key: tuple[Any, ...]) -> str:
    return ", ".join(str(k).removeprefix("torch.") for k in key[1:])


def dispatch_report(print_report: bool = False) -> str:
    """What the polar engine chose per key, the measured times and why (a markdown table).

    Args:
        print_report: also print it.

    Example:
        >>> _ = choose_dtype(torch.device("cpu"), (4, 4))
        >>> print(dispatch_report().splitlines()[0])
        | decision | key | choice | times (ms) | probe shape | why |
    """
    rows = ["| decision | key | choice | times (ms) | probe shape | why |", "|---|---|---|---|---|---|"]
    for d in dispatch_decisions():
        times = ", ".join(f"{k} {v:.2f}" for k, v in d.times_ms.items()) or "–"
        choice = str(d.choice).removeprefix("torch.")
        shape = "×".join(map(str, d.probe_shape)) if d.probe_shape else "–"
        rows.append(f"| {d.kind} | {_fmt_key(d.key)} | {choice} | {times} | {shape} | {d.reason} |")
    text = "\n".join(rows)
    if print_report:
        print(text)
    return text
