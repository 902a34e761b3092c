"""The house style: Okabe–Ito colours, paper-size fonts, figure factory and saving."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure

OKABE_ITO: tuple[str, ...] = (
    "#0072B2",  # blue
    "#E69F00",  # orange
    "#009E73",  # bluish green
    "#D55E00",  # vermillion
    "#CC79A7",  # reddish purple
    "#56B4E9",  # sky blue
    "#F0E442",  # yellow
    "#000000",
)
CLASS_COLORS = {"channel": "#0072B2", "layer": "#009E73", "none": "#E69F00"}
METRIC_LABELS = {  # axis labels of the metrics a figure names (others: the metric's name)
    "weight_norm": "‖w‖",
    "angular_update": "angular update (rad/step)",
    "effective_lr": "η / ‖w‖²",
}
LINESTYLES = ("-", "--", ":", "-.")
WIDTH = 7.0  # inches: a full paper text width
PANEL_HEIGHT = 2.5
STYLE: dict[str, Any] = {
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.5,
    "lines.linewidth": 1.4,
    "legend.frameon": False,
    "figure.dpi": 100,
    "savefig.dpi": 200,
    "pdf.fonttype": 3,  # matplotlib's default; 42 (TrueType) costs ~0.3 s per PDF in subsetting
    "svg.fonttype": "none",
    "axes.prop_cycle": matplotlib.cycler(color=OKABE_ITO),
}
FORMATS = ("png", "pdf", "svg")


@contextlib.contextmanager
def style() -> Iterator[None]:
    """The house style as an rc context (wrap your own figures in it to match)."""
    with matplotlib.rc_context(STYLE):
        yield


@contextlib.contextmanager
def quiet_nan() -> Iterator[None]:
    """Silence numpy's all-NaN-slice warnings (empty sets plot as gaps)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with np.errstate(all="ignore"):
            yield


def figure(
    ncols: int, nrows: int = 1, height: float = PANEL_HEIGHT, **kwargs: Any
) -> tuple[Figure, np.ndarray]:
    """A constrained-layout figure, full paper width, with a flat array of axes."""
    fig = Figure(figsize=(WIDTH, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
    return fig, axes.reshape(-1)


def legend(ax: Any, max_entries: int = 14) -> None:
    """A legend when there is something to name and not too much of it."""
    handles, labels = ax.get_legend_handles_labels()
    if 0 < len(handles) <= max_entries:
        ax.legend(handles, labels, loc="best")


def place_legend(
    fig: Figure, axes: Sequence[Any], inline_max: int = 5, max_entries: int = 16
) -> None:
    """One legend entry per label over ``axes``: inside each axes when there are at most
    ``inline_max`` entries, else once below the figure; none past ``max_entries``."""
    entries: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    if not entries or len(entries) > max_entries:
        return
    if len(entries) <= inline_max:
        for ax in axes:
            legend(ax, inline_max)
        return
    ncols = min(4, len(entries))
    fig.legend(list(entries.values()), list(entries), loc="outside lower center", ncols=ncols)


def save_figure(
    fig: Figure, path_stem: str | os.PathLike[str], formats: Sequence[str] = ("png", "pdf")
) -> list[Path]:
    """Save ``fig`` as ``<path_stem>.<format>`` for each format (png, pdf, svg); returns the
    paths. PNGs are 200 dpi; PDF and SVG keep text as text. Each file is written atomically
    (`stepsize_lens._files.atomic_write`): a symlink at its name is replaced, never followed."""
    from stepsize_lens._files import atomic_write

    stem = Path(path_stem)
    unknown = [fmt for fmt in formats if fmt not in FORMATS]
    if unknown:
        raise ValueError(f"unknown figure format(s) {unknown}; use {', '.join(FORMATS)}")
    paths = []
    with style():
        for fmt in formats:
            path = stem.with_name(f"{stem.name}.{fmt}")
            atomic_write(path, lambda handle, fmt=fmt: fig.savefig(handle, format=fmt))
            paths.append(path)
    return paths
