"""Hadamard-transform speed (orthokit vs dense x @ H vs the hadamard-transform package). See
orthokit/bench/rotation_speed.py.

Usage: ``python benchmarks/rotation_speed.py [--quick] [--out DIR]`` (default ``./orthokit_results``)."""

import sys

from orthokit.bench.rotation_speed import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
