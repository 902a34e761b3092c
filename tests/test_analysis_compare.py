"""Comparison of runs aligned by step or epoch: ratios of norms and effective steps per class."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _runs import DEFAULT_TENSORS, crafted_run, record_run

import stepsize_lens
from stepsize_lens.analysis import compare, compare_summary

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
