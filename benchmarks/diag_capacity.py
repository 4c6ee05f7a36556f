"""Representational capacity (ε, adjusted capacity vs JL) of MiniLM, stories260K and CharGPT embedding matrices,
and factor orthogonality of MiniLM sentence embeddings. See orthokit/bench/diag_capacity.py. Usage:
``OMP_NUM_THREADS=1 python benchmarks/diag_capacity.py [--quick] [--out DIR]``."""

import sys

from orthokit.bench.diag_capacity import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
