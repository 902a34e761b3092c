"""Figures of the reproduced experiments, in the house style of `stepsize_lens.plots`.

One function per figure, each returning a matplotlib `Figure` built without pyplot::

    toy2d_figure(runs)          ‖w_t‖ and angle(w_t, w*) per step for the 2D toy's methods
    toy3d_figure(runs)          radius ‖w_t‖ per iteration and the path of (w1/w3, w2/w3) over
                                the Rosenbrock contours, for the 3D toy's methods
    digits_seeds_figure(runs)   mean ± std over seeds of the scale-invariant tensors' relative
                                norm and angular update, and the final test accuracy

The digits runs' own figures (paper panel, norm growth, effective step) come from
`stepsize_lens.plots`; save any figure with `stepsize_lens.plots.save_figure`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from stepsize_lens.analysis.axes import last_logged
from stepsize_lens.analysis.sets import is_invariant, set_mean, tensor_classes
from stepsize_lens.analysis.smoothing import rolling_mean
from stepsize_lens.plots import OKABE_ITO, style
from stepsize_lens.plots._series import window_for
from stepsize_lens.plots._style import WIDTH, figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from stepsize_lens.experiments.toys import RosenbrockTrajectory, ToyTrajectory
    from stepsize_lens.run import Run

ANGLE_FLOOR = 1e-6

TOY2D_LABELS = {
    "sgd": "SGD",
    "momentum(beta=0.9)": "SGD momentum β=0.9",
    "momentum(beta=0.99)": "SGD momentum β=0.99",
    "sgdp(beta=0.9)": "SGDP β=0.9",
}
TOY3D_LABELS = {
    "gd": "GD",
    "momentum": "GD + momentum",
    "momentum_wd": "GD + momentum + weight decay",
    "momentum_projection": "GD + momentum + projection",
}


TOY2D_COLORS = {
    "sgd": OKABE_ITO[0],
    "momentum(beta=0.9)": OKABE_ITO[1],
    "momentum(beta=0.99)": OKABE_ITO[4],
    "sgdp(beta=0.9)": OKABE_ITO[2],
}
TOY3D_COLORS = {
    "gd": OKABE_ITO[0],
    "momentum": OKABE_ITO[1],
    "momentum_wd": OKABE_ITO[4],
    "momentum_projection": OKABE_ITO[2],
}


def _colors(runs: Mapping[str, object], known: Mapping[str, str]) -> dict[str, str]:
    spare = iter(c for c in OKABE_ITO if c not in known.values())
    return {method: known.get(method) or next(spare) for method in runs}


def _label(method: str, labels: Mapping[str, str]) -> str:
    return labels.get(method, method)


def toy2d_figure(runs: Mapping[str, ToyTrajectory]) -> Figure:
    """Two panels over steps: ‖w_t‖ (log scale, from 1) and the angle between w_t and w*
    (radians, log scale, cut at 1e-6: below that arccos of a float64 cosine is rounding)."""
    colors = _colors(runs, TOY2D_COLORS)
    with style():
        fig, (norm_ax, angle_ax) = figure(2, height=2.6)
        for method, run in runs.items():
            color = colors[method]
            steps = np.arange(len(run.norms))
            label = f"{_label(method, TOY2D_LABELS)}: ‖w‖ → {run.final_norm:.2f}"
            norm_ax.plot(steps, run.norms, color=color, label=label)
            angles = np.where(run.angles > ANGLE_FLOOR, run.angles, np.nan)
            angle_ax.plot(steps, angles, color=color)
        lr = next(iter(runs.values())).params["lr"]
        norm_ax.set_yscale("log")
        norm_ax.set_title("Weight norm ‖w_t‖ (‖w_0‖ = 1)")
        norm_ax.set_ylabel("‖w‖")
        angle_ax.set_yscale("log")
        angle_ax.set_ylim(bottom=ANGLE_FLOOR)
        angle_ax.set_title("Angle to the optimum w*")
        angle_ax.set_ylabel("radians")
        for ax in (norm_ax, angle_ax):
            ax.set_xlabel("step")
        handles, names = norm_ax.get_legend_handles_labels()
        fig.legend(handles, names, loc="outside lower center", ncols=2)
        fig.suptitle(
            f"2D toy: minimise −cos(w, w*) from 90° away, lr {lr:g}", fontsize=9, color="0.3"
        )
    return fig


def toy3d_figure(runs: Mapping[str, RosenbrockTrajectory]) -> Figure:
    """Top: radius ‖w_t‖ and distance of (w1/w3, w2/w3) to the optimum (1, 1) per iteration
    (log-scaled iterations). Bottom, one panel per method: the path of (w1/w3, w2/w3) over
    log-spaced contours of r(x, y) = (1 − x)² + 100 (y − x²)², a dot every 10% of the
    iterations (start: circle, optimum: star)."""
    from stepsize_lens.experiments.toys import rosenbrock

    colors = _colors(runs, TOY3D_COLORS)
    with style():
        from matplotlib.figure import Figure

        fig = Figure(figsize=(WIDTH, 5.4), layout="constrained")
        top, bottom = fig.subfigures(2, 1, height_ratios=(1.0, 1.05))
        radius_ax, distance_ax = top.subplots(1, 2)
        path_axes = np.atleast_1d(bottom.subplots(1, len(runs), sharex=True, sharey=True))
        paths = [run.path for run in runs.values()]
        lo = np.min([p.min(axis=0) for p in paths], axis=0)
        hi = np.max([p.max(axis=0) for p in paths], axis=0)
        pad = 0.1 * (hi - lo)
        xs = np.linspace(lo[0] - pad[0], hi[0] + pad[0], 300)
        ys = np.linspace(lo[1] - pad[1], hi[1] + pad[1], 300)
        grid_x, grid_y = np.meshgrid(xs, ys)
        surface = rosenbrock(grid_x, grid_y)
        levels = np.logspace(-1, 3.5, 10)
        for ax, (method, run) in zip(path_axes, runs.items()):
            color = colors[method]
            label = _label(method, TOY3D_LABELS)
            iterations = np.arange(1, len(run.radius) + 1)
            radius_ax.plot(iterations, run.radius, color=color, label=label)
            distance = np.hypot(run.path[:, 0] - 1.0, run.path[:, 1] - 1.0)
            distance_ax.plot(iterations, np.maximum(distance, 1e-12), color=color)
            ax.contour(grid_x, grid_y, surface, levels=levels, colors="0.8", linewidths=0.5)
            ax.plot(run.path[:, 0], run.path[:, 1], color=color, linewidth=1.0)
            marks = np.linspace(0, len(run.path) - 1, 11).astype(int)[1:]
            ax.plot(run.path[marks, 0], run.path[marks, 1], "o", color=color, markersize=2.5)
            ax.plot(*run.path[0], "o", color="black", markersize=5, fillstyle="none")
            ax.plot(1.0, 1.0, "*", color="black", markersize=7)
            ax.set_title(label.replace("GD + momentum + ", "momentum +\n"), fontsize=7)
            ax.set_xlabel("w1 / w3")
            ax.grid(False)
        path_axes[0].set_ylabel("w2 / w3")
        path_axes[0].set_xlim(xs[0], xs[-1])
        path_axes[0].set_ylim(ys[0], ys[-1])
        radius_ax.set_title("Radius ‖w_t‖ (‖w_0‖ = 1)")
        radius_ax.set_ylabel("‖w‖")
        distance_ax.set_title("Distance of (w1/w3, w2/w3) to (1, 1)")
        distance_ax.set_ylabel("distance")
        distance_ax.set_yscale("log")
        for ax in (radius_ax, distance_ax):
            ax.set_xscale("log")
            ax.set_xlabel("iteration")
        handles, names = radius_ax.get_legend_handles_labels()
        top.legend(handles, names, loc="outside lower center", ncols=len(names))
        params = next(iter(runs.values())).params
        fig.suptitle(
            f"3D scale-invariant Rosenbrock r(w1/w3, w2/w3), lr {params['lr']:g}, "
            f"{params['steps']:g} iterations",
            fontsize=9,
            color="0.3",
        )
    return fig


def _invariant_series(run: Run, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Steps and the mean of ``metric`` over the run's scale-invariant tensors per record."""
    return set_mean(run, metric, is_invariant(tensor_classes(run)))


