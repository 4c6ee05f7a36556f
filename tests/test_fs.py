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


def test_marker_lists_what_was_written_and_gates_replacement(tmp_path):
    import pytest

    from orthokit._fs import MARKER_NAME, UnsafeOutputError, check_replaceable, read_marker

    with atomic_output_dir(tmp_path / "out") as d:
        (d / "sub").mkdir()
        (d / "sub" / "a.bin").write_bytes(b"1")
        (d / "b.txt").write_text("2")
    assert read_marker(tmp_path / "out") == ["b.txt", "sub/a.bin"]
    check_replaceable(tmp_path / "out")  # unchanged orthokit output: replaceable
    (tmp_path / "out" / "sub" / "user.txt").write_text("mine")
    with pytest.raises(UnsafeOutputError, match="'sub/user.txt'"):
        check_replaceable(tmp_path / "out")
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / MARKER_NAME).write_text('{"writer": "someone else", "files": []}')
    with pytest.raises(UnsafeOutputError, match="not written by orthokit"):
        check_replaceable(tmp_path / "fake")


def test_stale_cleanup_only_touches_dead_local_owners(tmp_path):
    import json
    import socket

    from orthokit._fs import LOCK_NAME, clean_stale_temps

    def mk(name, pid, host):
        d = tmp_path / name
        d.mkdir()
        (d / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": host}))
        return d

    dead = mk(".a.tmp-1", 2**22 + 7, socket.gethostname())
    alive = mk(".b.tmp-2", os.getpid(), socket.gethostname())
    remote = mk(".c.tmp-3", 2**22 + 7, "another-host")
    nolock = tmp_path / ".d.tmp-4"
    nolock.mkdir()
    assert clean_stale_temps(tmp_path, notify=False) == [dead]
    assert alive.is_dir() and remote.is_dir() and nolock.is_dir() and not dead.exists()


def test_signal_handlers_are_restored(tmp_path):
    import signal

    from orthokit._fs import register_temp, unregister_temp

    before = signal.getsignal(signal.SIGTERM)
    register_temp(tmp_path / "x")
    assert signal.getsignal(signal.SIGTERM) is not before
    unregister_temp(tmp_path / "x")
    assert signal.getsignal(signal.SIGTERM) is before
