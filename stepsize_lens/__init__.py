"""stepsize_lens: see what your optimizer does to the effective step size of your weights.

Public API (imported lazily, so ``import stepsize_lens`` and ``stepsize-lens --help`` are fast)::

    lens = stepsize_lens.attach(model, optimizer, path="run.pt")   # record while training
    run = stepsize_lens.load("run.pt")                              # Run: validated, loaded
    stepsize_lens.AdamP, stepsize_lens.SGDP                         # the paper's optimizers
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["attach", "Lens", "load", "Run", "AdamP", "SGDP", "RunFileError", "__version__"]

_LAZY = {
    "attach": ("stepsize_lens.recording.lens", "attach"),
    "Lens": ("stepsize_lens.recording.lens", "Lens"),
    "load": ("stepsize_lens.run", "load"),
    "Run": ("stepsize_lens.run", "Run"),
    "AdamP": ("stepsize_lens.optim", "AdamP"),
    "SGDP": ("stepsize_lens.optim", "SGDP"),
    "RunFileError": ("stepsize_lens.errors", "RunFileError"),
}

if TYPE_CHECKING:  # pragma: no cover
    from stepsize_lens.errors import RunFileError
    from stepsize_lens.optim import SGDP, AdamP
    from stepsize_lens.recording.lens import Lens, attach
    from stepsize_lens.run import Run, load


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module_name, attr = _LAZY[name]
        value = getattr(importlib.import_module(module_name), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'stepsize_lens' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
