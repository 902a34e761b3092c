"""Termination signals end a run like ``close()``: SIGTERM and SIGHUP save every live lens.

Slurm, Kubernetes and ``docker stop`` end a job with SIGTERM (a closed terminal sends SIGHUP);
without a handler the process dies at once and the run file keeps only its last flush. The
first lens that writes a file, attached from the main thread, installs a handler for both
signals (`watch`), once per process. On the signal, every live lens of the process makes its
final save and marks its run closed (`Lens.finish`: no hook is removed, so an optimizer step in
progress is not disturbed; the hooks do nothing from then on), and then the handler that was
there before runs: the user's or a framework's (Lightning, the HF Trainer, torchrun), or, where
there was none, the default action, re-raised with the default disposition so the process ends
with the status the signal gives (``-SIGTERM``). The signal is never swallowed.

- **Where nothing is installed.** A signal that is ignored (``SIG_IGN``, as ``nohup`` leaves
  SIGHUP) stays ignored, and a handler installed outside Python (``signal.getsignal`` gives
  None) is left alone: the lens cannot chain to it. Threads other than the main one cannot
  install handlers; a lens attached there is saved by the handler a main-thread lens installed.
- **Handlers installed later.** Python keeps one handler per signal. One installed after the
  lens's that calls the previous handler, as Lightning's does, keeps the final save; one that
  does not, or that restores the handler from before the lens's, takes the save away (the lens
  does not install itself again: it never fights another handler for the signal).
- **A signal in the middle of the lens's own work** (a hook, a save, ``lens.log``) would save a
  half-updated run: the handler sees from the interrupted frames that one of the lens's entry
  points is running (`guarded`), notes the signal and returns, and that entry point acts on it
  as it returns (`deliver`, also on an exception), microseconds later.
- **Forked children** (DataLoader workers) inherit the handler but never save: the run belongs
  to the process that attached the lens; they only chain to the previous handler.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import weakref
from collections.abc import Callable
from types import CodeType, FrameType
from typing import Any, Protocol, TypeVar

SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


class Finishing(Protocol):
    def finish(self) -> None: ...


_live: weakref.WeakSet[Any] = weakref.WeakSet()
_previous: dict[int, Any] = {}  # signal -> the handler that was installed before the lens's
_installed_by: int | None = None  # pid of the process that installed the handler
deferred: list[int] = []  # signals that arrived while a guarded entry point ran (`deliver`)
_guarded: set[CodeType] = set()  # the lens's entry points (`guarded`)

F = TypeVar("F", bound=Callable[..., Any])


def guarded(function: F) -> F:
    """Mark ``function`` as an entry point of the lens: a signal arriving while it runs waits
    until it returns. The function must end with ``deliver()`` (in a ``finally``)."""
    _guarded.add(function.__code__)
    return function


def watch(lens: Finishing, writes_file: bool) -> None:
    """Count ``lens`` among the live lenses a termination signal saves; the first lens that
    writes a file, from the main thread, installs the handlers (`install`)."""
    _live.add(lens)
    if writes_file:
        install()


def forget(lens: Finishing) -> None:
    """``lens`` was closed: a signal no longer concerns it."""
    _live.discard(lens)


def install() -> bool:
    """Install the handler for SIGTERM and SIGHUP (once per process, main thread only).
    True when it is in place now (installed by this call or an earlier one)."""
    global _installed_by
    if _installed_by == os.getpid():
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    previous: dict[int, Any] = {}
    for signum in SIGNALS:
        current = signal.getsignal(signum)
        if current is None or current == signal.SIG_IGN or current is _handle:
            continue  # not ours to take: installed outside Python, or ignored on purpose
        previous[signum] = current
    for signum, current in previous.items():
        _previous[signum] = current
        signal.signal(signum, _handle)
    _installed_by = os.getpid()
    return True


def _in_guarded(frame: FrameType | None) -> bool:
    """Whether ``frame`` or a caller of it is a guarded entry point of the lens."""
    while frame is not None:
        if frame.f_code in _guarded:
            return True
        frame = frame.f_back
    return False


def _handle(signum: int, frame: FrameType | None) -> None:
    if os.getpid() == _installed_by and _in_guarded(frame):
        deferred.append(signum)  # acted on when that entry point returns (`deliver`)
        return
    _end(signum, frame)
    while deferred:  # a signal that arrived during the final saves
        _end(deferred.pop(0), frame)


def deliver() -> None:
    """Act on the signals that arrived while a guarded entry point ran. Called as each returns;
    does nothing inside another guarded call (the outermost delivers)."""
    if not deferred:
        return
    caller = sys._getframe(1)
    if _in_guarded(caller.f_back):
        return
    while deferred:
        _end(deferred.pop(0), caller)


def finish_all() -> None:
    """Final save of every live lens of this process (never raises)."""
    if os.getpid() != _installed_by:
        return  # a forked child: the run belongs to its parent
    for lens in list(_live):
        try:
            lens.finish()
        except Exception as exc:  # the signal must go on to its handler whatever happens here
            print(
                f"stepsize_lens: the final save on a signal failed ({type(exc).__name__}: {exc})",
                file=sys.stderr,
            )
        _live.discard(lens)


@guarded
def _end(signum: int, frame: FrameType | None) -> None:
    """Save every live lens, then what the signal would have done without the lens."""
    finish_all()
    previous = _previous.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
        return
    if previous == signal.SIG_IGN:
        return
    # the default action: die of the signal, so the exit status says which one it was
    signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)
    signal.signal(signum, _handle)  # only reached where the signal is blocked
