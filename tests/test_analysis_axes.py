"""The x axis: logged epochs, interpolation inside the known range, labels of several runs."""

from __future__ import annotations

import numpy as np
import pytest
from _runs import DEFAULT_TENSORS, FOUR_TENSORS, crafted_run, four_tensor_run

from stepsize_lens.analysis import axes


def test_epochs_interpolate_logged_scalar() -> None:
    run = crafted_run(tensors=DEFAULT_TENSORS, records=10, scalars={"epoch": ([2, 6], [0.0, 1.0])})
    epochs = axes.epochs(run)
    assert np.isnan(epochs[0])  # step 1 is before the first logged point
    assert epochs[1] == 0.0 and epochs[3] == pytest.approx(0.5) and epochs[5] == 1.0
    assert np.isnan(epochs[9])
    with pytest.raises(ValueError, match="no logged scalar 'epoch'"):
        axes.epochs(crafted_run(tensors=DEFAULT_TENSORS, records=2))


def test_interpolation_inside_the_known_range_only() -> None:
    out = axes.interp_inside(
        np.array([0.0, 1.0, 1.5, 3.0]), np.array([1.0, 2.0]), np.array([10.0, 20.0])
    )
    assert np.isnan(out[0]) and out[1] == 10.0 and out[2] == 15.0 and np.isnan(out[3])
    assert np.isnan(axes.interp_inside(np.arange(3.0), np.array([]), np.array([]))).all()


def test_last_logged_scalar_and_unique_labels() -> None:
    run = crafted_run(tensors=FOUR_TENSORS, records=2, scalars={"acc": ([1, 2], [0.5, 0.75])})
    assert axes.last_logged(run, "acc") == 0.75
    assert np.isnan(axes.last_logged(run, "loss"))
    assert axes.run_labels([run, run, four_tensor_run()]) == ["crafted", "crafted#2", "crafted#3"]
