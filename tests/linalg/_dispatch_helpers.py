"""Shared helpers for the measured-dispatch tests (test_dispatch.py, test_hadamard_dispatch.py).

``_fresh`` (autouse once imported into a test module) turns probing on with an empty cache and restores the
default afterwards; ``fake_clock`` replaces ``dispatch._time_once`` with a table lookup so no test depends on
real speed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from orthokit.linalg import dispatch


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    dispatch.set_probing(True)  # also clears the cache
    yield
    dispatch.set_probing(None)


def fake_clock(monkeypatch: pytest.MonkeyPatch, table: dict[str, float]) -> list[str]:
    """Make every probe of candidate ``label`` take ``table[label]`` seconds; return the labels probed, in order."""
    calls: list[str] = []

    def fake(label: str, fn: Callable[[], object], device: object) -> float:
        calls.append(label)
        return table[label]

    monkeypatch.setattr(dispatch, "_time_once", fake)
    return calls
