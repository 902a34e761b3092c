"""Writing a run: `RunWriter` accumulates records in growing tensors and saves them atomically.

Memory is O(records x tensors) numbers, never Python floats. ``save()`` writes the whole run
through `stepsize_lens._files.atomic_write`; ``save(append=True)`` writes only what was added
since the previous appending save (`stepsize_lens.run.chunks`), so the lens's periodic saves
cost what changed and the final one compacts the run into one file. Either way a reader, or a
process killed at any moment, always sees the last complete run.
"""

from __future__ import annotations

import datetime
import math
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from stepsize_lens._schema import GROUP_FIELDS, METRICS, PARAM_COLUMNS, VIEWS, View
from stepsize_lens.run import chunks
from stepsize_lens.run.format import FORMAT, VERSION, plain, upgrade, validate
from stepsize_lens.run.storage import save_run_dict

if TYPE_CHECKING:
    from stepsize_lens.run.run import Run

MERGE = 16  # chunks of one level that an appending save merges into one of the next level
TOP_LEVEL = 2  # chunks of this level are never merged again


class _GrowingMatrix:
    """A [rows, cols] tensor that grows by doubling its row capacity; columns can be appended."""

    def __init__(self, cols: int, dtype: torch.dtype, fill: float, capacity: int = 64) -> None:
        self.fill = fill
        self.data = torch.full((capacity, cols), fill, dtype=dtype)
        self.rows = 0

    @classmethod
    def holding(cls, rows: torch.Tensor, fill: float) -> _GrowingMatrix:
        """A matrix whose first rows are a copy of ``rows`` [n, cols] (room for more)."""
        matrix = cls(rows.shape[1], rows.dtype, fill, capacity=max(64, rows.shape[0]))
        matrix.data[: rows.shape[0]] = rows
        matrix.rows = rows.shape[0]
        return matrix

    def append(self, row: torch.Tensor) -> None:
        if self.rows == self.data.shape[0]:
            grown = torch.full(
                (2 * self.data.shape[0], self.data.shape[1]), self.fill, dtype=self.data.dtype
            )
            grown[: self.rows] = self.data[: self.rows]
            self.data = grown
        self.data[self.rows, : row.numel()] = row
        self.rows += 1

    def widen(self, cols: int) -> None:
        extra = cols - self.data.shape[1]
        if extra > 0:
            pad = torch.full((self.data.shape[0], extra), self.fill, dtype=self.data.dtype)
            self.data = torch.cat([self.data, pad], dim=1)

    def filled(self) -> torch.Tensor:
        # clone: saving a view would write the whole preallocated storage
        return self.data[: self.rows].clone()

    def rows_from(self, start: int) -> torch.Tensor:
        """The rows from ``start`` on, a view (what an appending save stacks into its chunk)."""
        return self.data[start : self.rows]


@dataclass(frozen=True)
class _Mark:
    """How much of the writer's records, scalar values and events a point of the run covers."""

    records: int = 0
    scalars: tuple[tuple[str, int], ...] = ()
    events: int = 0


@dataclass(frozen=True)
class _Chunk:
    """A chunk the index names: its index entry, its merge level and where it starts."""

    entry: dict[str, Any]
    level: int
    start: _Mark


