"""Weights & Biases: the lens's key scalars, live, in the active wandb run.

    import wandb
    import stepsize_lens
    from stepsize_lens.integrations.wandb import WandbWriter

    wandb.init(project="my-project")
    writer = WandbWriter(per_tensor="histogram", artifact=True)
    lens = stepsize_lens.attach(model, optimizer, path="run.pt", on_record=writer)
    ...                     # train
    lens.close()            # the run file and its HTML report go to wandb as an artifact
    wandb.finish()

Each non-skipped record becomes one ``run.log`` row: the record's key scalars
(`stepsize_lens.recording.record`: per set of tensors the mean angular update, the mean weight
norm and η/‖w‖², and the share of tensors passing the paper's test) named
``<prefix><metric>/<set>`` and ``<prefix>invariant_fraction``, and the record's optimizer step
as ``<prefix>step``. A skipped record (a GradScaler skipped the step) logs nothing.

**The x-axis.** ``define_metric`` makes ``<prefix>step`` the x-axis of everything under
``<prefix>``, and the writer never passes ``step=`` to ``run.log``. wandb's own step must only
grow, and it drops (with a warning) a row logged at a step below one it has seen; a record's
step is not that step: on an accelerator a record reaches the host a step or more after the
loop logged that step, a resumed lens starts again below a fresh wandb run's rows, and loops
count batches, epochs or accumulation micro-steps. With its own x-axis metric no record is
ever dropped and the charts read in optimizer steps, the lens's unit. The Lightning and Hugging
Face wandb loggers do the same with ``trainer/global_step`` and ``train/global_step``. Each
row is committed (it advances wandb's ``_step`` by one); a loop that logs several times per
step with an explicit ``step=`` passes ``commit=False``, and the figures then ride along with
the loop's next row.

**Per tensor**, every ``every``-th logged record (the 1st, the ``every + 1``-th...):
``per_tensor="table"`` logs a ``wandb.Table`` ``<prefix>per_tensor`` with one row per tensor
(step, tensor, group, class, the paper's test at this record, then ``metrics``; NaN as
empty), ``per_tensor="histogram"`` a ``wandb.Histogram`` of each metric in ``metrics`` over the
tensors (finite values only) as ``<prefix>per_tensor/<metric>``.

**At close** (`Lens.close` calls ``on_close``, i.e. `WandbWriter.finish`), with
``artifact=True``: one artifact of type ``stepsize_lens_run`` holding the run file as
``run.pt`` and, with ``report=True``, the self-contained HTML report of ``stepsize-lens report
--format html`` as ``report.html`` (`stepsize_lens.report.report`). Close the lens before
``wandb.finish()``.

wandb is imported by this module only; ``import stepsize_lens`` never imports it.
"""

from __future__ import annotations

import io
import math
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from stepsize_lens._schema import View
from stepsize_lens.integrations import PREFIX, prefixed, writer_options
from stepsize_lens.recording.record import KEY_METRICS

try:
    import wandb
except ModuleNotFoundError as exc:  # only a missing wandb, not a broken one
    if exc.name != "wandb":
        raise
    raise ImportError(
        "stepsize_lens.integrations.wandb needs the wandb package: "
        "pip install 'stepsize-lens[wandb]'"
    ) from exc

if TYPE_CHECKING:
    from stepsize_lens.recording.lens import Lens
    from stepsize_lens.recording.record import Record

PER_TENSOR = (None, "table", "histogram")
ARTIFACT_TYPE = "stepsize_lens_run"


