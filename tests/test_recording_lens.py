"""The lens: never perturbs training, survives every edge case, records what it should."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _lens_models import batches as _batches
from _lens_models import small_model as _model
from _lens_models import train as _train
from torch import nn

import stepsize_lens
from stepsize_lens.schedules import every


@pytest.mark.parametrize(
    "make_optimizer",
    [
        pytest.param(lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), id="sgd-momentum"),
        pytest.param(lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.05), id="adamw"),
    ],
)
def test_observing_never_perturbs_training(make_optimizer, tmp_path):
    plain = _model()
    _train(plain, make_optimizer(plain.parameters()), 50)
    observed = _model()
    optimizer = make_optimizer(observed.parameters())
    with stepsize_lens.attach(
        observed, optimizer, path=tmp_path / "run.pt", schedule=every(1)
    ) as lens:
        _train(observed, optimizer, 50, lens)
    for a, b in zip(plain.state_dict().values(), observed.state_dict().values()):
        assert torch.equal(a, b)
    run = stepsize_lens.load(tmp_path / "run.pt")
    assert run.num_records == 50
    assert list(run.steps) == list(range(1, 51))
    assert set(run.scalars["name"]) == {"loss"}


def test_run_file_contents(tmp_path):
    model = _model()
    optimizer = torch.optim.SGD(
        [
            {"params": list(model[0].parameters()), "lr": 0.1, "weight_decay": 1e-4},
            {"params": [p for m in list(model)[1:] for p in m.parameters()], "lr": 0.05},
        ],
        momentum=0.9,
    )
    lens = stepsize_lens.attach(
        model, optimizer, path=tmp_path / "run.pt", schedule=every(2), label="demo"
    )
    _train(model, optimizer, 6, lens)
    lens.close()
    raw = torch.load(tmp_path / "run.pt", weights_only=True)
    assert raw["format"] == "stepsize_lens/run" and raw["version"] == 2
    assert all(t.dtype == torch.float32 for t in raw["metrics"].values())
    run = stepsize_lens.load(tmp_path / "run.pt")
    assert run.label == "demo" and run.meta["closed"] is True
    assert run.meta["optimizer"]["class"] == "SGD"
    assert run.meta["schedule"] == "every(2)"
    assert list(run.steps) == [2, 4, 6]
    params = run.params
    assert list(params["name"][:2]) == ["0.weight", "0.bias"]
    assert params.loc[0, "module_type"] == "Conv2d" and params.loc[0, "shape"] == [8, 3, 3, 3]
    assert list(params["group"].unique()) == [0, 1]
    groups = run.groups
    assert set(groups["lr"]) == {0.1, 0.05}
    assert groups.loc[groups.group == 0, "weight_decay"].iloc[0] == 1e-4
    assert (groups["momentum"] == 0.9).all() and groups["beta1"].isna().all()
    tidy = run.frame()
    assert len(tidy) == 3 * run.num_tensors * len(run.metric_names)
    assert set(tidy.columns) == {"step", "tensor", "group", "metric", "value"}
    wide = run.frame("wide")
    assert len(wide) == 3 * run.num_tensors and "angular_update" in wide
    # conv weights feeding BatchNorm pass the paper's channel test; biases are untested (1-D)
    assert (run.view("test_view")[:, 0] == 1).all()
    assert (run.view("test_view")[:, 1] == -1).all()


def test_edge_cases_record_nan_never_raise(tmp_path):
    torch.manual_seed(0)
    shared = nn.Linear(4, 4)
    model = nn.ModuleDict(
        {"a": shared, "b": shared, "zero": nn.Linear(4, 4), "unused": nn.Linear(4, 4)}
    )
    nn.init.zeros_(model["zero"].weight)
    optimizer = torch.optim.SGD(
        [
            {"params": list(shared.parameters()) + list(model["zero"].parameters())},
            {"params": list(model["unused"].parameters())},
        ],
        lr=0.1,
        momentum=0.9,
    )
    lens = stepsize_lens.attach(model, optimizer, path=tmp_path / "run.pt", schedule=1)
    x = torch.randn(3, 4)

    def step(bad: float | None = None):
        optimizer.zero_grad(set_to_none=True)
        out = model["a"](x) + model["b"](x) + model["zero"](x)
        out.sum().backward()
        if bad is not None:
            shared.weight.grad[0, 0] = bad
        optimizer.step()

    step()
    step(float("nan"))
    step(float("inf"))
    extra = nn.Linear(4, 2)
    optimizer.add_param_group({"params": list(extra.parameters()), "lr": 0.01})
    extra(x).sum().backward()
    step()
    lens.close()
    run = stepsize_lens.load(tmp_path / "run.pt")
    names = run.tensor_names
    assert names.count("a.weight") == 1 and "b.weight" in run.params.loc[0, "aliases"]
    assert run.num_tensors == 8 and run.num_records == 4
    zero = names.index("zero.weight")
    assert math.isnan(run.metric("effective_lr")[0, zero])  # ‖w‖ = 0
    assert math.isnan(run.metric("cos_grad")[0, zero])
    assert run.metric("weight_norm")[0, zero] == 0
    unused = names.index("unused.weight")
    assert math.isnan(run.metric("grad_norm")[0, unused])  # grad is None
    weight = names.index("a.weight")
    assert math.isnan(run.metric("grad_norm")[1, weight])
    assert math.isinf(run.metric("grad_norm")[2, weight])
    # tensors added later: NaN before they existed, recorded after
    assert np.isnan(run.metric("weight_norm")[:3, 6:]).all()
    assert np.isfinite(run.metric("weight_norm")[3, 6:]).all()
    assert [e["kind"] for e in run.events] == ["params_added"]
    assert run.group_field("lr").shape == (4, 3)


def test_detach_stops_recording_and_close_is_idempotent(tmp_path):
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    lens = stepsize_lens.attach(model, optimizer, path=tmp_path / "run.pt", schedule=1)
    _train(model, optimizer, 2)
    lens.detach()
    _train(model, optimizer, 2)
    lens.close()
    lens.close()
    assert stepsize_lens.load(tmp_path / "run.pt").num_records == 2


def test_default_schedule_records_sparsely(tmp_path):
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    lens = stepsize_lens.attach(model, optimizer, path=None)
    for _ in range(130):
        optimizer.step()  # no grads: the schedule, not the math, is under test
    assert list(lens.run().steps) == list(range(1, 100)) + [100, 110, 120, 130]
    lens.close()


def test_channels_last_parameters_match_contiguous(tmp_path):
    results = []
    for memory_format in (torch.contiguous_format, torch.channels_last):
        model = _model().to(memory_format=memory_format)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        lens = stepsize_lens.attach(model, optimizer, path=None, schedule=1)
        _train(model, optimizer, 3)
        results.append(lens.run().metric("angular_update"))
        lens.close()
    # conv bias before BatchNorm has a round-off-sized gradient: compare with an absolute floor
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5, atol=1e-6)


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, torch, stepsize_lens
    from torch import nn
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    lens = stepsize_lens.attach(model, opt, path=sys.argv[1], schedule=1, flush_every=0.0)
    step = 0
    while True:
        step += 1
        loss = model(torch.randn(4, 8)).pow(2).mean()
        opt.zero_grad(); loss.backward(); opt.step()
        print(f"flushed {lens.num_records}", flush=True)
    """
)


@pytest.mark.slow
def test_sigkill_leaves_last_flushed_run_loadable(tmp_path):
    path = tmp_path / "run.pt"
    script = tmp_path / "train.py"
    script.write_text(KILL_SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(stepsize_lens.__file__).parents[1])},
    )
    last = 0
    deadline = time.monotonic() + 120
    assert proc.stdout is not None
    for line in proc.stdout:
        last = int(line.split()[1])
        if last >= 40 or time.monotonic() > deadline:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert last >= 40
    run = stepsize_lens.load(path)
    assert run.num_records >= last
    assert list(run.steps) == list(range(1, run.num_records + 1))
    assert run.meta["closed"] is False


def test_probe_inputs_store_verdicts_in_params_table(tmp_path):
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, _ = next(_batches(1))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    lens = stepsize_lens.attach(model, optimizer, path=tmp_path / "run.pt", probe_inputs=x)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])
    _train(model, optimizer, 2)
    lens.close()
    params = stepsize_lens.load(tmp_path / "run.pt").params.set_index("name")
    assert params.loc["0.weight", "probe_verdict"] == "channel"  # conv -> BatchNorm
    assert params.loc["7.weight", "probe_verdict"] == "none"  # the classifier
