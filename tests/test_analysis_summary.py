"""Summary: norm growth, effective-step decay at constant lr, test pass share, bad values."""

from __future__ import annotations

import numpy as np
import pytest
from _runs import DEFAULT_TENSORS, Tensor, crafted_run, healthy_run

from stepsize_lens.analysis import sets, summary

TENSORS = (
    Tensor("conv.weight", (4, 2, 3, 3), 0, "channel"),
    Tensor("lin.weight", (4, 4), 0, "layer"),
    Tensor("fc.weight", (3, 4), 1, "none"),
    Tensor("fc.bias", (3,), 1, "none"),
)


def test_constant_lr_segment() -> None:
    warmup = np.concatenate([np.linspace(0.01, 0.1, 10), np.full(30, 0.1), np.full(20, 0.01)])
    assert summary.constant_lr_segment(warmup, min_length=5) == (9, 40)
    assert summary.constant_lr_segment(np.full(8, 0.1), min_length=5) == (0, 8)
    assert summary.constant_lr_segment(np.linspace(1, 0.1, 50), min_length=5) is None
    two = np.stack([np.full(20, 0.1), np.concatenate([np.full(10, 1.0), np.full(10, 2.0)])], axis=1)
    assert summary.constant_lr_segment(two, min_length=5) == (0, 10)
    # drift inside the 1% tolerance counts as unchanged
    assert summary.constant_lr_segment(np.linspace(0.1, 0.1005, 20), min_length=10) == (0, 20)


def test_decay_crossings_only_at_constant_lr() -> None:
    steps = np.arange(1, 101)
    values = 0.1 * steps**-0.55  # falls to 1/2 at step 2^(1/0.55) = 3.5, to 1/10 at 65.8
    lr = np.full(100, 0.1)
    found = summary.decay_crossings(steps, values, lr, (0.5, 0.1), window=1)
    assert found.early == pytest.approx(0.1)
    assert found.steps[0.5] == 4 and found.steps[0.1] == 66
    assert found.segment == (1, 100)
    # the same decay caused by an lr drop at step 3 is the schedule's, not premature
    lr_drop = np.where(steps < 3, 0.1, 0.05)
    dropped = summary.decay_crossings(steps, values, lr_drop, (0.5,), window=1)
    assert dropped.segment == (3, 100)
    assert dropped.early == pytest.approx(0.1 * 3**-0.55)
    assert dropped.steps[0.5] == 11  # (s/3)^-0.55 <= 1/2 from s = 3 * 3.53
    none = summary.decay_crossings(steps, values, np.linspace(1, 0.01, 100), (0.5,), window=1)
    assert none.segment is None and none.steps[0.5] is None and np.isnan(none.early)


def test_summarize_norm_growth_and_decay_per_class_and_group() -> None:
    records = 200
    # conv: norm grows 1 -> 4 and its angular update falls accordingly; lin: steady
    growth = lambda r: np.concatenate(  # noqa: E731
        [1 + 3 * r / (records - 1), np.ones_like(r), np.ones_like(r), np.ones_like(r)], axis=1
    )
    angle = lambda r: np.concatenate(  # noqa: E731
        [
            0.04 / (1 + 3 * r / (records - 1)) ** 2,
            np.full_like(r, 0.01),
            np.full_like(r, 0.01),
            np.full_like(r, 0.01),
        ],
        axis=1,
    )
    run = crafted_run(tensors=TENSORS, records=records, weight_norm=growth, angular_update=angle)
    table = summary.summarize(run)
    assert list(table["by"]) == ["group", "group", "class", "class", "class"]
    channel = table[(table["by"] == "class") & (table["key"] == "channel")].iloc[0]
    assert channel["tensors"] == 1 and channel["numel"] == 72
    assert channel["weight_norm_initial"] == pytest.approx(1.0)
    assert channel["weight_norm_final"] == pytest.approx(4.0)
    assert channel["weight_norm_ratio"] == pytest.approx(4.0)
    assert channel["angular_update_decay"] == pytest.approx(14.5, rel=0.1)  # ~16 minus the windows
    first_ten = 1 + 3 * np.arange(10) / (records - 1)
    assert channel["effective_lr_initial"] == pytest.approx(np.mean(0.1 / first_ten**2), rel=1e-5)
    # window 10: 1/2 of the early level (mean of the first 10) around norm 1.47, 1/10 near 3.3
    assert 30 < channel["half_step"] < 45
    assert 150 < channel["tenth_step"] < 175
    assert channel["test_pass_share"] == 1.0
    layer = table[(table["by"] == "class") & (table["key"] == "layer")].iloc[0]
    assert layer["weight_norm_ratio"] == pytest.approx(1.0)
    assert layer["angular_update_decay"] == pytest.approx(1.0)
    assert layer["half_step"] is pd_na()
    none = table[(table["by"] == "class") & (table["key"] == "none")].iloc[0]
    assert none["test_pass_share"] == 0.0  # fc fails the test; the bias is never tested
    group0 = table[(table["by"] == "group") & (table["key"] == 0)].iloc[0]
    assert group0["tensors"] == 2
    assert np.isnan(group0["projected_share"])
    assert (table["nonfinite"] == 0).all() and (table["skipped"] == 0).all()


