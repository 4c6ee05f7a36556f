"""orthokit.io.record: atomic single-file safetensors records with checked reads (used by Aligner.save/load)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from orthokit.io.record import read_record, write_record


def test_round_trip_and_checked_read(tmp_path: Path) -> None:
    p = tmp_path / "r.safetensors"
    write_record(p, {"a": torch.arange(3.0), "b": torch.eye(2, dtype=torch.float64)}, {"format": "t/1"})
    tensors, meta = read_record(p, fmt="t/1", keys=("a", "b"), what="test")
    assert torch.equal(tensors["a"], torch.arange(3.0)) and tensors["b"].dtype == torch.float64
    assert meta == {"format": "t/1"}
    with pytest.raises(ValueError, match="not an orthokit test file"):
        read_record(p, fmt="other/1", keys=("a", "b"), what="test")
    with pytest.raises(ValueError, match=r"has tensors \['a', 'b'\]"):
        read_record(p, fmt="t/1", keys=("a",), what="test")


def test_bad_paths_and_files_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is a directory"):
        read_record(tmp_path, fmt="t/1", keys=("a",))
    with pytest.raises(ValueError, match="does not exist"):
        read_record(tmp_path / "missing.safetensors", fmt="t/1", keys=("a",))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\xff" * 64)  # a header length far beyond the file
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        read_record(bad, fmt="t/1", keys=("a",))
    with pytest.raises(ValueError, match="is a directory"):
        write_record(tmp_path, {"a": torch.ones(1)}, {"format": "t/1"})
    with pytest.raises(ValueError, match="does not exist"):
        write_record(tmp_path / "no" / "r.safetensors", {"a": torch.ones(1)}, {"format": "t/1"})


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    p = tmp_path / "r.safetensors"
    write_record(p, {"a": torch.ones(2)}, {"format": "t/1"})
    before = p.read_bytes()
    with pytest.raises(ValueError, match="non-finite"):
        write_record(p, {"a": torch.tensor([1.0, float("nan")])}, {"format": "t/1"})
    with pytest.raises(TypeError):  # safetensors refuses non-string metadata mid-write
        write_record(p, {"a": torch.zeros(2)}, {"format": 1})  # type: ignore[dict-item]
    assert p.read_bytes() == before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["r.safetensors"]
