"""Hardware facts the primitives' automatic choices depend on (probed once per process)."""

from __future__ import annotations

import functools
import os

import torch

__all__ = ["cpu_has_fast_bf16"]


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices faster than float32 (AMX-BF16 tiles, used by oneDNN).

    Without AMX, CPU bfloat16 matmuls are emulated and were measured ~18× slower than float32 (768×3072
    quintic step 5.8 s vs 0.32 s); with AMX-BF16 they are 1.5–2× faster for matrices ≥ 256 on a side.
    Override with the environment variable ``ORTHOKIT_CPU_BF16=0|1``.

    Example:
        >>> isinstance(cpu_has_fast_bf16(), bool)
        True
    """
    env = os.environ.get("ORTHOKIT_CPU_BF16")
    if env is not None and env.strip() in {"0", "1"}:
        return env.strip() == "1"
    init_amx = getattr(getattr(torch._C, "_cpu", None), "_init_amx", None)
    if init_amx is not None:
        try:
            return bool(init_amx())
        except Exception:  # pragma: no cover - private API changed
            pass
    try:  # pragma: no cover - fallback when torch lacks the private probe
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return "amx_bf16" in f.read()
    except OSError:  # pragma: no cover
        return False
