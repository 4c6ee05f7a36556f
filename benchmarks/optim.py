"""Optimizer benchmark (step cost + training quality, see orthokit/bench/optim.py): python benchmarks/optim.py [--quick]."""

import sys

from orthokit.bench.optim import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
