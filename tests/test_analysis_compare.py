"""Comparison of runs aligned by step or epoch: ratios of norms and effective steps per class."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _runs import DEFAULT_TENSORS, crafted_run, record_run

import stepsize_lens
from stepsize_lens.analysis import compare, compare_summary
from stepsize_lens.analysis.compare import (
    compare_windows,
    lr_share,
    norm_growth,
    premature_decay,
    schedule_windows,
)

T = len(DEFAULT_TENSORS)


def _pair():
    base = crafted_run(records=100, weight_norm=1.0, angular_update=0.02, label="sgd")
    # the other run: norms twice as large, recorded every 2nd step only
    other = crafted_run(
        records=50, steps=np.arange(2, 101, 2), weight_norm=2.0, angular_update=0.005, label="sgdp"
    )
    return base, other


def test_ratios_per_class_on_the_reference_grid() -> None:
    base, other = _pair()
    table = compare([base, other])
    assert list(table.columns) == [
        "x",
        "class",
        "metric",
        "run",
        "value",
        "reference_value",
        "ratio",
    ]
    assert set(table["class"]) == {"channel", "layer", "none"}
    own = table[table.run == "sgd"]
    assert np.allclose(own["ratio"], 1.0)
    norms = table[(table.run == "sgdp") & (table.metric == "weight_norm")]
    assert norms["x"].min() == 1.0
    assert np.isnan(norms[norms.x == 1.0]["value"]).all()  # before the other run's first record
    assert np.allclose(norms[norms.x >= 2]["ratio"], 2.0, rtol=1e-6)
    eff = table[(table.run == "sgdp") & (table.metric == "effective_lr") & (table.x >= 2)]
    assert np.allclose(eff["ratio"], 0.25, rtol=1e-6)


def test_reference_by_label_and_summary() -> None:
    base, other = _pair()
    table = compare([base, other], reference="sgdp", metrics=["angular_update"])
    assert (table["x"] % 2 == 0).all()
    assert np.allclose(table[table.run == "sgd"]["ratio"], 4.0, rtol=1e-6)
    summary = compare_summary([base, other], metrics=["weight_norm"])
    row = summary[(summary.run == "sgdp") & (summary["class"] == "channel")].iloc[0]
    assert row["x"] == 100.0
    assert row["final_ratio"] == pytest.approx(2.0, rel=1e-6)
    assert row["mean_ratio"] == pytest.approx(2.0, rel=1e-6)
    with pytest.raises(ValueError, match="no run labelled"):
        compare([base, other], reference="adamw")
    with pytest.raises(ValueError, match="out of range"):
        compare([base, other], reference=2)
    with pytest.raises(ValueError, match="at least one"):
        compare([])


def test_interpolation_between_recorded_steps_and_epochs() -> None:
    base = crafted_run(
        records=11, steps=np.arange(0, 101, 10), weight_norm=lambda r: 1 + r * np.ones((1, T))
    )
    other = crafted_run(
        records=6,
        steps=np.arange(0, 101, 20),
        weight_norm=lambda r: 1 + 2 * r * np.ones((1, T)),
        scalars={"epoch": ([0, 100], [0.0, 1.0])},
    )
    table = compare([base, other], metrics=["weight_norm"], by="all")
    other_values = table[table.run == "crafted#2"].set_index("x")["value"]
    # other is linear in step with base's slope: exact at shared steps, interpolated between
    assert np.allclose(other_values.to_numpy(), 1 + np.arange(0, 101, 10) / 10)
    base_epoch = crafted_run(
        records=11,
        steps=np.arange(0, 101, 10),
        weight_norm=lambda r: 1 + r * np.ones((1, T)),
        scalars={"epoch": ([0, 100], [0.0, 1.0])},
    )
    by_epoch = compare([base_epoch, other], metrics=["weight_norm"], by="all", on="epoch")
    assert np.allclose(by_epoch["x"].unique(), np.linspace(0, 1, 11))
    assert np.allclose(by_epoch["ratio"], 1.0)


def test_smoothing_before_alignment() -> None:
    rng = np.random.default_rng(0)
    noisy = crafted_run(
        records=200, angular_update=0.02 * (1 + 0.3 * rng.standard_normal((200, T)))
    )
    steady = crafted_run(records=200, angular_update=0.02, label="steady")
    raw = compare([steady, noisy], metrics=["angular_update"], by="all")
    smooth = compare([steady, noisy], metrics=["angular_update"], by="all", alpha=0.05)
    tail = lambda t: t[(t.run != "steady") & (t.x > 100)]["ratio"]  # noqa: E731
    assert tail(smooth).std() < 0.5 * tail(raw).std()


@pytest.mark.slow
def test_sgd_vs_sgdp_on_recorded_runs(tmp_path) -> None:
    """Same model and data: SGDP's projection keeps the scale-invariant norms smaller."""
    sgd = record_run(
        tmp_path / "sgd.pt", lambda p: torch.optim.SGD(p, lr=0.5, momentum=0.9), steps=60
    )
    sgdp = record_run(
        tmp_path / "sgdp.pt", lambda p: stepsize_lens.SGDP(p, lr=0.5, momentum=0.9), steps=60
    )
    summary = compare_summary([sgd, sgdp], metrics=["weight_norm", "effective_lr"])
    invariant = summary[(summary.run == "SGDP") & summary["class"].isin(["channel", "layer"])]
    assert len(invariant) >= 1
    assert (invariant[invariant.metric == "weight_norm"]["final_ratio"] < 1).all()
    assert (invariant[invariant.metric == "effective_lr"]["final_ratio"] > 1).all()


