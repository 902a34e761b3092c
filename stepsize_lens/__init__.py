"""stepsize_lens: see what your optimizer does to the effective step size of your weights.

Public API, imported lazily so that ``import stepsize_lens`` and ``stepsize-lens --help`` stay
fast::

    lens = stepsize_lens.attach(model, optimizer, path="run.pt")   # record while training
    run = stepsize_lens.load("run.pt")                              # Run: validated, loaded
    stepsize_lens.AdamP, stepsize_lens.SGDP, stepsize_lens.AdamC    # optimizers

Every subpackage is reachable as an attribute on first use: ``stepsize_lens.schedules``,
``.analysis``, ``.plots``, ``.invariance``, ``.report``, ``.optim``, ``.integrations``,
``.experiments``, ``.recording``, ``.run``, ``.models``, ``.datasets``.

Four modules moved to the package that uses them keep their old names (`MOVED`):
``stepsize_lens.schedules`` is `stepsize_lens.recording.schedules`, and ``.models``,
``.datasets``, ``.demo`` are those of `stepsize_lens.experiments`. The old names work as
attributes and in import statements (``from stepsize_lens.schedules import every``): a finder
hands back the moved module itself, so there is one module object under both names.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType
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
    "errors",
    "experiments",
    "integrations",
    "invariance",
    "optim",
    "paper_test",
    "plots",
    "recording",
    "report",
    "run",
)
# old name -> the module it moved to (no file at the old path)
MOVED = {
    "datasets": "stepsize_lens.experiments.datasets",
    "demo": "stepsize_lens.experiments.demo",
    "models": "stepsize_lens.experiments.models",
    "schedules": "stepsize_lens.recording.schedules",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import stepsize_lens.<old name>`` gives the moved module (`MOVED`), the same object."""

    def __init__(self) -> None:
        self._specs: dict[str, importlib.machinery.ModuleSpec] = {}

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        package, _, name = fullname.rpartition(".")
        if package != __name__ or name not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(MOVED[spec.name.rpartition(".")[2]])
        self._specs[module.__name__] = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # the import system has just set __spec__ to the old name's: the module keeps its own
        module.__spec__ = self._specs[module.__name__]


if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
    sys.meta_path.insert(0, _MovedModules())

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
    elif name in MOVED:
        value = importlib.import_module(MOVED[name])
    else:
        raise AttributeError(f"module 'stepsize_lens' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_NAMES) | set(_SUBMODULES) | set(MOVED))
