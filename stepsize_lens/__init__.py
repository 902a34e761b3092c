"""stepsize_lens: see what your optimizer does to the effective step size of your weights.

Public API, imported lazily so that ``import stepsize_lens`` and ``stepsize-lens --help`` stay
fast::

    lens = stepsize_lens.attach(model, optimizer, path="run.pt")   # record while training
    run = stepsize_lens.load("run.pt")                              # Run: validated, loaded
    stepsize_lens.AdamP, stepsize_lens.SGDP, stepsize_lens.AdamC    # optimizers

Every subpackage is reachable as an attribute on first use: ``stepsize_lens.schedules``,
``.analysis``, ``.plots``, ``.invariance``, ``.report``, ``.optim``, ``.integrations``,
``.experiments``, ``.recording``, ``.run``, ``.models``, ``.datasets``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from stepsize_lens._version import __version__

__all__ = ["attach", "Lens", "load", "Run", "AdamC", "AdamP", "SGDP", "RunFileError", "__version__"]

_LAZY_NAMES = {
    "attach": "stepsize_lens.recording.lens",
    "Lens": "stepsize_lens.recording.lens",
    "load": "stepsize_lens.run",
    "Run": "stepsize_lens.run",
    "AdamC": "stepsize_lens.optim",
    "AdamP": "stepsize_lens.optim",
    "SGDP": "stepsize_lens.optim",
    "RunFileError": "stepsize_lens.errors",
}
_SUBMODULES = (
    "analysis",
    "datasets",
    "demo",
    "errors",
    "experiments",
    "integrations",
    "invariance",
    "models",
    "optim",
    "paper_test",
    "plots",
    "recording",
    "report",
    "run",
    "schedules",
)

if TYPE_CHECKING:  # pragma: no cover
    from stepsize_lens.errors import RunFileError
    from stepsize_lens.optim import SGDP, AdamC, AdamP
    from stepsize_lens.recording.lens import Lens, attach
    from stepsize_lens.run import Run, load


def __getattr__(name: str) -> Any:
    if name in _LAZY_NAMES:
        value = getattr(importlib.import_module(_LAZY_NAMES[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module 'stepsize_lens' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_NAMES) | set(_SUBMODULES))
