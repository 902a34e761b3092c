"""The x axis of a run's records and what several runs share: the step or the logged epoch
(`x_axis`, `epochs`, `x_of_steps`), interpolation inside the known range (`interp_inside`), the
last value of a logged scalar (`last_logged`) and unique run labels (`run_labels`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from stepsize_lens.run import Run


def epochs(run: Run, scalar: str = "epoch") -> np.ndarray:
    """Fractional epoch of every record from a user-logged scalar (``lens.log(epoch=e)``).

    Linear interpolation of the logged (step, value) pairs at each record's step; NaN outside
    the logged range. Raises ValueError if the run has no such scalar.
    """
    steps_logged, values_logged = (
        run.scalar(scalar) if scalar in run.scalar_names else (np.zeros(0), np.zeros(0))
    )
    if steps_logged.size == 0:
        known = ", ".join(run.scalar_names) or "none"
        raise ValueError(f"run {run.label!r} has no logged scalar {scalar!r} (logged: {known})")
    xs = steps_logged.astype(np.float64)
    ys = values_logged.astype(np.float64)
    order = np.argsort(xs, kind="stable")
    return interp_inside(run.steps.astype(np.float64), xs[order], ys[order])


def interp_inside(x_new: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Linear interpolation of (x ascending, y) at ``x_new``; NaN outside [x[0], x[-1]] and
    everywhere when ``x`` is empty."""
    x_new = np.asarray(x_new, dtype=np.float64)
    if x.size == 0:
        return np.full(x_new.shape, np.nan)
    out = np.interp(x_new, x, y)
    out[(x_new < x[0]) | (x_new > x[-1])] = np.nan
    return out


def last_logged(run: Run, name: str) -> float:
    """The last value of a user-logged scalar (``lens.log(name=...)``), NaN if never logged."""
    if name not in run.scalar_names:
        return float("nan")
    _, values = run.scalar(name)
    return float(values[-1]) if values.size else float("nan")


def x_axis(run: Run, on: str = "step", scalar: str = "epoch") -> np.ndarray:
    """Per record: the step (``on="step"``) or the logged epoch (``on="epoch"``, `epochs`)."""
    if on == "step":
        return run.steps.astype(np.float64)
    if on == "epoch":
        return epochs(run, scalar)
    raise ValueError(f"on must be 'step' or 'epoch', not {on!r}")


def x_of_steps(run: Run, steps: pd.Series, on: str = "step", scalar: str = "epoch") -> np.ndarray:
    """The `x_axis` value (float64) of each step in ``steps`` (steps of non-skipped records)."""
    keep = ~run.skipped.astype(bool)
    lookup = dict(zip(run.steps[keep].tolist(), x_axis(run, on, scalar)[keep].tolist()))
    return steps.map(lookup).to_numpy(dtype=np.float64)


def run_labels(runs: Sequence[Run]) -> list[str]:
    """Labels of several runs, made unique by suffixing #2, #3... to repeats."""
    seen: dict[str, int] = {}
    labels = []
    for run in runs:
        label = run.label
        seen[label] = seen.get(label, 0) + 1
        labels.append(label if seen[label] == 1 else f"{label}#{seen[label]}")
    return labels
