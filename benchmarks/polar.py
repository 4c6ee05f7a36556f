"""Polar-factor benchmark (orthokit vs torch.optim.Muon's Newton–Schulz). See orthokit/bench/polar.py.

Usage: ``python benchmarks/polar.py [--quick] [--out DIR]`` (default ``./orthokit_results``)."""

import sys

from orthokit.bench.polar import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
