"""Param-group fields as floats: aliases, bools, tensors, missing values."""

from __future__ import annotations

import math

import torch

from stepsize_lens._schema import GROUP_FIELDS
from stepsize_lens.recording.device import to_device
from stepsize_lens.recording.group_fields import (
    as_float,
    group_field,
    group_values,
    split_group_values,
    tensor_lrs,
)


def test_group_field_spellings():
    adam = {"lr": torch.tensor(1e-3), "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0}
    sgd = {"lr": 0.1, "momentum": 0.9, "nesterov": True, "dampening": 0}
    assert group_field(adam, "lr") == float(torch.tensor(1e-3))
    assert group_field(adam, "beta1") == 0.9 and group_field(adam, "beta2") == 0.999
    assert math.isnan(group_field(sgd, "beta1"))
    assert group_field(sgd, "nesterov") == 1.0
    assert math.isnan(group_field({"lr": "auto"}, "lr"))
    assert math.isnan(group_field({}, "momentum"))
    assert math.isnan(as_float(None))


def test_group_values_and_tensor_lrs():
    groups = [{"lr": 0.1, "momentum": 0.9}, {"lr": 0.01}]
    values = group_values(groups)
    assert values.shape == (len(GROUP_FIELDS), 2) and values.dtype == torch.float64
    assert values[GROUP_FIELDS.index("lr")].tolist() == [0.1, 0.01]
    group_of = torch.tensor([0, 1, 1])
    lrs = tensor_lrs(groups, group_of, torch.device("cpu"), to_device)
    assert lrs.tolist() == [0.1, 0.01, 0.01]
    # a tensor lr is gathered as a tensor, never read as a Python number
    groups[1]["lr"] = torch.tensor(0.5)
    assert tensor_lrs(groups, group_of, torch.device("cpu"), to_device).tolist() == [0.1, 0.5, 0.5]


def test_split_group_values_leaves_accelerator_tensors_for_later():
    groups = [{"lr": 0.1, "momentum": 0.9}, {"lr": torch.tensor(0.01)}]
    table, later = split_group_values(groups)
    assert later == []  # host tensors are read now; only accelerator tensors wait
    torch.testing.assert_close(table, group_values(groups), equal_nan=True)
