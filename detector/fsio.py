"""Crash-safe file writes: the one helper every quakescan writer uses.

``atomic_write`` writes to a temporary file in the target's directory, flushes
and fsyncs it, renames it over the target with ``os.replace`` and fsyncs the
directory, so that after a crash (of the process or of the machine) the target
holds either its old content or the new one, never a part of either, and a
finished write survives a power cut.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "fsync_dir"]


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """fsync a directory so that a rename inside it is durable (POSIX; a no-op where unsupported)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(
    path: str | os.PathLike[str],
    data: bytes | str | Callable[[str], None],
    *,
    encoding: str = "utf-8",
) -> Path:
    """Replace ``path`` with ``data`` atomically and durably; returns ``path`` as a Path.

    ``data`` is bytes, text (written with ``encoding``, newlines untranslated) or a
    writer ``write(tmp_path: str)`` that writes the file itself (``torch.save``,
    ObsPy's ``Catalog.write``). The temporary file sits next to ``path`` and is named
    ``.<name>.<random>.tmp``, so directory scans that skip dot files or ``*.tmp``
    never see it. The new file keeps the old file's permission bits, or gets 0644.
    If anything fails (the writer raises, the disk is full) the old file is left as
    it was, no temporary file is left behind, and the error propagates.
    """
    if not (callable(data) or isinstance(data, str | bytes | bytearray | memoryview)):
        raise TypeError(
            f"atomic_write: data must be bytes, str or a writer, got {type(data).__name__}"
        )
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: directory {parent} does not exist")
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if callable(data):
            os.close(fd)
            fd = -1
            data(tmp)
            with open(tmp, "rb+") as fh:
                fh.flush()
                os.fsync(fh.fileno())
        else:
            raw = data.encode(encoding) if isinstance(data, str) else bytes(data)
            with open(fd, "wb", closefd=True) as fh:
                fd = -1
                fh.write(raw)
                fh.flush()
                os.fsync(fh.fileno())
        # mkstemp makes the file 0600; the files written here are meant to be shared.
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(parent)
    return path
