"""Continual-learning / unlearning benchmark (permuted MNIST, split MNIST, char-LM).

Run from the repository root, e.g.::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/continual.py --only pmnist split --train-per-task 10000 --seeds 2
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/continual.py --only lm

Equivalent to ``orthokit bench continual ...``; results go to ``--out`` (default ``./orthokit_results``; the
committed ones: ``--out benchmarks/results``).
"""

from __future__ import annotations

import sys

from orthokit.bench.continual import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
