"""MNIST backward-compatibility benchmark (independent vs BCT, OCA, BT², λ-orthogonality): old/old, new/old and
new/new retrieval top-1 and mAP over 3 seeds. See orthokit/bench/align.py.

Run from the repository root, e.g.::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/align_compat.py --quick                  # 1 seed, ~1 min
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/align_compat.py --out benchmarks/results  # 3 seeds, < 10 min

Equivalent to ``orthokit bench align ...``; results (``align_compat{_quick}.{md,json,png}``) go to ``--out``
(default ``./orthokit_results``; the committed ones: ``--out benchmarks/results``).
"""

from __future__ import annotations

import sys

from orthokit.bench.align import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
