"""The options of a lens as one object: `LensOptions`.

`attach` and `Lens` keep their parameters explicit (keywords, ``help()``, IDEs); each gathers
them once into a `LensOptions` (`options_from`), which is what the lens builds from and what
`attach` hands to it. A test keeps the fields, `attach`'s parameters and `Lens`'s in step
(names, order and defaults). What each option does is told in full in `attach`'s docstring.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from stepsize_lens._schema import DEFAULT_DELTA
from stepsize_lens.recording.files import DEFAULT_PATH

if TYPE_CHECKING:
    from stepsize_lens.recording.record import Record
    from stepsize_lens.recording.selection import Selection


@dataclass(frozen=True)
class LensOptions:
    """Everything `attach` and `Lens` take besides the model and the optimizer, with the same
    defaults."""

    path: str | os.PathLike[str] | None = DEFAULT_PATH
    """The run file. Default: a new ``runs/<date-time>_<label>.pt``; None: in memory only."""

    schedule: Callable[[int], bool] | int | None = None
    """Which steps to record: ``step -> bool``, every n steps, or None for the default."""

    label: str | None = None
    """The run's label (default: the optimizer's class name; a resumed run's own)."""

    delta: float = DEFAULT_DELTA
    """The paper test's δ."""

    flush_every: float | None = 30.0
    """Seconds between saves (None: only at close)."""

    scaler: Any | None = None
    """A ``torch.amp.GradScaler`` whose skipped steps to record."""

    write: bool | None = None
    """Whether this process writes the file (default: rank 0 only)."""

    probe_inputs: Any | None = None
    """Example inputs for the functional scale-invariance probe, run once at attach."""

    tensors: Selection | None = None
    """Which tensors to watch (default all; `selection`)."""

    on_record: Callable[[Record], Any] | None = None
    """A live feed: called with each `record.Record` once it is on the host."""

    resume: bool = False
    """Continue the run file at ``path``."""

    step: int | None = None
    """The optimizer steps taken before this lens (the trainer's global step)."""

    overwrite: bool = False
    """Replace the file at ``path`` with a new run."""


OPTION_NAMES: tuple[str, ...] = tuple(field.name for field in fields(LensOptions))


def options_from(arguments: Mapping[str, Any]) -> LensOptions:
    """The `LensOptions` among a call's arguments (``locals()`` at the top of `attach` or
    ``Lens.__init__``), taken by name; the other arguments are left out."""
    return LensOptions(**{name: arguments[name] for name in OPTION_NAMES})
