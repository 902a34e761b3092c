"""Tracked tensors: optimizer order, names, params-table rows, groups that grow."""

from __future__ import annotations

import warnings

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


def test_complex_tensors_are_left_out_with_one_note_and_no_torch_warning(capsys):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 4)
    spectrum = torch.nn.Parameter(torch.randn(4, 3, dtype=torch.complex64))
    model.register_parameter("spectrum", spectrum)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lens = stepsize_lens.attach(model, optimizer, path=None, schedule=1)
        for _ in range(3):
            optimizer.zero_grad()
            (model(torch.randn(2, 3)).sum() + (spectrum.abs() ** 2).sum()).backward()
            optimizer.step()
        run = lens.run()
        lens.close()
    assert [str(w.message) for w in caught] == []
    assert run.tensor_names == ["weight", "bias"] and run.num_records == 3
    assert capsys.readouterr().err == (
        "stepsize_lens: not recording 1 complex tensor(s) (spectrum): the lens records real "
        "tensors only\n"
    )
    assert spectrum.grad is not None  # the optimizer still steps it: only the lens skips it
