"""make demo: every section module exists and exposes demo(out_dir) -> str."""

from __future__ import annotations

import importlib
import inspect

from orthokit.demo import SECTIONS


def test_every_pillar_has_a_demo_section():
    assert SECTIONS[:4] == ["polar", "optim", "continual", "merge"]
    for name in SECTIONS:
        mod = importlib.import_module(f"orthokit.bench.{name}")
        sig = inspect.signature(mod.demo)
        assert list(sig.parameters) == ["out_dir"], name
