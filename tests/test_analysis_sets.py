"""Sets of tensors and their figures: classes, the invariant set, frozen and vanishing tensors."""

from __future__ import annotations

import numpy as np
import pytest
from _runs import Tensor, crafted_run, four_tensor_run

from stepsize_lens.analysis import frames, sets


def test_classes_come_from_the_paper_test_or_an_override() -> None:
    run = four_tensor_run()
    assert sets.tensor_classes(run).tolist() == ["channel", "channel", "layer", "none"]
    override = sets.tensor_classes(run, {"a.weight": "layer"})
    assert override.tolist() == ["layer", "none", "none", "none"]
    assert override.index.tolist() == run.tensor_names


def test_invariant_tensors_as_one_set_and_their_mean() -> None:
    run = four_tensor_run(skipped=[False, True, False])
    classes = sets.tensor_classes(run)
    assert sets.is_invariant(classes).tolist() == [True, True, True, False]
    assert sets.is_invariant(["none", "layer"]).tolist() == [False, True]
    wide = frames.reduce(run, by="invariant", metrics=["weight_norm"], form="wide")
    assert wide["invariant"].tolist() == ["invariant", "invariant"]
    assert wide["weight_norm"].tolist() == pytest.approx([2.0, 6.0])  # mean of a, b, c
    steps, mean = sets.set_mean(run, "weight_norm", sets.is_invariant(classes))
    assert steps.tolist() == [1.0, 3.0] and mean.tolist() == pytest.approx([2.0, 6.0])
    _, none = sets.set_mean(run, "weight_norm", np.zeros(4, bool))
    assert np.isnan(none).all()
    nothing = frames.reduce(run, by="invariant", classes={}, form="wide")
    assert nothing.empty


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
    assert sets.frozen_tensors(run).tolist() == [False, False, True]
    assert sets.left_out_of_means(run).tolist() == [False, False, True]
    wide = frames.reduce(run, by="class", metrics=["angular_update"], form="wide")
    assert wide["angular_update"].to_numpy() == pytest.approx(0.03)  # not (0.02+0.04+0)/3
    tidy = frames.reduce(run, by="class", metrics=["angular_update"])
    assert (tidy["tensors"] == 2).all()
    _, mean = sets.set_mean(run, "angular_update", np.array([True, True, True]))
    assert mean == pytest.approx(0.03)
    # alone in its set, the frozen tensor is still shown
    alone = frames.reduce(run, by="tensor", metrics=["angular_update"], form="wide")
    assert alone.loc[alone["tensor"] == "frozen.weight", "angular_update"].tolist() == [0.0] * 10
    # a tensor that moves without a finite gradient (a non-finite one) is not frozen
    grad = np.ones((10, 3))
    grad[3, 2] = np.nan
    moving = crafted_run(tensors=SET_TENSORS, records=10, overrides={"grad_norm": grad})
    assert not sets.frozen_tensors(moving).any()


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
    assert np.isnan(sets.set_effective_lr(np.array([[0.1, 0.1]]), np.array([[0.0, 0.0]]))[0])
