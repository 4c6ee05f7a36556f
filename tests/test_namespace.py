"""Public namespaces: every exported name is the documented object (never a same-named submodule), in any
import order, and every subpackage that ``orthokit`` advertises exists (no phantom families).

The import-order checks run in a child interpreter: each scenario removes ``orthokit*`` from ``sys.modules``
and imports every submodule of the package (in sorted, reversed, shuffled order, or after touching every
public name first), then inspects each package's ``__all__``. A checker run against a deliberately broken
package (lazy export + same-named submodule, no guard) shows that the check can fail.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

import orthokit

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = [
    "orthokit",
    "orthokit.linalg",
    "orthokit.optim",
    "orthokit.projection",
    "orthokit.merge",
    "orthokit.align",
    "orthokit.steer",
    "orthokit.diagnostics",
    "orthokit.vsa",
    "orthokit.dictionary",
    "orthokit.rotation",
    "orthokit.io",
]
# (package, name) pairs whose documented object IS a module; every other exported name must not be one.
MODULE_VALUED = [
    ["orthokit", "linalg"],
    ["orthokit.optim", "transforms"],
]
# Importing this needs transformers (~5-10 s here) and defines no name that can collide with a package export;
# it is imported (and its doctests run) by the main suite.
SKIP_IMPORT = {"orthokit.integrations.hf"}
# The module defining orthokit.linalg.polar: polar.py today (guarded), _polar.py once renamed (recommended).
POLAR_MODULE = "orthokit.linalg." + orthokit.linalg._EXPORTS["polar"]

_CHECKER = textwrap.dedent(
    """
    import importlib, json, random, sys, types

    cfg = json.loads(sys.argv[1])
    prefix = cfg["prefix"]
    modules, packages = cfg["modules"], cfg["packages"]
    module_valued = {tuple(p) for p in cfg["module_valued"]}

    def purge():
        for k in [k for k in sys.modules if k == prefix or k.startswith(prefix + ".")]:
            del sys.modules[k]

    def touch_public_names():
        for p in packages:
            pkg = importlib.import_module(p)
            for name in pkg.__all__:
                getattr(pkg, name)

    def check(scenario):
        bad = []
        for p in packages:
            pkg = importlib.import_module(p)
            for name in pkg.__all__:
                try:
                    obj = getattr(pkg, name)
                except Exception as e:  # a name in __all__ that does not resolve
                    bad.append(f"{scenario}: {p}.{name} does not resolve: {type(e).__name__}: {e}")
                    continue
                want_module = (p, name) in module_valued
                if isinstance(obj, types.ModuleType) != want_module:
                    kind = "module" if isinstance(obj, types.ModuleType) else type(obj).__name__
                    bad.append(f"{scenario}: {p}.{name} is a {kind}, expected {'module' if want_module else 'object'}")
                    continue
                # `from package import name` must give the same object
                ns = {}
                exec(f"from {p} import {name} as x", ns)
                if ns["x"] is not obj:
                    bad.append(f"{scenario}: 'from {p} import {name}' differs from {p}.{name}")
        return bad

    orders = {
        "sorted": sorted(modules),
        "reversed": sorted(modules, reverse=True),
        "shuffled": random.Random(0).sample(modules, len(modules)),
    }
    problems = []
    for scenario, order in orders.items():
        purge()
        for m in order:
            importlib.import_module(m)
        problems += check(scenario)
    for first in cfg.get("first", []):  # one submodule imported before anything else, e.g. linalg.polar
        purge()
        importlib.import_module(first)
        problems += check(f"{first}-first")
    purge()
    touch_public_names()  # lazy names resolved and cached first, submodules imported afterwards
    for m in sorted(modules):
        importlib.import_module(m)
    problems += check("names-first")
    print(json.dumps(problems))
    """
)


def _module_names(pkg_dir: Path, prefix: str) -> list[str]:
    names = []
    for p in sorted(pkg_dir.rglob("*.py")):
        parts = p.relative_to(pkg_dir).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts and parts[-1] == "__main__":
            continue
        names.append(".".join((prefix, *parts)))
    return names


def _run_checker(cfg: dict, pythonpath: Path | None = None) -> list[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath) + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        [sys.executable, "-c", _CHECKER, json.dumps(cfg)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_public_names_are_objects_in_every_import_order() -> None:
    """orthokit.linalg.cayley / .procrustes / .polar, orthokit.merge.ties, orthokit.optim.hybrid, ... are the
    function/class, never the submodule, after importing every submodule in several orders."""
    modules = [m for m in _module_names(ROOT / "orthokit", "orthokit") if m not in SKIP_IMPORT]
    assert POLAR_MODULE in modules and "orthokit.merge.ties" in modules
    cfg = {
        "prefix": "orthokit",
        "modules": modules,
        "packages": PACKAGES,
        "module_valued": MODULE_VALUED,
        # issue 9's reproduction: `from orthokit.linalg.polar import x` / `...cayley import x` first
        "first": [POLAR_MODULE, "orthokit.linalg._cayley", "orthokit.merge.ties"],
    }
    problems = _run_checker(cfg)
    assert problems == [], "\n".join(problems)


def test_checker_detects_a_shadowing_submodule(tmp_path: Path) -> None:
    """The checker above is not vacuous: a lazily exporting package without a guard (the old
    orthokit.linalg layout) is reported once its same-named submodule is imported directly."""
    pkg = tmp_path / "shadowpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "import importlib\n"
        "__all__ = ['thing']\n"
        "def __getattr__(name):\n"
        "    if name == 'thing':\n"
        "        value = importlib.import_module(__name__ + '.thing').thing\n"
        "        globals()[name] = value\n"
        "        return value\n"
        "    raise AttributeError(name)\n"
    )
    (pkg / "thing.py").write_text("def thing():\n    return 1\n")
    cfg = {
        "prefix": "shadowpkg",
        "modules": _module_names(pkg, "shadowpkg"),
        "packages": ["shadowpkg"],
        "module_valued": [],
    }
    problems = _run_checker(cfg, pythonpath=tmp_path)
    assert any("shadowpkg.thing is a module" in p for p in problems), problems


def test_linalg_submodules_stay_importable() -> None:
    """The guard drops only the package attribute: the module itself is still reachable via sys.modules."""
    import importlib

    import orthokit.linalg as L

    mod = importlib.import_module(POLAR_MODULE)
    assert isinstance(mod, types.ModuleType) and mod.POLAR_METHODS is L.POLAR_METHODS
    assert isinstance(L.polar, types.FunctionType) and orthokit.polar is L.polar
    assert isinstance(L.cayley, types.FunctionType) and isinstance(L.procrustes, types.FunctionType)
    # functions and results from the private modules pickle by reference and come back identical
    import pickle

    for obj in (L.polar, L.cayley, L.procrustes, L.ProcrustesResult):
        assert pickle.loads(pickle.dumps(obj)) is obj


def test_cayley_and_procrustes_modules_are_private() -> None:
    """The colliding module paths are gone: nothing can rebind them, and the old path fails loudly."""
    with pytest.raises(ModuleNotFoundError):
        __import__("orthokit.linalg.cayley")
    with pytest.raises(ModuleNotFoundError):
        __import__("orthokit.linalg.procrustes")


def test_every_advertised_subpackage_imports() -> None:
    advertised = set(orthokit._SUBPACKAGES)
    assert {"linalg", "optim", "projection", "merge", "io"} <= advertised
    for name in sorted(advertised):
        mod = getattr(orthokit, name)
        assert isinstance(mod, types.ModuleType) and mod.__name__ == f"orthokit.{name}"
    # dir() advertises exactly the real subpackages plus the module's own names
    listed = set(dir(orthokit))
    assert advertised | {"polar", "__version__"} <= listed
    on_disk = {p.parent.name for p in (ROOT / "orthokit").glob("*/__init__.py")}
    assert advertised == on_disk, f"advertised {sorted(advertised)} vs packages on disk {sorted(on_disk)}"


@pytest.mark.parametrize("phantom", ["nn"])
def test_phantom_families_are_not_advertised(phantom: str) -> None:
    """Families that do not exist yet raise AttributeError (not ModuleNotFoundError from a lazy import)."""
    assert phantom not in orthokit._SUBPACKAGES
    assert phantom not in dir(orthokit)
    with pytest.raises(AttributeError, match=phantom):
        getattr(orthokit, phantom)


def test_package_description_names_only_existing_families() -> None:
    """pyproject's description advertised 'adapters and rotations' (no such family): it must not come back
    unless the family exists."""
    m = re.search(r'^description = "(.*)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert m is not None
    desc = m.group(1).lower()
    for word, family in (("adapter", "nn"), ("rotation", "rotation"), ("align", "align")):
        if word in desc:
            assert (ROOT / "orthokit" / family / "__init__.py").exists(), f"description mentions {word!r}"
