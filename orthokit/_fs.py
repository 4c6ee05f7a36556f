"""File-system helpers shared by every writer: modes, output ownership, temp-folder hygiene, path containment.

* :func:`publish_mode` — ``tempfile.mkstemp``/``mkdtemp`` create private files (0600) and folders (0700); an
  output renamed into place from them would keep those modes. This gives it the mode a normal write would have
  had (0666/0777 minus the process umask).
* **Ownership marker** — every folder published by :func:`orthokit.io.safetensors_io.atomic_output_dir` holds
  :data:`MARKER_NAME`, a JSON list of the files orthokit wrote there. :func:`check_replaceable` only lets an
  ``overwrite`` delete a folder that is empty or holds nothing but what its marker lists.
* :func:`check_output_target` — refuses an output folder that is, contains or lies inside a protected input
  (model folders, the config file), or that is the current directory or one of its parents.
* **Temporary folders** — :func:`register_temp` removes a temporary folder on SIGTERM/SIGHUP (then the signal's
  previous behaviour runs), and :func:`clean_stale_temps` removes ``.NAME.tmp-*`` folders whose owning process
  (recorded in :data:`LOCK_NAME` inside) is gone — e.g. after ``kill -9``.
* :func:`resolve_inside` — a file name read from a model folder (a shard in ``weight_map``) must resolve inside
  that folder: no ``..``, no absolute path, no symlink escape (Hugging Face cache snapshots, whose files link to
  the sibling ``blobs/`` folder, are the one allowed case).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = [
    "publish_mode",
    "MARKER_NAME",
    "LOCK_NAME",
    "UnsafeOutputError",
    "write_marker",
    "read_marker",
    "check_replaceable",
    "check_output_target",
    "write_lock",
    "clean_stale_temps",
    "register_temp",
    "unregister_temp",
    "resolve_inside",
]

#: File written into every published output folder: ``{"writer": "orthokit", "files": [...]}``.
MARKER_NAME = ".orthokit-output.json"
#: File inside a temporary output folder naming its owner: ``{"pid": ..., "host": ...}``.
LOCK_NAME = ".orthokit-tmp.lock"

_LOCK = threading.Lock()


class UnsafeOutputError(ValueError):
    """An output location that orthokit refuses to write to or replace (the message says why)."""


def _umask() -> int:
    with _LOCK:  # os.umask can only be read by setting it; restore at once
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def publish_mode(path: str | os.PathLike[str], directory: bool = False) -> None:
    """chmod ``path`` (a temporary file or folder about to be renamed into place) to the default mode.

    Example:
        >>> import os, tempfile
        >>> fd, tmp = tempfile.mkstemp(); os.close(fd)
        >>> publish_mode(tmp); oct(os.stat(tmp).st_mode & 0o077) != oct(0)
        True
        >>> os.unlink(tmp)
    """
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


# ------------------------------------------------------------------------------------------ ownership marker


def _listing(folder: Path) -> list[str]:
    out = []
    for root, dirs, files in os.walk(folder):
        rel = Path(root).relative_to(folder)
        for f in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            out.append((rel / f).as_posix())
    return sorted(x for x in out if x not in (MARKER_NAME, LOCK_NAME))


def write_marker(folder: str | os.PathLike[str]) -> list[str]:
    """Write :data:`MARKER_NAME` into ``folder`` listing every file in it (relative paths); return the list.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp()); _ = (d / "a.txt").write_text("x")
        >>> write_marker(d), read_marker(d)
        (['a.txt'], ['a.txt'])
    """
    folder = Path(folder)
    files = _listing(folder)
    (folder / MARKER_NAME).write_text(json.dumps({"writer": "orthokit", "files": files}, indent=1) + "\n")
    publish_mode(folder / MARKER_NAME)
    return files


def read_marker(folder: str | os.PathLike[str]) -> list[str] | None:
    """The file list of ``folder``'s orthokit marker, or ``None`` if there is no valid marker."""
    p = Path(folder) / MARKER_NAME
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    if (
        not isinstance(data, dict)
        or data.get("writer") != "orthokit"
        or not isinstance(data.get("files"), list)
    ):
        return None
    return [str(f) for f in data["files"]]


def _is_same_or_parent(a: Path, b: Path) -> bool:
    """``a`` is ``b`` or one of its ancestors (both resolved)."""
    return a == b or a in b.parents


