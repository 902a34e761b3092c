"""Smoothing along records: the bias-corrected EMA (`ema_values`, `ema` on a frame), the centred
rolling mean (`rolling_mean`) and the window of records behind initial, final and early levels
(`default_window`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd


def default_window(num_records: int) -> int:
    """Records averaged for 'initial', 'final' and 'early' levels: max(1, min(50, n // 20))."""
    return max(1, min(50, num_records // 20))


def ema_values(values: np.ndarray, alpha: float) -> np.ndarray:
    """Bias-corrected exponential moving average along axis 0, skipping NaN.

    s_t = Σ_k (1−α)^{t−k} x_k / Σ_k (1−α)^{t−k} over the finite x_k seen so far (NaN before the
    first one). t and k count records, so a NaN adds nothing but still ages the past. α = 1
    returns the values unchanged.
    """
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    x = np.asarray(values, dtype=np.float64)
    out = np.empty_like(x)
    num = np.zeros(x.shape[1:])
    den = np.zeros(x.shape[1:])
    for t in range(x.shape[0]):
        finite = np.isfinite(x[t])
        num = (1.0 - alpha) * num + np.where(finite, alpha * np.where(finite, x[t], 0.0), 0.0)
        den = (1.0 - alpha) * den + np.where(finite, alpha, 0.0)
        out[t] = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return out


def ema(
    frame: pd.DataFrame,
    alpha: float = 0.1,
    value: str | Sequence[str] = "value",
    order: str = "step",
    keys: Sequence[str] | None = None,
) -> pd.DataFrame:
    """A copy of ``frame`` with ``value`` column(s) EMA-smoothed (`ema_values`) within each series.

    Series are identified by ``keys`` (default: whichever of run, tensor, group, class, all,
    metric the frame has) and ordered by ``order``.
    """
    values = [value] if isinstance(value, str) else list(value)
    if keys is None:
        keys = [
            c for c in ("run", "tensor", "group", "class", "all", "metric") if c in frame.columns
        ]
    out = frame.sort_values([*keys, order], kind="stable").copy()
    if out.empty:
        return out
    for column in values:
        data = out[column].to_numpy(dtype=np.float64)
        smoothed = np.empty_like(data)
        positions = (
            out.groupby(list(keys), sort=False).indices if keys else {None: np.arange(len(out))}
        )
        for index in positions.values():
            smoothed[index] = ema_values(data[index][:, None], alpha)[:, 0]
        out[column] = smoothed
    return out.sort_index()


def rolling_mean(values: np.ndarray, window: int | None) -> np.ndarray:
    """Centred rolling mean over ``window`` records along axis 0, ignoring NaN (a window of
    None, 0 or 1, or fewer than 2 records, returns the values unchanged)."""
    values = np.asarray(values, dtype=np.float64)
    if not window or window <= 1 or values.shape[0] < 2:
        return values
    import pandas as pd

    frame = pd.DataFrame(values.reshape(values.shape[0], -1))
    smoothed = frame.rolling(int(window), center=True, min_periods=1).mean().to_numpy()
    return smoothed.reshape(values.shape)
