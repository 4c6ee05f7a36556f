"""Merge speed/memory benchmark vs mergekit (and the quality benchmark): ``python benchmarks/merge.py [--quick]``.

Thin wrapper over :func:`orthokit.bench.merge.main` (same as ``orthokit bench merge``); results are written to
``merge_speed{_quick}.{json,md}`` in ``--out`` (default ``./orthokit_results``; the committed ones:
``--out benchmarks/results``). Generated checkpoints go to ``/tmp/orthokit_merge_bench``
(override with ``--work``), never into the repository.

Examples::

    OMP_NUM_THREADS=2 python benchmarks/merge.py --quick --only speed      # MiniLM only, a few minutes
    OMP_NUM_THREADS=2 python benchmarks/merge.py --only speed --out benchmarks/results  # MiniLM + 136 M + 1.1 B
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orthokit.bench.merge import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
