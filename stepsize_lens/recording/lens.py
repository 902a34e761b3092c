"""The lens: optimizer step hooks that record the metrics of DESIGN.md §3 into a run file.

``attach(model, optimizer, path="run.pt")`` registers ``Optimizer.register_step_pre_hook`` and
``register_step_post_hook`` on the optimizer, so it works for every ``torch.optim.Optimizer``
subclass with no change to the training loop. On a step the schedule selects, the pre hook
copies w and g into preallocated snapshot buffers (`snapshot.Snapshot`; when ``step`` gets a
closure, as with LBFGS or Lightning, g is computed inside ``step`` and read after it); the post
hook writes
Δ = w' − w, takes per-row Gram matrices with one batched matmul per bucket of equal-length rows,
turns them into every metric with `metrics.all_metrics`, and moves one small [metrics, tensors]
block to the host. Steps the schedule skips cost one Python call.

Observing never changes training: the hooks only read parameters and gradients (they run under
``torch.no_grad`` and write only into the lens's own buffers).
"""

from __future__ import annotations

import atexit
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from stepsize_lens import schedules
from stepsize_lens._schema import GROUP_FIELDS, METRICS, View
from stepsize_lens.paper_test import paper_test
from stepsize_lens.recording.distributed import ShardedRows, process_rank, rank_path, sharded_rows
from stepsize_lens.recording.metrics import all_metrics
from stepsize_lens.recording.snapshot import Snapshot
from stepsize_lens.run import RunWriter

if TYPE_CHECKING:
    from stepsize_lens.run import Run

_TEST_INPUTS = ("cos_grad", "channel_cos_grad_max")


