"""Small single-file safetensors records: a few named tensors plus string metadata, written atomically.

Used for objects that are a handful of tensors and a format tag (e.g. ``orthokit.align.Aligner``): the family
builds the tensors and metadata, this module owns the file — atomic write (temporary file in the same folder,
then ``os.replace``; an existing file is replaced only by a complete one, a failed write leaves no temporary),
and a checked read (the path is a file, it parses as safetensors, its ``format`` tag and tensor names are the
expected ones). Errors are one-line ``ValueError`` s naming the file.

Example:
    >>> import os, tempfile, torch
    >>> from orthokit.io.record import read_record, write_record
    >>> p = os.path.join(tempfile.mkdtemp(), "r.safetensors")
    >>> _ = write_record(p, {"W": torch.eye(2)}, {"format": "demo/1", "note": "x"})
    >>> tensors, meta = read_record(p, fmt="demo/1", keys=("W",))
    >>> tensors["W"].tolist(), meta["note"]
    ([[1.0, 0.0], [0.0, 1.0]], 'x')
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import Tensor

from orthokit._fs import publish_mode

__all__ = ["write_record", "read_record"]


def write_record(
    path: str | os.PathLike[str], tensors: Mapping[str, Tensor], metadata: Mapping[str, str]
) -> Path:
    """Write ``tensors`` (finite, moved to CPU, made contiguous) with string ``metadata`` to ``path`` atomically.

    Raises:
        ValueError: ``path`` is a directory or its folder does not exist, or a tensor has non-finite values
            (nothing is written then).
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"path {str(path)!r} is a directory; give a file name such as aligner.safetensors")
    if not path.parent.is_dir():
        raise ValueError(f"folder {str(path.parent)!r} does not exist")
    out = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    for k, v in out.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise ValueError(f"refusing to save: tensor {k!r} contains non-finite values")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(out, tmp, metadata=dict(metadata))
        publish_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def read_record(
    path: str | os.PathLike[str], *, fmt: str, keys: Iterable[str], what: str = "record"
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read a record written by :func:`write_record`: ``(tensors, metadata)``.

    Args:
        path: the ``.safetensors`` file.
        fmt: the expected ``metadata["format"]``.
        keys: the exact tensor names the record must hold.
        what: noun used in error messages (e.g. ``"aligner"``).

    Raises:
        ValueError: one line naming the file — missing, a directory, not safetensors (corrupt, truncated,
            hostile header), another format, or other tensor names.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    want = set(keys)
    if path.is_dir():
        raise ValueError(f"{what} file {str(path)!r} is a directory, not a .safetensors file")
    if not path.is_file():
        raise ValueError(f"{what} file {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            names = set(f.keys())
            if meta.get("format") != fmt:
                raise ValueError(
                    f"{str(path)!r} is not an orthokit {what} file (format {meta.get('format')!r})"
                )
            if names != want:
                raise ValueError(
                    f"{str(path)!r} has tensors {sorted(names)}, an {what} file has {sorted(want)}"
                )
            tensors = {k: f.get_tensor(k) for k in sorted(want)}
    except SafetensorError as e:
        raise ValueError(f"{str(path)!r} is not a readable safetensors file: {e}") from None
    return tensors, meta
