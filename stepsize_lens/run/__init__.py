"""The run file: its format (`format`, whose field rules are `sections`), writing it
(`writer.RunWriter`; appending saves: `chunks`), reading it (`reader.load`, within the bounds of
`archive`, verifying `checksum`) and the loaded `Run` with typed accessors (`run.Run`).

This package is the only code that reads or writes a run file's raw dict; everything above it
goes through `Run`.
"""

from __future__ import annotations

from stepsize_lens.run.format import FORMAT, VERSION, upgrade, validate
from stepsize_lens.run.reader import load
from stepsize_lens.run.run import Run
from stepsize_lens.run.storage import save_run_dict
from stepsize_lens.run.writer import RunWriter

__all__ = [
    "FORMAT",
    "VERSION",
    "Run",
    "RunWriter",
    "load",
    "save_run_dict",
    "upgrade",
    "validate",
]
