"""MiniLM canonicalization benchmark (layer-k → final embeddings; orthogonal, λ-orthogonal and affine maps).
See orthokit/bench/align_canonical.py and docs/align/canonical.md.

Usage: ``python benchmarks/align_canonical.py [--quick] [--out DIR] [--threads N]`` (default ``./orthokit_results``;
the committed results: ``--out benchmarks/results``)."""

import sys

from orthokit.bench.align_canonical import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
