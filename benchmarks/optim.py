"""Optimizer benchmark: step cost + training quality (see orthokit/bench/optim.py). Usage: python benchmarks/optim.py [--quick]."""

from orthokit.bench.optim import main

raise SystemExit(main())
