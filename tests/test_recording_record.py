"""The live feed: ``attach(..., on_record=...)``, `Lens.latest` and a record's key scalars."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _lens_models import small_model, train

import stepsize_lens
from stepsize_lens._schema import METRICS
from stepsize_lens.analysis import frames, sets
from stepsize_lens.integrations import key_scalars
from stepsize_lens.recording.device import ACCELERATOR_PATHS, forced_paths
from stepsize_lens.recording.record import Record


def _sgd(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)


def test_latest_matches_the_last_row_of_the_run():
    model = small_model()
    optimizer = _sgd(model)
    lens = stepsize_lens.attach(model, optimizer, path=None, schedule=2)
    assert lens.latest() is None
    train(model, optimizer, 5)
    record = lens.latest()
    run = lens.run()
    assert record is not None and record.step == 4 and not record.skipped
    assert record.time == run.times[-1]
    assert list(record.tensor_names) == run.tensor_names
    assert list(record.tensor_groups) == list(run.tensor_groups)
    for name in METRICS:
        np.testing.assert_array_equal(record.metrics[name].numpy(), run.metric(name)[-1])
        values = record.per_tensor(name)
        assert list(values) == run.tensor_names
        np.testing.assert_array_equal(np.array(list(values.values())), run.metric(name)[-1])
    np.testing.assert_array_equal(record.test_view.numpy(), run.view("test_view")[-1])
    np.testing.assert_array_equal(record.applied_view.numpy(), run.view("applied_view")[-1])
    np.testing.assert_array_equal(record.lr.numpy(), run.group_field("lr")[-1])
    with pytest.raises(KeyError, match="unknown metric 'angle'"):
        record.per_tensor("angle")
    kept = record.metrics["weight_norm"].clone()
    train(model, optimizer, 2)
    assert torch.equal(record.metrics["weight_norm"], kept)  # a copy: later records leave it
    assert lens.latest().step == 6
    lens.close()


def test_on_record_fires_once_per_record_in_order_with_finite_key_scalars(tmp_path):
    model = small_model()
    optimizer = _sgd(model)
    seen: list[Record] = []

    def callback(record: Record) -> None:
        assert lens.latest() is record  # what a logger asking the lens would get
        seen.append(record)

    lens = stepsize_lens.attach(model, optimizer, path=tmp_path / "run.pt", on_record=callback)
    lens.schedule = stepsize_lens.schedules.every(3)
    train(model, optimizer, 10)
    lens.close()
    run = stepsize_lens.load(tmp_path / "run.pt")
    assert [record.step for record in seen] == list(run.steps) == [3, 6, 9]
    for index, record in enumerate(seen):
        scalars = record.key_scalars
        assert scalars and all(math.isfinite(value) for value in scalars.values())
        np.testing.assert_array_equal(
            np.array(list(record.per_tensor("angular_update").values()), dtype=np.float32),
            run.metric("angular_update")[index],
        )


def test_records_from_a_device_reach_the_callback_late_but_in_order():
    """On an accelerator a record's results land a step later: the callback gets each record
    then, once, in record order (the deferred transfer, forced on the CPU)."""
    model = small_model()
    optimizer = _sgd(model)
    calls: list[tuple[int, int]] = []  # (record step, lens step at the call)
    with forced_paths(ACCELERATOR_PATHS):
        lens = stepsize_lens.attach(
            model,
            optimizer,
            path=None,
            schedule=2,
            on_record=lambda record: calls.append((record.step, lens.step)),
        )
        train(model, optimizer, 7)
        assert calls == [(2, 3), (4, 5), (6, 7)]  # each a step after it was recorded
        assert lens.latest().step == 6 and len(calls) == 3  # latest() hands nothing twice
        lens.close()
    assert [step for step, _ in calls] == list(lens.run().steps)


def test_a_raising_callback_is_reported_once_and_training_goes_on(capsys):
    model = small_model()
    optimizer = _sgd(model)
    calls: list[int] = []

    def flaky(record: Record) -> None:
        calls.append(record.step)
        raise ConnectionError(f"logger unreachable at\nstep {record.step}")

    lens = stepsize_lens.attach(model, optimizer, path=None, schedule=1, on_record=flaky)
    train(model, optimizer, 4)
    lens.close()
    assert calls == [1, 2, 3, 4]  # still called after it failed
    assert lens.callback_errors == 4 and lens.num_records == 4
    lines = [line for line in capsys.readouterr().err.splitlines() if "on_record" in line]
    assert len(lines) == 1  # reported once, on one line, naming the exception
    assert "ConnectionError: logger unreachable at step 1" in lines[0]
    assert "training goes on" in lines[0]


def test_on_close_is_called_after_the_final_save(tmp_path):
    closed: list[bool] = []

    class Logger:
        def __call__(self, record: Record) -> None:
            pass

        def on_close(self, lens) -> None:
            closed.append(stepsize_lens.load(lens.path).meta["closed"])

    model = small_model()
    optimizer = _sgd(model)
    lens = stepsize_lens.attach(model, optimizer, path=tmp_path / "run.pt", on_record=Logger())
    train(model, optimizer, 2)
    lens.close()
    lens.close()
    assert closed == [True]
    with pytest.raises(TypeError, match="on_record must be callable"):
        stepsize_lens.attach(model, optimizer, path=None, on_record="wandb")


def test_key_scalars_are_the_analysis_set_figures_of_the_run_so_far():
    """A live chart and the report agree: each ``<metric>/<set>`` is the last row of
    `frames.reduce` over the run so far. Both form a figure with `set_figures.set_figure`
    (tested on its own in test_set_figures.py); what this guards is the rest: the lens's running
    tally (`SetTally`) gives the analysis's classes, left-out tensors and sets."""
    model = small_model()
    optimizer = torch.optim.SGD(
        [
            {"params": [p for p in model.parameters() if p.ndim > 1]},
            {"params": [p for p in model.parameters() if p.ndim <= 1], "lr": 0.05},
        ],
        lr=0.1,
        momentum=0.9,
        weight_decay=1e-3,
    )
    lens = stepsize_lens.attach(model, optimizer, path=None, schedule=1)
    assert key_scalars(lens) == {}
    train(model, optimizer, 6)
    record = lens.latest()
    run = lens.run()
    scalars = record.key_scalars
    classes = sets.tensor_classes(run)
    assert record.classes == tuple(classes)
    names = ("angular_update", "weight_norm", "effective_lr")
    for by, prefix in (("class", "class_"), ("group", "group_"), ("invariant", "")):
        table = frames.reduce(run, by=by, metrics=names, form="wide")
        last = table[table["step"] == record.step]
        assert len(last) >= 1
        for _, row in last.iterrows():
            key = f"{prefix}{row[by]}"
            for name in names:
                assert scalars[f"{name}/{key}"] == pytest.approx(row[name], rel=1e-6), key
    assert {"class_none", "group_0", "group_1"} <= {
        key.split("/")[1] for key in scalars if "/" in key
    }
    tested = int((record.test_view >= 0).sum())
    assert scalars["invariant_fraction"] == int((record.test_view > 0).sum()) / tested
    prefixed = key_scalars(lens)
    assert prefixed == {f"stepsize_lens/{name}": value for name, value in scalars.items()}
    lens.close()


