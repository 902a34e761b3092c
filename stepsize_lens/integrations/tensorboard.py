"""Export a run to TensorBoard: scalars per param group and per scale-invariance class.

For every recorded metric m (docs/design.md §3) and every non-skipped record (at its optimizer step
and wall time):

- ``m/group_<g>``: the mean of m over the tensors of param group g;
- ``m/class_<c>``: the mean over the tensors of invariance class c (channel, layer, none; from
  `stepsize_lens.invariance.classify_tensors`, i.e. the probe verdict if the run has one, else
  the majority of the paper's test);

plus ``lr/group_<g>`` (each group's learning rate) and ``scalars/<name>`` for the user scalars
logged with ``lens.log``. Means ignore NaN (``reducer="weighted"`` weighs tensors by their
number of elements; see `stepsize_lens.analysis.frames.reduce`); undefined points are not
written. TensorBoard sections group tags by their first component, so each metric gets one
chart section with a curve per group and class.

An export is one event file whose name ends in `EXPORT_SUFFIX`. Exporting again into the same
folder replaces the event files an earlier export wrote there (TensorBoard would otherwise show
every point twice); other files, event files of a live training log included, are left alone.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stepsize_lens.errors import UserInputError

if TYPE_CHECKING:
    from stepsize_lens.run import Run


EXPORT_SUFFIX = ".stepsize_lens_export"
_EVENTS = "events.out.tfevents.*"


def exported_event_files(logdir: str | os.PathLike[str]) -> list[Path]:
    """Event files that `to_tensorboard` wrote into ``logdir`` (the next export replaces them)."""
    folder = Path(logdir)
    if not folder.is_dir():
        return []
    return sorted(
        path
        for path in folder.glob(_EVENTS)
        if path.name.endswith(EXPORT_SUFFIX) and path.is_file()
    )


def other_event_files(logdir: str | os.PathLike[str]) -> list[Path]:
    """Event files in ``logdir`` that `to_tensorboard` did not write (TensorBoard shows them
    as the same run as the export)."""
    folder = Path(logdir)
    if not folder.is_dir():
        return []
    ours = set(exported_event_files(folder))
    return sorted(path for path in folder.glob(_EVENTS) if path not in ours and path.is_file())


def _summary_writer(logdir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserInputError(
            "TensorBoard export needs the tensorboard package: "
            "pip install 'stepsize-lens[tensorboard]'"
        ) from None
    return SummaryWriter(log_dir=str(logdir), filename_suffix=EXPORT_SUFFIX)


def to_tensorboard(
    run: Run,
    logdir: str | os.PathLike[str],
    reducer: str = "mean",
    metrics: list[str] | None = None,
) -> Path:
    """Write ``run`` as TensorBoard event files into ``logdir`` (created if needed); returns it.

    Tags: ``<metric>/group_<g>``, ``<metric>/class_<c>``, ``lr/group_<g>``, ``scalars/<name>``
    (see the module docstring). ``metrics``: which metrics (default: all recorded ones).
    The event files of an earlier export into ``logdir`` (`exported_event_files`) are removed
    once the new one is complete; if writing fails, they stay and the partial file goes.
    """
    from stepsize_lens.analysis.frames import REDUCERS, reduce

    target = Path(logdir)
    if target.exists() and not target.is_dir():
        raise UserInputError(f"{target}: exists and is not a folder")
    if reducer not in REDUCERS:
        raise UserInputError(f"reducer must be one of {', '.join(REDUCERS)}, not {reducer!r}")
    names = list(run.metric_names) if metrics is None else list(metrics)
    unknown = [name for name in names if name not in run.metric_names]
    if unknown:
        raise UserInputError(f"unknown metric {unknown[0]!r}; known: {', '.join(run.metric_names)}")
    wall = {int(step): float(t) for step, t in zip(run.steps, run.times)}
    previous = exported_event_files(target)
    writer = _summary_writer(target)
    done = False
    try:
        for by, label in (("group", "group_{}"), ("class", "class_{}")):
            frame = reduce(run, by=by, metrics=names, reducer=reducer, form="wide")
            for row in frame.to_dict("records"):
                step = int(row["step"])
                for name in names:
                    _add(writer, f"{name}/{label.format(row[by])}", row[name], step, wall)
        skipped = run.skipped.astype(bool)
        lr = run.group_field("lr")
        for record, step in enumerate(run.steps):
            if skipped[record]:
                continue
            for group, value in enumerate(lr[record]):
                _add(writer, f"lr/group_{group}", value, int(step), wall)
        scalars = run.scalars
        for row in scalars.itertuples(index=False):
            _add(writer, f"scalars/{row.name}", row.value, int(row.step), wall)
        writer.flush()
        done = True
    finally:
        writer.close()
        for path in previous if done else set(exported_event_files(target)) - set(previous):
            path.unlink(missing_ok=True)
    return target


def _add(writer: Any, tag: str, value: Any, step: int, wall: dict[int, float]) -> None:
    value = float(value)
    if math.isfinite(value):
        writer.add_scalar(tag, value, global_step=step, walltime=wall.get(step))
