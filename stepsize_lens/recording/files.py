"""The lens's run file: where it goes, and the rules that keep a run from ever being lost.

- **A file of its own.** Without an explicit path a run goes to
  ``runs/<YYYYmmdd-HHMMSS>_<label>.pt`` (a ``-2``, ``-3``... suffix if that is taken), like
  TensorBoard's ``runs/`` folder; the path is printed once. An explicit path is used as given.
- **Never replaced without being asked.** A path that already holds a file is continued only
  with ``resume=True`` and replaced only with ``overwrite=True``; otherwise the attach raises one
  line naming the file and both options (`check_replace`).
- **One live lens per path.** In one process, a second lens attaching to a path that a live
  lens writes raises, naming the first (`claim`), unless it was given ``resume=True`` or
  ``overwrite=True``: then the first lens is closed (its run saved) before the second attaches,
  so re-running a notebook's attach cell with either option works every time. Before deciding,
  garbage that still holds a claim is collected. Across processes an OS lock beside the run
  (`lock`: ``.run.pt.lock``) makes a second process's attach raise; a dead process's lock never
  blocks, and once the lock is held the temporary files killed saves left are removed.
- **Never over a newer run.** A lens overwrites only the file it has seen: the one present when
  it attached, or the one its own last save left. If anything else wrote the path since, the
  lens saves to a sibling (``run-2.pt``...) instead and says so once.
- **A failed save never kills training.** `RunFile.save` catches the error, warns once per
  failure streak naming the path and the error, and keeps the records in memory; the next
  flush retries, and the atomic write leaves the last good file intact. At close, a final
  failure falls back to a file in the temporary folder, named in the warning; the records also
  stay reachable through ``lens.run()``.
"""

from __future__ import annotations

import datetime
import gc
import os
import re
import tempfile
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stepsize_lens.errors import UserInputError
from stepsize_lens.recording.lock import LockedError, RunLock, held_elsewhere, remove_stale_temps
from stepsize_lens.run import RunWriter

RUNS_FOLDER = "runs"


class _Default:
    """The default ``path`` of `attach`: a new file under ``runs/`` (`default_path`)."""

    def __repr__(self) -> str:
        return "runs/<date-time>_<label>.pt"


DEFAULT_PATH: Any = _Default()


@dataclass(frozen=True)
class _Seen:
    """What a file looked like when this lens last saw it (None: there was no file)."""

    inode: int
    size: int
    mtime_ns: int