def _record(weight_norm, lr=(0.1,), groups=None, classes=None, left_out=None, angle=None):
    """A hand-made record of len(weight_norm) 2-D tensors (η/‖w‖² consistent with ‖w‖)."""
    weight = torch.tensor(weight_norm, dtype=torch.float32)
    count = weight.numel()
    groups = groups or (0,) * count
    lr_of = torch.tensor([lr[g] for g in groups], dtype=torch.float32)
    metrics = {name: torch.full((count,), 0.5) for name in METRICS}
    metrics["weight_norm"] = weight
    metrics["effective_lr"] = lr_of / weight**2
    metrics["angular_update"] = (
        torch.full((count,), 0.01) if angle is None else torch.tensor(angle, dtype=torch.float32)
    )
    return Record(
        step=7,
        time=0.0,
        skipped=False,
        tensor_names=tuple(f"t{i}" for i in range(count)),
        tensor_groups=tuple(groups),
        classes=tuple(classes or ("channel",) * count),
        metrics=metrics,
        views={
            "test_view": torch.full((count,), 1, dtype=torch.int8),
            "applied_view": torch.full((count,), -1, dtype=torch.int8),
        },
        lr=torch.tensor(lr, dtype=torch.float64),
        left_out=torch.zeros(count, dtype=torch.bool) if left_out is None else left_out,
    )