def digits_seeds_figure(runs: Mapping[str, Sequence[Run]]) -> Figure:
    """Label → the runs of one optimizer over seeds (same steps recorded). Three panels: the
    scale-invariant tensors' mean ‖w_t‖/‖w_0‖ and mean angular update (smoothed over
    records/40, log scale), each as mean over seeds with a ± std band, and the final test
    accuracy per seed with its mean."""
    with style():
        fig, (norm_ax, angle_ax, acc_ax) = figure(3, height=2.6)
        lowest = np.inf
        for i, (label, group) in enumerate(runs.items()):
            color = OKABE_ITO[i % len(OKABE_ITO)]
            norms, angles, steps = [], [], None
            for run in group:
                steps, norm = _invariant_series(run, "weight_norm")
                norms.append(norm / norm[0])
                angles.append(_invariant_series(run, "angular_update")[1])
            window = window_for(len(steps), "auto")
            for ax, series in ((norm_ax, norms), (angle_ax, angles)):
                stacked = np.vstack(
                    [rolling_mean(s, window if ax is angle_ax else 1) for s in series]
                )
                mean, std = stacked.mean(axis=0), stacked.std(axis=0, ddof=0)
                ax.plot(steps, mean, color=color, label=label)
                if ax is angle_ax:
                    lowest = min(lowest, float(np.nanmin(mean)))
                if len(group) > 1:
                    lower = np.maximum(mean - std, mean * 0.2) if ax is angle_ax else mean - std
                    ax.fill_between(steps, lower, mean + std, color=color, alpha=0.2, lw=0)
            accuracy = [last_logged(run, "test_accuracy") for run in group]
            acc_ax.plot(np.full(len(accuracy), i), accuracy, "o", color=color, alpha=0.5, ms=3)
            acc_ax.plot([i - 0.3, i + 0.3], [np.mean(accuracy)] * 2, color=color, lw=2)
        seeds = min(len(group) for group in runs.values())
        norm_ax.set_title("‖w_t‖ / ‖w_0‖, scale-invariant tensors")
        norm_ax.set_ylabel("relative norm")
        angle_ax.set_title("Angular update (effective step)")
        angle_ax.set_ylabel("radians per step")
        angle_ax.set_yscale("log")
        angle_ax.set_ylim(bottom=0.5 * lowest)
        for ax in (norm_ax, angle_ax):
            ax.set_xlabel("step")
        acc_ax.set_title("Final test accuracy")
        acc_ax.set_xticks(range(len(runs)))
        acc_ax.set_xticklabels(
            [label.replace(" momentum ", "\nmomentum ") for label in runs],
            rotation=0,
            fontsize=6,
        )
        acc_ax.yaxis.set_major_formatter(_percent())
        handles, names = norm_ax.get_legend_handles_labels()
        fig.legend(handles, names, loc="outside lower center", ncols=len(names))
        fig.suptitle(
            f"Digits CNN, mean ± std over {seeds} seed(s)" if seeds > 1 else "Digits CNN",
            fontsize=9,
            color="0.3",
        )
    return fig


