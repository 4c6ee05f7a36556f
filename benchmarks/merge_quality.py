"""Merge quality benchmark (task arithmetic / TIES / DARE vs OrthoMerge / DC-Merge / DO-Merging on real
multi-task fine-tunes). See orthokit/bench/merge_quality.py. Usage: ``python benchmarks/merge_quality.py [--quick] [--out DIR]``."""

import sys

from orthokit.bench.merge_quality import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
