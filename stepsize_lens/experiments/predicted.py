"""The theory's predictions as the experiments read them: curves over the scale-invariant tensors
and how well they agree with what was measured.

    predicted_series(run, classes=None) -> metric -> (steps, predicted, measured)
    agreement(curve, window=SECOND_HALF) -> mean predicted ÷ mean measured inside the window
    window_mean(steps, values, window)   -> mean over the records inside the window

Windows are fractions of the run's last step: (0.5, 1.0) is its second half. Agreement is a
ratio of means, not a mean of ratios: near the end of a schedule that decays to zero both the
predicted and the measured angular update approach 0 and their per-record ratio is noise.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SECOND_HALF = (0.5, 1.0)


def window_mean(steps: Any, values: Any, window: tuple[float, float]) -> float:
    """Mean of ``values`` over the records whose step lies in ``window`` × the last step (NaN
    when none does)."""
    steps = np.asarray(steps, dtype=np.float64)
    if steps.size == 0:
        return float("nan")
    inside = (steps >= window[0] * steps.max()) & (steps <= window[1] * steps.max())
    return float(np.mean(np.asarray(values, dtype=np.float64)[inside])) if inside.any() else np.nan


def predicted_series(run: Any, classes: Any = None) -> dict[str, tuple[Any, Any, Any]]:
    """`analysis.predict` over the run's scale-invariant tensors taken as one set: metric →
    (steps, predicted, measured). ``classes``: the tensors' invariance classes (default: the
    paper's test on the recorded gradients). Empty when the theory has no prediction (no
    invariant tensor, or an optimizer family without one)."""
    from stepsize_lens.analysis import predict

    frame = predict(run, by="invariant", classes=classes)
    out = {}
    for metric, part in frame.groupby("metric", sort=False):
        out[str(metric)] = (
            part["step"].to_numpy(),
            part["predicted"].to_numpy(),
            part["measured"].to_numpy(),
        )
    return out


def agreement(curve: tuple[Any, Any, Any], window: tuple[float, float] = SECOND_HALF) -> float:
    """Predicted ÷ measured: the ratio of their means over the records in ``window``."""
    steps, predicted, measured = curve
    return window_mean(steps, predicted, window) / window_mean(steps, measured, window)
