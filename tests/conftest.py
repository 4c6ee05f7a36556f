"""Shared pytest configuration: deterministic seeds, small thread count, bundled-data fixtures."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

settings.register_profile(
    "orthokit", deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("orthokit")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


class _DoctestSeed:
    """Seeds every collected docstring example too (``orthokit/**.py`` lies outside this conftest's directory,
    so the autouse fixture above does not reach those items; a registered plugin's fixtures apply everywhere)."""

    @pytest.fixture(autouse=True)
    def _orthokit_doctest_seed(self, request: pytest.FixtureRequest) -> None:
        if isinstance(request.node, pytest.DoctestItem):
            torch.manual_seed(0)


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin("orthokit-doctest-seed"):
        config.pluginmanager.register(_DoctestSeed(), "orthokit-doctest-seed")


@pytest.fixture(scope="session")
def data_dir():
    """The bundled ../shared/data folder; fails (not skips) with a clear message when missing."""
    from orthokit.bench.data import data_dir as _dd

    return _dd()
