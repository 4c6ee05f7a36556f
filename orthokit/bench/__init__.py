"""Benchmark support: bundled-data loaders, small reference models, timing and report helpers.

The runnable scripts live in ``benchmarks/`` (one per pillar) and in ``orthokit bench ...``;
they import their implementations from this package so the CLI and the scripts share one code path.
"""
