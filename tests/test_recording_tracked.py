"""Tracked tensors: optimizer order, names, params-table rows, groups that grow."""

from __future__ import annotations

import torch
from _lens_models import small_model, train
from torch import nn

import stepsize_lens
from stepsize_lens.model_names import parameter_names
from stepsize_lens.recording.tracked import TrackedParams


def test_sync_reports_new_tensors_once_and_notices_added_groups():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2, bias=False))
    optimizer = torch.optim.SGD([{"params": list(model[0].parameters())}], lr=0.1)
    tracked = TrackedParams(parameter_names(model))
    rows = tracked.sync(optimizer.param_groups)
    assert [row["name"] for row in rows] == ["0.weight", "0.bias"]
    assert rows[0]["shape"] == [4, 3] and rows[0]["rows"] == 4 and rows[1]["numel"] == 4
    assert rows[0]["module_type"] == "Linear" and rows[0]["dtype"] == "float32"
    assert tracked.sync(optimizer.param_groups) is None  # unchanged: nothing to do
    optimizer.add_param_group({"params": [model[1].weight], "lr": 0.01})
    rows = tracked.sync(optimizer.param_groups)
    assert [row["name"] for row in rows] == ["1.weight"] and rows[0]["group"] == 1
    assert tracked.group_of == [0, 0, 1] and len(tracked) == 3


def test_model_is_optional_and_names_fall_back(tmp_path):
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    lens = stepsize_lens.attach(optimizer, path=tmp_path / "run.pt", schedule=1)
    train(model, optimizer, 2)
    run = lens.run()
    assert run.tensor_names[:2] == ["group0.0", "group0.1"]
    lens.close()
