"""Agreement: the recorded test against the probe, and the explanations of disagreements."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _invariance_models import NAN, make_run
from torch import nn

from stepsize_lens import invariance as inv
from stepsize_lens.errors import UserInputError


def test_agreement_lists_and_explains_disagreements():
    # numel 100, rows 10: channel threshold 0.0316, layer threshold 0.01
    tensors = [
        {"name": "ok", "shape": (10, 10), "probe_verdict": "channel"},
        {"name": "decayed", "shape": (10, 10), "probe_verdict": "channel"},
        {"name": "lucky", "shape": (10, 10), "probe_verdict": "none"},
        {"name": "rows", "shape": (10, 10), "probe_verdict": "channel"},
        {"name": "gain", "shape": (10,), "probe_verdict": "none"},
    ]
    records = 6
    # decayed: g = g_tangential + 0.01 w with |w| = 10, |g| = 1 -> cos = 0.1
    cos = np.tile([0.0, 0.1, 0.001, 0.005, 0.5], (records, 1))
    chan = np.tile([0.01, 0.3, 0.001, 0.2, NAN], (records, 1))
    weight_norm = np.tile([1.0, 10.0, 1.0, 1.0, 1.0], (records, 1))
    grad_norm = np.ones((records, 5))
    applied = np.tile([2, 0, 0, 1, -1], (records, 1))
    run = make_run(
        tensors,
        cos,
        chan,
        weight_norm=weight_norm,
        grad_norm=grad_norm,
        applied=applied,
        weight_decay=0.01,
    )
    table = inv.agreement(run)
    assert list(table.index) == ["ok", "decayed", "lucky", "rows"]  # 1-D tensors left out
    assert table.loc["ok", "agree"] and table.loc["ok", "pass_rate"] == 1.0
    assert "applied the layer view" in table.loc["ok", "explanation"]
    assert table.loc["decayed", "recorded"] == "none"
    assert "weight decay" in table.loc["decayed", "explanation"]
    assert table.loc["lucky", "recorded"] == "channel"
    assert "passed in 100%" in table.loc["lucky", "explanation"]
    assert table.loc["rows", "recorded"] == "layer"
    assert "channel test failed" in table.loc["rows", "explanation"]
    assert list(inv.disagreements(run).index) == ["decayed", "lucky", "rows"]


def test_agreement_outward_radial_gradient_without_weight_decay():
    cos = np.full((4, 1), 0.2)
    run = make_run(
        [{"name": "w", "shape": (10, 10), "probe_verdict": "layer"}],
        cos,
        np.full((4, 1), 0.5),
        weight_norm=np.ones((4, 1)),
        grad_norm=np.ones((4, 1)),
    )
    explanation = inv.agreement(run).loc["w", "explanation"]
    assert "points outward" in explanation and "non-invariant path" in explanation


def test_agreement_with_a_probe_result_and_without_verdicts():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 10, bias=False), nn.LayerNorm(10))
    result = inv.probe(model, torch.randn(4, 10))
    run = make_run([{"name": "0.weight", "shape": (10, 10)}], np.zeros((3, 1)), np.ones((3, 1)))
    table = inv.agreement(run, result)
    assert table.loc["0.weight", "probe"] == "layer" and table.loc["0.weight", "agree"]
    with pytest.raises(UserInputError, match="no probe verdicts"):
        inv.agreement(run)


@pytest.mark.slow
def test_recorded_run_with_probe_columns_end_to_end():
    import stepsize_lens
    from stepsize_lens.experiments.models import digits_cnn

    torch.manual_seed(0)
    model = digits_cnn(width=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    lens = stepsize_lens.attach(model, optimizer, path=None, schedule=1)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    for _ in range(12):
        optimizer.zero_grad()
        # an L2 penalty on one invariant weight adds a radial term to its gradient
        penalty = 5e-3 * model.block1.conv1.weight.square().sum() / 2
        (F.cross_entropy(model(x), y) + penalty).backward()
        optimizer.step()
    result = inv.probe(model, x[:8])
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for column, values in inv.probe_param_columns(model, params, result).items():
        lens.set_param_column(column, values)
    run = lens.run()
    lens.close()
    classes = inv.classify_tensors(run)
    assert (classes[[n for n in run.tensor_names if "conv" in n]] == "channel").all()
    assert classes["linear.weight"] == "none"
    table = inv.agreement(run)
    assert list(inv.disagreements(run).index) == ["block1.conv1.weight"]
    assert "points outward" in table.loc["block1.conv1.weight", "explanation"]
    assert table.loc["conv1.weight", "pass_rate"] == 1.0