def _percent():
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(xmax=1.0, decimals=1)


Curves = Mapping[str, tuple[np.ndarray, np.ndarray]]
"""metric -> (steps, values): one optimizer's predicted curves."""

TRANSFORMER_PANELS = (
    ("weight_norm", "‖w‖", "Weight norm", False),
    ("grad_norm", "‖g‖", "Gradient norm", False),
    ("scale_free", "‖g‖·‖w‖", "Scale-free gradient ‖g‖·‖w‖", False),
    ("angular_update", "radians per step", "Angular update (effective step)", False),
)


def transformer_figure(
    series: Mapping[str, Mapping[str, np.ndarray]],
    predicted: Mapping[str, Curves] | None = None,
    windows: Sequence[tuple[float, float]] = (),
    title: str = "",
) -> Figure:
    """Label → `transformer.invariant_series` (per record, means over the scale-invariant
    tensors): four panels over steps, ‖w‖, ‖g‖, ‖g‖·‖w‖ and the angular update, each
    optimizer a colour; ‖g‖, ‖g‖·‖w‖ and the angular update smoothed over records/40.
    ``predicted``: label → metric → (steps, values), drawn dashed in the same colour and
    smoothed alike (the theory's prediction). ``windows``: (lo, hi) fractions of the run
    shaded grey on the ‖g‖ panel (where the table's end ÷ mid ratios are taken)."""
    with style():
        fig, axes = figure(2, nrows=2, height=2.3)
        for i, (label, values) in enumerate(series.items()):
            color = OKABE_ITO[i % len(OKABE_ITO)]
            steps = values["steps"]
            window = window_for(len(steps), "auto")
            for ax, (metric, _, _, _) in zip(axes, TRANSFORMER_PANELS):
                smooth = 1 if metric == "weight_norm" else window
                ax.plot(steps, rolling_mean(values[metric], smooth), color=color, label=label)
                curve = (predicted or {}).get(label, {}).get(metric)
                if curve is not None:
                    p_steps, p_values = curve
                    p_values = rolling_mean(np.asarray(p_values, dtype=np.float64), smooth)
                    ax.plot(p_steps, p_values, color=color, linestyle="--", linewidth=1.0)
        last = max(float(np.max(values["steps"])) for values in series.values())
        for lo, hi in windows:
            axes[1].axvspan(lo * last, hi * last, color="0.9", zorder=0, lw=0)
        for ax, (_, ylabel, panel_title, log) in zip(axes, TRANSFORMER_PANELS):
            ax.set_title(panel_title)
            ax.set_ylabel(ylabel)
            ax.set_xlabel("step")
            if log:
                ax.set_yscale("log")
        handles, names = axes[0].get_legend_handles_labels()
        if predicted:
            from matplotlib.lines import Line2D

            handles.append(Line2D([], [], color="0.3", linestyle="--", linewidth=1.0))
            names.append("predicted")
        fig.legend(handles, names, loc="outside lower center", ncols=len(names))
        if title:
            fig.suptitle(title, fontsize=9, color="0.3")
    return fig


