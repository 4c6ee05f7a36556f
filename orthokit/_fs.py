"""File-system helpers shared by every writer: permissions for atomically written outputs.

``tempfile.mkstemp``/``mkdtemp`` create private files (0600) and folders (0700). An output renamed into place
from them would keep those modes, unlike a file written with ``open``; :func:`publish_mode` gives it the mode
a normal write would have had (0666/0777 minus the process umask).
"""

from __future__ import annotations

import os
import threading

__all__ = ["publish_mode"]

_LOCK = threading.Lock()


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