# --------------------------------------------------------------------------------------------
# Schedule-aware comparison
# --------------------------------------------------------------------------------------------


def _warmup_cosine(records: int, warmup: int, floor: float = 0.0) -> np.ndarray:
    """lr per record: linear warmup to 0.1, then cosine down to ``floor``·0.1."""
    t = np.arange(records, dtype=np.float64)
    ramp = (t + 1) / warmup
    cosine = floor + (1 - floor) * 0.5 * (1 + np.cos(np.pi * (t - warmup) / (records - warmup)))
    return 0.1 * np.where(t < warmup, ramp, cosine)


def _scheduled(lr: np.ndarray, label: str, **kwargs):
    groups = {"lr": np.stack([lr, lr], axis=1)}
    return crafted_run(records=len(lr), groups=groups, label=label, **kwargs)


def test_schedule_windows_warmup_peak_decay_and_the_tail():
    lr = _warmup_cosine(100, warmup=10)
    share = lr / lr.max()
    windows = schedule_windows(share)
    first_high = int(np.argmax(share >= 0.9))
    assert set(windows[:first_high]) <= {"warmup", ""} and "warmup" in windows[:first_high]
    assert (windows[share >= 0.9] == "peak").all()
    after = np.arange(100) >= first_high
    assert (windows[after & (share < 0.9) & (share >= 0.1)] == "decay").all()
    assert (windows[share < 0.1] == "").all() and (share < 0.1).sum() > 5
    # step decay: 1, 0.1 (kept: the boundary, up to rounding), 0.01 (left out)
    steps = np.repeat([0.1, 0.1 * 0.1, 0.1 * 0.01], 10) / 0.1
    assert list(schedule_windows(steps)) == ["peak"] * 10 + ["decay"] * 10 + [""] * 10
    # a constant lr: thirds
    assert list(schedule_windows(np.ones(9))) == ["early"] * 3 + ["middle"] * 3 + ["late"] * 3


