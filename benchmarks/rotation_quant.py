"""Quantization damage (W4A16, W8A8, W4A8, W4A4, KV4, KV3) on stories260K and MiniLM with no rotation, Hadamard,
Haar, two-block Hadamard and learned rotations, RTN and GPTQ, 5 rotation seeds. See orthokit/bench/rotation_quant.py.
Usage: ``OMP_NUM_THREADS=1 python benchmarks/rotation_quant.py [--quick] [--out DIR]``."""

import sys

from orthokit.bench.rotation_quant import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