def check_replaceable(out: str | os.PathLike[str]) -> None:
    """Raise :class:`UnsafeOutputError` unless the existing folder ``out`` may be deleted by an overwrite.

    Allowed: an empty folder, or a folder holding only files listed in its orthokit marker (an earlier orthokit
    output). Refused: a file, the current directory or one of its parents, a folder orthokit did not write, or
    an orthokit output to which other files were added (the first such file is named).

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp()); _ = (d / "notes.txt").write_text("mine")
        >>> check_replaceable(d)
        Traceback (most recent call last):
        ...
        orthokit._fs.UnsafeOutputError: refusing to replace ... it was not written by orthokit (no .orthokit-output.json) and is not empty
    """
    p = Path(out)
    if not p.is_dir() or p.is_symlink():
        raise UnsafeOutputError(f"refusing to replace {p}: it is not a folder")
    real = p.resolve()
    cwd = Path.cwd().resolve()
    if _is_same_or_parent(real, cwd):
        raise UnsafeOutputError(f"refusing to replace {p}: it is the current directory or one of its parents")
    listed = read_marker(p)
    present = _listing(p)
    if listed is None:
        if present or any(p.iterdir()):
            raise UnsafeOutputError(
                f"refusing to replace {p}: it was not written by orthokit (no {MARKER_NAME}) and is not empty"
            )
        return
    extra = sorted(set(present) - set(listed))
    if extra:
        raise UnsafeOutputError(
            f"refusing to replace {p}: it holds {extra[0]!r}"
            + (f" and {len(extra) - 1} more file(s)" if len(extra) > 1 else "")
            + " that orthokit did not write there; move them away first"
        )


def check_output_target(
    out: str | os.PathLike[str], protected: Iterable[tuple[str, str | os.PathLike[str]]] = ()
) -> None:
    """Refuse an output folder that would overwrite or nest inside the inputs of the job writing it.

    ``protected`` are ``(label, path)`` pairs (input model folders or files, the config file). Refused, with a
    one-line :class:`UnsafeOutputError` naming the input: ``out`` is a protected path, contains one, or lies
    inside a protected folder; or ``out`` is the current directory or one of its parents. Paths are compared
    after resolving symlinks.

    Example:
        >>> import tempfile, pathlib
        >>> root = pathlib.Path(tempfile.mkdtemp()); (root / "base").mkdir()
        >>> check_output_target(root / "merged", [("base_model", root / "base")])  # fine
        >>> check_output_target(root, [("base_model", root / "base")])
        Traceback (most recent call last):
        ...
        orthokit._fs.UnsafeOutputError: refusing output folder ...: it contains the base_model ...
    """
    o = Path(out).absolute().resolve()
    cwd = Path.cwd().resolve()
    if _is_same_or_parent(o, cwd):
        raise UnsafeOutputError(
            f"refusing output folder {out}: it is the current directory or one of its parents"
        )
    for label, path in protected:
        p = Path(path).absolute().resolve()
        if o == p:
            raise UnsafeOutputError(f"refusing output folder {out}: it is the {label} ({path})")
        if o in p.parents:
            raise UnsafeOutputError(f"refusing output folder {out}: it contains the {label} ({path})")
        if p in o.parents:
            raise UnsafeOutputError(f"refusing output folder {out}: it is inside the {label} ({path})")


# ------------------------------------------------------------------------------------------ temporary folders


def write_lock(tmp: str | os.PathLike[str]) -> None:
    """Record this process as the owner of the temporary folder ``tmp`` (see :func:`clean_stale_temps`)."""
    Path(tmp, LOCK_NAME).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}) + "\n")


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return True  # malformed: treat as alive (never delete on doubt)
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(
        OSError, IndexError
    ):  # a zombie (killed, not yet reaped) is gone for our purpose
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat[stat.rindex(")") + 2] in "ZX":
            return False
    return True


