"""The lens: optimizer step hooks that record the metrics of docs/design.md §3 into a run file.

``attach(model, optimizer, path="run.pt")`` registers ``Optimizer.register_step_pre_hook`` and
``register_step_post_hook`` on the optimizer, so it works for every ``torch.optim.Optimizer``
subclass with no change to the training loop. On a step the schedule selects, the pre hook
copies w and g into preallocated snapshot buffers (`snapshot.Snapshot`; when ``step`` gets a
closure, as with LBFGS or Lightning, g is computed inside ``step`` and read after it); the post
hook writes Δ = w' − w, takes per-row Gram matrices with one batched matmul per bucket of
equal-length rows, turns them into every metric with `metrics.all_metrics`, and moves one small
[metrics, tensors] block to the host. Steps the schedule skips cost one Python call.

The `Lens` orchestrates; each job lives in its own module: `naming` (tensor names through
compile/DDP/FSDP wrappers), `tracked` (which tensors, their params-table rows), `snapshot`
(buffers across the step), `metrics` (the math), `views` (the paper's test, the applied view),
`group_fields` (param-group hyperparameters), `scaler` (GradScaler skips), `hooks` (closures,
sparse gradients), `distributed` (sharded parameters), `record` (`Lens.latest`).

Observing never changes training: the hooks only read parameters and gradients (they run under
``torch.no_grad`` and write only into the lens's own buffers).
"""

from __future__ import annotations

import atexit
import math
import os
import time
from typing import TYPE_CHECKING, Any

import torch

from stepsize_lens import schedules
from stepsize_lens._schema import DEFAULT_DELTA, METRICS, View
from stepsize_lens.model_names import model_class_name, parameter_names, unwrap_model
from stepsize_lens.recording.distributed import ShardedRows, process_rank, rank_path, sharded_rows
from stepsize_lens.recording.group_fields import as_float, group_values, tensor_lrs
from stepsize_lens.recording.hooks import closure_of, dense_grad
from stepsize_lens.recording.metrics import all_metrics
from stepsize_lens.recording.record import Record
from stepsize_lens.recording.scaler import ScalerWatch
from stepsize_lens.recording.snapshot import Snapshot
from stepsize_lens.recording.tracked import TrackedParams
from stepsize_lens.recording.views import ShapeTable, applied_views, live_test_views
from stepsize_lens.run import RunWriter

if TYPE_CHECKING:
    from stepsize_lens.run import Run


