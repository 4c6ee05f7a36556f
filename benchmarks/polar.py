"""Polar-factor benchmark (orthokit vs torch.optim.Muon's Newton–Schulz). See orthokit/bench/polar.py."""

import sys

from orthokit.bench.polar import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
