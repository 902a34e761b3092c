"""timm's optimizers as test oracles, loaded without importing timm itself.

``import timm`` imports torchvision, and the only torchvision wheels for torch 2.13 on the
package index are CUDA builds that fail to load beside the CPU build of torch. timm's optimizer
modules need nothing but torch, so this loads ``timm/optim/<name>.py`` (and the private modules
it imports relatively) as a package of its own, ``_timm_optim``, without running
``timm/__init__.py``. Skips the calling test when timm is not installed.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

PACKAGE = "_timm_optim"
VERSION = "1.0.31"


def timm_optim_module(name: str) -> types.ModuleType:
    """The module ``timm.optim.<name>`` (timm 1.0.31), loaded in isolation."""
    spec = importlib.util.find_spec("timm")
    if spec is None or spec.origin is None:
        pytest.skip(f"timm=={VERSION} is not installed (the test oracle)")
    folder = Path(spec.origin).parent / "optim"
    if PACKAGE not in sys.modules:
        package = types.ModuleType(PACKAGE)
        package.__path__ = [str(folder)]
        sys.modules[PACKAGE] = package
    return importlib.import_module(f"{PACKAGE}.{name}")


def timm_version() -> str:
    from importlib.metadata import version

    return version("timm")
