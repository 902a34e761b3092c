"""Tensor × step heat map of the effective step."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from stepsize_lens.plots._style import CLASS_COLORS, METRIC_LABELS, WIDTH, quiet_nan, style

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from stepsize_lens.run import Run


def bin_records(values: np.ndarray, max_columns: int) -> tuple[np.ndarray, np.ndarray]:
    """Average [records, tensors] into at most ``max_columns`` consecutive-record bins.

    Returns (binned [tensors, bins], start index of each bin plus the end index)."""
    n = values.shape[0]
    if n == 0:
        return np.zeros((values.shape[1], 0)), np.zeros(1, dtype=int)
    edges = np.unique(np.linspace(0, n, min(max_columns, n) + 1).astype(int))
    finite = np.isfinite(values)
    sums = np.add.reduceat(np.where(finite, values, 0.0), edges[:-1], axis=0)
    counts = np.add.reduceat(finite.astype(np.int64), edges[:-1], axis=0)
    with quiet_nan():
        binned = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return binned.T, edges


def step_heatmap(
    run: Run,
    metric: str = "angular_update",
    classes: pd.Series | Mapping[str, str] | None = None,
    max_columns: int = 400,
    max_labels: int = 60,
) -> Figure:
    """Tensor × step heat map of ``metric`` (default the angular update), log colour scale
    clipped to the 1–99% range. Consecutive records are averaged into at most ``max_columns``
    bins; a strip at the left shows each tensor's invariance class; tensor names label the
    rows when there are at most ``max_labels`` tensors."""
    from matplotlib.colors import ListedColormap, LogNorm
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    from stepsize_lens.analysis import tensor_classes

    keep = ~run.skipped.astype(bool)
    steps = run.steps[keep].astype(np.float64)
    values = run.metric(metric)[keep].astype(np.float64)
    values = np.where(values > 0, values, np.nan)
    binned, edges = bin_records(values, max_columns)
    if steps.size:
        last = steps[-1] + (steps[-1] - steps[-2] if steps.size > 1 else 1.0)
        x_edges = np.append(steps[edges[:-1]], last)
    else:
        x_edges = np.array([0.0, 1.0])
        binned = np.full((run.num_tensors, 1), np.nan)
    names = np.asarray(tensor_classes(run, classes), dtype=object)
    num = run.num_tensors
    labelled = num <= max_labels
    with style():
        height = max(2.6, 1.2 + 0.14 * num) if labelled else 4.8
        fig = Figure(figsize=(WIDTH, height), layout="constrained")
        strip, ax = fig.subplots(1, 2, width_ratios=(1, 40), sharey=True)
        finite = binned[np.isfinite(binned)]
        norm = LogNorm(*np.quantile(finite, [0.01, 0.99])) if finite.size else None
        mesh = ax.pcolormesh(
            x_edges, np.arange(num + 1), binned, norm=norm, cmap="viridis", rasterized=True
        )
        codes = np.array([list(CLASS_COLORS).index(c) for c in names], dtype=float)[:, None]
        colors = ListedColormap(list(CLASS_COLORS.values()))
        strip.pcolormesh([0, 1], np.arange(num + 1), codes, cmap=colors, vmin=-0.5, vmax=2.5)
        ax.set_ylim(num, 0)
        for a in (strip, ax):
            a.grid(False)
        strip.set_xticks([])
        if labelled:
            strip.set_yticks(np.arange(num) + 0.5, run.tensor_names, fontsize=6 if num > 30 else 7)
        else:
            strip.set_ylabel("tensor index")
        ax.tick_params(left=False, labelleft=False)
        ax.set_xlabel("step")
        label = METRIC_LABELS.get(metric, metric)
        fig.colorbar(mesh, ax=ax, label=label, pad=0.01)
        ax.set_title(f"{label[0].upper()}{label[1:]} per tensor and step")
        handles = [Patch(color=c, label=f"{n}") for n, c in CLASS_COLORS.items()]
        fig.legend(
            handles=handles,
            loc="outside lower center",
            ncols=3,
            title="invariance class (left strip)",
        )
    return fig
