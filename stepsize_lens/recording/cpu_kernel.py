"""The fused CPU passes of a record: built at run time, never waited for, optional.

On the CPU the eager passes of `snapshot` cost about seven reads of every parameter per record
(norms, batched matmuls, subtraction, copy, slicing, each its own pass). ``cpu_kernel.cpp``
does a record's work in two passes, one before the step (w and g) and one after it (W and w',
Δ formed in registers, W ← w' in the same pass), with float64 accumulators and OpenMP threads
over rows. It is built on first use by `stepsize_lens._native` (a background thread and a
child process, cached in torch's extension cache; never stalls a step; one stderr line and the
eager path where it cannot be built; ``STEPSIZE_LENS_CPU_KERNEL=0`` turns it off). `start_for`
(called when a lens is attached to CPU tensors) begins loading; until it is ready, records
take the eager path.

`forced` pins the path for tests ("eager" or "kernel"; "kernel" waits for the build).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import ModuleType

import torch

from stepsize_lens._native import (
    ENV_SWITCH,
    Extension,
    Loader,
    Status,
    Unavailable,
    unavailable,
)

__all__ = [
    "DTYPES",
    "ENV_SWITCH",
    "SOURCE",
    "Loader",
    "Unavailable",
    "for_record",
    "forced",
    "load_or_build",
    "start_for",
    "status",
    "unavailable",
    "wait",
]

SOURCE = Path(__file__).with_name("cpu_kernel.cpp")
# parameter dtypes the kernel reads (widened to float64); others take the eager path
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
EXTENSION = Extension(SOURCE, "stepsize_lens_rows")


def load_or_build() -> tuple[ModuleType, str]:
    """Import the cached module, building it first in a child process if needed."""
    return EXTENSION.load_or_build()


_loader = Loader(load_or_build)
_forced: str | None = None


def start_for(tensors: Iterable[torch.Tensor]) -> None:
    """Start loading the kernel if any of ``tensors`` is a CPU tensor it can read."""
    if _forced == "eager":
        return
    if any(t.device.type == "cpu" and t.dtype in DTYPES for t in tensors):
        _loader.start()


def status() -> Status:
    return _loader.status


def wait(timeout: float | None = None) -> ModuleType | None:
    """Start if needed and wait for the kernel (benchmarks and tests; training never waits)."""
    return _loader.wait(timeout)


def for_record() -> ModuleType | None:
    """The module a record should use now: the loaded kernel, None for the eager path."""
    if _forced == "eager":
        return None
    if _forced == "kernel":
        module = _loader.wait()
        if module is None:
            raise RuntimeError(f"the CPU kernel is forced but unavailable: {status().error}")
        return module
    return _loader.ready()


@contextlib.contextmanager
def forced(mode: str | None) -> Iterator[None]:
    """Records inside this block take ``mode``'s path: "eager", "kernel" (waits for the build,
    raises if it failed) or None (whatever is ready). For tests."""
    if mode not in (None, "eager", "kernel"):
        raise ValueError(f"mode must be None, 'eager' or 'kernel', not {mode!r}")
    global _forced
    before, _forced = _forced, mode
    try:
        yield
    finally:
        _forced = before