class Lens:
    """Records weight norms, update norms and effective step sizes of an optimizer's tensors.

    Use `attach` to create one. ``lens.step`` counts optimizer steps (and steps a GradScaler
    skipped) from 1. ``lens.log(loss=...)`` stores user scalars; ``lens.flush()`` saves now;
    ``lens.close()`` detaches and saves a final time (also at interpreter exit).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        model: torch.nn.Module | None = None,
        path: str | os.PathLike[str] | None = "run.pt",
        schedule: schedules.Schedule | int | None = None,
        label: str | None = None,
        delta: float = 0.1,
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
            "model_class": type(model).__name__ if model is not None else None,
            "schedule": schedules.describe(self.schedule),
            "delta": self.delta,
            "rank": rank,
            "world_size": world_size,
            "metrics": list(METRICS),
        }
        self.writer = RunWriter(self.path if self.writing else None, meta)
        self._names = _parameter_names(model)
        self._params: list[torch.Tensor] = []
        self._index: dict[int, int] = {}
        self._group_of: list[int] = []
        self._layout_signature: tuple[int, ...] = ()
        self._snapshot: Snapshot | None = None
        self._shards: ShardedRows | None = None
        self._shape_info: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
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
        self._scaler = None
        if scaler is not None:
            self._watch_scaler(scaler)
        atexit.register(self._at_exit)

    # -- parameter bookkeeping ----------------------------------------------------------------
    def _sync_params(self) -> bool:
        """Track params added since last time (e.g. `add_param_group`); True if anything changed."""
        groups = self.optimizer.param_groups
        signature = tuple(len(group["params"]) for group in groups)
        if signature == self._layout_signature:
            return False
        self._layout_signature = signature
        new_rows = []
        self._group_of = list(self._group_of)
        for group_index, group in enumerate(groups):
            for position, param in enumerate(group["params"]):
                key = id(param)
                if key in self._index:
                    self._group_of[self._index[key]] = group_index
                    continue
                self._index[key] = len(self._params)
                self._params.append(param)
                self._group_of.append(group_index)
                names, module_type = self._names.get(key, ([], ""))
                name = names[0] if names else f"group{group_index}.{position}"
                new_rows.append(
                    {
                        "name": name,
                        "group": group_index,
                        "index": position,
                        "shape": list(param.shape),
                        "numel": param.numel(),
                        "ndim": param.ndim,
                        "rows": param.shape[0] if param.ndim >= 1 else 1,
                        "module_type": module_type,
                        "dtype": str(param.dtype).replace("torch.", ""),
                        "aliases": names[1:],
                    }
                )
        if new_rows:
            self.writer.add_params(new_rows)
            if self.step > 0:
                self.writer.add_event(self.step, "params_added", f"{len(new_rows)} tensors")
        self.writer.set_num_groups(len(groups))
        self._snapshot = None  # rebuilt lazily at the next recorded step
        self._shape_info = None
        return True

    def _store_probe(self, probe_inputs: Any) -> None:
        """Run the functional scale-invariance probe once and store its verdicts per tensor."""
        from stepsize_lens.invariance import probe, probe_param_columns

        if self.model is None:
            raise TypeError("attach(..., probe_inputs=...) needs the model")
        result = probe(self.model, probe_inputs)
        for column, values in probe_param_columns(self.model, self._params, result).items():
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
        self._grads_after_step = _closure_of(args or (), kwargs or {}) is not None
        if not self._grads_after_step:
            self._capture_grads()
        self._armed = True

    def _capture_grads(self) -> None:
        assert self._snapshot is not None
        grads = [_dense_grad(p) for p in self._params]
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

    @torch.no_grad()
    def _record(self) -> None:
        if self._grads_after_step:
            self._capture_grads()
        snapshot = self._snapshot
        assert snapshot is not None and self._has_grad is not None
        device = snapshot.device
        groups = self.optimizer.param_groups
        lr = torch.tensor(
            [_as_float(groups[g].get("lr")) for g in self._group_of],
            dtype=torch.float64,
            device=device,
        )
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
        test_view = self._paper_test(block, device)
        applied_view = self._applied_views(device)
        host = torch.cat([block, test_view[None], applied_view[None]]).cpu()  # one transfer
        num_metrics = len(METRICS)
        self.writer.append(
            step=self.step,
            time=time.time(),
            skipped=False,
            metrics=host[:num_metrics].to(torch.float32),
            views=host[num_metrics:].to(torch.int8),
            groups=self._group_values(),
        )

    def _paper_test(self, block: torch.Tensor, device: torch.device) -> torch.Tensor:
        cos_grad = block[METRICS.index("cos_grad")]
        channel_max = block[METRICS.index("channel_cos_grad_max")]
        if self._shape_info is None:
            table = self.writer.params
            self._shape_info = (
                torch.tensor(table["numel"], dtype=torch.float64, device=device),
                torch.tensor(table["rows"], dtype=torch.float64, device=device),
                torch.tensor(table["ndim"], dtype=torch.int64, device=device),
            )
        numel, rows, ndim = self._shape_info
        views = paper_test(cos_grad, channel_max, numel, rows, ndim, delta=self.delta)
        # a tensor without a gradient was not tested
        views = torch.where(self._has_grad.to(device), views, torch.full_like(views, View.UNTESTED))
        return views.to(torch.float64)

    def _applied_views(self, device: torch.device) -> torch.Tensor:
        """The view AdamP/SGDP applied (``state[p]["projection"]``); -1 where unknown."""
        state = self.optimizer.state
        values: list[torch.Tensor] = []
        known = False
        for param in self._params:
            value = state[param].get("projection") if param in state else None
            if value is None:
                values.append(
                    torch.tensor(float(View.UNTESTED), dtype=torch.float64, device=device)
                )
            else:
                known = True
                values.append(
                    torch.as_tensor(value).to(device=device, dtype=torch.float64).reshape(())
                )
        if not known:
            return torch.full(
                (len(self._params),), float(View.UNTESTED), dtype=torch.float64, device=device
            )
        return torch.stack(values)

    def _group_values(self) -> torch.Tensor:
        rows = [
            [_group_field(group, field) for group in self.optimizer.param_groups]
            for field in GROUP_FIELDS
        ]
        return torch.tensor(rows, dtype=torch.float64)

    # -- GradScaler -----------------------------------------------------------------------------
    def _watch_scaler(self, scaler: Any) -> None:
        """Record the steps a `torch.amp.GradScaler` skips (its ``step`` never calls ours)."""
        original = scaler.step

        def step(optimizer: Any, *args: Any, **kwargs: Any) -> Any:
            calls = self._post_calls
            result = original(optimizer, *args, **kwargs)
            if optimizer is self.optimizer and self._post_calls == calls and not self._closed:
                self._record_skip()
            return result

        scaler.step = step
        self._scaler = scaler

    def _record_skip(self) -> None:
        self.step += 1
        self._sync_params()
        num = len(self._params)
        self.writer.append(
            step=self.step,
            time=time.time(),
            skipped=True,
            metrics=torch.full((len(METRICS), num), math.nan, dtype=torch.float32),
            views=torch.full((2, num), View.UNTESTED, dtype=torch.int8),
            groups=self._group_values(),
        )
        self.writer.add_event(self.step, "skipped_step", "GradScaler found inf/NaN gradients")

    # -- user API -------------------------------------------------------------------------------
    def log(self, step: int | None = None, **scalars: float | torch.Tensor) -> None:
        """Store user scalars (loss, accuracy...) at ``step`` (default: the last optimizer step)."""
        values = {name: _as_float(value) for name, value in scalars.items()}
        self.writer.log_scalars(self.step if step is None else int(step), values)

    @property
    def num_records(self) -> int:
        return self.writer.num_records

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
            try:
                del self._scaler.step  # drop the instance attribute, the class method returns
            except AttributeError:
                pass
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
    **options: Any,
) -> Lens:
    """Attach a lens to ``optimizer`` (tensors named after ``model``'s parameters if given).

    ``schedule``: a callable ``step -> bool``, an int n (every n steps) or None for
    `schedules.default_schedule` (dense early, sparse late). Options: ``delta`` (the paper
    test's δ, default 0.1), ``flush_every`` (seconds between saves, default 30; None: only at
    close), ``scaler`` (a GradScaler whose skipped steps to record), ``write`` (default: only
    rank 0 of a distributed job writes), ``probe_inputs`` (example inputs: run the functional
    scale-invariance probe `invariance.probe` once and store its verdicts in the params table),
    ``fused`` (reduce the snapshot with a `torch.compile`-generated float64 kernel: faster per
    record, seconds of compilation at the first one; see `snapshot.Snapshot`).
    Returns the `Lens`, also a context manager.
    """
    if isinstance(model, torch.optim.Optimizer) and optimizer is None:
        model, optimizer = None, model
    if optimizer is None:
        raise TypeError("attach(model, optimizer, ...) needs an optimizer")
    return Lens(optimizer, model=model, path=path, schedule=schedule, label=label, **options)


# -- helpers ------------------------------------------------------------------------------------
def _parameter_names(model: torch.nn.Module | None) -> dict[int, tuple[list[str], str]]:
    """id(param) -> (every name it has in the model, type of the module that owns it)."""
    if model is None:
        return {}
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    owners: dict[int, str] = {}
    for _, module in model.named_modules(remove_duplicate=False):
        for param in module.parameters(recurse=False):
            owners.setdefault(id(param), type(module).__name__)
    return {key: (value, owners.get(key, "")) for key, value in names.items()}


def _closure_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The closure passed to ``optimizer.step(closure)``, if any (the hooks' ``args`` start
    with the optimizer itself)."""
    closure = kwargs.get("closure")
    positional = [a for a in args if not isinstance(a, torch.optim.Optimizer)]
    if closure is None and positional and callable(positional[0]):
        closure = positional[0]
    return closure


def _dense_grad(param: torch.Tensor) -> torch.Tensor | None:
    grad = param.grad
    if grad is not None and grad.is_sparse:
        return grad.to_dense()
    return grad


def _as_float(value: Any) -> float:
    if value is None:
        return math.nan
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().item())
    return float(value)


_GROUP_ALIASES: Mapping[str, Callable[[Mapping[str, Any]], Any]] = {
    "beta1": lambda group: group["betas"][0] if "betas" in group else None,
    "beta2": lambda group: group["betas"][1] if "betas" in group else None,
}


def _group_field(group: Mapping[str, Any], field: str) -> float:
    value = _GROUP_ALIASES[field](group) if field in _GROUP_ALIASES else group.get(field)
    if isinstance(value, bool):
        return float(value)
    try:
        return _as_float(value)
    except (TypeError, ValueError):
        return math.nan
