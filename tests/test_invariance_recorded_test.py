"""The paper's cosine test recomputed on a recorded run: views, counts, classes, pass rates."""

from __future__ import annotations

import numpy as np
import pytest
from _invariance_models import make_run, two_tensor_run

from stepsize_lens import invariance as inv
from stepsize_lens import paper_test
from stepsize_lens.invariance import classify_tensors, pass_rates, recorded_test_views


def test_the_paper_test_is_the_one_in_stepsize_lens_paper_test():
    assert inv.paper_test is paper_test.paper_test


# --------------------------------------------------------------------------------------------
# recorded test on a run: views, classes, pass rates
# --------------------------------------------------------------------------------------------


def test_recorded_views_and_classes():
    run = two_tensor_run()
    views = inv.recorded_test_views(run)
    assert views[:, 0].tolist() == [2, 2, 1, 1, 1]
    assert (views[:, 1] == -1).all()  # 1-D: never tested
    classes = inv.classify_tensors(run)
    assert classes.to_dict() == {"a": "channel", "b": "none"}
    assert classify_tensors(run).equals(classes)
    # with a small delta nothing passes
    assert inv.classify_tensors(run, delta=1e-3)["a"] == "none"


def test_classes_ignore_skipped_records_and_break_ties_toward_weaker():
    run = two_tensor_run(skipped=[False, False, False, False, True])
    counts = inv.view_counts(run)
    assert counts.loc["a", "known"] == 4
    assert counts.loc["a", "channel"] == 0.5 and counts.loc["a", "layer"] == 0.5
    assert inv.classify_tensors(run)["a"] == "layer"  # 2 vs 2: the weaker claim wins


def test_probe_column_overrides_recorded_majority():
    run = two_tensor_run(probe_verdict="none")
    assert inv.classify_tensors(run)["a"] == "none"


def test_pass_rates_running_and_windowed():
    cos = np.array([[0.0], [0.5], [0.0], [0.5], [0.0]])
    chan = np.array([[0.0], [0.5], [0.5], [0.5], [0.0]])
    run = make_run([{"name": "w", "shape": (10, 10)}], cos, chan, skipped=[0, 0, 0, 0, 1])
    running = pass_rates(run)
    assert list(running.index) == [0, 10, 20, 30, 40]
    np.testing.assert_allclose(running["w"], [1, 0.5, 2 / 3, 0.5, 0.5])
    np.testing.assert_allclose(pass_rates(run, window=2)["w"], [1, 0.5, 0.5, 0.5, 0.0])
    np.testing.assert_allclose(pass_rates(run, view="channel")["w"], [1, 0.5, 1 / 3, 0.25, 0.25])
    np.testing.assert_allclose(pass_rates(run, view="layer")["w"], [0, 0, 1 / 3, 0.25, 0.25])
    with pytest.raises(ValueError):
        pass_rates(run, view="sideways")
    with pytest.raises(ValueError):
        pass_rates(run, window=0)


def test_pass_rates_of_untested_tensors_are_nan():
    run = two_tensor_run()
    assert pass_rates(run)["b"].isna().all()
    assert recorded_test_views(run).shape == (5, 2)