class _Appended:
    """What the appending saves of one writer to one path have put on disk: the chunks its
    index names (oldest first) and how much of the run they cover."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.session = secrets.token_hex(4)
        self.number = 0  # chunks written so far: names are <session>-<number>.pt
        self.chunks: list[_Chunk] = []
        self.end = _Mark()


class RunWriter:
    """Accumulates records in preallocated, growing tensors and saves them atomically.

    Memory is O(records x tensors) numbers, never Python floats. ``save()`` writes the whole run
    to a temporary file in the target folder, fsyncs it and renames it over ``path``, so a
    reader (or a process killed at any moment) always sees the last complete run.
    ``save(append=True)`` writes only the records, scalars and events added since this
    writer's previous appending save to that path (`stepsize_lens.run.chunks`); a plain
    ``save()`` after it compacts the run into one file again.
    """

    def __init__(self, path: str | os.PathLike[str] | None, meta: Mapping[str, Any]) -> None:
        self.path = Path(path) if path is not None else None
        self.meta: dict[str, Any] = dict(meta)
        self.meta.setdefault("created", datetime.datetime.now(datetime.timezone.utc).isoformat())
        self.meta.setdefault("torch_version", torch.__version__)
        self.meta.setdefault("stepsize_lens_version", _package_version())
        self.meta.setdefault("closed", False)
        self.params: dict[str, list[Any]] = {column: [] for column in PARAM_COLUMNS}
        self.num_groups = 0
        self._steps: list[int] = []
        self._times: list[float] = []
        self._skipped: list[bool] = []
        self._views = [_GrowingMatrix(0, torch.int8, View.UNTESTED) for _ in VIEWS]
        self._groups = [_GrowingMatrix(0, torch.float64, math.nan) for _ in GROUP_FIELDS]
        self._metric_mats = [_GrowingMatrix(0, torch.float32, math.nan) for _ in METRICS]
        self.scalars: dict[str, tuple[list[int], list[float]]] = {}
        self.events: list[dict[str, Any]] = []
        self.saves = 0
        self._appended: _Appended | None = None
        self.dropped = 0  # records of a resumed run left out after its resume step (`from_run`)

    # -- layout --------------------------------------------------------------------------------
    @property
    def num_tensors(self) -> int:
        return len(self.params["name"])

    @property
    def num_records(self) -> int:
        return len(self._steps)

    def add_params(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Append parameter-table rows (one per tensor); later records get their columns."""
        for row in rows:
            for column in set(self.params) | set(row):
                if column not in self.params:
                    self.params[column] = [None] * self.num_tensors
            for column, values in self.params.items():
                values.append(row.get(column))
        for mat in self._metric_mats:
            mat.widen(self.num_tensors)
        for mat in self._views:
            mat.widen(self.num_tensors)

    def set_param_column(self, column: str, values: Sequence[Any]) -> None:
        """Set (or add) one parameter-table column, e.g. probe verdicts."""
        if len(values) != self.num_tensors:
            raise ValueError(
                f"column {column!r} has {len(values)} values for {self.num_tensors} tensors"
            )
        self.params[column] = list(values)

    def set_num_groups(self, num_groups: int) -> None:
        self.num_groups = max(self.num_groups, num_groups)
        for mat in self._groups:
            mat.widen(self.num_groups)

    # -- records -------------------------------------------------------------------------------
    def append(
        self,
        step: int,
        time: float,
        skipped: bool,
        metrics: torch.Tensor,
        views: torch.Tensor,
        groups: torch.Tensor,
    ) -> None:
        """Add one record.

        metrics: float32 [len(METRICS), T'] with T' <= T (tensors beyond T' stay NaN);
        views: int8 [len(VIEWS), T']; groups: float64 [len(GROUP_FIELDS), G'].
        """
        self._steps.append(int(step))
        self._times.append(float(time))
        self._skipped.append(bool(skipped))
        for mat, row in zip(self._metric_mats, metrics, strict=True):
            mat.append(row)
        for mat, row in zip(self._views, views, strict=True):
            mat.append(row)
        for mat, row in zip(self._groups, groups, strict=True):
            mat.append(row)

    def last_record(self) -> dict[str, Any] | None:
        """The latest record without copying the run: step, time, skipped, metrics and views as
        [T] tensors, groups as [G] tensors (views of the writer's buffers: read, don't keep).
        None before the first."""
        last = self.num_records - 1
        if last < 0:
            return None
        return {
            "step": self._steps[last],
            "time": self._times[last],
            "skipped": self._skipped[last],
            "metrics": {name: mat.data[last] for name, mat in zip(METRICS, self._metric_mats)},
            "views": {name: mat.data[last] for name, mat in zip(VIEWS, self._views)},
            "groups": {name: mat.data[last] for name, mat in zip(GROUP_FIELDS, self._groups)},
        }

    def record_rows(self, start: int, stop: int | None = None) -> dict[str, Any]:
        """Records ``start`` to ``stop`` (default: the last) without copying: ``skipped`` bool
        [n] and ``metrics`` {name: float32 [n, T]} (views of the writer's buffers: read, don't
        keep). For running summaries that fold in each record once (`recording.record`)."""
        stop = self.num_records if stop is None else stop
        return {
            "skipped": torch.tensor(self._skipped[start:stop], dtype=torch.bool),
            "metrics": {
                name: mat.data[start:stop] for name, mat in zip(METRICS, self._metric_mats)
            },
        }

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        for name, value in scalars.items():
            steps, values = self.scalars.setdefault(str(name), ([], []))
            steps.append(int(step))
            values.append(float(value))

    def add_event(self, step: int, kind: str, detail: str = "") -> None:
        self.events.append({"step": int(step), "kind": str(kind), "detail": str(detail)})

    # -- output --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "meta": plain(self.meta),
            "params": {column: plain(values) for column, values in self.params.items()},
            "records": {
                "step": torch.tensor(self._steps, dtype=torch.int64),
                "time": torch.tensor(self._times, dtype=torch.float64),
                "skipped": torch.tensor(self._skipped, dtype=torch.bool),
            },
            "metrics": {name: mat.filled() for name, mat in zip(METRICS, self._metric_mats)},
            "views": {name: mat.filled() for name, mat in zip(VIEWS, self._views)},
            "groups": {name: mat.filled() for name, mat in zip(GROUP_FIELDS, self._groups)},
            "scalars": {
                name: {
                    "step": torch.tensor(steps, dtype=torch.int64),
                    "value": torch.tensor(values, dtype=torch.float64),
                }
                for name, (steps, values) in self.scalars.items()
            },
            "events": list(self.events),
        }

    # -- continuing a saved run ----------------------------------------------------------------
    @classmethod
    def from_run(
        cls,
        run: Run,
        path: str | os.PathLike[str] | None = None,
        until_step: int | None = None,
    ) -> RunWriter:
        """A writer holding ``run``'s records (in the current format version), to append to:
        ``attach(..., resume=True)``. ``until_step``: keep only the records, user scalars and
        events up to that step (a run resumed from an earlier checkpoint drops what came after
        it; `dropped` says how many records went)."""
        data = upgrade(run.to_dict())
        writer = cls(path, data["meta"])
        step = data["records"]["step"]
        keep = (
            torch.ones(step.shape[0], dtype=torch.bool)
            if until_step is None
            else step <= int(until_step)
        )
        writer.dropped = int((~keep).sum())
        writer.params = {column: list(values) for column, values in data["params"].items()}
        writer.num_groups = max((t.shape[1] for t in data["groups"].values()), default=0)
        writer._steps = step[keep].tolist()
        writer._times = data["records"]["time"][keep].tolist()
        writer._skipped = data["records"]["skipped"][keep].tolist()
        writer._metric_mats = [
            _GrowingMatrix.holding(data["metrics"][name][keep], math.nan) for name in METRICS
        ]
        writer._views = [
            _GrowingMatrix.holding(data["views"][name][keep], View.UNTESTED) for name in VIEWS
        ]
        writer._groups = [
            _GrowingMatrix.holding(
                data["groups"][name][keep]
                if name in data["groups"]
                else torch.full(
                    (int(keep.sum()), writer.num_groups), math.nan, dtype=torch.float64
                ),
                math.nan,
            )
            for name in GROUP_FIELDS
        ]
        for name, series in data["scalars"].items():
            kept = (
                torch.ones_like(series["step"], dtype=torch.bool)
                if until_step is None
                else series["step"] <= int(until_step)
            )
            if kept.any():
                writer.scalars[name] = (
                    series["step"][kept].tolist(),
                    series["value"][kept].tolist(),
                )
        writer.events = [
            dict(event)
            for event in data["events"]
            if until_step is None or int(event["step"]) <= int(until_step)
        ]
        return writer

    def to_run(self, path: str | os.PathLike[str] | None = None) -> Run:
        """The records so far as a `Run` (a copy: later records do not change it)."""
        from stepsize_lens.run.run import Run

        return Run(validate(self.to_dict()), path=path)

    def save(self, path: str | os.PathLike[str] | None = None, *, append: bool = False) -> Path:
        """Save the run to ``path`` (default: the writer's path) atomically.

        ``append=False``: one complete file (the run's chunk folder, if any, is removed after).
        ``append=True``: a chunk of what was added since this writer's previous appending save
        to the same path, then the index naming every chunk (the first appending save to a path
        writes everything so far as its first chunk and drops chunks of earlier sessions).
        """
        target = Path(path) if path is not None else self.path
        if target is None:
            raise ValueError("RunWriter has no path to save to")
        if append:
            self._save_appending(target)
        else:
            save_run_dict(self.to_dict(), target)
            chunks.remove_folder(target)
            if self._appended is not None and self._appended.target == target:
                self._appended = None  # its chunks are gone: appending starts afresh
        self.saves += 1
        return target

    def _save_appending(self, target: Path) -> None:
        """One appending save (`chunks`): a level-0 chunk of what is new since the last save,
        or, when that completes `MERGE` chunks of one level, one chunk of the next level
        holding all of them (levels stop at `TOP_LEVEL`: every record is written at most
        TOP_LEVEL + 1 times, so the total cost stays linear in the records)."""
        state = self._appended
        first = state is None or state.target != target
        if state is None or first:
            state = _Appended(target)
        end = self._mark()
        if end == state.end and not first:
            kept, start, level = state.chunks, None, 0
        else:
            kept, start, level = list(state.chunks), state.end, 0 if not first else TOP_LEVEL
            while (
                level < TOP_LEVEL
                and len(kept) >= MERGE - 1
                and all(chunk.level == level for chunk in kept[-(MERGE - 1) :])
            ):
                start = kept[-(MERGE - 1)].start
                kept = kept[: -(MERGE - 1)]
                level += 1
        written = list(kept)
        if start is not None:
            state.number += 1
            name = f"{state.session}-{state.number:06d}.pt"
            sealed = save_run_dict(self._chunk(start), chunks.folder_of(target) / name)
            entry = {"file": name, "records": end.records - start.records, "checksum": sealed}
            written.append(_Chunk(entry, level, start))
        index = {
            "format": FORMAT,
            "version": VERSION,
            "meta": plain(self.meta),
            "params": {column: plain(values) for column, values in self.params.items()},
            "num_groups": self.num_groups,
            "chunks": [chunk.entry for chunk in written],
        }
        save_run_dict(index, target)
        dropped = {chunk.entry["file"] for chunk in state.chunks} - {
            chunk.entry["file"] for chunk in written
        }
        state.chunks, state.end = written, end
        self._appended = state
        if first:
            chunks.remove_other_chunks(target, {chunk.entry["file"] for chunk in written})
        for name in dropped:  # merged into the new chunk, which the index now names
            chunks.remove_chunk(target, name)

    def _mark(self) -> _Mark:
        return _Mark(
            self.num_records,
            tuple((name, len(steps)) for name, (steps, _) in self.scalars.items()),
            len(self.events),
        )

    def _chunk(self, start: _Mark) -> dict[str, Any]:
        """The records, scalar values and events added since ``start``, packed: metrics float32
        [M, n, T], views int8 [V, n, T], groups float64 [F, n, G] (`chunks`)."""
        first = start.records
        done = dict(start.scalars)
        return {
            "format": chunks.CHUNK_FORMAT,
            "version": VERSION,
            "records": {
                "step": torch.tensor(self._steps[first:], dtype=torch.int64),
                "time": torch.tensor(self._times[first:], dtype=torch.float64),
                "skipped": torch.tensor(self._skipped[first:], dtype=torch.bool),
            },
            "metric_names": list(METRICS),
            "metrics": torch.stack([m.rows_from(first) for m in self._metric_mats]),
            "view_names": list(VIEWS),
            "views": torch.stack([m.rows_from(first) for m in self._views]),
            "group_names": list(GROUP_FIELDS),
            "groups": torch.stack([m.rows_from(first) for m in self._groups]),
            "scalars": {
                name: {
                    "step": torch.tensor(steps[done.get(name, 0) :], dtype=torch.int64),
                    "value": torch.tensor(values[done.get(name, 0) :], dtype=torch.float64),
                }
                for name, (steps, values) in self.scalars.items()
                if len(steps) > done.get(name, 0)
            },
            "events": [dict(event) for event in self.events[start.events :]],
        }


def _package_version() -> str:
    from stepsize_lens._version import __version__

    return __version__
