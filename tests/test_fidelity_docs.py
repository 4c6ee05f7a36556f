"""docs/fidelity.md lists every registered method (issue 15).

For each of the three registries (optimizers, projections, merge methods) the matching section of
``docs/fidelity.md`` must have exactly one table row per registered name (no missing, no stale rows), and each
row's link must point to an existing docs page with a ``## Fidelity`` or ``### Fidelity`` heading. A method
registered without a row, or a row left behind after a rename, fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from orthokit.align.registry import ALIGN_LOSSES, ALIGNERS, COMPAT_METHODS
from orthokit.diagnostics import DIAGNOSTICS
from orthokit.dictionary import DICT_LEARNERS
from orthokit.merge.registry import MERGE_METHODS
from orthokit.optim import OPTIMIZERS
from orthokit.projection import PROJECTIONS
from orthokit.rotation import ROTATIONS
from orthokit.steer import STEERERS
from orthokit.vsa import BINDERS

DOCS = Path(__file__).resolve().parents[1] / "docs"
TABLE = DOCS / "fidelity.md"

# section heading in docs/fidelity.md -> the registry whose names it must list
SECTIONS = {
    "orthokit.optim": OPTIMIZERS,
    "orthokit.projection": PROJECTIONS,
    "orthokit.merge": MERGE_METHODS,
    "orthokit.align (alignment maps)": ALIGNERS,
    "orthokit.align (compatible training)": COMPAT_METHODS,
    "orthokit.align (losses and heads)": ALIGN_LOSSES,
    "orthokit.steer": STEERERS,
    "orthokit.diagnostics": DIAGNOSTICS,
    "orthokit.vsa": BINDERS,
    "orthokit.dictionary": DICT_LEARNERS,
    "orthokit.rotation": ROTATIONS,
}

# first cell of a table row: [`name`](relative/path.md#anchor)
_ROW = re.compile(r"^\|\s*\[`([A-Za-z0-9_]+)`\]\(([^)#\s]+)(?:#[^)\s]*)?\)\s*\|")
_FIDELITY = re.compile(r"^#{2,3} Fidelity\b", re.MULTILINE)


def table_rows(text: str) -> dict[str, list[tuple[str, str]]]:
    """``{section heading: [(method name, linked page), ...]}`` for every ``## `` section of ``text``."""
    rows: dict[str, list[tuple[str, str]]] = {}
    section = ""
    for line in text.splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
            rows.setdefault(section, [])
            continue
        m = _ROW.match(line)
        if m and section:
            rows[section].append((m.group(1), m.group(2)))
    return rows


def problems(names: list[str], rows: list[tuple[str, str]], docs: Path = DOCS) -> list[str]:
    """Everything wrong with one section: missing, duplicate or stale rows, and bad linked pages."""
    out = []
    listed = [n for n, _ in rows]
    out += [f"{n!r} is registered but has no row" for n in names if n not in listed]
    out += [f"{n!r} has a row but is not registered" for n in dict.fromkeys(listed) if n not in names]
    out += [f"{n!r} has {listed.count(n)} rows" for n in dict.fromkeys(listed) if listed.count(n) > 1]
    for n, link in rows:
        page = docs / link
        if not page.is_file():
            out.append(f"{n!r} links to {link}, which does not exist")
        elif not _FIDELITY.search(page.read_text(encoding="utf-8")):
            out.append(f"{n!r} links to {link}, which has no '## Fidelity' / '### Fidelity' heading")
    return out


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_every_registered_method_has_a_row_with_a_fidelity_page(section: str) -> None:
    rows = table_rows(TABLE.read_text(encoding="utf-8"))
    assert section in rows, f"docs/fidelity.md has no '## {section}' section"
    found = problems(SECTIONS[section].names(), rows[section])
    assert not found, "docs/fidelity.md: " + "; ".join(found)


def test_the_check_catches_a_missing_row_and_a_page_without_fidelity(tmp_path: Path) -> None:
    """The check itself can fail: an unlisted name, and a linked page lacking the heading, are reported."""
    (tmp_path / "a.md").write_text("# A\n\n## Fidelity\n\nsource\n", encoding="utf-8")
    (tmp_path / "b.md").write_text("# B\n\n## Tests\n", encoding="utf-8")
    text = "## fam\n\n| method |\n|---|\n| [`a`](a.md#fidelity) | x |\n| [`b`](b.md) | y |\n"
    rows = table_rows(text)["fam"]
    assert rows == [("a", "a.md"), ("b", "b.md")]
    assert problems(["a"], rows[:1], tmp_path) == []
    found = problems(["a", "b", "new_method"], rows, tmp_path)
    assert any("'new_method' is registered but has no row" in p for p in found)
    assert any("'b' links to b.md, which has no" in p for p in found)
