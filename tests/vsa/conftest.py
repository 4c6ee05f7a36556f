"""tests/vsa: run single-threaded (restored afterwards). The matrices here are at most 1024², where a second
BLAS/LAPACK thread gains nothing and, on a loaded shared host, oversubscription made a 512² QR ~30x slower."""

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