def pd_na():
    import pandas as pd

    return pd.NA


def test_tensors_that_start_at_zero_have_undefined_ratios_and_stay_out_of_set_means() -> None:
    records = 100
    r = np.arange(records, dtype=np.float64)
    # fc.bias starts at zero (a zero-initialised bias) and grows; lin.weight stops moving halfway
    weight = np.ones((records, 4))
    weight[:, 3] = 0.01 * r
    angle = np.full((records, 4), 0.01)
    angle[50:, 1] = 0.0
    angle[:, 3] = 0.5 / (1 + r)
    angle[0, 3] = np.nan  # as the lens records them: undefined at ‖w‖ = 0
    # finite gradient and update at ‖w‖ = 0; η/‖w‖² undefined there, then huge
    bias_norm = np.where(r > 0, weight[:, 3], 1.0)
    grad = np.ones((records, 4))
    grad[:, 3] = 1.0 / bias_norm
    update = weight * np.tan(np.nan_to_num(angle))
    update[0, 3] = 0.01
    eff = np.full((records, 4), 0.1)
    eff[:, 3] = np.where(r > 0, 0.1 / bias_norm**2, np.nan)
    run = crafted_run(
        tensors=TENSORS,
        records=records,
        weight_norm=weight,
        angular_update=angle,
        overrides={"effective_lr": eff, "grad_norm": grad, "update_norm": update},
    )
    assert list(sets.starts_at_zero(run.metric("weight_norm"))) == [False, False, False, True]
    table = summary.summarize(run, by=["tensor", "class", "group"])
    assert (table["nonfinite"] == 0).all()
    numbers = table.select_dtypes("number").to_numpy(dtype=np.float64, na_value=np.nan)
    assert not np.isinf(numbers).any()
    per_tensor = table[table["by"] == "tensor"].set_index("key")
    bias = per_tensor.loc["fc.bias"]
    assert bias["weight_norm_initial"] == 0.0 and np.isnan(bias["weight_norm_ratio"])
    # alone in its set, the tensor's own series still count
    assert bias["weight_norm_final"] == pytest.approx(0.99)
    assert bias["effective_lr_final"] == pytest.approx(np.mean(0.1 / (0.01 * r[-5:]) ** 2))
    assert np.isnan(per_tensor.loc["lin.weight", "angular_update_decay"])  # stopped: 0.01/0
    # in the "none" class and in group 1 it sits beside fc.weight, whose values the set shows
    fc = per_tensor.loc["fc.weight"]
    for by in ("class", "group"):
        key = "none" if by == "class" else 1
        row = table[(table["by"] == by) & (table["key"] == key)].iloc[0]
        assert row["tensors"] == 2 and row["numel"] == 15
        for column in (
            "weight_norm_initial",
            "weight_norm_ratio",
            "angular_update_initial",
            "angular_update_decay",
            "effective_lr_initial",
            "effective_lr_decay",
            "early_angular_update",
        ):
            assert row[column] == pytest.approx(fc[column]), column
    assert table[(table["by"] == "class") & (table["key"] == "none")].iloc[0][
        "effective_lr_decay"
    ] == pytest.approx(1.0)


def test_decay_after_an_lr_drop_is_not_counted() -> None:
    records = 100
    lr = np.where(np.arange(records) < 50, 0.1, 0.01)[:, None] * np.ones((1, 2))
    angle = np.where(np.arange(records) < 50, 0.02, 0.002)[:, None] * np.ones((1, 4))
    run = crafted_run(tensors=TENSORS, records=records, angular_update=angle, groups={"lr": lr})
    row = summary.summarize(run, by="class").query("key == 'channel'").iloc[0]
    assert row["angular_update_decay"] == pytest.approx(10.0)
    assert row["half_step"] is pd_na() and row["tenth_step"] is pd_na()
    assert row["constant_lr_from"] == 1 and row["constant_lr_until"] == 50


