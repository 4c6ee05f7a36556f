"""Every registered orthogonal dictionary learner passes the conformance checks its capabilities call for."""

from __future__ import annotations

import pytest

from orthokit.dictionary.registry import DICT_LEARNERS

from . import conformance as C

CASES = [(name, chk) for name in DICT_LEARNERS.names() for chk in C.applicable(name)]


def test_registry_has_the_three_learners() -> None:
    assert {"online_fw", "batch_msp", "batch_procrustes"} <= set(DICT_LEARNERS.names())
    assert DICT_LEARNERS.capabilities("online_fw")["online"] is True
    assert DICT_LEARNERS.names(online=True) == ["online_fw"]
    assert set(DICT_LEARNERS.names(exact_orthogonal=True)) >= {"online_fw", "batch_msp", "batch_procrustes"}


@pytest.mark.parametrize(("name", "check"), CASES, ids=[f"{n}-{c.__name__}" for n, c in CASES])
def test_conformance(name: str, check: C.Factory) -> None:
    check(C.factory(name))  # type: ignore[operator]
