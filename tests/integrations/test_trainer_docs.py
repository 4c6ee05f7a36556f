"""docs/integrations/trainer.md and the README's Trainer section run as written (issue 10): every ```python block is
executed, in order and in one namespace, in a temporary directory on a tiny GPT-2 built from a config."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")

DOCS = Path(__file__).resolve().parents[2] / "docs" / "integrations"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


README = DOCS.parents[1] / "README.md"
SECTION = "## Training with transformers.Trainer"


def _blocks(name: str, text: str | None = None) -> list[str]:
    blocks = BLOCK.findall((DOCS / name).read_text() if text is None else text)
    assert blocks, f"{name} has no python blocks"
    return blocks


def _readme_section() -> str:
    """The README's Trainer section: from its heading to the next ``## `` heading."""
    text = README.read_text()
    assert SECTION in text, f"README.md has no '{SECTION}' section"
    body = text.split(SECTION, 1)[1]
    return SECTION + body.split("\n## ", 1)[0]


def _exec_page(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str) -> dict:
    monkeypatch.chdir(tmp_path)
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the blocks' mkdtemp() lands under tmp_path
    ns: dict = {"__name__": f"docs_{name.replace('.', '_')}"}
    for i, code in enumerate(_blocks(name)):
        try:
            exec(compile(code, f"{name}[block {i}]", "exec"), ns)
        except Exception as e:  # name the block in the failure
            raise AssertionError(f"{name} block {i} failed: {type(e).__name__}: {e}") from e
    return ns


def test_trainer_page_runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ns = _exec_page(monkeypatch, tmp_path, "trainer.md")
    assert "resumed" in ns and "full" in ns  # the resume block ran and asserted bit-identity


def test_readme_section_runs_and_is_short(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    text = _readme_section()
    assert len(text.strip().splitlines()) <= 26, "the README's Trainer section should stay short"
    setup = _blocks("trainer.md")[0]  # the page's tiny model, dataset and arguments
    monkeypatch.chdir(tmp_path)
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    ns: dict = {"__name__": "docs_readme_section"}
    exec(compile(setup, "trainer.md[block 0]", "exec"), ns)
    ns["model"], ns["args"], ns["train"] = ns["make_model"](), ns["make_args"](max_steps=2), ns["train"]
    before = ns["model"].transformer.h[0].mlp.c_fc.weight.detach().clone()
    (code,) = _blocks("README.md", text)
    exec(compile(code, "README.md[Trainer section]", "exec"), ns)
    assert ns["sched"].last_epoch == 2 and not ns["model"].transformer.h[0].mlp.c_fc.weight.equal(before)
