"""Curves over training: weight-norm growth, effective step, the paper-style panel."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from stepsize_lens.analysis.axes import run_labels
from stepsize_lens.analysis.sets import set_mean, set_name
from stepsize_lens.plots import _series as S
from stepsize_lens.plots._style import OKABE_ITO, figure, place_legend, style

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from stepsize_lens.run import Run


def norm_growth(
    runs: Run | Sequence[Run],
    by: str = "class",
    classes: pd.Series | Mapping[str, str] | None = None,
    relative: bool = False,
) -> Figure:
    """Weight norm ‖w‖ per recorded step, the mean over each set of tensors (``by``: class,
    group, tensor or all). ``relative=True`` divides each series by its first value."""
    runs = S.as_runs(runs)
    with style():
        fig, (ax,) = figure(1)
        _set_lines(ax, runs, by, classes, "weight_norm", None, relative)
        place_legend(fig, [ax])
        ax.set_ylabel("‖w_t‖ / ‖w_0‖" if relative else "‖w‖ (mean over tensors)")
        ax.set_title("Weight norm growth" + (" (relative to start)" if relative else ""))
    return fig


def effective_step(
    runs: Run | Sequence[Run],
    by: str = "class",
    classes: pd.Series | Mapping[str, str] | None = None,
    smooth: int | str | None = "auto",
) -> Figure:
    """Two log-scale panels per set of tensors: the angular update atan2(‖Δ⊥‖, ‖w‖ + Δr)
    (radians per step, the effective step) and η/‖w‖²; lr changes are marked (dotted lines, or
    a faint lr curve when the lr moves at more than 8 records). ``smooth``: rolling-mean
    window in records ("auto": records/40; None: raw)."""
    runs = S.as_runs(runs)
    with style():
        fig, axes = figure(2)
        for ax, metric in zip(axes, ("angular_update", "effective_lr")):
            _set_lines(ax, runs, by, classes, metric, smooth, False)
            S.mark_lr(ax, runs)
            ax.set_yscale("log")
        place_legend(fig, axes)
        axes[0].set_title("Angular update (effective step)")
        axes[0].set_ylabel("radians per step")
        axes[1].set_title("η / ‖w‖²")
        axes[1].set_ylabel("η / ‖w‖²")
    return fig


def _set_lines(
    ax: Any,
    runs: list[Run],
    by: str,
    classes: Any,
    metric: str,
    smooth: int | str | None,
    relative: bool,
) -> None:
    labels = run_labels(runs)
    data = [S.set_series(run, by, [metric], classes) for run in runs]
    keys = list(dict.fromkeys(k for d in data for k in d))
    styles = S.line_styles(len(runs), keys, by)
    for r, sets in enumerate(data):
        window = S.window_for(runs[r].num_records, smooth)
        for key, (steps, values) in sets.items():
            y = values[metric]
            if relative:
                first = y[np.isfinite(y)][:1]
                y = y / first[0] if first.size and first[0] != 0 else np.full_like(y, np.nan)
            if metric != "weight_norm":
                y = S.positive(y)
            name = set_name(by, key)
            color, ls = styles[(r, key)]
            S.draw(
                ax, steps, y, window, color, ls, name if len(runs) == 1 else f"{labels[r]}: {name}"
            )
    ax.set_xlabel("step")


def paper_panel(
    runs: Run | Sequence[Run],
    classes: pd.Series | Mapping[str, str] | None = None,
    smooth: int | str | None = "auto",
) -> Figure:
    """The paper-style panel, one colour per run: mean ‖w‖ and mean angular update of the
    scale-invariant tensors (all tensors if none), plus the loss and the accuracy when logged
    with ``lens.log`` (loss / train_loss; test_accuracy / val_accuracy / accuracy / ...)."""
    runs = S.as_runs(runs)
    labels = run_labels(runs)
    losses = [S.scalar(run, S.LOSS_NAMES) for run in runs]
    accuracies = [S.scalar(run, S.ACCURACY_NAMES) for run in runs]
    extra = [(t, s) for t, s in (("Loss", losses), ("Accuracy", accuracies)) if any(s)]
    with style():
        fig, axes = figure(2 + len(extra), height=2.4)
        subjects = set()
        for r, run in enumerate(runs):
            color = OKABE_ITO[r % len(OKABE_ITO)]
            mask, subject = S.invariant_mask(run, classes)
            subjects.add(subject)
            window = S.window_for(run.num_records, smooth)
            steps, norm = set_mean(run, "weight_norm", mask)
            S.draw(axes[0], steps, norm, None, color, "-", labels[r])
            steps, angle = set_mean(run, "angular_update", mask)
            S.draw(axes[1], steps, S.positive(angle), window, color, "-", None)
            for ax, (_, series) in zip(axes[2:], extra):
                if series[r] is not None:
                    name, x, y = series[r]
                    w = S.window_for(len(y), smooth) if "loss" in name else None
                    S.draw(ax, x, y, w, color, "-", None)
                    ax.set_ylabel(name.replace("_", " "))
        S.mark_lr(axes[1], runs)
        axes[0].set_title("Weight norm")
        axes[0].set_ylabel("mean ‖w‖")
        axes[1].set_title("Effective step")
        axes[1].set_ylabel("angular update (rad/step)")
        axes[1].set_yscale("log")
        for ax, (title, series) in zip(axes[2:], extra):
            ax.set_title(title)
            values = [s[2] for s in series if s is not None]
            if title == "Loss" and all(np.nanmin(v) > 0 for v in values):
                ax.set_yscale("log")
        for ax in axes:
            ax.set_xlabel("step")
        handles, names = axes[0].get_legend_handles_labels()
        fig.legend(handles, names, loc="outside lower center", ncols=min(len(names), 6))
        fig.suptitle("Mean over " + " / ".join(sorted(subjects)), fontsize=8, color="0.3")
    return fig
