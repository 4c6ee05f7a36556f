"""Geometry Conflict vs measured forgetting on permuted MNIST, split MNIST and alternating char-LM fine-tuning
(Spearman over task pairs, seeds and learning rates, with the update-norm / cosine / subspace-overlap baselines).
See orthokit/bench/diag_conflict.py. Usage: ``OMP_NUM_THREADS=1 python benchmarks/diag_conflict.py [--quick] [--out DIR]``."""

import sys

from orthokit.bench.diag_conflict import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