def test_one_vanishing_tensor_does_not_dominate_a_sets_effective_lr():
    # three tensors at ‖w‖ = 1 and one bias that shrank to 1e-3: the mean of the per-tensor
    # ratios would be ~2.5e5·η; the set's figure is mean η / mean ‖w‖² = η / 0.75
    scalars = _record([1.0, 1.0, 1.0, 1e-3]).key_scalars
    assert scalars["effective_lr/class_channel"] == pytest.approx(0.1 / ((3 + 1e-6) / 4))
    assert scalars["effective_lr/invariant"] == scalars["effective_lr/class_channel"]
    # one tensor alone: its own η/‖w‖²
    single = _record([2.0], classes=("none",)).key_scalars
    assert single["effective_lr/class_none"] == pytest.approx(0.1 / 4)
    # per group, with the group's own η
    grouped = _record([1.0, 2.0], lr=(0.1, 0.4), groups=(0, 1)).key_scalars
    assert grouped["effective_lr/group_1"] == pytest.approx(0.4 / 4)
    assert grouped["effective_lr/invariant"] == pytest.approx(0.25 / 2.5)


def test_left_out_tensors_do_not_change_a_sets_figures_unless_the_set_is_only_them():
    left_out = torch.tensor([False, False, True])
    scalars = _record([1.0, 3.0, 5.0], angle=[0.02, 0.04, 0.0], left_out=left_out).key_scalars
    assert scalars["angular_update/class_channel"] == pytest.approx(0.03)
    assert scalars["weight_norm/class_channel"] == pytest.approx(2.0)
    only = _record([5.0], angle=[0.0], left_out=torch.tensor([True])).key_scalars
    assert only["weight_norm/class_channel"] == pytest.approx(5.0)  # not an empty set


def test_a_frozen_tensor_is_left_out_of_the_live_set_figures():
    """A tensor with ``requires_grad=False`` in the optimizer never moves: it is left out of
    its set's figures (Δθ = 0 would pull the mean angular update down)."""

    def figures(freeze: bool) -> tuple[dict[str, float], Record]:
        model = small_model()
        frozen = model[5].weight  # the hidden Linear, a 2-D tensor in group 0
        frozen.requires_grad_(freeze is False)
        optimizer = _sgd(model)
        lens = stepsize_lens.attach(model, optimizer, path=None, schedule=1)
        train(model, optimizer, 3)
        record = lens.latest()
        lens.close()
        return record.key_scalars, record

    scalars, record = figures(True)
    index = record.tensor_names.index("5.weight")
    zero_start = [name in ("1.bias", "6.bias") for name in record.tensor_names]  # norm biases
    assert record.left_out.tolist() == [i == index or zero_start[i] for i in range(len(zero_start))]
    assert record.metrics["angular_update"][index] == 0 and record.classes[index] == "none"
    for key, members in (
        ("class_none", [c == "none" for c in record.classes]),
        ("group_0", [True] * len(record.classes)),
    ):
        used = [i for i, member in enumerate(members) if member and not record.left_out[i]]
        want = float(record.metrics["angular_update"][used].double().mean())
        assert scalars[f"angular_update/{key}"] == pytest.approx(want)
        with_frozen = float(record.metrics["angular_update"][used + [index]].double().mean())
        assert scalars[f"angular_update/{key}"] != pytest.approx(with_frozen)
    free_scalars, free_record = figures(False)
    assert free_record.left_out.tolist() == zero_start  # only the zero-initialised biases
    assert all(math.isfinite(value) for value in free_scalars.values())
