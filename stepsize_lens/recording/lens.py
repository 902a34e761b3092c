"""The lens: optimizer step hooks that record the metrics of docs/design.md §3 into a run file.

``attach(model, optimizer)`` registers ``Optimizer.register_step_pre_hook`` and
``register_step_post_hook`` on the optimizer, so it works for every ``torch.optim.Optimizer``
subclass with no change to the training loop. On a step the schedule selects, the pre hook
keeps a copy of w and reduces g to its row sums (`snapshot.Snapshot`; when ``step`` gets a
closure, as with LBFGS or Lightning, g is computed inside ``step`` and read after it); the post
hook forms Δ = w' − w tile by tile and reduces it too, `metrics.all_metrics` turns the row sums
into every metric, and one small [metrics, tensors] block goes to the host. Steps the schedule
skips cost one Python call.

The `Lens` orchestrates; each job lives in its own module: `model_names` (tensor names through
compile/DDP/FSDP wrappers), `selection` (``tensors=``), `tracked` (which tensors, their
params-table rows), `snapshot` and `row_stats` (the one copy of w, the passes), `metrics` (the
math), `views` (the paper's test, the applied view), `group_fields` (param-group
hyperparameters), `scaler` (GradScaler skips), `hooks` (closures, sparse gradients),
`distributed` (sharded parameters), `device` (accelerator paths, transfers without waiting),
`files` (where the run goes and how it is never lost), `pending` (records on their way from the
device), `record` (the `Record` a live logger gets: ``on_record=``, `Lens.latest`), `resume`
(continuing a run file: ``resume=True``).

Observing never changes training: the hooks only read parameters and gradients (they run under
``torch.no_grad`` and write only into the lens's own buffers).

Lifetime: the lens holds its optimizer weakly, and the optimizer's hooks hold the lens, so a
lens lives exactly as long as it is attached or referenced. Its final save runs through
`weakref.finalize` (at close, when it is collected, at interpreter exit, or on SIGTERM/SIGHUP:
`signals`) over the records alone, never over the lens, the model, the optimizer or the
snapshot buffers. Attaching a new lens to an optimizer closes the one it had. A path holding a
file is continued only with ``resume=True`` and replaced only with ``overwrite=True``
(`files`); a second process on the same path raises (`lock`).
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from stepsize_lens._schema import DEFAULT_DELTA, METRICS, View
from stepsize_lens._version import __version__
from stepsize_lens.model_names import model_class_name, parameter_names, unwrap_model
from stepsize_lens.recording import schedules, signals
from stepsize_lens.recording.device import PendingCopy, paths_for, to_device
from stepsize_lens.recording.distributed import ShardedRows, process_rank, rank_path, sharded_rows
from stepsize_lens.recording.files import (
    DEFAULT_PATH,
    RunFile,
    check_replace,
    default_path,
    describe_lens,
    ensure_free,
    live_writer,
)
from stepsize_lens.recording.group_fields import (
    as_float,
    group_values,
    split_group_values,
    tensor_lrs,
)
from stepsize_lens.recording.hooks import closure_of, dense_grad
from stepsize_lens.recording.metrics import all_metrics
from stepsize_lens.recording.options import LensOptions, options_from
from stepsize_lens.recording.pending import PendingRecord, Records
from stepsize_lens.recording.record import Feed, Record
from stepsize_lens.recording.resume import (
    ResumeError,
    check_same_optimizer,
    check_same_tensors,
    last_step,
    optimizer_step,
    resume_detail,
    run_to_resume,
    step_to_resume,
)
from stepsize_lens.recording.scaler import ScalerWatch
from stepsize_lens.recording.selection import Selection, matcher
from stepsize_lens.recording.snapshot import Snapshot
from stepsize_lens.recording.tracked import TrackedParams
from stepsize_lens.recording.views import ShapeTable, applied_views, live_test_views
from stepsize_lens.run import RunWriter

if TYPE_CHECKING:
    from stepsize_lens.run import Run


# optimizer -> its lens (weakly on both sides)
_lens_of: weakref.WeakKeyDictionary[torch.optim.Optimizer, weakref.ref[Lens]] = (
    weakref.WeakKeyDictionary()
)


class _Where(NamedTuple):
    """Where a lens's run goes: ``path`` as given (or the default one), before the rank's
    suffix; this process's rank and the world size; whether to announce the default path."""

    path: str | os.PathLike[str] | None
    rank: int
    world_size: int
    announce: bool


