"""Small multiples from the tidy frame, drawn with seaborn's objects interface."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from stepsize_lens.analysis.axes import run_labels
from stepsize_lens.analysis.compare import DEFAULT_METRICS
from stepsize_lens.analysis.frames import stack
from stepsize_lens.analysis.sets import set_name
from stepsize_lens.analysis.smoothing import rolling_mean
from stepsize_lens.plots import _series as S
from stepsize_lens.plots._style import (
    METRIC_LABELS,
    OKABE_ITO,
    PANEL_HEIGHT,
    STYLE,
    WIDTH,
    style,
)

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from stepsize_lens.run import Run

LOG_METRICS = frozenset({"angular_update", "effective_lr", "relative_update", "update_norm"})
UNSMOOTHED = frozenset({"weight_norm", "channel_weight_norm"})  # smooth already


def facet_frame(
    runs: Sequence[Run],
    metrics: Sequence[str],
    by: str = "class",
    classes: pd.Series | Mapping[str, str] | None = None,
    on: str = "step",
    smooth: int | str | None = "auto",
) -> pd.DataFrame:
    """The rows `metric_facets` draws: `analysis.stack` (run, x, <by>, metric, value: the mean
    over each set's tensors per record), each series of a per-step metric smoothed by a centred
    rolling mean over ``smooth`` records ("auto": records/40), non-positive values of the
    log-scaled metrics (`LOG_METRICS`) dropped, long series thinned to `_series.MAX_POINTS`."""
    frame = stack(runs, by=by, metrics=list(metrics), classes=classes, on=on)
    if frame.empty:
        return frame
    values = frame["value"].to_numpy(dtype=np.float64).copy()
    keep = np.zeros(len(frame), dtype=bool)
    for (_, _, metric), rows in frame.groupby(["run", by, "metric"], sort=False).indices.items():
        if metric not in UNSMOOTHED:
            values[rows] = rolling_mean(values[rows], S.window_for(rows.size, smooth))
        keep[rows[S.thin(rows.size)]] = True
    frame = frame.assign(value=values)
    ok = np.isfinite(values) & np.isfinite(frame["x"].to_numpy(dtype=np.float64))
    ok &= ~(frame["metric"].isin(LOG_METRICS).to_numpy() & ~(values > 0))
    return frame[keep & ok].reset_index(drop=True)


def metric_facets(
    runs: Run | Sequence[Run],
    metrics: Sequence[str] = DEFAULT_METRICS,
    by: str = "class",
    classes: pd.Series | Mapping[str, str] | None = None,
    on: str = "step",
    smooth: int | str | None = "auto",
) -> Figure:
    """A grid of small multiples: one row per metric, one column per set of tensors (``by``:
    class, invariant, group or all), one colour per run; each line is the mean over the set's
    tensors per record (`facet_frame`). Rows share their y axis, so columns compare directly;
    the effective-step metrics are on a log scale. ``on="epoch"`` uses each run's logged epoch.

    Built with `seaborn.objects` on a figure made without pyplot (`Plot.on`), in the house
    style; seaborn is imported only here.
    """
    import matplotlib
    import seaborn.objects as so
    from matplotlib.figure import Figure

    runs = S.as_runs(runs)
    metrics = list(metrics)
    frame = facet_frame(runs, metrics, by, classes, on, smooth)
    labels = run_labels(runs)
    keys = list(dict.fromkeys(frame[by])) if not frame.empty else []
    shown = [m for m in metrics if m in set(frame["metric"])] if not frame.empty else []
    theme = {key: matplotlib.rcParamsDefault[key] for key in so.Plot.config.theme}
    theme.update(STYLE)
    with style():
        fig = Figure(
            figsize=(WIDTH, max(PANEL_HEIGHT, 0.85 * PANEL_HEIGHT * len(shown))),
            layout="constrained",
        )
        if frame.empty:
            ax = fig.subplots()
            ax.text(0.5, 0.5, "nothing recorded", ha="center", va="center", transform=ax.transAxes)
            return fig
        colors = so.Nominal(
            [OKABE_ITO[i % len(OKABE_ITO)] for i in range(len(labels))], order=labels
        )
        plot = (
            so.Plot(frame, x="x", y="value", color="run")
            .facet(col=by, row="metric", order={"col": keys, "row": shown})
            .share(x=True, y="row")
            .add(so.Line(linewidth=1.2))
            .scale(color=colors)
            .label(x=on, y="", color="run")
            .theme(theme)
            .on(fig)
        )
        with warnings.catch_warnings():
            # seaborn 0.13 passes pandas a keyword that pandas 3 deprecates
            warnings.filterwarnings("ignore", message="The copy keyword is deprecated")
            plot.plot()
        for i, ax in enumerate(fig.axes[: len(shown) * len(keys)]):
            row, col = divmod(i, len(keys))
            ax.set_title(set_name(by, keys[col]) if row == 0 else "")
            ax.set_ylabel(METRIC_LABELS.get(shown[row], shown[row]) if col == 0 else "")
            if shown[row] in LOG_METRICS:
                ax.set_yscale("log")
        if fig.legends:  # seaborn's legend sits outside the constrained layout: move it below
            (legend,) = fig.legends
            handles, names = legend.legend_handles, [t.get_text() for t in legend.get_texts()]
            fig.legends.clear()
            fig.legend(handles, names, loc="outside lower center", ncols=min(len(names), 6))
        fig.suptitle(
            f"Per record: the mean over the tensors of each column (by {by})",
            fontsize=8,
            color="0.3",
        )
    return fig
