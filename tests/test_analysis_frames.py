"""Frames: per tensor / group / class, reducers, tidy and wide, EMA, epochs and stacking."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _runs import DEFAULT_TENSORS, Tensor, crafted_run

from stepsize_lens.analysis import frames

TENSORS = (
    Tensor("a.weight", (2, 3), 0, "channel"),  # numel 6
    Tensor("b.weight", (4, 6), 0, "channel"),  # numel 24
    Tensor("c.weight", (5, 2), 1, "layer"),  # numel 10
    Tensor("d.bias", (5,), 1, "none"),  # numel 5
)


def _run(**kwargs):
    weight = np.array([[1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0], [3.0, 6.0, 9.0, 12.0]])
    return crafted_run(tensors=TENSORS, records=3, weight_norm=weight, **kwargs)


def test_classes_come_from_the_paper_test_or_an_override() -> None:
    run = _run()
    assert frames.tensor_classes(run).tolist() == ["channel", "channel", "layer", "none"]
    override = frames.tensor_classes(run, {"a.weight": "layer"})
    assert override.tolist() == ["layer", "none", "none", "none"]
    assert override.index.tolist() == run.tensor_names


def test_tensor_frame_tidy_and_wide() -> None:
    run = _run()
    tidy = frames.tensor_frame(run, metrics=["weight_norm", "effective_lr"])
    assert list(tidy.columns) == [
        "run",
        "step",
        "tensor",
        "group",
        "class",
        "numel",
        "metric",
        "value",
    ]
    assert len(tidy) == 3 * 4 * 2
    row = tidy[(tidy.step == 2) & (tidy.tensor == "c.weight") & (tidy.metric == "weight_norm")]
    assert (
        row["value"].item() == 6.0 and row["class"].item() == "layer" and row["numel"].item() == 10
    )
    wide = frames.tensor_frame(run, form="wide")
    assert {"weight_norm", "angular_update", "test_view", "applied_view", "skipped"} <= set(
        wide.columns
    )
    assert len(wide) == 12
    with pytest.raises(ValueError, match="form"):
        frames.tensor_frame(run, form="long")


def test_reducers_mean_weighted_median() -> None:
    run = _run()
    mean = frames.reduce(run, by="all", metrics=["weight_norm"], form="wide")
    assert mean["weight_norm"].tolist() == pytest.approx([2.5, 5.0, 7.5])
    weighted = frames.reduce(
        run, by="all", metrics=["weight_norm"], reducer="weighted", form="wide"
    )
    expected = (6 * 1 + 24 * 2 + 10 * 3 + 5 * 4) / 45
    assert weighted["weight_norm"].iloc[0] == pytest.approx(expected)
    median = frames.reduce(run, by="group", metrics=["weight_norm"], reducer="median", form="wide")
    assert median[median.group == 0]["weight_norm"].tolist() == pytest.approx([1.5, 3.0, 4.5])
    with pytest.raises(ValueError, match="reducer"):
        frames.reduce(run, reducer="max")


def test_reduce_by_class_and_group_tidy() -> None:
    run = _run()
    by_class = frames.reduce(run, by="class", metrics=["weight_norm", "angular_update"])
    assert list(by_class.columns) == ["run", "step", "class", "metric", "value", "tensors"]
    assert set(by_class["class"]) == {"channel", "layer", "none"}
    channel = by_class[(by_class["class"] == "channel") & (by_class.metric == "weight_norm")]
    assert channel["value"].tolist() == pytest.approx([1.5, 3.0, 4.5])
    assert (channel["tensors"] == 2).all()
    by_group = frames.reduce(run, by="group", form="wide")
    assert sorted(by_group["group"].unique()) == [0, 1]
    by_tensor = frames.reduce(run, by="tensor", metrics=["weight_norm"], form="wide")
    assert len(by_tensor) == 12
    with pytest.raises(ValueError, match="by"):
        frames.reduce(run, by="module")


def test_reduction_ignores_nan_and_skipped_records() -> None:
    weight = np.array([[1.0, np.nan, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0], [3.0, 6.0, 9.0, 12.0]])
    run = crafted_run(tensors=TENSORS, records=3, weight_norm=weight, skipped=[False, True, False])
    wide = frames.reduce(run, by="class", metrics=["weight_norm"], form="wide")
    channel = wide[wide["class"] == "channel"]
    assert channel["step"].tolist() == [1, 3]  # the skipped step is left out
    assert channel["weight_norm"].tolist() == pytest.approx([1.0, 4.5])
    with_skipped = frames.reduce(
        run, by="all", metrics=["weight_norm"], form="wide", include_skipped=True
    )
    assert len(with_skipped) == 3 and np.isnan(with_skipped["weight_norm"].iloc[1])
    assert np.isnan(frames.reduce_values(np.full((1, 3), np.nan), "weighted", np.ones(3))[0])
    assert np.isnan(frames.reduce_values(np.full((1, 3), np.nan), "median")[0])


def test_ema_values_and_frame_smoothing() -> None:
    values = np.array([1.0, np.nan, 3.0, 3.0])
    out = frames.ema_values(values[:, None], alpha=0.5)[:, 0]
    # bias-corrected: the first value is kept; a NaN adds nothing but still ages the past
    assert out[0] == 1.0 and out[1] == 1.0
    assert out[2] == pytest.approx((0.25 * 0.5 * 1 + 0.5 * 3) / (0.25 * 0.5 + 0.5))
    assert np.array_equal(
        frames.ema_values(values[:, None], 1.0)[:, 0],
        np.array([1.0, np.nan, 3.0, 3.0]),
        equal_nan=True,
    )
    with pytest.raises(ValueError, match="alpha"):
        frames.ema_values(values[:, None], 0.0)
    run = _run()
    tidy = frames.reduce(run, by="class", metrics=["weight_norm"])
    smooth = frames.ema(tidy, alpha=0.5)
    assert smooth.index.equals(tidy.index)
    channel = smooth[smooth["class"] == "channel"]["value"].to_numpy()
    assert channel == pytest.approx(
        [
            1.5,
            (0.25 * 1.5 + 0.5 * 3.0) / 0.75,
            frames.ema_values(np.array([[1.5], [3.0], [4.5]]), 0.5)[2, 0],
        ]
    )


def test_epochs_interpolate_logged_scalar() -> None:
    run = crafted_run(tensors=DEFAULT_TENSORS, records=10, scalars={"epoch": ([2, 6], [0.0, 1.0])})
    epochs = frames.epochs(run)
    assert np.isnan(epochs[0])  # step 1 is before the first logged point
    assert epochs[1] == 0.0 and epochs[3] == pytest.approx(0.5) and epochs[5] == 1.0
    assert np.isnan(epochs[9])
    with pytest.raises(ValueError, match="no logged scalar 'epoch'"):
        frames.epochs(crafted_run(tensors=DEFAULT_TENSORS, records=2))


def test_stack_labels_runs_uniquely_and_adds_x() -> None:
    first = crafted_run(tensors=TENSORS, records=4, label="sgd")
    second = crafted_run(
        tensors=TENSORS, records=4, label="sgd", scalars={"epoch": ([1, 4], [0.0, 3.0])}
    )
    stacked = frames.stack([first, second], by="class", metrics=["weight_norm"])
    assert set(stacked["run"]) == {"sgd", "sgd#2"}
    assert stacked["x"].equals(stacked["step"].astype(float))
    epoch = frames.stack([second], metrics=["weight_norm"], on="epoch")
    assert sorted(epoch["x"].unique()) == [0.0, 1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="on"):
        frames.stack([first], on="time")
    assert isinstance(frames.stack([]), pd.DataFrame)


def test_reduce_leaves_zero_initialised_tensors_out_of_set_means():
    from stepsize_lens._schema import METRICS
    from stepsize_lens.analysis import frames
    from stepsize_lens.run import Run, validate

    writer = _writer_with_zero_start()
    run = Run(validate(writer.to_dict()))
    classes = {"w": "none", "bias": "none"}
    wide = frames.reduce(run, by="class", metrics=["weight_norm"], form="wide", classes=classes)
    # the zero-initialised bias (norm 0 -> 0.5) is left out; w stays at 2.0
    assert wide["weight_norm"].tolist() == [2.0, 2.0]
    alone = frames.reduce(run, by="tensor", metrics=["weight_norm"], form="wide", classes=classes)
    assert alone.loc[alone["tensor"] == "bias", "weight_norm"].tolist() == [0.0, 0.5]
    assert len(METRICS) == 13


def _writer_with_zero_start():
    import math

    import torch

    from stepsize_lens._schema import GROUP_FIELDS, METRICS, VIEWS
    from stepsize_lens.run import RunWriter

    writer = RunWriter(None, {"label": "zero"})
    writer.add_params(
        [
            {"name": "w", "group": 0, "shape": [2, 2], "numel": 4, "ndim": 2, "rows": 2},
            {"name": "bias", "group": 0, "shape": [2], "numel": 2, "ndim": 1, "rows": 1},
        ]
    )
    writer.set_num_groups(1)
    for step, bias_norm in ((1, 0.0), (2, 0.5)):
        metrics = torch.full((len(METRICS), 2), math.nan)
        metrics[METRICS.index("weight_norm")] = torch.tensor([2.0, bias_norm])
        writer.append(
            step,
            float(step),
            False,
            metrics,
            torch.full((len(VIEWS), 2), -1, dtype=torch.int8),
            torch.full((len(GROUP_FIELDS), 1), 0.1, dtype=torch.float64),
        )
    return writer


def test_tidy_and_wide_frames_share_the_run_file_index_columns() -> None:
    run = _run(skipped=[False, True, False])
    keep = ~run.skipped.astype(bool)
    index = run.record_columns(keep)
    wide = frames.tensor_frame(run, form="wide")
    for name, values in index.items():
        np.testing.assert_array_equal(wide[name].to_numpy(), values)
    tidy = frames.tensor_frame(run, metrics=["weight_norm", "grad_norm"])
    np.testing.assert_array_equal(tidy["step"].to_numpy(), np.tile(index["step"], 2))
    # the same values as Run.frame on the records kept
    own = run.frame(metrics=["weight_norm", "grad_norm"])
    own = own[own["step"].isin(index["step"])].reset_index(drop=True)
    np.testing.assert_array_equal(tidy["value"].to_numpy(), own["value"].to_numpy())


def test_record_frame_repeats_per_tensor_columns_and_flattens_per_record_ones() -> None:
    run = _run()
    frame = frames.record_frame(
        run, {"per_tensor": np.arange(4.0), "per_cell": np.arange(12.0).reshape(3, 4)}
    )
    assert list(frame.columns) == ["step", "tensor", "group", "per_tensor", "per_cell"]
    assert frame["per_tensor"].tolist() == [0.0, 1.0, 2.0, 3.0] * 3
    assert frame["per_cell"].tolist() == list(np.arange(12.0))
    assert frame["tensor"].tolist()[:4] == run.tensor_names


def test_invariant_tensors_as_one_set_and_their_mean() -> None:
    run = _run(skipped=[False, True, False])
    classes = frames.tensor_classes(run)
    assert frames.is_invariant(classes).tolist() == [True, True, True, False]
    assert frames.is_invariant(["none", "layer"]).tolist() == [False, True]
    wide = frames.reduce(run, by="invariant", metrics=["weight_norm"], form="wide")
    assert wide["invariant"].tolist() == ["invariant", "invariant"]
    assert wide["weight_norm"].tolist() == pytest.approx([2.0, 6.0])  # mean of a, b, c
    steps, mean = frames.set_mean(run, "weight_norm", frames.is_invariant(classes))
    assert steps.tolist() == [1.0, 3.0] and mean.tolist() == pytest.approx([2.0, 6.0])
    _, none = frames.set_mean(run, "weight_norm", np.zeros(4, bool))
    assert np.isnan(none).all()
    nothing = frames.reduce(run, by="invariant", classes={}, form="wide")
    assert nothing.empty


def test_rolling_mean_ignores_nan() -> None:
    values = np.array([1.0, np.nan, 3.0, 5.0])
    np.testing.assert_allclose(frames.rolling_mean(values, 3), [1.0, 2.0, 4.0, 4.0])
    np.testing.assert_array_equal(frames.rolling_mean(values, None), values)
    two = np.array([[1.0, 10.0], [3.0, 30.0], [5.0, 50.0]])
    np.testing.assert_allclose(frames.rolling_mean(two, 3)[1], [3.0, 30.0])


def test_interpolation_inside_the_known_range_only() -> None:
    out = frames.interp_inside(
        np.array([0.0, 1.0, 1.5, 3.0]), np.array([1.0, 2.0]), np.array([10.0, 20.0])
    )
    assert np.isnan(out[0]) and out[1] == 10.0 and out[2] == 15.0 and np.isnan(out[3])
    assert np.isnan(frames.interp_inside(np.arange(3.0), np.array([]), np.array([]))).all()


def test_last_logged_scalar_and_unique_labels() -> None:
    run = crafted_run(tensors=TENSORS, records=2, scalars={"acc": ([1, 2], [0.5, 0.75])})
    assert frames.last_logged(run, "acc") == 0.75
    assert np.isnan(frames.last_logged(run, "loss"))
    assert frames.run_labels([run, run, _run()]) == ["crafted", "crafted#2", "crafted#3"]


SET_TENSORS = (
    Tensor("a.weight", (4, 3), 0, "channel"),
    Tensor("b.weight", (4, 3), 0, "channel"),
    Tensor("frozen.weight", (4, 3), 0, "channel"),
)


def _frozen_run(records: int = 10):
    """a and b turn at 0.02 and 0.04 rad/step; ``frozen.weight`` is in the optimizer but has no
    gradient (NaN ‖g‖, Δ = 0): it never moves."""
    angle = np.tile([0.02, 0.04, 0.0], (records, 1))
    grad = np.ones((records, 3))
    grad[:, 2] = np.nan
    update = np.tan(angle)
    return crafted_run(
        tensors=SET_TENSORS,
        records=records,
        angular_update=angle,
        overrides={"grad_norm": grad, "update_norm": update},
    )


def test_a_frozen_tensor_does_not_change_a_set_mean() -> None:
    run = _frozen_run()
    assert frames.frozen_tensors(run).tolist() == [False, False, True]
    assert frames.left_out_of_means(run).tolist() == [False, False, True]
    wide = frames.reduce(run, by="class", metrics=["angular_update"], form="wide")
    assert wide["angular_update"].to_numpy() == pytest.approx(0.03)  # not (0.02+0.04+0)/3
    tidy = frames.reduce(run, by="class", metrics=["angular_update"])
    assert (tidy["tensors"] == 2).all()
    _, mean = frames.set_mean(run, "angular_update", np.array([True, True, True]))
    assert mean == pytest.approx(0.03)
    # alone in its set, the frozen tensor is still shown
    alone = frames.reduce(run, by="tensor", metrics=["angular_update"], form="wide")
    assert alone.loc[alone["tensor"] == "frozen.weight", "angular_update"].tolist() == [0.0] * 10
    # a tensor that moves without a finite gradient (a non-finite one) is not frozen
    grad = np.ones((10, 3))
    grad[3, 2] = np.nan
    moving = crafted_run(tensors=SET_TENSORS, records=10, overrides={"grad_norm": grad})
    assert not frames.frozen_tensors(moving).any()


def test_one_vanishing_tensor_does_not_dominate_a_sets_effective_lr() -> None:
    """A set's η/‖w‖² is mean η / mean ‖w‖²: a tensor shrinking 1000-fold barely moves it,
    where the mean of the per-tensor ratios would rise a million-fold."""
    records = 20
    shrink = np.concatenate([np.geomspace(1.0, 1e-3, 10), np.full(10, 1e-3)])
    weight = np.stack([np.ones(records), shrink], axis=1)
    run = crafted_run(tensors=SET_TENSORS[:2], records=records, weight_norm=weight)
    per_tensor = run.metric("effective_lr").astype(np.float64)
    assert per_tensor[-1, 1] == pytest.approx(0.1 / 1e-6, rel=1e-5)
    wide = frames.reduce(run, by="class", metrics=["effective_lr", "weight_norm"], form="wide")
    want = 0.1 / np.mean(weight**2, axis=1)
    np.testing.assert_allclose(wide["effective_lr"].to_numpy(), want, rtol=1e-6)
    assert wide["effective_lr"].iloc[-1] == pytest.approx(0.2, rel=1e-5)  # η / ((1 + 1e-6) / 2)
    # one tensor alone: its own ratio
    alone = frames.reduce(run, by="tensor", metrics=["effective_lr"], form="wide")
    np.testing.assert_allclose(
        alone.loc[alone["tensor"] == "b.weight", "effective_lr"].to_numpy(), per_tensor[:, 1]
    )
    assert np.isnan(frames.set_effective_lr(np.array([[0.1, 0.1]]), np.array([[0.0, 0.0]]))[0])
