"""Activation steering of a char-level transformers Llama toward Shakespeare: success vs fluency for every
registered steering method, norm drift, weight-vs-hook ablation, steerable vs decodable. See
orthokit/bench/steer.py. Usage: ``OMP_NUM_THREADS=1 python benchmarks/steer.py [--quick] [--out DIR]``."""

import sys

from orthokit.bench.steer import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