class Lens:
    """Records weight norms, update norms and effective step sizes of an optimizer's tensors.

    Use `attach` to create one. ``lens.step`` counts optimizer steps (and steps a GradScaler
    skipped) from 1. ``lens.log(loss=...)`` stores user scalars; ``lens.latest()`` is the last
    record; ``lens.flush()`` saves now; ``lens.close()`` detaches and saves a final time (also
    at interpreter exit).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        model: torch.nn.Module | None = None,
        path: str | os.PathLike[str] | None = "run.pt",
        schedule: schedules.Schedule | int | None = None,
        label: str | None = None,
        delta: float = DEFAULT_DELTA,
        flush_every: float | None = 30.0,
        scaler: Any | None = None,
        write: bool | None = None,
        probe_inputs: Any | None = None,
        fused: bool = False,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"attach needs a torch.optim.Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.model = model
        self.schedule = schedules.resolve(schedule)
        self.delta = float(delta)
        self.flush_every = flush_every
        self.fused = bool(fused)
        self.step = 0
        rank, world_size = process_rank()
        self.writing = (rank == 0) if write is None else bool(write)
        self.path = rank_path(path, rank, world_size)
        meta = {
            "label": label or type(optimizer).__name__,
            "optimizer": {
                "class": type(optimizer).__name__,
                "module": type(optimizer).__module__,
                "defaults": dict(optimizer.defaults),
            },
            "model_class": model_class_name(model),
            "schedule": schedules.describe(self.schedule),
            "delta": self.delta,
            "rank": rank,
            "world_size": world_size,
            "metrics": list(METRICS),
        }
        self.writer = RunWriter(self.path if self.writing else None, meta)
        self._tracked = TrackedParams(parameter_names(model))
        self._snapshot: Snapshot | None = None
        self._shards: ShardedRows | None = None
        self._shapes: ShapeTable | None = None
        self._has_grad: torch.Tensor | None = None
        self._armed = False
        self._grads_after_step = False
        self._post_calls = 0
        self._last_flush = time.monotonic()
        self._flushed_records = -1
        self._closed = False
        self._sync_params()
        if probe_inputs is not None:
            self._store_probe(probe_inputs)
        self._handles = [
            optimizer.register_step_pre_hook(self._pre_step),
            optimizer.register_step_post_hook(self._post_step),
        ]
        self._scaler = (
            ScalerWatch(scaler, optimizer, self._steps_seen, self._record_skip)
            if scaler is not None
            else None
        )
        atexit.register(self._at_exit)

    @property
    def _params(self) -> list[torch.Tensor]:
        return self._tracked.params

    # -- parameter bookkeeping ----------------------------------------------------------------
    def _sync_params(self) -> bool:
        """Track params added since last time (e.g. `add_param_group`); True if anything changed."""
        new_rows = self._tracked.sync(self.optimizer.param_groups)
        if new_rows is None:
            return False
        if new_rows:
            self.writer.add_params(new_rows)
            if self.step > 0:
                self.writer.add_event(self.step, "params_added", f"{len(new_rows)} tensors")
        self.writer.set_num_groups(len(self.optimizer.param_groups))
        self._snapshot = None  # rebuilt lazily at the next recorded step
        self._shapes = None
        return True

    def _store_probe(self, probe_inputs: Any) -> None:
        """Run the functional scale-invariance probe once and store its verdicts per tensor."""
        from stepsize_lens.invariance import probe, probe_param_columns

        if self.model is None:
            raise TypeError("attach(..., probe_inputs=...) needs the model")
        model = unwrap_model(self.model)
        result = probe(model, probe_inputs)
        for column, values in probe_param_columns(model, self._params, result).items():
            self.writer.set_param_column(column, values)
        self.writer.meta["probe"] = dict(result.settings)

    def _local(self, tensors: list[Any]) -> list[Any]:
        """Local shards of DTensors (FSDP2); the tensors themselves in a single process."""
        return tensors if self._shards is None else self._shards.local(tensors)

    # -- hooks --------------------------------------------------------------------------------
    def _pre_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.step += 1
        self._armed = False
        if not self.schedule(self.step):
            return
        self._sync_params()
        if self._snapshot is None:
            self._shards = sharded_rows(self._params)  # None unless DTensor params (FSDP2)
            self._snapshot = Snapshot(self._local(self._params), fused=self.fused)
        self._snapshot.capture_weights(self._local(self._params))
        # With a closure (LBFGS, Lightning) the gradient is computed inside step(): read it after
        self._grads_after_step = closure_of(args or (), kwargs or {}) is not None
        if not self._grads_after_step:
            self._capture_grads()
        self._armed = True

    def _capture_grads(self) -> None:
        assert self._snapshot is not None
        grads = [dense_grad(p) for p in self._params]
        self._has_grad = torch.tensor([g is not None for g in grads], dtype=torch.bool)
        self._snapshot.capture_grads(self._local(grads))

    def _post_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._post_calls += 1
        if self._armed:
            self._armed = False
            self._record()
        if self.flush_every is not None and self.writing:
            due = time.monotonic() - self._last_flush >= self.flush_every
            if due or self._flushed_records < 0:
                self.flush()

    def _steps_seen(self) -> int:
        return self._post_calls

    @torch.no_grad()
    def _record(self) -> None:
        if self._grads_after_step:
            self._capture_grads()
        snapshot = self._snapshot
        assert snapshot is not None and self._has_grad is not None
        device = snapshot.device
        lr = tensor_lrs(self.optimizer.param_groups, self._tracked.group_of, device)
        has_grad = self._has_grad.to(device)
        row_gram, row_perp2 = snapshot.grams(self._local(self._params))
        row_tensor = snapshot.row_tensor(device)
        if self._shards is not None:  # merge shard pieces into whole rows before any sqrt/max/mean
            row_gram, row_perp2, row_tensor = self._shards.merge(row_gram, row_perp2, row_tensor)
        block = all_metrics(
            row_gram,
            row_perp2,
            row_tensor,
            snapshot.multi_row.to(device),
            lr,
            has_grad,
        )
        if self._shapes is None:
            self._shapes = ShapeTable(self.writer.params, device)
        test_view = live_test_views(block, self._shapes, has_grad, self.delta)
        applied_view = applied_views(self.optimizer.state, self._params, device)
        host = torch.cat([block, test_view[None], applied_view[None]]).cpu()  # one transfer
        num_metrics = len(METRICS)
        self.writer.append(
            step=self.step,
            time=time.time(),
            skipped=False,
            metrics=host[:num_metrics].to(torch.float32),
            views=host[num_metrics:].to(torch.int8),
            groups=group_values(self.optimizer.param_groups),
        )

    def _record_skip(self) -> None:
        """A step the GradScaler skipped: a record of NaN metrics and untested views."""
        if self._closed:
            return
        self.step += 1
        self._sync_params()
        num = len(self._params)
        self.writer.append(
            step=self.step,
            time=time.time(),
            skipped=True,
            metrics=torch.full((len(METRICS), num), math.nan, dtype=torch.float32),
            views=torch.full((2, num), View.UNTESTED, dtype=torch.int8),
            groups=group_values(self.optimizer.param_groups),
        )
        self.writer.add_event(self.step, "skipped_step", "GradScaler found inf/NaN gradients")

    # -- user API -------------------------------------------------------------------------------
    def log(self, step: int | None = None, **scalars: float | torch.Tensor) -> None:
        """Store user scalars (loss, accuracy...) at ``step`` (default: the last optimizer step)."""
        values = {name: as_float(value) for name, value in scalars.items()}
        self.writer.log_scalars(self.step if step is None else int(step), values)

    @property
    def num_records(self) -> int:
        return self.writer.num_records

    def latest(self) -> Record | None:
        """The latest record (step, skipped, every metric and view per tensor); None before the
        first. O(tensors): nothing of the run is rebuilt."""
        last = self.writer.last_record()
        if last is None:
            return None
        return Record(
            step=int(last["step"]),
            skipped=bool(last["skipped"]),
            tensor_names=tuple(self.writer.params["name"]),
            metrics={name: values.clone() for name, values in last["metrics"].items()},
            views={name: values.clone() for name, values in last["views"].items()},
        )

    def run(self) -> Run:
        """The records so far as a `Run`, without touching the file."""
        return self.writer.to_run(path=self.path)

    def set_param_column(self, column: str, values: list[Any]) -> None:
        """Add a per-tensor column to the run's params table (e.g. probe verdicts)."""
        self.writer.set_param_column(column, values)

    def flush(self) -> None:
        """Save everything recorded so far, atomically (no-op on ranks that do not write)."""
        self._last_flush = time.monotonic()
        if not self.writing or self.path is None:
            return
        self.writer.save()
        self._flushed_records = self.writer.num_records

    def detach(self) -> None:
        """Remove the hooks (and the GradScaler wrapper); the records stay available."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._scaler is not None:
            self._scaler.restore()
            self._scaler = None

    def close(self) -> None:
        """Detach and write the final run file. Safe to call twice."""
        if self._closed:
            return
        self.detach()
        self._closed = True
        self._snapshot = None  # free the snapshot buffers (about 3x the parameters' memory)
        self.writer.meta["closed"] = True
        self.flush()
        atexit.unregister(self._at_exit)

    def _at_exit(self) -> None:
        try:
            self.close()
        except Exception:  # pragma: no cover - never fail interpreter shutdown
            pass

    def __enter__(self) -> Lens:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Lens(optimizer={type(self.optimizer).__name__}, tensors={len(self._params)}, "
            f"records={self.num_records}, path={self.path!r})"
        )


def attach(
    model: torch.nn.Module | torch.optim.Optimizer | None,
    optimizer: torch.optim.Optimizer | None = None,
    path: str | os.PathLike[str] | None = "run.pt",
    schedule: schedules.Schedule | int | None = None,
    label: str | None = None,
    *,
    delta: float = DEFAULT_DELTA,
    flush_every: float | None = 30.0,
    scaler: Any | None = None,
    write: bool | None = None,
    probe_inputs: Any | None = None,
    fused: bool = False,
) -> Lens:
    """Attach a lens to ``optimizer`` (tensors named after ``model``'s parameters if given).

    - ``model``: the model (optional; ``attach(optimizer)`` names tensors ``group{g}.{i}``).
      Wrappers (`torch.compile`, DDP, DataParallel, FSDP) are looked through: tensors and the
      model class are named as in the plain model.
    - ``path``: the run file; None keeps the records in memory only (`Lens.run`).
    - ``schedule``: a callable ``step -> bool``, an int n (every n steps) or None for
      `schedules.default_schedule` (dense early, sparse late).
    - ``label``: the run's label (default: the optimizer's class name).
    - ``delta``: the paper test's δ (default 0.1).
    - ``flush_every``: seconds between saves (default 30; None: only at close).
    - ``scaler``: a `torch.amp.GradScaler` whose skipped steps to record.
    - ``write``: whether this process writes the file (default: only rank 0 of a distributed
      job; other ranks writing get ``run.rank<r>.pt``).
    - ``probe_inputs``: example inputs; the functional scale-invariance probe
      (`invariance.probe`) runs once and its verdicts go into the params table.
    - ``fused``: reduce the snapshot with a `torch.compile`-generated float64 kernel (faster
      per record, seconds of compilation at the first one; see `snapshot.Snapshot`).

    Returns the `Lens`, also a context manager.
    """
    if isinstance(model, torch.optim.Optimizer) and optimizer is None:
        model, optimizer = None, model
    if optimizer is None:
        raise TypeError("attach(model, optimizer, ...) needs an optimizer")
    return Lens(
        optimizer,
        model=model,
        path=path,
        schedule=schedule,
        label=label,
        delta=delta,
        flush_every=flush_every,
        scaler=scaler,
        write=write,
        probe_inputs=probe_inputs,
        fused=fused,
    )
