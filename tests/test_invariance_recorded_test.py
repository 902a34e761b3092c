"""The paper's cosine test: live on arrays and tensors, and recomputed on a recorded run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _invariance_models import NAN, make_run, two_tensor_run

from stepsize_lens import invariance as inv
from stepsize_lens.invariance import classify_tensors, pass_rates, recorded_test_views

# --------------------------------------------------------------------------------------------
# the paper's test
# --------------------------------------------------------------------------------------------


def test_paper_test_known_cases_numpy():
    # numel 100, rows 10: channel threshold 0.1*sqrt(10/100) = 0.0316, layer threshold 0.01
    cos = np.array([0.5, 0.005, 0.5, NAN, 0.5, NAN, 0.0])
    chan = np.array([0.03, 0.5, 0.5, NAN, 0.0, 0.5, 0.0])
    ndim = np.array([2, 2, 2, 2, 4, 2, 1])
    codes = inv.paper_test(cos, chan, 100, 10, ndim)
    assert codes.dtype == np.int8
    # channel, layer, none, both NaN, channel (4-D), NaN layer but chan fails, 1-D
    assert codes.tolist() == [1, 2, 0, -1, 1, 0, -1]


def test_paper_test_threshold_is_strict_and_delta_scales():
    assert inv.paper_test(0.5, 0.0316, 100, 10, 2).item() == 1
    assert inv.paper_test(0.5, 0.0317, 100, 10, 2).item() == 0
    assert inv.paper_test(0.5, 0.0317, 100, 10, 2, delta=0.2).item() == 1
    assert inv.paper_test(0.0099, 1.0, 100, 10, 2).item() == 2
    assert inv.paper_test(-0.0101, 1.0, 100, 10, 2).item() == 0  # abs() of a signed cosine


def test_paper_test_torch_matches_numpy_and_stays_on_device():
    rng = np.random.default_rng(0)
    cos = rng.normal(0, 0.02, size=(7, 5))
    chan = np.abs(rng.normal(0, 0.05, size=(7, 5)))
    cos[0, 0] = chan[0, 0] = NAN
    numel = np.array([100, 9, 4096, 50, 8])
    rows = np.array([10, 3, 64, 1, 8])
    ndim = np.array([2, 2, 4, 3, 1])
    expected = inv.paper_test(cos, chan, numel, rows, ndim, delta=0.3)
    got = inv.paper_test(
        torch.tensor(cos, dtype=torch.float64),
        torch.tensor(chan, dtype=torch.float64),
        torch.tensor(numel),
        torch.tensor(rows),
        torch.tensor(ndim),
        delta=0.3,
    )
    assert isinstance(got, torch.Tensor) and got.dtype == torch.int8
    np.testing.assert_array_equal(got.numpy(), expected)
    # float32 cosines and plain-list sizes also work
    got32 = inv.paper_test(
        torch.tensor(cos, dtype=torch.float32), torch.tensor(chan), list(numel), rows, ndim, 0.3
    )
    assert got32.shape == (7, 5) and got32.dtype == torch.int8


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