def test_lr_share_takes_each_group_over_its_own_peak():
    lr = np.stack([np.linspace(0.2, 0.02, 10), np.linspace(1.0, 0.5, 10)], axis=1)
    run = crafted_run(records=10, groups={"lr": lr})
    x, share = lr_share(run)
    assert np.array_equal(x, np.arange(1, 11))
    assert np.allclose(share, np.maximum(lr[:, 0] / 0.2, lr[:, 1] / 1.0))
    flat = crafted_run(records=5, groups={"lr": 0.0})
    assert np.array_equal(lr_share(flat)[1], np.ones(5))  # no lr known: nothing is off


def test_windows_and_summary_never_compare_where_the_lr_is_about_zero():
    records = 100
    lr = _warmup_cosine(records, warmup=10)
    tail = lr / lr.max() < 0.1
    angle = 0.02 * np.ones((records, T))
    base = _scheduled(lr, "ref", angular_update=angle)
    # twice the reference's effective step wherever the lr counts; 100x where it is ~0
    other_angle = np.where(tail[:, None], 100.0, 2.0) * angle
    other = _scheduled(lr, "other", angular_update=other_angle)
    windows = compare_windows([base, other], metrics=["angular_update"], by="all")
    assert list(dict.fromkeys(windows["window"])) == ["active", "warmup", "peak", "decay"]
    mine = windows[windows.run == "other"]
    assert np.allclose(mine["ratio"], 2.0)
    assert (mine["x_last"] <= np.flatnonzero(~tail).max() + 1).all()
    active = mine[mine.window == "active"].iloc[0]
    assert active["points"] == (~tail).sum()
    summary = compare_summary([base, other], metrics=["angular_update"], by="all")
    row = summary[summary.run == "other"].iloc[0]
    assert row["x"] == np.flatnonzero(~tail).max() + 1  # the last step where the lr counts
    assert row["final_ratio"] == pytest.approx(2.0) and row["mean_ratio"] == pytest.approx(2.0)


def test_norm_growth_reads_the_peak_as_well_as_the_end():
    bump = lambda r: (1 + np.sin(np.pi * r / 99)) * np.ones((1, T))  # noqa: E731
    run = crafted_run(records=100, weight_norm=bump, label="bump")
    growth = norm_growth([run], by="all")
    row = growth.iloc[0]
    assert row["first"] == pytest.approx(1.0) and row["last"] == pytest.approx(1.0, abs=1e-6)
    assert row["peak"] == pytest.approx(2.0, rel=1e-3) and row["peak_step"] in (50, 51)
    assert row["peak_growth"] == pytest.approx(2.0, rel=1e-3)
    assert row["last_growth"] == pytest.approx(1.0, abs=1e-6)


def test_premature_decay_per_set_and_its_tensor_count():
    records = 100
    grow = lambda r: 1 + 0.5 * r / (records - 1) * np.ones((1, T))  # noqa: E731
    back = lambda r: 1 + 0.5 * np.sin(np.pi * r / (records - 1)) * np.ones((1, T))  # noqa: E731
    runs = [
        crafted_run(records=records, weight_norm=grow, label="grows"),
        crafted_run(records=records, weight_norm=back, label="bump"),
        crafted_run(records=records, weight_norm=1.0, label="flat"),
    ]
    table = premature_decay(runs, by="invariant").set_index("run")
    # the norm-growth part over smoothing.default_window(100) = 5 records at each end
    late = np.mean(1 + 0.5 * np.arange(95, 100) / 99)
    early = np.mean(1 + 0.5 * np.arange(5) / 99)
    assert table.loc["grows", "norm_part"] == pytest.approx((late / early) ** 2, rel=1e-6)
    assert list(table["verdict"]) == ["premature", "transient", "none"]
    assert table.loc["bump", "peak_norm_part"] >= 1.5 > table.loc["bump", "norm_part"]
    assert table.loc["grows", "premature_tensors"] == 3  # the three scale-invariant tensors
    assert table.loc["flat", "premature_tensors"] == 0
    assert (table["tensors"] == 3).all()
