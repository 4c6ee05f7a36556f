"""Atomically written outputs get the normal file/folder mode, not mkstemp's private 0600/0700."""

from __future__ import annotations

import os

from orthokit.bench.report import atomic_write_text
from orthokit.io.safetensors_io import atomic_output_dir


def _umask() -> int:
    m = os.umask(0o022)
    os.umask(m)
    return m


def test_atomic_text_and_output_dir_modes(tmp_path):
    mask = _umask()
    atomic_write_text(tmp_path / "r.md", "x")
    assert os.stat(tmp_path / "r.md").st_mode & 0o777 == 0o666 & ~mask
    with atomic_output_dir(tmp_path / "out") as d:
        (d / "a.txt").write_text("y")
    assert os.stat(tmp_path / "out").st_mode & 0o777 == 0o777 & ~mask
