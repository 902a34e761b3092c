"""TensorBoard: a live writer for the training loop, and an export of a finished run.

**Live** (`live_writer`, `TensorBoardWriter`): an ``on_record`` callback,

    writer = live_writer("tb/run1")     # or live_writer(SummaryWriter(...)), a loop's own
    lens = stepsize_lens.attach(model, optimizer, path="run.pt", on_record=writer)

writes each non-skipped record's key scalars (`stepsize_lens.recording.record`: per set of
tensors the mean angular update, the mean weight norm and η/‖w‖², and the share of tensors
passing the paper's test) as ``<prefix><metric>/<set>`` and ``<prefix>invariant_fraction`` at
the record's optimizer step and wall time (TensorBoard has no rule on step order, so the
record's own step is the x-axis). Opt-in per tensor, every ``every``-th written record:
``per_tensor="scalars"`` writes ``<prefix>tensors/<metric>/<tensor name>``,
``per_tensor="histogram"`` a histogram ``<prefix>tensors/<metric>`` over the tensors (finite
values). Flushing: at most ``flush_secs`` (10 s) after a record, and at close, so a board
follows the run without a file write per record. `Lens.close` closes the writer
(``on_close``); a ``SummaryWriter`` passed in is flushed, not closed (it is the loop's).

**Export** (`to_tensorboard`): a finished run as scalars per param group and per
scale-invariance class. For every recorded metric m (docs/design.md §3) and every non-skipped
record (at its optimizer step and wall time):

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
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stepsize_lens._files import output_folder
from stepsize_lens.errors import UserInputError
from stepsize_lens.integrations import PREFIX, prefixed, writer_options

if TYPE_CHECKING:
    from stepsize_lens.recording.lens import Lens
    from stepsize_lens.recording.record import Record
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
    once the new one is complete; if writing fails, they stay and the partial file goes. The
    event file is written in a private folder inside ``logdir`` and renamed into place, so a
    symlink planted at its name is replaced, never followed.
    """
    from stepsize_lens.analysis.sets import REDUCERS

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
    # written in a private folder (mkdtemp: 0700, a fresh name), then renamed into place, so
    # a symlink planted at the event file's name is replaced, never followed
    staging = Path(tempfile.mkdtemp(prefix=".stepsize_lens_export.", dir=output_folder(target)))
    try:
        writer = _summary_writer(staging)
        try:
            _write_export(writer, run, names, reducer, wall)
            writer.flush()
        finally:
            writer.close()
        moved = []
        for path in sorted(staging.iterdir()):
            os.replace(path, target / path.name)
            moved.append(target / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for path in previous:
        if path not in moved:
            path.unlink(missing_ok=True)
    return target


def _write_export(
    writer: Any, run: Run, names: list[str], reducer: str, wall: dict[int, float]
) -> None:
    from stepsize_lens.analysis.frames import reduce

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
    for row in run.scalars.itertuples(index=False):
        _add(writer, f"scalars/{row.name}", row.value, int(row.step), wall)


def _add(writer: Any, tag: str, value: Any, step: int, wall: dict[int, float]) -> None:
    value = float(value)
    if math.isfinite(value):
        writer.add_scalar(tag, value, global_step=step, walltime=wall.get(step))


PER_TENSOR = (None, "scalars", "histogram")


class TensorBoardWriter:
    """An ``on_record`` callback writing each record to TensorBoard (module docstring, "Live").

    - ``target``: a log folder (a ``SummaryWriter`` of this writer's own is made there, and
      closed by `close`) or a ``SummaryWriter`` (the loop's: flushed, never closed, here).
    - ``prefix``: put before every tag (default ``stepsize_lens/``, as the framework
      callbacks' key scalars).
    - ``per_tensor``: None (default), ``"scalars"`` or ``"histogram"``; ``every``: per-tensor
      values at every ``every``-th written record; ``metrics``: the metrics they show
      (default angular_update, weight_norm, effective_lr).
    - ``flush_secs``: the longest a written record waits before it reaches the file.
    """

    def __init__(
        self,
        target: str | os.PathLike[str] | Any,
        prefix: str = PREFIX,
        per_tensor: str | None = None,
        every: int = 10,
        metrics: Iterable[str] | None = None,
        flush_secs: float = 10.0,
    ) -> None:
        self.metrics = writer_options(per_tensor, PER_TENSOR, every, metrics)
        self.prefix = prefix
        self.per_tensor = per_tensor
        self.every = every
        self.flush_secs = float(flush_secs)
        if isinstance(target, (str, os.PathLike)):
            self.writer = _summary_writer_class()(log_dir=str(target), flush_secs=flush_secs)
            self.owns_writer = True
        elif callable(getattr(target, "add_scalar", None)):
            self.writer = target
            self.owns_writer = False
        else:
            raise TypeError(
                f"expected a log folder or a SummaryWriter, got {type(target).__name__}"
            )
        self.written = 0  # non-skipped records written
        self.closed = False
        self._last_flush = time.monotonic()

    @property
    def log_dir(self) -> str:
        """The folder the event files go to."""
        return str(self.writer.get_logdir())

    def __call__(self, record: Record) -> None:
        if record.skipped or self.closed:
            return
        step, wall = int(record.step), float(record.time)
        for tag, value in prefixed(record, self.prefix).items():
            self.writer.add_scalar(tag, value, global_step=step, walltime=wall)
        if self.per_tensor is not None and self.written % self.every == 0:
            self._per_tensor(record, step, wall)
        self.written += 1
        if time.monotonic() - self._last_flush >= self.flush_secs:
            self.flush()

    def _per_tensor(self, record: Record, step: int, wall: float) -> None:
        for metric in self.metrics:
            values = record.metrics[metric].tolist()
            tag = f"{self.prefix}tensors/{metric}"
            if self.per_tensor == "histogram":
                finite = [value for value in values if math.isfinite(value)]
                if finite:
                    import numpy as np

                    self.writer.add_histogram(
                        tag, np.asarray(finite), global_step=step, walltime=wall
                    )
                continue
            for name, value in zip(record.tensor_names, values):
                if math.isfinite(value):
                    self.writer.add_scalar(f"{tag}/{name}", value, global_step=step, walltime=wall)

    def flush(self) -> None:
        """Write what is pending to the event file now."""
        self.writer.flush()
        self._last_flush = time.monotonic()

    def close(self) -> None:
        """Flush; close the ``SummaryWriter`` if this writer made it. Safe to call twice."""
        if self.closed:
            return
        self.closed = True
        if self.owns_writer:
            self.writer.close()
        else:
            self.writer.flush()

    def on_close(self, lens: Lens) -> None:
        """`Lens.close` calls this after the final save: `close`."""
        self.close()

    def __enter__(self) -> TensorBoardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def live_writer(
    target: str | os.PathLike[str] | Any,
    prefix: str = PREFIX,
    per_tensor: str | None = None,
    every: int = 10,
    metrics: Iterable[str] | None = None,
    flush_secs: float = 10.0,
) -> TensorBoardWriter:
    """A `TensorBoardWriter` for ``attach(..., on_record=...)``: a plain loop's live
    TensorBoard log of the key scalars (and, opt-in, per-tensor values). ``target``: a log
    folder or a ``SummaryWriter``."""
    return TensorBoardWriter(
        target,
        prefix=prefix,
        per_tensor=per_tensor,
        every=every,
        metrics=metrics,
        flush_secs=flush_secs,
    )


def _summary_writer_class() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ImportError(
            "the TensorBoard writer needs the tensorboard package: "
            "pip install 'stepsize-lens[tensorboard]'"
        ) from None
    return SummaryWriter
