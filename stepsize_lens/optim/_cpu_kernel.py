"""AdamP and SGDP's fused CPU step: a C++ kernel built at run time, never waited for.

``cpu_kernel.cpp`` steps every tensor of a parameter group (one device, one dtype) in one
call and two passes: the optimizer's state update with the test's four row sums, then the
projection and the write of w (docs/design.md §4). It is built by `stepsize_lens._native`
in the background from the first ``fused=True`` optimizer on (a child process; torch's
extension cache keeps it, so later processes import it in well under a second). Until it is
loaded, and where it cannot be built (no C++ compiler or ``ninja``; one line on stderr),
``fused=True`` steps take the multi-tensor path. ``STEPSIZE_LENS_CPU_KERNEL=0`` turns it off.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from stepsize_lens._native import FLAGS, Extension, Loader, Status

SOURCE = Path(__file__).with_name("cpu_kernel.cpp")
# no errno from sqrt: its loops vectorize (v >= 0 always)
EXTENSION = Extension(
    SOURCE, "stepsize_lens_optim", (*FLAGS, "-fno-math-errno", "-ffp-contract=off")
)

_loader = Loader(
    EXTENSION.load_or_build,
    what="the fused AdamP/SGDP CPU kernel",
    fallback="fused=True steps take the multi-tensor path",
)


def start() -> None:
    """Begin loading the kernel in the background (once); returns at once."""
    _loader.start()


def ready() -> ModuleType | None:
    """The loaded module, or None while it loads or where it failed (never waits)."""
    return _loader.ready()


def wait(timeout: float | None = None) -> ModuleType | None:
    """Start if needed and wait up to ``timeout`` seconds for the module (None: until settled)."""
    return _loader.wait(timeout)


def status() -> Status:
    return _loader.status