def _check_arguments(optimizer: Any, step: int | None) -> None:
    """An optimizer to watch and, if given, a whole number of steps taken before."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"attach needs a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
        raise ValueError(f"step must be a whole number of steps >= 0, not {step!r}")


def _check_path_rules(options: LensOptions) -> None:
    """``resume`` needs a path, and excludes ``overwrite``."""
    if options.resume and (options.path is DEFAULT_PATH or options.path is None):
        raise ResumeError("attach(..., resume=True) continues a run file: give its path (path=...)")
    if options.resume and options.overwrite:
        raise ValueError(
            "attach: resume=True continues the run at path, overwrite=True replaces it; "
            "pass one of them"
        )


class Lens:
    """Records weight norms, update norms and effective step sizes of an optimizer's tensors.

    Use `attach` to create one. ``lens.step`` counts optimizer steps (and steps a GradScaler
    skipped) from 1 (from ``step + 1``, or where training is for a resumed run).
    ``lens.log(loss=...)`` stores user scalars; ``lens.latest()`` is the last record;
    ``lens.flush()`` saves now; ``lens.close()`` detaches, saves a final time (also when the
    lens is collected, at interpreter exit and on SIGTERM/SIGHUP) and then calls the
    ``on_record`` callback's ``on_close(lens)``, if any.
    """

    @signals.guarded
    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        model: torch.nn.Module | None = None,
        path: str | os.PathLike[str] | None = DEFAULT_PATH,
        schedule: schedules.Schedule | int | None = None,
        label: str | None = None,
        delta: float = DEFAULT_DELTA,
        flush_every: float | None = 30.0,
        scaler: Any | None = None,
        write: bool | None = None,
        probe_inputs: Any | None = None,
        tensors: Selection | None = None,
        on_record: Callable[[Record], Any] | None = None,
        resume: bool = False,
        step: int | None = None,
        overwrite: bool = False,
    ) -> None:
        """Prefer `attach`, which takes the same parameters (documented there): the optimizer,
        the model and the options of `options.LensOptions`: ``path``, ``schedule``, ``label``,
        ``delta``, ``flush_every``, ``scaler``, ``write``, ``probe_inputs``, ``tensors``,
        ``on_record``, ``resume``, ``step``, ``overwrite``."""
        try:
            self._start(optimizer, model, options_from(locals()))
        finally:
            signals.deliver()

    @classmethod
    @signals.guarded
    def _from_options(
        cls, optimizer: torch.optim.Optimizer, model: torch.nn.Module | None, options: LensOptions
    ) -> Lens:
        """A lens built from ``options`` as ``Lens(optimizer, model, **options)`` builds it
        (how `attach` hands its options over)."""
        try:
            lens = cls.__new__(cls)
            lens._start(optimizer, model, options)
            return lens
        finally:
            signals.deliver()

    def _start(
        self, optimizer: torch.optim.Optimizer, model: torch.nn.Module | None, options: LensOptions
    ) -> None:
        """Attach, step by step: check the arguments, take the settings, check the path rules,
        place the run, open (or resume) the run file, start the writer with the run's metadata,
        reset the per-step state, add the tensors' rows, probe (``probe_inputs``), install the
        hooks and the signal handlers."""
        _check_arguments(optimizer, options.step)
        self._take_settings(optimizer, options)
        _check_path_rules(options)
        where = self._place_run(optimizer, options)
        first_rows, resumed, stopped = self._open_run_file(optimizer, model, where, options)
        self._start_writer(resumed, self._meta(optimizer, model, where))
        self._reset_step_state(optimizer, options.on_record)
        self._add_first_params(optimizer, first_rows, resumed, stopped)
        if options.probe_inputs is not None:
            self._store_probe(model, options.probe_inputs)
        self._install(optimizer, options.scaler)
        if where.announce:
            print(f"stepsize_lens: recording {self.label!r} to {self.path}", file=sys.stderr)

    def _take_settings(self, optimizer: torch.optim.Optimizer, options: LensOptions) -> None:
        """The optimizer (held weakly), the schedule, δ, the flush period, the starting step and
        whether this process writes."""
        self._optimizer = weakref.ref(optimizer)
        self._optimizer_class = type(optimizer).__name__
        self.schedule = schedules.resolve(options.schedule)
        self.delta = float(options.delta)
        self.flush_every = options.flush_every
        self.step = 0 if options.step is None else options.step
        self.writing = (process_rank()[0] == 0) if options.write is None else bool(options.write)

    def _place_run(self, optimizer: torch.optim.Optimizer, options: LensOptions) -> _Where:
        """The label and where the run goes: this rank's file (`distributed.rank_path`), the
        default path when none was given (announced once it is taken)."""
        rank, world_size = process_rank()
        self._label_given = bool(options.label)
        self.label = options.label or type(optimizer).__name__
        path = options.path
        announce = path is DEFAULT_PATH and self.writing
        if path is DEFAULT_PATH:
            path = default_path(self.label) if self.writing else None
        self.path = rank_path(path, rank, world_size)
        self._closed = False
        self._file: RunFile | None = None
        return _Where(path, rank, world_size, announce)

    def _open_run_file(
        self,
        optimizer: torch.optim.Optimizer,
        model: torch.nn.Module | None,
        where: _Where,
        options: LensOptions,
    ) -> tuple[list[dict[str, Any]], Run | None, int]:
        """Claim the run file (the lock, the overwrite rules: `_take_path`), then what the lens
        watches and the run it resumes (`_prepare`); the file is let go if that fails."""
        live = _live_lens_of(optimizer)
        live_step = live.step if live is not None and options.resume else None
        if self.writing and self.path is not None:  # fail before replacing anything
            self._file = self._take_path(
                optimizer, Path(self.path), options.resume, options.overwrite
            )
        try:
            return self._prepare(
                optimizer,
                model,
                where.path,
                options.tensors,
                options.resume,
                options.step,
                live_step,
            )
        except BaseException:
            if self._file is not None:
                self._file.release()
            raise

    def _meta(
        self, optimizer: torch.optim.Optimizer, model: torch.nn.Module | None, where: _Where
    ) -> dict[str, Any]:
        """The run's metadata: label, optimizer, model class, schedule, δ, rank, metrics."""
        return {
            "label": self.label,
            "optimizer": {
                "class": type(optimizer).__name__,
                "module": type(optimizer).__module__,
                "defaults": dict(optimizer.defaults),
            },
            "model_class": model_class_name(model),
            "schedule": schedules.describe(self.schedule),
            "delta": self.delta,
            "rank": where.rank,
            "world_size": where.world_size,
            "metrics": list(METRICS),
        }

    def _start_writer(self, resumed: Run | None, meta: dict[str, Any]) -> None:
        """The run writer (continuing ``resumed`` up to the starting step, else a new run), the
        records on their way to it, and the final save (`weakref.finalize` over the records)."""
        target = self.path if self.writing else None
        if resumed is not None:
            self.writer = RunWriter.from_run(resumed, target, until_step=self.step)
            self.writer.meta.update(meta)
            self.writer.meta["closed"] = False
            self.writer.meta["stepsize_lens_version"] = __version__
            self.writer.meta["torch_version"] = str(torch.__version__)
        else:
            self.writer = RunWriter(target, meta)
        self.writer.meta["last_step"] = self.step
        self._records = Records(self.writer, self._file, self.delta)
        self._finalizer = weakref.finalize(self, self._records)

    def _reset_step_state(
        self, optimizer: torch.optim.Optimizer, on_record: Callable[[Record], Any] | None
    ) -> None:
        """The live feed and the state the hooks keep between and across steps."""
        self._feed = (
            Feed(on_record, describe_lens(optimizer, None, self.label))
            if on_record is not None
            else None
        )
        self._snapshot: Snapshot | None = None
        self._shards: ShardedRows | None = None
        self._device_inputs: dict[str, torch.Tensor] = {}
        self._shapes: ShapeTable | None = None
        self._has_grad: list[bool] = []
        self._armed = False
        self._grads_after_step = False
        self._post_calls = 0
        self._last_flush = time.monotonic()
        self._flushed_records = -1

    def _add_first_params(
        self,
        optimizer: torch.optim.Optimizer,
        first_rows: list[dict[str, Any]],
        resumed: Run | None,
        stopped: int,
    ) -> None:
        """The params-table rows of the tensors tracked at attach; a resumed run keeps its own
        rows (with this run's ``requires_grad``), gains the new ones and says it resumed."""
        if resumed is not None:
            known = self.writer.num_tensors
            self.writer.set_param_column(
                "requires_grad", [row.get("requires_grad") for row in first_rows[:known]]
            )
            self.writer.add_event(
                self.step, "resumed", resume_detail(self.step, stopped, self.writer.dropped)
            )
            first_rows = first_rows[known:]
        self._add_params(first_rows, len(optimizer.param_groups), event=resumed is not None)

    def _install(self, optimizer: torch.optim.Optimizer, scaler: Any | None) -> None:
        """The step hooks, the GradScaler watch, this optimizer's lens, the signal handlers."""
        self._handles = [
            optimizer.register_step_pre_hook(self._pre_step),
            optimizer.register_step_post_hook(self._post_step),
        ]
        self._scaler = (
            ScalerWatch(scaler, optimizer, self._steps_seen, self._record_skip)
            if scaler is not None
            else None
        )
        _lens_of[optimizer] = weakref.ref(self)
        signals.watch(self, writes_file=self._file is not None)

    def _take_path(
        self, optimizer: torch.optim.Optimizer, path: Path, resume: bool, overwrite: bool
    ) -> RunFile:
        """Claim ``path`` for this lens (`files`): a live lens of this process writing it is
        closed first when ``resume`` or ``overwrite`` says what to do with its run, else the
        attach raises; another process's lock raises; a file there needs one of the two."""
        holder = live_writer(path)
        if holder is not None:
            lens = holder.owner() if holder.owner is not None else None
            if not (resume or overwrite) or lens is None:
                ensure_free(path)  # raises, naming the live lens and both options
            else:
                warnings.warn(
                    f"stepsize_lens: closed {holder.describe} before attaching the new lens "
                    f"({'resume' if resume else 'overwrite'}=True)",
                    RuntimeWarning,
                    stacklevel=6,  # the attach call: _open_run_file, _start, attach
                )
                lens.close()
        file = RunFile(path, describe_lens(optimizer, path, self.label))
        file.claim()  # the OS lock: raises if another process writes this path
        try:
            check_replace(path, resume, overwrite)
        except BaseException:
            file.release()
            raise
        file.owner = weakref.ref(self)
        return file

    def _prepare(
        self,
        optimizer: torch.optim.Optimizer,
        model: torch.nn.Module | None,
        path: Any,
        tensors: Selection | None,
        resume: bool,
        step: int | None,
        live_step: int | None,
    ) -> tuple[list[dict[str, Any]], Run | None, int]:
        """What the lens watches and the run it continues (checked before anything is
        replaced); sets the starting step. Returns the tensors' rows, the run and its last
        step."""
        self._replace_lens_of(optimizer)
        self._tracked = TrackedParams(parameter_names(model), matcher(tensors))
        first_rows = self._tracked.sync(optimizer.param_groups) or []
        self._note_left_out()
        resumed, stopped = None, 0
        if resume:
            rank, world_size = process_rank()
            resumed = run_to_resume(
                self.path if self.writing else rank_path(path, 0, world_size), step, self.writing
            )
        where = Path(self.path or path) if resume else Path()
        if resumed is not None:
            check_same_optimizer(resumed, self._optimizer_class, where)
            check_same_tensors(resumed, first_rows, where)
            stopped = last_step(resumed)
            self.step = (
                step_to_resume(where, optimizer, stopped, live_step) if step is None else step
            )
            self.label = self.label if self._label_given else resumed.label
            if self._file is not None:
                self._file.describe = describe_lens(optimizer, where, self.label)
        elif resume and step is None:  # a new run: from where the optimizer is, if it knows
            self.step = live_step if live_step is not None else optimizer_step(optimizer) or 0
        return first_rows, resumed, stopped

    def _note_left_out(self) -> None:
        """Say once which complex tensors the lens leaves out (`tracked.TrackedParams`)."""
        names = self._tracked.take_complex()
        if names:
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            print(
                f"stepsize_lens: not recording {len(names)} complex tensor(s) ({shown}): the "
                "lens records real tensors only",
                file=sys.stderr,
            )

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        """The optimizer this lens watches (None once it no longer exists)."""
        return self._optimizer()

    @property
    def _params(self) -> list[torch.Tensor]:
        return self._tracked.params

    @staticmethod
    def _replace_lens_of(optimizer: torch.optim.Optimizer) -> None:
        """Close the lens this optimizer already has (saying so once)."""
        ref = _lens_of.get(optimizer)
        previous = ref() if ref is not None else None
        if previous is None or previous._closed:
            return
        where = f" (writing {previous.path})" if previous.path is not None else ""
        warnings.warn(
            f"stepsize_lens: this {type(optimizer).__name__} already had a lens "
            f"{previous.label!r}{where}; closed it before attaching the new one",
            RuntimeWarning,
            stacklevel=7,  # the attach call: _prepare, _open_run_file, _start, attach
        )
        previous.close()

    # -- parameter bookkeeping ----------------------------------------------------------------
    def _sync_params(self, optimizer: torch.optim.Optimizer) -> bool:
        """Track params added since last time (e.g. `add_param_group`); True if anything changed."""
        new_rows = self._tracked.sync(optimizer.param_groups)
        if new_rows is None:
            return False
        self._note_left_out()
        self._add_params(new_rows, len(optimizer.param_groups), event=self.step > 0)
        return True

    def _add_params(self, new_rows: list[dict[str, Any]], num_groups: int, event: bool) -> None:
        """Give newly tracked tensors their params-table rows (``event``: say so in the run's
        events); the snapshot is rebuilt."""
        if new_rows:
            self.writer.add_params(new_rows)
            if event:
                self.writer.add_event(self.step, "params_added", f"{len(new_rows)} tensors")
        self.writer.set_num_groups(num_groups)
        self._snapshot = None  # rebuilt lazily at the next recorded step
        self._shapes = None
        self._device_inputs = {}

    def _store_probe(self, model: torch.nn.Module | None, probe_inputs: Any) -> None:
        """Run the functional scale-invariance probe once and store its verdicts per tensor."""
        from stepsize_lens.invariance import probe, probe_param_columns

        if model is None:
            raise TypeError("attach(..., probe_inputs=...) needs the model")
        model = unwrap_model(model)
        result = probe(model, probe_inputs)
        for column, values in probe_param_columns(model, self._params, result).items():
            self.writer.set_param_column(column, values)
        self.writer.meta["probe"] = dict(result.settings)

    def _local(self, tensors: list[Any]) -> list[Any]:
        """Local shards of DTensors (FSDP2); the tensors themselves in a single process."""
        return tensors if self._shards is None else self._shards.local(tensors)

    def _device_input(self, name: str, host: torch.Tensor, device: torch.device) -> torch.Tensor:
        """A fixed small host tensor on ``device``, moved once per layout."""
        if name not in self._device_inputs:
            self._device_inputs[name] = to_device(host, device)
        return self._device_inputs[name]

    # -- hooks --------------------------------------------------------------------------------
    @signals.guarded
    def _pre_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        try:
            if self._closed:  # finished by a signal (`finish`): the hooks stay, doing nothing
                return
            self.step += 1
            self.writer.meta["last_step"] = self.step  # where a resumed run continues (`resume`)
            self._armed = False
            if self._records.pending:
                self._drain(wait=False)
            if not self.schedule(self.step):
                return
            self._sync_params(optimizer)
            if self._snapshot is None:
                self._shards = sharded_rows(self._params)  # None unless DTensor params (FSDP2)
                local = self._local(self._params)
                device = local[0].device if local else torch.device("cpu")
                self._snapshot = Snapshot(local, paths_for(device))
            # With a closure (LBFGS, Lightning) the gradient comes inside step(): read it after
            self._grads_after_step = closure_of(args or (), kwargs or {}) is not None
            self._snapshot.capture(self._local(self._params))
            if not self._grads_after_step:
                self._capture_grads()
            self._armed = True
        finally:
            if signals.deferred:
                signals.deliver()

    def _capture_grads(self) -> None:
        assert self._snapshot is not None
        grads = [dense_grad(p) for p in self._params]
        self._has_grad = [g is not None for g in grads]
        self._snapshot.grad_sums(self._local(grads))

    @signals.guarded
    def _post_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        try:
            if self._closed:
                return
            self._post_calls += 1
            if self._armed:
                self._armed = False
                self._record(optimizer)
            if self.flush_every is not None and self._file is not None:
                due = time.monotonic() - self._last_flush >= self.flush_every
                if due or self._flushed_records < 0:
                    self.flush()
        finally:
            if signals.deferred:
                signals.deliver()

    def _steps_seen(self) -> int:
        return self._post_calls

    @torch.no_grad()
    def _record(self, optimizer: torch.optim.Optimizer) -> None:
        if self._grads_after_step:
            self._capture_grads()
        snapshot = self._snapshot
        assert snapshot is not None
        device = snapshot.device
        # leave w' in the snapshot when the next step is recorded too: its capture is free
        keep = bool(self.schedule(self.step + 1))
        row_gram, row_perp2 = snapshot.update_sums(self._local(self._params), keep)
        group_of = self._device_input(
            "group_of", torch.tensor(self._tracked.group_of, dtype=torch.long), device
        )
        lr = tensor_lrs(optimizer.param_groups, group_of, device, to_device)
        has_grad = to_device(torch.tensor(self._has_grad, dtype=torch.bool), device)
        row_tensor = snapshot.row_tensor(device)
        if self._shards is not None:  # merge shard pieces into whole rows before any sqrt/max/mean
            row_gram, row_perp2, row_tensor = self._shards.merge(row_gram, row_perp2, row_tensor)
        block = all_metrics(
            row_gram,
            row_perp2,
            row_tensor,
            self._device_input("multi_row", snapshot.multi_row, device),
            lr,
            has_grad,
        )
        if self._shapes is None:
            self._shapes = ShapeTable(self.writer.params, device, to_device)
        test_view = live_test_views(block, self._shapes, has_grad, self.delta)
        applied = applied_views(optimizer.state, self._params, device, to_device)
        # a tensor without a gradient at this step was not stepped: never report a stale view
        applied = torch.where(has_grad, applied, torch.full_like(applied, float(View.UNTESTED)))
        results = torch.cat([block, test_view[None], applied[None]]).reshape(-1)
        groups, later = split_group_values(optimizer.param_groups)
        if later:
            values = [value.detach().to(device, torch.float64).reshape(1) for *_, value in later]
            results = torch.cat([results, *values])
        deferred = snapshot.paths.deferred_transfer
        self._records.pending.append(
            PendingRecord(
                self.step,
                time.time(),
                groups,
                [(field_index, group) for field_index, group, _ in later],
                PendingCopy(results, deferred),
            )
        )
        if not deferred:
            self._drain(wait=True)

    @signals.guarded
    def _record_skip(self) -> None:
        """A step the GradScaler skipped: a record of NaN metrics and untested views."""
        try:
            optimizer = self.optimizer
            if self._closed or optimizer is None:
                return
            self._drain(wait=True)
            self.step += 1
            self.writer.meta["last_step"] = self.step
            self._sync_params(optimizer)
            num = len(self._params)
            self.writer.add_event(self.step, "skipped_step", "GradScaler found inf/NaN gradients")
            self._records.append(
                self.step,
                time.time(),
                True,
                torch.full((len(METRICS), num), math.nan, dtype=torch.float32),
                torch.full((2, num), View.UNTESTED, dtype=torch.int8),
                group_values(optimizer.param_groups),
                self._feed,
            )
        finally:
            signals.deliver()

    def _drain(self, wait: bool) -> None:
        """Append the records that reached the host (`pending.Records.drain`), each handed to
        the ``on_record`` callback."""
        self._records.drain(wait, self._feed)

    # -- memory ---------------------------------------------------------------------------------
    @property
    def tracked_bytes(self) -> int:
        """Bytes of the tracked parameters (this process's shards under FSDP)."""
        return sum(t.numel() * t.element_size() for t in self._local(self._params))

    @property
    def held_bytes(self) -> int:
        """Bytes the lens keeps between records for its parameter-sized state: the snapshot's
        copy of w and a few numbers per tensor (0 before the first record and after close).
        The records themselves grow with the run: about 50 bytes per tensor and record."""
        if self._snapshot is None:
            return 0
        inputs = sum(t.numel() * t.element_size() for t in self._device_inputs.values())
        return self._snapshot.held_bytes() + inputs

    # -- user API -------------------------------------------------------------------------------
    @signals.guarded
    def log(self, step: int | None = None, **scalars: float | torch.Tensor) -> None:
        """Store user scalars (loss, accuracy...) at ``step`` (default: the last optimizer step)."""
        try:
            values = {name: as_float(value) for name, value in scalars.items()}
            self.writer.log_scalars(self.step if step is None else int(step), values)
        finally:
            signals.deliver()

    @property
    def num_records(self) -> int:
        """Records that have reached the host (on an accelerator the latest may still be on
        its way; `latest`, `run` and `flush` wait for it)."""
        return self.writer.num_records

    @signals.guarded
    def latest(self) -> Record | None:
        """The latest record (`record.Record`: step, every metric and view per tensor, the key
        scalars per set), what ``on_record`` was handed last; None before the first. Waits for a
        record still on its way from an accelerator. O(tensors): nothing of the run is rebuilt."""
        try:
            self._drain(wait=True)
            return self._records.latest()
        finally:
            signals.deliver()

    @property
    def callback_errors(self) -> int:
        """Exceptions the ``on_record`` callback raised so far (the first was reported)."""
        return self._feed.errors if self._feed is not None else 0

    @signals.guarded
    def run(self) -> Run:
        """The records so far as a `Run`, without touching the file."""
        try:
            self._drain(wait=True)
            return self.writer.to_run(path=self.path)
        finally:
            signals.deliver()

    @signals.guarded
    def set_param_column(self, column: str, values: list[Any]) -> None:
        """Add a per-tensor column to the run's params table (e.g. probe verdicts)."""
        try:
            self.writer.set_param_column(column, values)
        finally:
            signals.deliver()

    @signals.guarded
    def flush(self) -> bool:
        """Save everything recorded so far, atomically. Never raises: a failed save warns
        (once per streak of failures) and the next flush retries. True if the run is on disk
        (False also on ranks that do not write)."""
        try:
            self._drain(wait=True)
            self._last_flush = time.monotonic()
            if self._file is None or self._closed:
                return False
            saved = self._file.save(self.writer)
            self.path = str(self._file.path)
            if saved:
                self._flushed_records = self.writer.num_records
            return saved
        finally:
            signals.deliver()

    def detach(self) -> None:
        """Remove the hooks (and the GradScaler wrapper); the records stay available."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._scaler is not None:
            self._scaler.restore()
            self._scaler = None

    @signals.guarded
    def close(self) -> Path | None:
        """Detach, free the snapshot and write the final run file. Safe to call twice.

        Never raises: if the final save fails, the run goes to a fallback file in the
        temporary folder, and a warning names both; ``lens.run()`` keeps returning the records.
        Returns where the run was saved (None if it was not, or on a rank that does not write).
        """
        try:
            self.detach()
            return self._end()
        finally:
            signals.deliver()

    @signals.guarded
    def finish(self) -> Path | None:
        """Close the run without removing the hooks: the final save, the run marked closed, the
        snapshot freed; the hooks do nothing from then on. What SIGTERM and SIGHUP do to every
        live lens (`signals`): removing a hook while the optimizer runs its hooks would break
        the step in progress, should the process go on. ``close()`` later also detaches."""
        try:
            return self._end()
        finally:
            signals.deliver()

    def _end(self) -> Path | None:
        if self._closed:
            return self._records.saved_to
        self._drain(wait=True)
        self._closed = True
        if self._armed:  # finished inside a step (a signal): that step did not complete
            self._armed = False
            self.writer.meta["last_step"] = self.step - 1
        self._snapshot = None  # free the copy of w
        self._device_inputs = {}
        self._finalizer()
        signals.forget(self)
        if self._file is not None:
            self.path = str(self._file.path)
        if self._feed is not None:
            self._feed.close(self)
        return self._records.saved_to

    def __enter__(self) -> Lens:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Lens(optimizer={self._optimizer_class}, tensors={len(self._params)}, "
            f"records={self.num_records}, path={self.path!r})"
        )


def _live_lens_of(optimizer: torch.optim.Optimizer) -> Lens | None:
    ref = _lens_of.get(optimizer)
    previous = ref() if ref is not None else None
    return None if previous is None or previous._closed else previous


def attach(
    model: torch.nn.Module | torch.optim.Optimizer | None,
    optimizer: torch.optim.Optimizer | None = None,
    path: str | os.PathLike[str] | None = DEFAULT_PATH,
    schedule: schedules.Schedule | int | None = None,
    label: str | None = None,
    *,
    delta: float = DEFAULT_DELTA,
    flush_every: float | None = 30.0,
    scaler: Any | None = None,
    write: bool | None = None,
    probe_inputs: Any | None = None,
    tensors: Selection | None = None,
    on_record: Callable[[Record], Any] | None = None,
    resume: bool = False,
    step: int | None = None,
    overwrite: bool = False,
) -> Lens:
    """Attach a lens to ``optimizer`` (tensors named after ``model``'s parameters if given).

    - ``model``: the model (optional; ``attach(optimizer)`` names tensors ``group{g}.{i}``).
      Wrappers (`torch.compile`, DDP, DataParallel, FSDP) are looked through: tensors and the
      model class are named as in the plain model.
    - ``path``: the run file, written as given. Default: a new file
      ``runs/<date-time>_<label>.pt`` of this run's own (printed once). None keeps the records
      in memory only (`Lens.run`). A path that holds a file raises one line naming it and
      the options: ``resume=True`` continues its run, ``overwrite=True`` replaces it. A path
      that a live lens of this process writes raises too, unless one of the options is given:
      then that lens is closed first (its run saved), so a notebook's attach cell re-run with
      either option works every time. A path another process writes raises (an OS lock beside
      the run, ``.run.pt.lock``; a killed process's lock never blocks).
    - ``schedule``: a callable ``step -> bool`` (a pure function of the step), an int n (every
      n steps) or None for `schedules.default_schedule` (dense early, sparse late).
    - ``label``: the run's label (default: the optimizer's class name; a resumed run's own).
    - ``delta``: the paper test's δ (default 0.1).
    - ``flush_every``: seconds between saves (default 30; None: only at close).
    - ``scaler``: a `torch.amp.GradScaler` whose skipped steps to record.
    - ``write``: whether this process writes the file (default: only rank 0 of a distributed
      job; other ranks writing get ``run.rank<r>.pt``).
    - ``probe_inputs``: example inputs; the functional scale-invariance probe
      (`invariance.probe`) runs once and its verdicts go into the params table.
    - ``tensors``: which tensors to watch (default all): names, glob patterns, a compiled
      regex, a module type, a callable ``(name, param) -> bool``, or a list of these
      (`selection`). Tensors left out cost nothing; a selection matching nothing records an
      empty run.
    - ``on_record``: a live feed for any logger: ``on_record(record)`` is called once per
      record, in record order, with a `record.Record` (the step, the key scalars per set in
      ``record.key_scalars``, every metric per tensor via ``record.per_tensor(metric)``), once
      the record's data is on the host: at the recorded step on the CPU, a step or more later
      on an accelerator, where the lens copies results to the host without waiting.
      ``lens.latest()`` returns that same `Record`. If the callback has an ``on_close(lens)``
      method, `Lens.close` calls it after the final save. An exception of the callback never
      stops training: the first is reported as one line on stderr naming it, the callback is
      still called for later records, and later exceptions are only counted
      (`Lens.callback_errors`). The W&B and live TensorBoard writers of
      `stepsize_lens.integrations` are such callbacks.
    - ``resume``: continue the run file at ``path`` (`resume`): records append, steps continue
      from where training is: ``step``, else this optimizer's live lens's count, else the
      optimizer's own step count (``state["step"]``: the Adam family, AdamP, AdamC); an
      optimizer without one (SGD) raises asking for ``step=``, never continuing from the
      file's last step, which a killed process leaves behind. Records after that step in the
      file, from a stretch the checkpoint discarded, are dropped; the schedule continues where
      it was (it is a function of the global step: no dense re-recording). Another optimizer
      class or other tensors (names, shapes) raise `resume.ResumeError` (a ``ValueError``)
      before the file is touched. Where ``path`` holds no file yet, a new run starts there
      (said once on stderr), so one script serves the first start and every restart.
    - ``step``: the optimizer steps taken before this lens (the trainer's global step); the
      first step the lens sees is ``step + 1``. Default: 0 (with ``resume``: see there).
    - ``overwrite``: replace the file at ``path`` with a new run (see ``path``).

    An optimizer has at most one lens: attaching another closes the previous one (with a
    warning). Returns the `Lens`, also a context manager.
    """
    options = options_from(locals())
    if isinstance(model, torch.optim.Optimizer) and optimizer is None:
        model, optimizer = None, model
    if optimizer is None:
        raise TypeError("attach(model, optimizer, ...) needs an optimizer")
    return Lens._from_options(optimizer, model, options)
