"""Measured norms and angular updates against the theory of `analysis.theory`, and the fall of
the effective step split into its causes (`analysis.decay_split`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from stepsize_lens.plots import _series as S
from stepsize_lens.plots._style import CLASS_COLORS, OKABE_ITO, figure, legend, style

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from stepsize_lens.analysis.theory import Forecast
    from stepsize_lens.run import Run


def _set_colors(keys: list[str]) -> dict[str, str]:
    return {k: CLASS_COLORS.get(k, OKABE_ITO[i % len(OKABE_ITO)]) for i, k in enumerate(keys)}


def _empty(axes: Any, text: str) -> None:
    for ax in axes:
        ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, wrap=True)


def theory_overlay(
    run: Run,
    classes: pd.Series | Mapping[str, str] | None = None,
    by: str = "class",
    tolerance: float = 0.25,
    smooth: int | str | None = "auto",
    forecasted: Forecast | None = None,
) -> Figure:
    """Measured against predicted, per set of scale-invariant tensors (``by``: class, group,
    tensor or invariant; means over the set).

    Left: ‖w‖; right: the angular update (log scale). Solid: measured; dashed: the recurrence
    of `analysis.predict`, which follows the recorded lr and weight decay step by step from the
    first record's norm; dotted, with a ±``tolerance`` band on the angle: the constant-lr
    equilibrium at each record's hyperparameters (absent without weight decay). An optimizer
    without a derived prediction gets a note instead of lines. ``forecasted``:
    `analysis.theory.forecast` of this run with these classes, if already computed.
    """
    from stepsize_lens.analysis import optimizer_family, tensor_classes
    from stepsize_lens.analysis.theory import forecast, predict

    cls = tensor_classes(run, classes)
    fc = forecasted if forecasted is not None else forecast(run, cls)
    frame = predict(
        run, by=by, classes=cls, metrics=("angular_update", "weight_norm"), forecasted=fc
    )
    family = optimizer_family(run)
    with style():
        fig, axes = figure(2)
        if frame.empty:
            _empty(axes, fc.reason or "nothing to predict")
        sets = list(dict.fromkeys(frame["set"]))
        colors = _set_colors(sets)
        window = S.window_for(len(fc.steps), smooth)
        for name in sets:
            rows = frame[frame["set"] == name]
            for ax, metric in zip(axes, ("weight_norm", "angular_update")):
                part = rows[rows["metric"] == metric]
                x = part["step"].to_numpy(dtype=np.float64)
                measured = part["measured"].to_numpy(dtype=np.float64)
                predicted = part["predicted"].to_numpy(dtype=np.float64)
                eq = part["equilibrium"].to_numpy(dtype=np.float64)
                log = metric == "angular_update"
                if log:
                    measured, predicted, eq = (
                        S.positive(measured),
                        S.positive(predicted),
                        S.positive(eq),
                    )
                color = colors[name]
                S.draw(ax, x, measured, window if log else None, color, "-", f"{name}: measured")
                S.draw(ax, x, predicted, None, color, "--", f"{name}: predicted")
                if np.isfinite(eq).any():
                    idx = S.thin(x.size)
                    ax.plot(
                        x[idx], eq[idx], color=color, ls=":", lw=1.0, label=f"{name}: equilibrium"
                    )
                    if log:
                        ax.fill_between(
                            x[idx],
                            eq[idx] * (1 - tolerance),
                            eq[idx] * (1 + tolerance),
                            color=color,
                            alpha=0.12,
                            lw=0,
                        )
        axes[0].set_title("Norm: measured, recurrence, equilibrium")
        axes[0].set_ylabel("mean ‖w‖")
        axes[1].set_title(f"Angular update (equilibrium ±{tolerance:.0%})")
        axes[1].set_ylabel("radians per step")
        if not frame.empty:
            axes[1].set_yscale("log")
        for ax in axes:
            ax.set_xlabel("step")
            legend(ax)
        fig.suptitle(f"Theory for the {family} family ({run.label})", fontsize=8, color="0.3")
    return fig


PARTS = (
    ("total", "Δθ / Δθ early", "#000000", "-"),
    ("norm", "norm growth: (‖w‖ early/‖w‖)^k", OKABE_ITO[3], "--"),
    ("lr", "lr: η/η early", OKABE_ITO[0], ":"),
    ("gradient", "scale-free gradient (the rest)", OKABE_ITO[2], "-."),
)


def decay_split(
    run: Run,
    by: str = "class",
    classes: pd.Series | Mapping[str, str] | None = None,
    smooth: int | str | None = "auto",
    max_sets: int = 3,
) -> Figure:
    """Why the effective step fell, per invariance class (``by="class"``, up to ``max_sets``
    panels) or for the scale-invariant tensors together (``"invariant"``; all tensors when none
    is): the angular update relative to its early level and the three factors it is the
    product of (`analysis.split.split_series`): the norm-growth part (‖w‖_early/‖w‖)^k,
    the premature decay the paper is about (k = 2 for SGD-like updates, 1 for adaptive ones),
    the lr part η/η_early, and the scale-free gradient's part, the rest. Log scale; below 1 a
    factor shrank the step."""
    from stepsize_lens.analysis import tensor_classes
    from stepsize_lens.analysis.sets import is_invariant
    from stepsize_lens.analysis.split import norm_power, split_series

    if by not in ("class", "invariant"):
        raise ValueError(f"by must be 'class' or 'invariant', not {by!r}")
    cls = tensor_classes(run, classes)
    scoped = by if is_invariant(cls).any() else "all"
    frame = split_series(run, by=scoped, classes=cls)
    if scoped == "class":
        frame = frame[frame["set"].isin(["channel", "layer"])]
    sets = list(dict.fromkeys(frame["set"]))[:max_sets] or ["(no records)"]
    power = norm_power(run)
    keep = ~run.skipped.astype(bool)
    window = S.window_for(int(keep.sum()), smooth)
    with style():
        fig, axes = figure(len(sets))
        axes = np.atleast_1d(axes)
        for ax, name in zip(axes, sets):
            rows = frame[frame["set"] == name]
            for part, label, color, ls in PARTS:
                values = rows[rows["part"] == part]
                y = S.positive(values["value"].to_numpy(dtype=np.float64))
                smoothing = window if part in ("total", "gradient") else None
                S.draw(ax, values["step"].to_numpy(), y, smoothing, color, ls, label)
            ax.axhline(1.0, color="0.6", lw=0.6)
            ax.set_title(f"{name}: the fall of the effective step, split")
            ax.set_xlabel("step")
            if len(rows):
                ax.set_yscale("log")
            legend(ax)
        axes[0].set_ylabel("fraction of the early step left")
        measure = "η/‖w‖²" if power == 2 else "η/‖w‖"
        fig.suptitle(
            f"Norm-growth part measured as {measure} (k = {power}); {run.label}",
            fontsize=8,
            color="0.3",
        )
    return fig