def test_projected_share_and_nonfinite_and_skipped_counts() -> None:
    records = 20
    applied = np.tile([1, 0, 0, -1], (records, 1))
    applied[:5, 1] = 2
    grad = np.ones((records, 4))
    grad[7, 0] = np.inf
    update = np.full((records, 4), 0.01)
    update[9, 1] = np.nan
    grad[3, 3] = np.nan  # no gradient and no update: a frozen tensor, not a bad value
    update[3, 3] = 0.0
    run = crafted_run(
        tensors=TENSORS,
        records=records,
        optimizer="SGDP",
        applied_view=applied,
        skipped=[r == 12 for r in range(records)],
        overrides={"grad_norm": grad, "update_norm": update},
    )
    mask = summary.nonfinite_mask(run)
    assert mask.sum() == 2 and mask[7, 0] and mask[9, 1]
    table = summary.summarize(run, by="tensor").set_index("key")
    assert table.loc["conv.weight", "projected_share"] == pytest.approx(1.0)
    assert table.loc["lin.weight", "projected_share"] == pytest.approx(5 / 19)
    assert np.isnan(table.loc["fc.bias", "projected_share"])
    assert table.loc["conv.weight", "nonfinite"] == 1 and table.loc["fc.bias", "nonfinite"] == 0
    assert (table["skipped"] == 1).all()


def test_tensors_added_later_are_not_counted_as_nonfinite() -> None:
    weight = np.ones((10, len(DEFAULT_TENSORS)))
    weight[:4, 5] = np.nan
    overrides = {
        name: np.where(np.isnan(weight), np.nan, 0.1) for name in ("grad_norm", "update_norm")
    }
    run = crafted_run(records=10, weight_norm=weight, overrides=overrides)
    assert not summary.nonfinite_mask(run).any()
    assert summary.alive_mask(run)[:4, 5].sum() == 0 and summary.alive_mask(run)[4:, 5].all()


def test_overview() -> None:
    run = healthy_run(records=50)
    info = summary.overview(run)
    assert info.optimizer == "SGD" and info.family == "sgd"
    assert info.records == 50 and info.first_step == 1 and info.last_step == 50
    assert info.class_counts == {"none": 3, "channel": 2, "layer": 1}
    assert info.skipped == 0 and info.nonfinite == 0
    assert info.numel == sum(int(np.prod(t.shape)) for t in DEFAULT_TENSORS)


def test_window_default() -> None:
    assert summary.default_window(5) == 1
    assert summary.default_window(200) == 10
    assert summary.default_window(10_000) == 50


def test_the_nonfinite_gradient_rule() -> None:
    grad = np.array([1.0, np.inf, -np.inf, np.nan, np.nan, np.nan])
    update = np.array([0.1, 0.1, 0.1, 0.0, 0.1, np.nan])
    # NaN ‖g‖ with Δ = 0 is a tensor without a gradient that the optimizer left alone
    assert summary.nonfinite_gradient(grad, update).tolist() == [
        False,
        True,
        True,
        False,
        True,
        True,
    ]


def test_lr_changes_skip_skipped_records() -> None:
    lr = np.array([0.1, 0.1, 0.1, 0.05, 0.05, 0.0504, 0.01])[:, None]
    run = crafted_run(records=7, groups={"lr": lr}, skipped=[False] * 6 + [True])
    # a 1% move is not a change; the skipped last record does not count
    assert summary.lr_changes(run).tolist() == [4]
    assert summary.lr_changes(crafted_run(records=1)).tolist() == []


def test_a_frozen_tensor_and_a_vanishing_one_do_not_skew_the_set_rows() -> None:
    """The class row of two moving tensors, one frozen tensor (no gradient, Δθ = 0) and one
    shrinking 1000-fold: angles from the moving ones only, η/‖w‖² = mean η / mean ‖w‖²."""
    tensors = (
        Tensor("a.weight", (4, 3), 0, "channel"),
        Tensor("b.weight", (4, 3), 0, "channel"),
        Tensor("frozen.weight", (4, 3), 0, "channel"),
    )
    records = 40
    angle = np.tile([0.02, 0.04, 0.0], (records, 1))
    weight = np.ones((records, 3))
    weight[:, 1] = np.concatenate([np.ones(5), np.geomspace(1.0, 1e-3, 15), np.full(20, 1e-3)])
    grad = np.ones((records, 3))
    grad[:, 2] = np.nan
    run = crafted_run(
        tensors=tensors,
        records=records,
        weight_norm=weight,
        angular_update=angle,
        overrides={"grad_norm": grad, "update_norm": weight * np.tan(angle)},
    )
    row = summary.summarize(run, by="class").set_index("key").loc["channel"]
    assert row["tensors"] == 3  # the counts include the frozen tensor
    assert row["angular_update_initial"] == pytest.approx(0.03)
    assert row["angular_update_final"] == pytest.approx(0.03)
    assert row["effective_lr_initial"] == pytest.approx(0.1, rel=1e-5)
    # the set's weights grew lighter by half: η/‖w‖² doubled, not a million-fold
    assert row["effective_lr_final"] == pytest.approx(0.1 / ((1 + 1e-6) / 2), rel=1e-5)
