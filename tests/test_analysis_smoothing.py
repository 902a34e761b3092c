"""Smoothing along records: the bias-corrected EMA and the rolling mean."""

from __future__ import annotations

import numpy as np
import pytest
from _runs import four_tensor_run

from stepsize_lens.analysis import frames, smoothing


def test_ema_values_and_frame_smoothing() -> None:
    values = np.array([1.0, np.nan, 3.0, 3.0])
    out = smoothing.ema_values(values[:, None], alpha=0.5)[:, 0]
    # bias-corrected: the first value is kept; a NaN adds nothing but still ages the past
    assert out[0] == 1.0 and out[1] == 1.0
    assert out[2] == pytest.approx((0.25 * 0.5 * 1 + 0.5 * 3) / (0.25 * 0.5 + 0.5))
    assert np.array_equal(
        smoothing.ema_values(values[:, None], 1.0)[:, 0],
        np.array([1.0, np.nan, 3.0, 3.0]),
        equal_nan=True,
    )
    with pytest.raises(ValueError, match="alpha"):
        smoothing.ema_values(values[:, None], 0.0)
    run = four_tensor_run()
    tidy = frames.reduce(run, by="class", metrics=["weight_norm"])
    smooth = smoothing.ema(tidy, alpha=0.5)
    assert smooth.index.equals(tidy.index)
    channel = smooth[smooth["class"] == "channel"]["value"].to_numpy()
    assert channel == pytest.approx(
        [
            1.5,
            (0.25 * 1.5 + 0.5 * 3.0) / 0.75,
            smoothing.ema_values(np.array([[1.5], [3.0], [4.5]]), 0.5)[2, 0],
        ]
    )


def test_rolling_mean_ignores_nan() -> None:
    values = np.array([1.0, np.nan, 3.0, 5.0])
    np.testing.assert_allclose(smoothing.rolling_mean(values, 3), [1.0, 2.0, 4.0, 4.0])
    np.testing.assert_array_equal(smoothing.rolling_mean(values, None), values)
    two = np.array([[1.0, 10.0], [3.0, 30.0], [5.0, 50.0]])
    np.testing.assert_allclose(smoothing.rolling_mean(two, 3)[1], [3.0, 30.0])
