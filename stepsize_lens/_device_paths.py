"""Which code paths run: the accelerator ones on a GPU, or, when forced, on the CPU too. A leaf.

``STEPSIZE_LENS_DEVICE_PATHS=accelerator`` makes CPU tensors take the code paths written for
accelerators (few kernel launches, none that makes the host wait), so that tests and
benchmarks can count and check them on a machine without a GPU. Any other value, or none,
leaves the choice to the device.
"""

from __future__ import annotations

import os

ENV_VAR = "STEPSIZE_LENS_DEVICE_PATHS"


def forced_accelerator() -> bool:
    """Whether ``STEPSIZE_LENS_DEVICE_PATHS=accelerator`` is set (read at each call)."""
    return os.environ.get(ENV_VAR, "").strip().lower() == "accelerator"
