"""Exactness of rotate_model: max relative logit / hidden-state change (goal ≤ 1e-4 fp32) for tiny Llamas,
stories260K and MiniLM, every registered rotation, online sites on and off. See orthokit/bench/rotation_exact.py.
Usage: ``OMP_NUM_THREADS=1 python benchmarks/rotation_exactness.py [--quick] [--out DIR]``."""

import sys

from orthokit.bench.rotation_exact import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
