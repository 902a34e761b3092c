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
from stepsize_lens.recording.device import (
    ACCELERATOR_PATHS,
    CPU_PATHS,
    DevicePaths,
    forced_paths,
)
from stepsize_lens.recording.schedules import every


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
    assert raw["format"] == "stepsize_lens/run" and raw["version"] == 3
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


# -- leave it on at any scale ---------------------------------------------------------------------
class Mixed(nn.Module):
    """Several row lengths and dtypes: float32 convs and linears, a bfloat16 and a float64 block."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 32)
        self.low = nn.Linear(32, 24).to(torch.bfloat16)
        self.wide = nn.Linear(24, 12).to(torch.float64)
        self.embed = nn.Embedding(50, 24)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))
        h = self.low(torch.relu(self.fc(h)).to(torch.bfloat16)).float() + self.embed(tokens)
        return self.wide(h.double())


def _train_mixed(model, optimizer, steps, seed=3):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(4, 3, 6, 6, generator=gen)
        tokens = torch.randint(0, 10, (4,), generator=gen)  # rows 10..49 get no gradient
        optimizer.zero_grad(set_to_none=True)
        model(x, tokens).pow(2).mean().backward()
        optimizer.step()


def test_memory_held_is_one_copy_of_the_tracked_parameters():
    torch.manual_seed(0)
    model = Mixed()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    lens = stepsize_lens.attach(model, optimizer, path=None, schedule=1)
    tracked = sum(p.numel() * p.element_size() for p in model.parameters())
    assert lens.tracked_bytes == tracked
    assert lens.held_bytes == 0  # nothing before the first record
    _train_mixed(model, optimizer, 3)
    dtypes = {b.buffer.dtype for b in lens._snapshot.buckets}
    assert dtypes == {torch.float32, torch.bfloat16, torch.float64}
    assert tracked <= lens.held_bytes <= 1.1 * tracked
    lens.close()
    assert lens.held_bytes == 0


def test_a_record_needs_at_most_a_quarter_of_the_parameters_more():
    from stepsize_lens.experiments.models import cifar_resnet18

    torch.manual_seed(0)
    model = cifar_resnet18()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    lens = stepsize_lens.attach(model, optimizer, path=None, schedule=1)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()
    assert lens.num_records == 1
    assert lens.held_bytes <= 1.01 * lens.tracked_bytes
    assert lens._snapshot.record_bytes() <= 0.25 * lens.tracked_bytes
    lens.close()


def test_nearly_radial_rows_match_float64_brute_force():
    """Embedding rows outside the batch get pure weight decay: ‖Δ‖² − Δr² cancels there."""
    from test_recording_metrics import Capture, reference_metrics

    torch.manual_seed(0)
    model = Mixed()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-3)
    capture = Capture(optimizer)
    lens = stepsize_lens.attach(model, optimizer, path=None, schedule=1)
    _train_mixed(model, optimizer, 2)
    run = lens.run()
    lens.close()
    t = run.tensor_names.index("embed.weight")
    for record, tensors in enumerate(capture.steps):
        w, g, lr, after = tensors[t]
        ref = reference_metrics(w, g, after, lr)
        for name in ("angular_update", "channel_angular_update"):
            assert run.metric(name)[record, t] == pytest.approx(ref[name], rel=1e-5), name
    # the rows without gradient really were nearly radial
    w, _, _, after = capture.steps[0][t]
    d = (after - w).double()[10:]
    radial = (d * w.double()[10:]).sum(1) ** 2 / (w.double()[10:] ** 2).sum(1)
    assert ((d * d).sum(1) - radial).max() < 1e-6 * (d * d).sum(1).min()


@pytest.mark.parametrize(
    "paths",
    [
        DevicePaths(refine_all_rows=True),
        DevicePaths(elementwise_dots=True),
        DevicePaths(deferred_transfer=True),
        ACCELERATOR_PATHS,
    ],
    ids=["refine_all_rows", "elementwise_dots", "deferred_transfer", "all"],
)
def test_every_device_branch_forced_on_the_cpu_gives_the_same_metrics(paths):
    runs = []
    for forced in (CPU_PATHS, paths):
        torch.manual_seed(0)
        model = Mixed()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
        with forced_paths(forced):
            lens = stepsize_lens.attach(model, optimizer, path=None, schedule=1)
            _train_mixed(model, optimizer, 3)
        if forced.deferred_transfer:
            assert lens.num_records == 2  # the last record is still "on its way"
        runs.append(lens.run())
        lens.close()
    assert runs[1].num_records == 3
    for name in runs[0].metric_names:
        np.testing.assert_allclose(
            runs[1].metric(name), runs[0].metric(name), rtol=2e-6, atol=1e-9, err_msg=name
        )
    for view in ("test_view", "applied_view"):
        np.testing.assert_array_equal(runs[1].view(view), runs[0].view(view))


def test_tensors_filter(tmp_path):
    import re as regex

    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    selections = {
        "0.weight": ["0.weight"],
        "*.bias": ["0.bias", "1.bias", "5.bias", "6.bias", "7.bias"],
        regex.compile(r"^[57]\."): ["5.weight", "5.bias", "7.weight", "7.bias"],
        nn.Linear: ["5.weight", "5.bias", "7.weight", "7.bias"],
        (lambda name, p: p.ndim >= 2): ["0.weight", "5.weight", "7.weight"],
        ("0.weight", nn.LayerNorm): ["0.weight", "6.weight", "6.bias"],
    }
    for selection, names in selections.items():
        lens = stepsize_lens.attach(model, optimizer, path=None, schedule=1, tensors=selection)
        _train(model, optimizer, 2)
        run = lens.run()
        lens.close()
        assert run.tensor_names == names, selection
        assert run.num_records == 2
        assert lens.tracked_bytes == sum(
            p.numel() * 4 for n, p in model.named_parameters() if n in names
        )


def test_a_filter_that_matches_nothing_records_an_empty_run(tmp_path):
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    lens = stepsize_lens.attach(
        model, optimizer, path=tmp_path / "run.pt", schedule=1, tensors="no.such.tensor"
    )
    _train(model, optimizer, 3)
    assert lens.held_bytes == 0 and lens.tracked_bytes == 0
    lens.close()
    run = stepsize_lens.load(tmp_path / "run.pt")
    assert run.num_tensors == 0 and run.num_records == 3


def test_a_bad_filter_is_a_clear_error():
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="tensors="):
        stepsize_lens.attach(model, optimizer, path=None, tensors=3)
    with pytest.raises(TypeError, match="nn.Module class"):
        stepsize_lens.attach(model, optimizer, path=None, tensors=int)


def test_no_stale_applied_view_for_a_tensor_without_gradient():
    """Branches chosen alternately with SGDP: a branch without gradient was not projected."""
    from stepsize_lens.optim import SGDP

    torch.manual_seed(0)
    branches = nn.ModuleList(
        [nn.Sequential(nn.Linear(6, 8, bias=False), nn.LayerNorm(8)) for _ in range(2)]
    )
    optimizer = SGDP(branches.parameters(), lr=0.1, momentum=0.9)
    lens = stepsize_lens.attach(branches, optimizer, path=None, schedule=1)
    x, target = torch.randn(16, 6), torch.randn(16, 8)
    for step in range(4):
        optimizer.zero_grad(set_to_none=True)
        (branches[step % 2](x) - target).pow(2).sum().backward()
        optimizer.step()
    run = lens.run()
    lens.close()
    t = run.tensor_names.index("1.0.weight")
    assert list(run.view("test_view")[:, t]) == [-1, 2, -1, 2]
    assert list(run.view("applied_view")[:, t]) == [-1, 2, -1, 2]


def test_a_dropped_lens_keeps_nothing_alive(tmp_path):
    import gc
    import weakref

    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    lens = stepsize_lens.attach(model, optimizer, path=tmp_path / "run.pt", schedule=1)
    _train(model, optimizer, 2)
    buffer = weakref.ref(lens._snapshot.buckets[0].buffer)
    refs = [weakref.ref(obj) for obj in (model, optimizer, lens)]
    del model, optimizer, lens
    gc.collect()
    assert all(ref() is None for ref in refs) and buffer() is None
    run = stepsize_lens.load(tmp_path / "run.pt")  # saved when it was collected
    assert run.num_records == 2 and run.meta["closed"] is True


def test_attaching_a_new_lens_closes_the_old_one_and_says_so_once(tmp_path):
    import gc
    import weakref

    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    first = stepsize_lens.attach(model, optimizer, path=tmp_path / "a.pt", schedule=1)
    _train(model, optimizer, 2)
    with pytest.warns(RuntimeWarning, match="already had a lens 'SGD'.*closed it") as caught:
        second = stepsize_lens.attach(model, optimizer, path=tmp_path / "b.pt", schedule=1)
    assert len(caught) == 1
    _train(model, optimizer, 3)
    assert first.num_records == 2 and second.num_records == 3
    assert stepsize_lens.load(tmp_path / "a.pt").meta["closed"] is True
    old = weakref.ref(first)
    del first
    gc.collect()
    assert old() is None  # the optimizer no longer holds the replaced lens
    second.close()
