"""Hardware facts: the CPU's model and relevant flags (for benchmark headers) and the bf16 speed question.

Automatic kernel choices are *measured* (:mod:`orthokit.linalg.dispatch`), not inferred from CPU flags: the
flags were wrong on at least two kinds of host (AVX512-BF16 without AMX: bf16 2.2× faster though no AMX;
AVX2-only: bf16 ~9× slower).
"""

from __future__ import annotations

import functools
import platform

import torch

__all__ = ["cpu_has_fast_bf16", "cpu_info"]

_FLAG_PREFIXES = ("avx", "amx", "fma", "f16c", "sse4_2")


@functools.lru_cache(maxsize=1)
def cpu_info() -> dict[str, object]:
    """CPU model name and the flags that matter for matmul speed (``avx2``, ``avx512*``, ``amx*``, ``fma``).

    Example:
        >>> sorted(cpu_info())
        ['flags', 'logical_cpus', 'model', 'torch_threads']
    """
    model, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name") and model in ("", platform.machine(), platform.processor()):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = sorted(x for x in line.split(":", 1)[1].split() if x.startswith(_FLAG_PREFIXES))
                    break
    except OSError:  # pragma: no cover - not Linux
        pass
    import os

    return {
        "model": model,
        "flags": flags,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def cpu_has_fast_bf16() -> bool:
    """Whether bfloat16 Newton–Schulz iterations are faster than float32 on this CPU — measured, not guessed.

    ``ORTHOKIT_CPU_BF16=0|1`` overrides; otherwise the answer is the cached dispatch decision for a 768×768
    matrix (:func:`orthokit.linalg.dispatch.choose_dtype`; with probing disabled: False).

    Example:
        >>> isinstance(cpu_has_fast_bf16(), bool)
        True
    """
    from orthokit.linalg.dispatch import choose_dtype

    return choose_dtype(torch.device("cpu"), (768, 768), torch.float32) == torch.bfloat16
