"""Continuing a run file: ``attach(..., resume=True)``.

Long runs get preempted and resumed from checkpoints. A resumed lens reads the run file back
(`stepsize_lens.run.load`), checks that it watches the same thing, and appends to it:

- **Where the steps continue: where training is.** From ``step=`` when given (the trainer's
  global step: the Lightning and Hugging Face callbacks pass it); else from the step count of
  this optimizer's lens still live in this process (a notebook re-attaching); else from the
  optimizer's own state, restored from the checkpoint (`optimizer_step`: ``state["step"]`` of
  the Adam family, AdamP, AdamC...). Never from the file alone: a process killed at step 150
  leaves a file whose last save may be at step 54, and continuing from there would renumber
  every later step. An optimizer that keeps no step count (SGD) with a file to continue raises
  `ResumeError` asking for ``step=`` (`step_to_resume`). Records, user scalars and events after
  that step belong to a trajectory the checkpoint discarded: they are dropped.
- **The schedule continues.** A schedule is a function of the global step, so the first steps
  after a resume are recorded exactly when an uninterrupted run would have recorded them (no
  dense stretch again).
- **No file yet: a new run.** ``resume=True`` where the path holds no file starts a new run
  there (from ``step=``, else the optimizer's own step count, else 0) and says so once on
  stderr, so one job script serves the first start and every restart.
- **Same optimizer, same tensors, or an error.** The optimizer class must be the file's, and
  the file's tensors (names and shapes, in order) must be the first tensors the lens now
  watches (tensors beyond them are added as in a growing run, with a ``params_added`` event).
  Anything else raises `ResumeError` before the file is touched: a run never mixes two models.
- **The file's rules hold.** Resuming is the explicit way to continue a file: a live lens still
  writing it makes the attach raise (one live lens per path), and the resumed lens overwrites
  only the file it read (`files.RunFile`), never one written after it.

The run records the resume as an event ``resumed`` at the step it continues from.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from stepsize_lens.errors import RunFileError, UserInputError
from stepsize_lens.run import Run, load


class ResumeError(UserInputError):
    """A run file cannot be continued by this lens (unreadable, or recorded on another optimizer
    or model). A `ValueError`, like every `UserInputError`."""


def run_to_resume(
    path: str | os.PathLike[str] | None, step: int | None, writing: bool
) -> Run | None:
    """The run to continue, or None to start a new one: there is no file at ``path`` yet (a
    first run started with ``resume=True``, as a restartable job script does; said once on
    stderr), or this rank does not write and was given ``step=``.

    ``path``: the file the run was written to (rank 0's file on other ranks). A file that exists
    but cannot be read raises `ResumeError`: a run is never silently replaced."""
    if path is None:
        raise ResumeError("attach(..., resume=True) continues a run file: give its path (path=...)")
    if not writing and step is not None:
        return None
    if not Path(path).exists():
        if writing:
            print(
                f"stepsize_lens: no run file at {path} to resume; starting a new one",
                file=sys.stderr,
            )
        return None
    try:
        return load(path)
    except RunFileError as exc:
        if not writing:
            raise ResumeError(
                f"cannot resume: {exc}; on a rank that does not write, pass step= (the global "
                "step) instead"
            ) from None
        raise ResumeError(f"cannot resume: {exc}") from None


def last_step(run: Run) -> int:
    """The step a run stopped at: its last record's step or, if later, the lens's step counter
    at its last save (``meta["last_step"]``)."""
    steps = run.steps
    recorded = int(steps.max()) if steps.size else 0
    counted = run.meta.get("last_step")
    return max(recorded, int(counted) if isinstance(counted, int) else 0)


def optimizer_step(optimizer: torch.optim.Optimizer) -> int | None:
    """The optimizer's own count of its steps: the largest ``state[p]["step"]`` over its
    parameters (a number or a one-element tensor: the Adam family, AdamP, AdamC...). None where
    no parameter's state has one (SGD, SGDP, or an optimizer that has not stepped yet)."""
    counted: int | None = None
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param)
            value = state.get("step") if isinstance(state, Mapping) else None
            if isinstance(value, torch.Tensor):
                value = value.item() if value.numel() == 1 else None
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if value == value and value >= 0:  # not NaN
                counted = int(value) if counted is None else max(counted, int(value))
    return counted


def step_to_resume(
    path: Path, optimizer: torch.optim.Optimizer, stopped: int, live_step: int | None
) -> int:
    """Where a resumed run continues when no ``step=`` was given: the step count of this
    optimizer's live lens (``live_step``), else the optimizer's own (`optimizer_step`). Raises
    `ResumeError` asking for ``step=`` when neither knows: the file's own last step
    (``stopped``) may lag behind training (a process killed after its last save)."""
    if live_step is not None:
        return live_step
    counted = optimizer_step(optimizer)
    if counted is not None and counted > 0:
        return counted
    raise ResumeError(
        f"cannot resume {path} without step=: the {type(optimizer).__name__}'s state holds no "
        "step count (SGD keeps none; others only once stepped or restored), and the "
        f"file's last step ({stopped}) may lag behind training (a process killed after its last "
        "save); pass step= (the global step training continues from)"
    )


def check_same_optimizer(run: Run, optimizer_class: str, path: Path) -> None:
    """Raise `ResumeError` unless ``run`` was recorded on an optimizer of this class."""
    recorded = (run.meta.get("optimizer") or {}).get("class")
    if recorded is not None and recorded != optimizer_class:
        raise ResumeError(
            f"cannot resume {path}: it records a {recorded}, this optimizer is a "
            f"{optimizer_class}; give this run another path, or drop resume=True"
        )


def check_same_tensors(run: Run, rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Raise `ResumeError` unless the file's tensors (names, shapes, in order) are the first of
    ``rows``, the params-table rows of the tensors the lens watches now."""
    names = run.tensor_names
    shapes = run.param_column("shape") or [None] * len(names)
    if len(rows) < len(names):
        raise ResumeError(
            f"cannot resume {path}: it records {len(names)} tensors, this optimizer has "
            f"{len(rows)} (a different model, or a tensors= selection that differs)"
        )
    for index, (name, shape) in enumerate(zip(names, shapes)):
        row = rows[index]
        now_shape = list(row["shape"])
        if row["name"] != name or (shape is not None and list(shape) != now_shape):
            raise ResumeError(
                f"cannot resume {path}: its tensor {index} is {name!r} {_shape(shape)}, "
                f"this optimizer's is {row['name']!r} {_shape(now_shape)} (a different "
                "model); give this run another path, or drop resume=True"
            )


def _shape(shape: Any) -> str:
    return "[?]" if shape is None else "[" + ", ".join(str(int(d)) for d in shape) + "]"


def resume_detail(start: int, stopped: int, dropped: int) -> str:
    """The ``resumed`` event's detail: where the run continues and what was dropped."""
    detail = f"resumed at step {start}"
    if stopped != start:
        detail += f" (the file had stopped at step {stopped})"
    if dropped:
        detail += f"; dropped {dropped} records after step {start}"
    return detail
