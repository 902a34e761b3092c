"""Records on their way from the device, and the final save that needs nothing else.

On an accelerator a record's results reach the host a little later (`device.PendingCopy`):
`Records` keeps them in order and appends each to the `RunWriter` once it has landed, then
tells the live feed (``attach(..., on_record=...)``): a callback therefore sees a record when
its data is on the host, at the step it was recorded on the CPU, a step or more later on an
accelerator. It is also what `weakref.finalize` calls for the lens's final save (at close,
when the lens is collected, at interpreter exit), so it holds the writer and the run file,
never the lens, the model, the optimizer, the snapshot buffers or the callback.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from stepsize_lens._schema import METRICS
from stepsize_lens.recording import signals
from stepsize_lens.recording.device import PendingCopy
from stepsize_lens.recording.files import RunFile
from stepsize_lens.recording.record import Record, SetTally, latest_record
from stepsize_lens.run import RunWriter


@dataclass
class PendingRecord:
    """A record whose results are on their way from the device."""

    step: int
    time: float
    groups: torch.Tensor  # [fields, groups], NaN where a value arrives with the results
    later: list[tuple[int, int]]  # (field, group) of the values arriving with the results
    copy: PendingCopy  # [metrics + 2 views, tensors] flattened, then the later values


class Records:
    """The run's records (`RunWriter`) and those still on their way from the device. It is all
    the final save needs, and holds nothing that keeps training objects alive."""

    def __init__(self, writer: RunWriter, file: RunFile | None, delta: float = 0.1) -> None:
        self.writer = writer
        self.file = file
        self.pending: list[PendingRecord] = []
        self.done = False
        self.saved_to: Path | None = None
        self.tally = SetTally(delta)
        self._delivering = False
        self._latest: Record | None = None  # the Record of the last appended record, once built
        self._latest_at = (-1, -1)  # (records, tensors) of the writer when it was built

    def drain(self, wait: bool, notify: Callable[[Record], None] | None = None) -> None:
        """Append the records whose results reached the host (all of them if ``wait``), each
        handed to ``notify`` as a `Record` once appended. Called again from inside ``notify``
        (a callback asking the lens for its latest record), it returns at once: that callback
        is being handed the latest record."""
        if self._delivering:
            return
        rows = len(METRICS) + 2
        while self.pending:
            first = self.pending[0]
            if not wait and not first.copy.ready():
                return
            self.pending.pop(0)
            host = first.copy.result()
            size = host.numel() - len(first.later)
            values = host[:size].reshape(rows, size // rows)
            for (field_index, group), value in zip(first.later, host[size:].tolist()):
                first.groups[field_index, group] = value
            self.append(
                first.step,
                first.time,
                False,
                values[: len(METRICS)].to(torch.float32),
                values[len(METRICS) :].to(torch.int8),
                first.groups,
                notify,
            )

    def append(
        self,
        step: int,
        time: float,
        skipped: bool,
        metrics: torch.Tensor,
        views: torch.Tensor,
        groups: torch.Tensor,
        notify: Callable[[Record], None] | None = None,
    ) -> None:
        """Append one record to the writer (`RunWriter.append`) and hand it to ``notify``."""
        self.writer.append(
            step=step, time=time, skipped=skipped, metrics=metrics, views=views, groups=groups
        )
        if notify is None:
            return
        record = self.latest()
        if record is None:  # cannot happen right after an append; never fail training over it
            return
        self._delivering = True
        try:
            notify(record)
        finally:
            self._delivering = False

    def latest(self) -> Record | None:
        """The last appended record as a `Record` (None before the first): the one object the
        ``on_record`` callback was handed, until the next record (or tensor) arrives."""
        now = (self.writer.num_records, self.writer.num_tensors)
        if self._latest is None or now != self._latest_at:
            self._latest = latest_record(self.writer, self.tally)
            self._latest_at = now
        return self._latest

    @signals.guarded
    def __call__(self) -> None:
        """The final save (once): mark the run closed and save it a last time."""
        try:
            if self.done:
                return
            self.done = True
            self.drain(wait=True)
            self.writer.meta["closed"] = True
            if self.file is not None:
                self.saved_to = self.file.save_final(self.writer)
                self.file.release()
        finally:
            signals.deliver()
