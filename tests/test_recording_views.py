"""The live paper test (untested without a gradient) and the view AdamP/SGDP applied."""

from __future__ import annotations

import math

import torch
from torch import nn

from stepsize_lens._schema import METRICS, View
from stepsize_lens.recording.views import ShapeTable, applied_views, live_test_views


def test_live_test_views():
    # three 2-D tensors of 4 rows x 25: channel threshold 0.1/5 = 0.02, layer 0.1/10 = 0.01
    table = {"numel": [100, 100, 100, 100], "rows": [4, 4, 4, 4], "ndim": [2, 2, 2, 1]}
    block = torch.full((len(METRICS), 4), math.nan, dtype=torch.float64)
    block[METRICS.index("channel_cos_grad_max")] = torch.tensor([0.01, 0.5, 0.5, math.nan])
    block[METRICS.index("cos_grad")] = torch.tensor([0.001, 0.005, 0.5, 0.0])
    has_grad = torch.tensor([True, True, True, True])
    views = live_test_views(block, ShapeTable(table, torch.device("cpu")), has_grad, 0.1)
    assert views.tolist() == [View.CHANNEL, View.LAYER, View.NONE, View.UNTESTED]
    views = live_test_views(
        block, ShapeTable(table, torch.device("cpu")), torch.tensor([False, True, True, True]), 0.1
    )
    assert views[0] == View.UNTESTED


def test_applied_views_read_optimizer_state():
    params = [nn.Parameter(torch.zeros(2, 2)) for _ in range(3)]
    state = {params[0]: {"projection": torch.tensor(1)}, params[1]: {"step": 3}}
    assert applied_views(state, params, torch.device("cpu")).tolist() == [1.0, -1.0, -1.0]
    assert applied_views({}, params, torch.device("cpu")).tolist() == [-1.0, -1.0, -1.0]
