"""Records on their way from the device, and the final save that needs nothing else.

On an accelerator a record's results reach the host a little later (`device.PendingCopy`):
`Records` keeps them in order and appends each to the `RunWriter` once it has landed. It is
also what `weakref.finalize` calls for the lens's final save (at close, when the lens is
collected, at interpreter exit), so it holds the writer and the run file, never the lens, the
model, the optimizer or the snapshot buffers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from stepsize_lens._schema import METRICS
from stepsize_lens.recording.device import PendingCopy
from stepsize_lens.recording.files import RunFile
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

    def __init__(self, writer: RunWriter, file: RunFile | None) -> None:
        self.writer = writer
        self.file = file
        self.pending: list[PendingRecord] = []
        self.done = False
        self.saved_to: Path | None = None

    def drain(self, wait: bool) -> None:
        """Append the records whose results reached the host (all of them if ``wait``)."""
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
            self.writer.append(
                step=first.step,
                time=first.time,
                skipped=False,
                metrics=values[: len(METRICS)].to(torch.float32),
                views=values[len(METRICS) :].to(torch.int8),
                groups=first.groups,
            )

    def __call__(self) -> None:
        """The final save (once): mark the run closed and save it a last time."""
        if self.done:
            return
        self.done = True
        self.drain(wait=True)
        self.writer.meta["closed"] = True
        if self.file is not None:
            self.saved_to = self.file.save_final(self.writer)
            self.file.release()
