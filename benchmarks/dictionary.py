"""Online orthogonal dictionary learning (Frank-Wolfe, Xue & Lau) vs batch orthogonal DL and scikit-learn on planted
dictionaries and MNIST 8x8 patches. See orthokit/bench/dictionary.py. Usage:
``OMP_NUM_THREADS=1 python benchmarks/dictionary.py [--quick] [--out DIR]``."""

import sys

from orthokit.bench.dictionary import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
