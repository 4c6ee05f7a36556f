"""The dictionary learners run thousands of tiny (d ≤ 64) matrix products; on a loaded shared host a 2-thread pool
makes each one wait for a thread wake-up (measured 1000x slower under load), so these tests run single-threaded."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
