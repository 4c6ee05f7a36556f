"""MBAT vector-symbolic JSON encoding: orthogonal (Haar, structured Hadamard) vs Gaussian binding — norm over
nesting depth, path-query accuracy vs d, near-duplicate kNN vs a bag-of-keys baseline, bind time. See
orthokit/bench/vsa.py. Usage: ``OMP_NUM_THREADS=1 python benchmarks/vsa.py [--quick] [--out DIR]``."""

import sys

from orthokit.bench.vsa import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