def _look(path: Path) -> _Seen | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return _Seen(stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-.") or "run"


# resolved path -> the live RunFile writing it
_claims: dict[str, weakref.ref[RunFile]] = {}


def _key(path: Path) -> str:
    return str(path.expanduser().resolve())


def _claimed_by(path: Path) -> RunFile | None:
    ref = _claims.get(_key(path))
    owner = ref() if ref is not None else None
    return owner if owner is not None and not owner.released else None


def default_path(label: str, folder: str | os.PathLike[str] = RUNS_FOLDER) -> Path:
    """``runs/<date-time>_<label>.pt``, made unique against existing files and live claims."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(folder) / f"{stamp}_{_slug(label)}"
    return _free(base, ".pt")


def _free(base: Path, suffix: str) -> Path:
    candidate = base.with_name(base.name + suffix)
    number = 1
    while candidate.exists() or _claimed_by(candidate) is not None or held_elsewhere(candidate):
        number += 1
        candidate = base.with_name(f"{base.name}-{number}{suffix}")
    return candidate


def sibling(path: Path) -> Path:
    """``run.pt`` -> the first free ``run-2.pt``, ``run-3.pt``..."""
    suffix = path.suffix
    return _free(path.with_name(path.name[: len(path.name) - len(suffix)]), suffix)


def live_writer(path: Path) -> RunFile | None:
    """The live lens's file that writes ``path`` in this process, if any (garbage that still
    holds a claim is collected first: a dropped lens no longer counts)."""
    if _claimed_by(path) is not None:
        gc.collect()
    return _claimed_by(path)


class PathTakenError(UserInputError):
    """``attach`` would replace a run without being asked to (a `ValueError`)."""


def _options(verb: str) -> str:
    return f"pass resume=True to continue {verb} or overwrite=True to replace it"


def ensure_free(path: Path, replacing: RunFile | None = None) -> None:
    """Raise `PathTakenError` if a live lens other than ``replacing`` writes ``path``."""
    owner = live_writer(path)
    if owner is not None and owner is not replacing:
        raise PathTakenError(
            f"{path} is already being written by {owner.describe}; {_options('its run')} "
            "(either closes that lens first), or choose another path"
        )


def check_replace(path: Path, resume: bool, overwrite: bool) -> None:
    """Raise `PathTakenError` if ``path`` holds a file and neither ``resume`` nor ``overwrite``
    says what to do with it."""
    if not (resume or overwrite) and (path.exists() or path.is_symlink()):
        raise PathTakenError(f"{path} already exists: {_options('the run in it')}")


class RunFile:
    """The file one lens writes, with the rules of this module. ``describe`` names the lens in
    messages (a short string; the `RunFile` never holds the lens itself)."""

    def __init__(self, path: Path, describe: str) -> None:
        self.path = path
        self.describe = describe
        self.released = False
        self.owner: Callable[[], Any] | None = None  # a weak reference to the lens, if set
        self._lock = RunLock(path)
        self._seen = _look(path)
        self._failing = False
        self._redirected = False

    def claim(self) -> None:
        """Register as the live writer of `path` and take its OS lock (`lock.RunLock`), then
        remove the temporary files killed saves left beside it. Raises `PathTakenError` if
        another live lens of this process writes it, `lock.LockedError` if another process
        does."""
        if _claimed_by(self.path) is not self:
            ensure_free(self.path)
        _claims[_key(self.path)] = weakref.ref(self)
        try:
            locked = self._lock.acquire(self.path)
        except LockedError:
            self.release()
            raise
        if locked:
            remove_stale_temps(self.path)

    def release(self) -> None:
        """Give the path up (at close); other lenses may claim it from now on."""
        self.released = True
        self._lock.release()
        key = _key(self.path)
        ref = _claims.get(key)
        if ref is not None and ref() is self:
            del _claims[key]

    def save(self, writer: RunWriter, final: bool = False) -> bool:
        """Save ``writer``'s run; never raises. True when the run is on disk. A periodic save
        appends what changed (`RunWriter.save` with ``append=True``); the ``final`` one writes
        the whole run as one file."""
        target = self.path
        now = _look(target)
        if now is not None and now != self._seen:  # someone else wrote it since we looked
            target = sibling(self.path)
            if not self._redirected:
                warnings.warn(
                    f"stepsize_lens: {self.path} was written by someone else since "
                    f"{self.describe} last saved it; saving this run to {target} instead",
                    RuntimeWarning,
                    stacklevel=3,
                )
            self._redirected = True
            self.release()
            self.path = target
            self._seen = _look(target)
            _claims[_key(target)] = weakref.ref(self)
            self.released = False
            self._lock = RunLock(target)
            try:
                self._lock.acquire(target)
            except LockedError:  # taken in the instant since `sibling` chose it: write unlocked
                pass
        try:
            writer.save(target, append=not final)
        except Exception as exc:  # a diagnostic must never take down the run it watches
            if not self._failing:
                warnings.warn(
                    f"stepsize_lens: could not save the run to {target} ({type(exc).__name__}: "
                    f"{exc}); the records stay in memory and the next flush retries",
                    RuntimeWarning,
                    stacklevel=3,
                )
            self._failing = True
            return False
        self._failing = False
        self._seen = _look(target)
        return True

    def save_final(self, writer: RunWriter) -> Path | None:
        """The last save (close): on failure, save to a fallback file in the temporary folder.
        Returns where the run is, or None if nowhere (then ``lens.run()`` still has it)."""
        failing_before = self._failing
        self._failing = True  # the final attempt reports below, not as a streak warning
        if self.save(writer, final=True):
            return self.path
        self._failing = failing_before
        fallback = _free(Path(tempfile.gettempdir()) / f"stepsize_lens-{self.path.stem}", ".pt")
        try:
            writer.save(fallback)
        except Exception as exc:
            warnings.warn(
                f"stepsize_lens: the final save of the run to {self.path} failed, and so did "
                f"the fallback {fallback} ({type(exc).__name__}: {exc}); the records are still "
                "in memory: lens.run() returns them",
                RuntimeWarning,
                stacklevel=3,
            )
            return None
        warnings.warn(
            f"stepsize_lens: the final save of the run to {self.path} failed; saved it to "
            f"{fallback} instead (lens.run() also returns it)",
            RuntimeWarning,
            stacklevel=3,
        )
        return fallback


def describe_lens(optimizer: Any, path: Path | None, label: str) -> str:
    """How messages name a lens: its label, optimizer class and path."""
    where = f" writing {path}" if path is not None else ""
    return f"the lens {label!r} on {type(optimizer).__name__}{where}"
