"""Atomic file writes, shared by the run file, the reports, the figures and the exports. A leaf
module.

`atomic_write` writes to a temporary file in the target's folder, fsyncs it, renames it over
the target and fsyncs the folder, so a reader (or a process killed at any moment) sees either
the old file or the new one, never a mix. The file gets the permissions ``open()`` would give
a new file under the current umask (``mkstemp`` alone would leave it at 0600).

Never through a symlink: the temporary file is created with ``O_CREAT | O_EXCL | O_NOFOLLOW``
(``mkstemp``) under a random name, and ``os.replace`` (``rename(2)``) replaces whatever entry
holds the target's name, a symlink included, instead of writing to where it points. So a
symlink planted at ``run_report/heatmap.png`` by another user is replaced by our file; the
file it pointed to is untouched.

The folder itself: a folder that is a symlink owned by another user (neither us nor root) is
refused with `UnsafeFolderError` (a `PermissionError`, so callers that handle a read-only
folder handle it too), the rule Linux's ``fs.protected_symlinks`` applies in sticky
world-writable folders such as /tmp. A symlink of our own is followed: that is where we asked
the files to go.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


class UnsafeFolderError(PermissionError):
    """An output folder is a symlink that another user owns: writing through it is refused."""


def current_umask() -> int:
    """The process umask (read by setting and restoring it; there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_folder(folder: str | os.PathLike[str]) -> Path:
    """Raise `UnsafeFolderError` when ``folder`` is a symlink owned by another user (not us,
    not root); returns ``folder`` as a Path. A missing folder passes (it will be created)."""
    path = Path(folder) if str(folder) else Path(".")
    try:
        info = path.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return path
    owners = (os.geteuid(), 0) if hasattr(os, "geteuid") else (info.st_uid,)
    if stat.S_ISLNK(info.st_mode) and info.st_uid not in owners:
        raise UnsafeFolderError(
            errno.EPERM,
            f"is a symbolic link owned by another user (uid {info.st_uid}); refusing to write "
            "through it: remove it or choose another folder",
            str(path),
        )
    return path


def output_folder(folder: str | os.PathLike[str]) -> Path:
    """`check_folder`, then create ``folder`` (and its parents) if needed; returns it."""
    path = check_folder(folder)
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(handle)`` on a temporary file, then move it over ``path`` atomically (a
    symlink at ``path`` is replaced, never followed; see the module docstring)."""
    target = Path(path)
    folder = output_folder(target.parent if str(target.parent) else Path("."))
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_folder(folder)
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """`atomic_write` of a UTF-8 text (a lone surrogate, which UTF-8 cannot hold, is written as
    its ``\\udcXX`` escape instead of failing the write)."""
    data = text.encode("utf-8", errors="backslashreplace")
    return atomic_write(path, lambda handle: handle.write(data))


def _fsync_folder(folder: Path) -> None:
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
