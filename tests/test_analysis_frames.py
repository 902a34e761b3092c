"""Frames: per tensor / group / class, reducers, tidy and wide, and stacking."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _runs import FOUR_TENSORS, crafted_run, four_tensor_run

from stepsize_lens.analysis import frames, sets


def test_tensor_frame_tidy_and_wide() -> None:
    run = four_tensor_run()
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
    run = four_tensor_run()
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
    run = four_tensor_run()
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
    run = crafted_run(
        tensors=FOUR_TENSORS, records=3, weight_norm=weight, skipped=[False, True, False]
    )
    wide = frames.reduce(run, by="class", metrics=["weight_norm"], form="wide")
    channel = wide[wide["class"] == "channel"]
    assert channel["step"].tolist() == [1, 3]  # the skipped step is left out
    assert channel["weight_norm"].tolist() == pytest.approx([1.0, 4.5])
    with_skipped = frames.reduce(
        run, by="all", metrics=["weight_norm"], form="wide", include_skipped=True
    )
    assert len(with_skipped) == 3 and np.isnan(with_skipped["weight_norm"].iloc[1])
    assert np.isnan(sets.reduce_values(np.full((1, 3), np.nan), "weighted", np.ones(3))[0])
    assert np.isnan(sets.reduce_values(np.full((1, 3), np.nan), "median")[0])


def test_stack_labels_runs_uniquely_and_adds_x() -> None:
    first = crafted_run(tensors=FOUR_TENSORS, records=4, label="sgd")
    second = crafted_run(
        tensors=FOUR_TENSORS, records=4, label="sgd", scalars={"epoch": ([1, 4], [0.0, 3.0])}
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
    run = four_tensor_run(skipped=[False, True, False])
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
    run = four_tensor_run()
    frame = frames.record_frame(
        run, {"per_tensor": np.arange(4.0), "per_cell": np.arange(12.0).reshape(3, 4)}
    )
    assert list(frame.columns) == ["step", "tensor", "group", "per_tensor", "per_cell"]
    assert frame["per_tensor"].tolist() == [0.0, 1.0, 2.0, 3.0] * 3
    assert frame["per_cell"].tolist() == list(np.arange(12.0))
    assert frame["tensor"].tolist()[:4] == run.tensor_names