def schedules_figure(
    runs: Mapping[str, Mapping[str, Run]],
    predicted: Mapping[str, Mapping[str, Curves]],
) -> Figure:
    """Variant label → optimizer label → run, and the same → metric → (steps, values) of the
    theory's prediction. One row per variant: the scale-invariant tensors' mean ‖w_t‖/‖w_0‖
    and mean angular update (smoothed over records/40, log scale) per optimizer, measured solid
    and predicted dashed in the same colour, with the lr schedule (grey, right axis) behind
    the angular update."""
    labels = list(dict.fromkeys(label for group in runs.values() for label in group))
    colors = {label: OKABE_ITO[i % len(OKABE_ITO)] for i, label in enumerate(labels)}
    with style():
        fig, axes = figure(2, nrows=len(runs), height=2.1)
        axes = axes.reshape(len(runs), 2)
        for (variant, by_optimizer), (norm_ax, angle_ax) in zip(runs.items(), axes):
            lr_drawn = False
            for label, run in by_optimizer.items():
                color = colors[label]
                steps, norm = _invariant_series(run, "weight_norm")
                norm_ax.plot(steps, norm / norm[0], color=color, label=label)
                angles = _invariant_series(run, "angular_update")[1]
                window = window_for(len(steps), "auto")
                angle_ax.plot(steps, rolling_mean(angles, window), color=color, label=label)
                curves = predicted.get(variant, {}).get(label, {})
                if "weight_norm" in curves:
                    p_steps, p_norm = curves["weight_norm"]
                    norm_ax.plot(p_steps, p_norm / norm[0], color=color, ls="--", lw=1.0)
                if "angular_update" in curves:
                    angle_ax.plot(*curves["angular_update"], color=color, ls="--", lw=1.0)
                if not lr_drawn:
                    from stepsize_lens.analysis.sets import tensor_group_field

                    lr_ax = angle_ax.twinx()
                    lr = tensor_group_field(run, "lr")[:, 0]
                    lr_ax.plot(run.steps, lr / np.nanmax(lr), color="0.75", lw=0.8, zorder=0)
                    lr_ax.set_ylim(0, 1.05)
                    lr_ax.set_yticks([])
                    lr_ax.grid(False)
                    lr_drawn = True
            norm_ax.set_title(f"‖w_t‖ / ‖w_0‖ · {variant}", fontsize=8)
            angle_ax.set_title("angular update (lr in grey)", fontsize=8)
            angle_ax.set_yscale("log")
            norm_ax.set_ylabel("relative norm")
            angle_ax.set_ylabel("radians per step")
        for ax in axes[-1]:
            ax.set_xlabel("step")
        entries: dict[str, Any] = {}
        for ax in axes[:, 1]:
            for handle, name in zip(*ax.get_legend_handles_labels()):
                entries.setdefault(name, handle)
        from matplotlib.lines import Line2D

        entries["predicted"] = Line2D([], [], color="0.3", linestyle="--", linewidth=1.0)
        fig.legend(list(entries.values()), list(entries), loc="outside lower center", ncols=6)
        fig.suptitle(
            "Digits CNN under decaying schedules, scale-invariant tensors: measured (solid) and "
            "predicted (dashed)",
            fontsize=9,
            color="0.3",
        )
    return fig
