"""The census: fractions per class from a table, a run and a probe."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from _invariance_models import ConvBNClassifier, two_tensor_run

from stepsize_lens import invariance as inv


def test_census_fractions_overall_and_per_module_type():
    table = pd.DataFrame(
        {
            "class": ["channel", "channel", "layer", "none", "none"],
            "numel": [600, 200, 100, 90, 10],
            "module_type": ["Conv2d", "Conv2d", "Linear", "Linear", "BatchNorm2d"],
        }
    )
    out = inv.census(table)
    assert list(out.index) == ["all", "Conv2d", "Linear", "BatchNorm2d"]
    overall = out.loc["all"]
    assert overall["tensors"] == 5 and overall["parameters"] == 1000
    assert overall["tensors_channel"] == pytest.approx(0.4)
    assert overall["tensors_none"] == pytest.approx(0.4)
    assert overall["params_channel"] == pytest.approx(0.8)
    assert overall["params_layer"] == pytest.approx(0.1)
    assert overall["params_invariant"] == pytest.approx(0.9)
    assert out.loc["Linear", "params_layer"] == pytest.approx(100 / 190)
    assert out.loc["BatchNorm2d", "tensors_none"] == 1.0
    with pytest.raises(ValueError):
        inv.census(table.drop(columns="numel"))


def test_census_of_a_run_uses_its_classes():
    out = inv.census(two_tensor_run())
    assert out.loc["all", "params_channel"] == pytest.approx(100 / 110)
    assert out.loc["BatchNorm1d", "tensors_none"] == 1.0


def test_census_of_a_probe_result():
    torch.manual_seed(0)
    out = inv.census(inv.probe(ConvBNClassifier(), torch.randn(4, 3, 6, 6)))
    assert out.loc["Conv2d", "params_channel"] == 1.0
    assert out.loc["Linear", "params_none"] == 1.0
    assert list(out.columns) == list(inv.CENSUS_COLUMNS)