def clean_stale_temps(parent: str | os.PathLike[str], *, notify: bool = True) -> list[Path]:
    """Remove ``.*.tmp-*`` folders in ``parent`` whose owning process (per :data:`LOCK_NAME`) is no longer alive.

    Only folders holding an orthokit lock written on this host are considered; anything else is left alone.
    With ``notify`` a one-line notice per removed folder goes to stderr. Returns the removed folders.

    Example:
        >>> import tempfile, pathlib, json
        >>> root = pathlib.Path(tempfile.mkdtemp()); t = root / ".out.tmp-x"; t.mkdir()
        >>> _ = (t / LOCK_NAME).write_text(json.dumps({"pid": 2**22 + 1, "host": socket.gethostname()}))
        >>> [p.name for p in clean_stale_temps(root, notify=False)], t.exists()
        (['.out.tmp-x'], False)
    """
    removed: list[Path] = []
    par = Path(parent)
    if not par.is_dir():
        return removed
    host = socket.gethostname()
    for d in sorted(par.glob(".*.tmp-*")):
        lock = d / LOCK_NAME
        if d.is_symlink() or not d.is_dir() or not lock.is_file():
            continue
        try:
            info = json.loads(lock.read_text())
            pid, h = int(info["pid"]), str(info["host"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if h != host or _pid_alive(pid):
            continue
        shutil.rmtree(d, ignore_errors=True)
        if not d.exists():
            removed.append(d)
            if notify:
                print(
                    f"orthokit: removed stale temporary folder {d} (left by process {pid}, which is gone)",
                    file=sys.stderr,
                )
    return removed


_TEMPS: set[Path] = set()
_PREV: dict[int, Any] = {}
_SIGNALS = tuple(
    s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None
)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    for t in list(_TEMPS):
        shutil.rmtree(t, ignore_errors=True)
    _TEMPS.clear()
    prev = _PREV.pop(signum, signal.SIG_DFL)
    for s, h in list(_PREV.items()):  # restore the other handlers too: nothing left to clean
        with contextlib.suppress(ValueError, OSError):
            signal.signal(s, h)
    _PREV.clear()
    if callable(prev):
        signal.signal(signum, prev)
        prev(signum, frame)
        return
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)  # the default action (terminate) with the right exit status


def register_temp(tmp: str | os.PathLike[str]) -> None:
    """Remove ``tmp`` if the process receives SIGTERM or SIGHUP before :func:`unregister_temp`.

    The handler deletes every registered folder, restores the previous handlers and re-delivers the signal, so
    the process ends as it would have (or a previously installed Python handler runs). Signals whose handler is
    ``SIG_IGN`` (e.g. under ``nohup``) are left alone; outside the main thread nothing is installed.
    """
    with _LOCK:
        _TEMPS.add(Path(tmp))
        if threading.current_thread() is not threading.main_thread():
            return
        for s in _SIGNALS:
            if s in _PREV:
                continue
            cur = signal.getsignal(s)
            if cur == signal.SIG_IGN or cur is None:
                continue
            with contextlib.suppress(ValueError, OSError):
                signal.signal(s, _on_signal)
                _PREV[s] = cur


def unregister_temp(tmp: str | os.PathLike[str]) -> None:
    """Forget ``tmp``; when no temporary folder is left, restore the previous signal handlers."""
    with _LOCK:
        _TEMPS.discard(Path(tmp))
        if _TEMPS or threading.current_thread() is not threading.main_thread():
            return
        for s, h in list(_PREV.items()):
            with contextlib.suppress(ValueError, OSError):
                if signal.getsignal(s) is _on_signal:
                    signal.signal(s, h)
        _PREV.clear()


# ------------------------------------------------------------------------------------------ path containment


def resolve_inside(folder: str | os.PathLike[str], name: str, what: str) -> Path:
    """``folder / name``, checked to stay inside ``folder``; ``ValueError`` naming ``what`` otherwise.

    Refused: an absolute ``name``, any ``..`` component, and a path whose resolved target (symlinks followed)
    lies outside the resolved ``folder``. Exception: in a Hugging Face cache snapshot
    (``…/snapshots/<rev>/``) files may link into the repository's ``blobs/`` folder, as the hub client creates
    them.

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> resolve_inside(d, "model-00001-of-00002.safetensors", "shard").name
        'model-00001-of-00002.safetensors'
        >>> resolve_inside(d, "../other/model.safetensors", "shard")
        Traceback (most recent call last):
        ...
        ValueError: shard '../other/model.safetensors' points outside its model folder ...
    """
    base = Path(folder)
    parts = Path(name).parts
    if (
        not name
        or Path(name).is_absolute()
        or ".." in parts
        or name.startswith(("/", "\\"))
        or "\\.." in name
    ):
        raise ValueError(
            f"{what} {name!r} points outside its model folder {base} (absolute paths and '..' are not allowed)"
        )
    p = base / name
    real_base = base.resolve()
    real = p.resolve()
    if real == real_base or real_base in real.parents:
        return p
    snap = real_base.parent
    if snap.name == "snapshots":
        blobs = snap.parent / "blobs"
        if blobs.resolve() in real.parents:
            return p
    raise ValueError(f"{what} {name!r} in {base} is a link to {real}, outside its model folder")
