"""Where the lens's code differs between the CPU and accelerators, and host transfers without
waiting.

On an accelerator the lens must never make the host wait for the device: a host
synchronisation per record would stall the CPU's run-ahead (the queue of kernels the training
loop has already launched) every recorded step. So on accelerators:

- ``refine_all_rows``: tangential parts are formed for every row whose sums cancel instead of
  first asking the host which rows need it (`row_stats.tangential_sq`);
- ``elementwise_dots``: row dot products never go through a matmul, whose precision TF32
  settings may lower (`row_stats.dots`);
- ``deferred_transfer``: a record's results go to the host with one non-blocking copy into
  pinned memory and are read at a later step, once the copy has landed (`PendingCopy`), or at
  ``flush``/``latest``/``close``; host-built inputs (learning rates, has-gradient flags) go to
  the device from pinned memory without waiting (`to_device`).

All of them can be forced on the CPU: ``STEPSIZE_LENS_DEVICE_PATHS=accelerator`` in the
environment (`stepsize_lens._device_paths`, read when a lens builds its snapshot) makes every
lens take the accelerator paths, so launch counts and the absence of host waits can be checked
on any machine (``benchmarks/gpu_check.py --dry-run``, the tests); `forced_paths` forces any
combination for the lenses built inside a block (the test suite runs each branch and checks it
gives the same metrics as the CPU path).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from stepsize_lens._device_paths import forced_accelerator


@dataclass(frozen=True)
class DevicePaths:
    """Which of the accelerator code paths to take (all False: the CPU path)."""

    refine_all_rows: bool = False
    elementwise_dots: bool = False
    deferred_transfer: bool = False


CPU_PATHS = DevicePaths()
ACCELERATOR_PATHS = DevicePaths(True, True, True)
_forced: DevicePaths | None = None


def paths_for(device: torch.device) -> DevicePaths:
    """The paths for tensors on ``device``: the forced ones inside `forced_paths`, else the
    accelerator paths on an accelerator or where ``STEPSIZE_LENS_DEVICE_PATHS=accelerator``."""
    if _forced is not None:
        return _forced
    if forced_accelerator():
        return ACCELERATOR_PATHS
    return CPU_PATHS if device.type == "cpu" else ACCELERATOR_PATHS


@contextlib.contextmanager
def forced_paths(paths: DevicePaths) -> Iterator[None]:
    """Use ``paths`` for every lens whose snapshot is built inside this block (tests)."""
    global _forced
    before, _forced = _forced, paths
    try:
        yield
    finally:
        _forced = before


def to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor on ``device`` without making the host wait (pinned, non-blocking)."""
    if device.type == "cpu":
        return host
    if torch.cuda.is_available():
        host = host.pin_memory()
    return host.to(device, non_blocking=True)


class PendingCopy:
    """A device tensor on its way to the host: `ready` asks without waiting, `result` waits."""

    def __init__(self, value: torch.Tensor, deferred: bool) -> None:
        self._event = None
        if value.device.type == "cpu":
            # the CPU has nothing to wait for; deferred (forced) keeps a private copy, as the
            # device path's host buffer would be
            self._host = value.clone() if deferred else value
            return
        if value.device.type != "cuda":  # pragma: no cover - other accelerators: wait here
            self._host = value.cpu()
            return
        self._host = value.to("cpu", non_blocking=True)  # lands in pinned memory
        self._event = torch.cuda.Event()
        self._event.record()

    def ready(self) -> bool:
        return self._event is None or bool(self._event.query())

    def result(self) -> torch.Tensor:
        if self._event is not None and not self._event.query():
            self._event.synchronize()
        return self._host
