"""Several runs side by side (e.g. SGD vs SGDP, AdamW vs AdamP), aligned by step or epoch.

Each run is reduced per set of tensors (`frames.reduce`, default per invariance class, each run
classified on its own unless ``classes`` is given), then every run's series is put on the
*reference* run's x values (steps, or user-logged epochs) by linear interpolation inside that
run's own x range (NaN outside; exact where both runs recorded the same step). The ratio
value / reference value then says, per class, how much larger the norms or the effective steps
of a run are than the reference's at the same point of training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from stepsize_lens.analysis.frames import ema_values, interp_inside, reduce, run_labels, x_of_steps

if TYPE_CHECKING:
    import pandas as pd

    from stepsize_lens.run import Run

DEFAULT_METRICS: tuple[str, ...] = ("weight_norm", "angular_update", "effective_lr")


def reference_index(runs: Sequence[Run], reference: int | str) -> int:
    """The position in ``runs`` of the reference run: ``reference`` is an index (negative counts
    from the end) or a label (`frames.run_labels`, so repeated labels carry #2, #3...).
    ValueError when no run matches."""
    labels = run_labels(runs)
    if isinstance(reference, str):
        if reference not in labels:
            raise ValueError(f"no run labelled {reference!r}; runs: {', '.join(labels)}")
        return labels.index(reference)
    if not -len(runs) <= reference < len(runs):
        raise ValueError(f"reference index {reference} out of range for {len(runs)} runs")
    return reference % len(runs)


def _series(
    run: Run,
    by: str,
    metrics: Sequence[str],
    reducer: str,
    on: str,
    classes: pd.Series | Mapping[str, str] | None,
    alpha: float | None,
    scalar: str,
) -> dict[tuple[object, str], tuple[np.ndarray, np.ndarray]]:
    """(key, metric) → (x sorted, values) for one run."""
    wide = reduce(run, by=by, metrics=metrics, reducer=reducer, form="wide", classes=classes)
    wide["_x"] = x_of_steps(run, wide["step"], on, scalar)
    out = {}
    for key, part in wide.groupby(by, sort=False):
        x = part["_x"].to_numpy(dtype=np.float64)
        order = np.argsort(x, kind="stable")
        x = x[order]
        for metric in metrics:
            values = part[metric].to_numpy(dtype=np.float64)[order]
            if alpha is not None:
                values = ema_values(values[:, None], alpha)[:, 0]
            ok = np.isfinite(x) & np.isfinite(values)
            out[(key, metric)] = (x[ok], values[ok])
    return out


def compare(
    runs: Sequence[Run],
    metrics: Sequence[str] = DEFAULT_METRICS,
    by: str = "class",
    on: str = "step",
    reference: int | str = 0,
    reducer: str = "mean",
    classes: pd.Series | Mapping[str, str] | None = None,
    alpha: float | None = None,
    scalar: str = "epoch",
) -> pd.DataFrame:
    """Tidy comparison on the reference run's x grid.

    Columns: x, <by>, metric, run, value, reference_value, ratio (value / reference_value; 1 for
    the reference itself). ``reference``: index or label of the reference run. ``alpha``: EMA
    smoothing of each series before aligning (angular updates are noisy step to step).
    ``on="epoch"`` uses the ``scalar`` each run logged with ``lens.log(epoch=...)``.
    """
    import pandas as pd

    if len(runs) == 0:
        raise ValueError("compare needs at least one run")
    labels = run_labels(runs)
    ref = reference_index(runs, reference)
    metrics = list(metrics)
    series = [_series(run, by, metrics, reducer, on, classes, alpha, scalar) for run in runs]
    parts = []
    for (key, metric), (ref_x, ref_values) in series[ref].items():
        for label, run_series in zip(labels, series):
            x, values = run_series.get((key, metric), (np.array([]), np.array([])))
            aligned = interp_inside(ref_x, x, values)
            with np.errstate(invalid="ignore", divide="ignore"):
                ratio = np.where(
                    ref_values != 0, aligned / np.where(ref_values != 0, ref_values, 1.0), np.nan
                )
            parts.append(
                pd.DataFrame(
                    {
                        "x": ref_x,
                        by: [key] * len(ref_x),
                        "metric": metric,
                        "run": label,
                        "value": aligned,
                        "reference_value": ref_values,
                        "ratio": ratio,
                    }
                )
            )
    if not parts:
        return pd.DataFrame(columns=["x", by, "metric", "run", "value", "reference_value", "ratio"])
    return pd.concat(parts, ignore_index=True)


def compare_summary(
    runs: Sequence[Run],
    metrics: Sequence[str] = DEFAULT_METRICS,
    by: str = "class",
    on: str = "step",
    reference: int | str = 0,
    reducer: str = "mean",
    classes: pd.Series | Mapping[str, str] | None = None,
    alpha: float | None = None,
    scalar: str = "epoch",
) -> pd.DataFrame:
    """Per run, set and metric: values and ratios at the last x the run shares with the reference.

    Columns: run, <by>, metric, x (that last shared x), value, reference_value, final_ratio (at
    that x), mean_ratio (geometric mean of the ratio over all shared x where both are > 0).
    """
    import pandas as pd

    table = compare(runs, metrics, by, on, reference, reducer, classes, alpha, scalar)
    rows = []
    for (label, key, metric), part in table.groupby(["run", by, "metric"], sort=False):
        ok = part[
            np.isfinite(part["value"].to_numpy(float))
            & np.isfinite(part["reference_value"].to_numpy(float))
        ]
        if ok.empty:
            continue
        last = ok.iloc[ok["x"].to_numpy().argmax()]
        positive = ok[(ok["value"] > 0) & (ok["reference_value"] > 0)]
        mean_ratio = (
            float(np.exp(np.log(positive["ratio"].to_numpy(float)).mean()))
            if len(positive)
            else np.nan
        )
        rows.append(
            {
                "run": label,
                by: key,
                "metric": metric,
                "x": float(last["x"]),
                "value": float(last["value"]),
                "reference_value": float(last["reference_value"]),
                "final_ratio": float(last["ratio"]),
                "mean_ratio": mean_ratio,
            }
        )
    return pd.DataFrame(
        rows,
        columns=["run", by, "metric", "x", "value", "reference_value", "final_ratio", "mean_ratio"],
    )