class WandbWriter:
    """An ``on_record`` callback that logs each record to a wandb run (module docstring).

    - ``run``: the wandb run; default the active one (``wandb.run``) when the first record
      arrives, so the writer may be made before ``wandb.init``.
    - ``prefix``: put before every name (not empty: ``<prefix>*`` gets the x-axis).
    - ``per_tensor``: None (default), ``"table"`` or ``"histogram"``; ``every``: per-tensor
      values at every ``every``-th logged record; ``metrics``: the metrics they show (default
      angular_update, weight_norm, effective_lr).
    - ``artifact``: at close, log the run file (and with ``report`` its HTML report) as an
      artifact; ``artifact_name``: its name (default ``stepsize_lens-<wandb run id>``).
    - ``commit``: passed to ``run.log`` (module docstring, "The x-axis").
    """

    def __init__(
        self,
        run: Any | None = None,
        prefix: str = PREFIX,
        per_tensor: str | None = None,
        every: int = 10,
        metrics: Iterable[str] = KEY_METRICS,
        artifact: bool = False,
        report: bool = True,
        artifact_name: str | None = None,
        commit: bool = True,
    ) -> None:
        if not prefix:
            raise ValueError("prefix must not be empty: '<prefix>*' is given the x-axis")
        self.metrics = writer_options(per_tensor, PER_TENSOR, every, metrics)
        self.run = run
        self.prefix = prefix
        self.per_tensor = per_tensor
        self.every = every
        self.artifact = bool(artifact)
        self.report = bool(report)
        self.artifact_name = artifact_name
        self.commit = bool(commit)
        self.logged = 0  # rows logged (non-skipped records)
        self.finished = False
        self._axis_defined_for: Any = None

    @property
    def step_metric(self) -> str:
        """The x-axis of everything this writer logs: ``<prefix>step``."""
        return f"{self.prefix}step"

    def _run(self) -> Any:
        run = self.run if self.run is not None else wandb.run
        if run is None:
            raise RuntimeError("no active wandb run: call wandb.init() first, or pass run=")
        if self._axis_defined_for is not run:
            run.define_metric(self.step_metric)
            run.define_metric(f"{self.prefix}*", step_metric=self.step_metric)
            self._axis_defined_for = run
        return run

    def row(self, record: Record) -> dict[str, Any]:
        """What one record logs (empty for a skipped record): the step, the key scalars and,
        at the chosen interval, the per-tensor table or histograms."""
        if record.skipped:
            return {}
        row: dict[str, Any] = {self.step_metric: int(record.step)}
        row.update(prefixed(record, self.prefix))
        if self.per_tensor is not None and self.logged % self.every == 0:
            if self.per_tensor == "table":
                row[f"{self.prefix}per_tensor"] = tensor_table(record, self.metrics)
            else:
                for metric in self.metrics:
                    values = _finite(record.metrics[metric])
                    if values:
                        row[f"{self.prefix}per_tensor/{metric}"] = wandb.Histogram(values)
        return row

    def __call__(self, record: Record) -> None:
        row = self.row(record)
        if not row:
            return
        self._run().log(row, commit=self.commit)
        self.logged += 1

    def finish(self, lens: Lens) -> Any | None:
        """Log ``lens``'s run file (and its HTML report) as one artifact, once, if
        ``artifact``; returns the logged artifact (None if not asked or done before). Call it
        after ``lens.close()``; `Lens.close` calls it itself (``on_close``)."""
        if not self.artifact or self.finished:
            return None
        self.finished = True
        run = self._run()
        with tempfile.TemporaryDirectory(prefix="stepsize_lens_wandb_") as tmp:
            run_file = _run_file(lens, Path(tmp))
            art = wandb.Artifact(
                self.artifact_name or f"stepsize_lens-{run.id}",
                type=ARTIFACT_TYPE,
                description=f"stepsize_lens run {lens.label!r}",
                metadata={"label": lens.label, "records": lens.num_records, "last_step": lens.step},
            )
            art.add_file(str(run_file), name="run.pt")  # copied to wandb's staging now
            if self.report:
                page = _html_report(run_file, Path(tmp) / "report")
                if page is not None:
                    art.add_file(str(page), name="report.html")
            return run.log_artifact(art)

    def on_close(self, lens: Lens) -> None:
        """`Lens.close` calls this after the final save: `finish`."""
        self.finish(lens)


def tensor_table(record: Record, metrics: Iterable[str] = KEY_METRICS) -> Any:
    """A ``wandb.Table`` of one record: a row per tensor with step, tensor, group, class, test
    (the paper's test at this record: channel, layer, none, or empty when untested) and each
    metric (NaN written as empty)."""
    metrics = tuple(metrics)
    columns = ["step", "tensor", "group", "class", "test", *metrics]
    values = [record.metrics[metric].tolist() for metric in metrics]
    tests = [_view_word(int(code)) for code in record.test_view.tolist()]
    data = [
        [int(record.step), name, group, cls, test, *(_cell(column[i]) for column in values)]
        for i, (name, group, cls, test) in enumerate(
            zip(record.tensor_names, record.tensor_groups, record.classes, tests)
        )
    ]
    return wandb.Table(columns=columns, data=data)


def _view_word(code: int) -> str | None:
    return None if code == View.UNTESTED else View(code).name.lower()


def _cell(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _finite(values: torch.Tensor) -> list[float]:
    return values[torch.isfinite(values)].tolist()


def _run_file(lens: Lens, folder: Path) -> Path:
    """The lens's saved run file, or (a lens kept in memory, a failed save) its records
    saved into ``folder``."""
    if lens.path is not None and Path(lens.path).is_file():
        return Path(lens.path)
    target = folder / "run.pt"
    lens.run().save(target)
    return target


def _html_report(run_file: Path, out: Path) -> Path | None:
    """``stepsize-lens report RUN --format html`` into ``out``; None (with a warning) if the
    run cannot be reported (e.g. no records yet): the artifact then holds the run file only."""
    from rich.console import Console

    from stepsize_lens.report import report

    try:
        result = report(
            run_file, out=out, format="html", formats=("png",), console=Console(file=io.StringIO())
        )
    except Exception as exc:  # the run file still goes to wandb
        warnings.warn(
            f"stepsize_lens: no HTML report for the wandb artifact ({type(exc).__name__}: "
            f"{exc}); it holds the run file only",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    return result.page
