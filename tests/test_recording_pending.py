"""Records on their way: appended in order once they land, group values that travel with them,
and the final save."""

from __future__ import annotations

import math
from pathlib import Path

import torch

import stepsize_lens
from stepsize_lens._schema import GROUP_FIELDS, METRICS
from stepsize_lens.recording.device import PendingCopy
from stepsize_lens.recording.files import RunFile
from stepsize_lens.recording.pending import PendingRecord, Records
from stepsize_lens.run import RunWriter


def _writer(tensors: int = 2) -> RunWriter:
    writer = RunWriter(None, {"label": "pending"})
    writer.add_params(
        [{"name": f"t{i}", "shape": [3], "numel": 3, "ndim": 1, "rows": 1} for i in range(tensors)]
    )
    writer.set_num_groups(1)
    return writer


def _results(value: float, later: list[float]) -> torch.Tensor:
    block = torch.full((len(METRICS) + 2, 2), value, dtype=torch.float64)
    block[len(METRICS) :] = -1
    return torch.cat([block.reshape(-1), torch.tensor(later, dtype=torch.float64)])


def test_records_are_appended_in_order_with_their_late_group_values(tmp_path):
    writer = _writer()
    records = Records(writer, None)
    lr = GROUP_FIELDS.index("lr")
    for step in (1, 2):
        groups = torch.full((len(GROUP_FIELDS), 1), math.nan, dtype=torch.float64)
        records.pending.append(
            PendingRecord(
                step,
                float(step),
                groups,
                [(lr, 0)],
                PendingCopy(_results(step, [0.1 * step]), True),
            )
        )
    records.drain(wait=False)  # on the CPU every copy has landed
    assert not records.pending and writer.num_records == 2
    run = writer.to_run()
    assert list(run.steps) == [1, 2]
    assert run.metric("weight_norm")[:, 0].tolist() == [1.0, 2.0]
    assert run.group_field("lr")[:, 0].tolist() == [0.1, 0.2]


def test_the_final_save_runs_once_and_marks_the_run_closed(tmp_path):
    writer = _writer()
    file = RunFile(Path(tmp_path / "run.pt"), "a test lens")
    file.claim()
    records = Records(writer, file)
    records()
    records()
    assert records.saved_to == tmp_path / "run.pt" and file.released
    assert stepsize_lens.load(tmp_path / "run.pt").meta["closed"] is True
