"""Orthogonality losses and heads (OPL, EBV, Grassmann class representation) vs cross-entropy on MNIST and
sklearn digits, 3 seeds. See orthokit/bench/align_losses.py. Usage:
``OMP_NUM_THREADS=1 python benchmarks/align_losses.py [--quick] [--out DIR]``."""

import sys

from orthokit.bench.align_losses import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
