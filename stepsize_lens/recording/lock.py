"""One writer per run file across processes: an OS lock beside the run, and the cleanup it allows.

A lens that writes ``run.pt`` holds ``fcntl.flock(LOCK_EX)`` on ``.run.pt.lock`` in the same
folder from its attach to its close, so a second process attaching to that path raises instead
of overwriting the first one's run (`RunLock.acquire`; within one process, `files` keeps the
registry of live lenses). The kernel releases a flock when its process dies, however it dies
(SIGKILL included), so a lock file left by a dead process never blocks anyone: the next lens
locks it and goes on. The lock file holds the holder's pid, for the message only.

At close the holder removes the lock file while still holding the lock; a process that had
opened the old file re-checks after locking that the name still leads to the file it locked
(same inode) and starts over if not, so two processes never each hold "the" lock.

Holding the lock also says which temporary files are stale: a save writes
``.run.pt.<random>.tmp`` and renames it over the run (`stepsize_lens._files.atomic_write`), so
such files left beside the run by a killed process are removed once the lock is ours
(`remove_stale_temps`): no live process can be writing them.

Where no lock can be taken (no ``fcntl``, as on Windows; a read-only or missing folder; a
symlink planted at the lock's name) the lens goes on without one: its saves report their own
failures, and the in-process rules still hold.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from stepsize_lens.errors import UserInputError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

_BUSY = (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)


class LockedError(UserInputError):
    """Another process holds the lock of a run file (a `ValueError`)."""


def lock_path(path: Path) -> Path:
    """``run.pt`` -> ``.run.pt.lock`` in the same folder."""
    return path.with_name(f".{path.name}.lock")


def _holder(fd: int) -> str:
    """The pid written in a lock file, for messages ("" if unreadable)."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return f" (pid {text})" if text.isdigit() else ""


def held_elsewhere(path: Path) -> bool:
    """Whether a lock on ``path``'s run is held now (by another process, or another open lock
    of this one). Takes nothing: the probe lock is released at once."""
    if fcntl is None:
        return False
    try:
        fd = os.open(lock_path(path), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False  # no lock file: nobody holds it
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        return exc.errno in _BUSY
    finally:
        os.close(fd)  # also drops the probe's lock
    return False


class RunLock:
    """The lock of one run file, held by this process from `acquire` to `release`."""

    def __init__(self, path: Path) -> None:
        self.path = lock_path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, run: Path) -> bool:
        """Take the lock of ``run``. True when held; False when no lock can be taken here (the
        lens then writes without one). Raises `LockedError` when another process holds it."""
        if fcntl is None or self._fd is not None:
            return self._fd is not None
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        for _ in range(100):  # another process may remove the file between our open and lock
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, flags, 0o666)
            except OSError:
                return False
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _holder(fd)
                os.close(fd)
                if exc.errno in _BUSY:
                    raise LockedError(
                        f"{run} is being written by another process{holder}: a run file has "
                        "one writer; choose another path, or close that run first"
                    ) from None
                return False
            if _same_file(fd, self.path):
                break
            os.close(fd)  # the holder removed it at close: lock the file now at that name
        else:  # pragma: no cover - a lock file replaced 100 times in a row
            return False
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode("ascii"), 0)
        except OSError:
            pass  # the pid is for messages only
        self._fd = fd
        return True

    def release(self) -> None:
        """Remove the lock file and drop the lock (safe to call twice)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if _same_file(fd, self.path):
                os.unlink(self.path)
        except OSError:
            pass
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        named = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    mine = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (mine.st_dev, mine.st_ino)


def remove_stale_temps(path: Path) -> list[Path]:
    """Remove the temporary files ``.run.pt.*.tmp`` a killed save left beside ``path`` (call
    only while holding its `RunLock`: then no live process writes them). Returns those removed."""
    folder = path.parent
    prefix, suffix = f".{path.name}.", ".tmp"
    removed = []
    try:
        names = os.listdir(folder if str(folder) else ".")
    except OSError:
        return removed
    for name in names:
        if name.startswith(prefix) and name.endswith(suffix) and len(name) > len(prefix + suffix):
            stale = folder / name
            try:
                os.unlink(stale)
            except OSError:
                continue
            removed.append(stale)
    return removed
