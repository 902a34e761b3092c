"""Measured norms and angular updates against the theory of `analysis.theory`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from stepsize_lens._schema import INVARIANT_CLASSES
from stepsize_lens.analysis.frames import reduce_values, rolling_mean, set_mean
from stepsize_lens.plots import _series as S
from stepsize_lens.plots._style import CLASS_COLORS, figure, legend, quiet_nan, style

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from stepsize_lens.run import Run


def theory_overlay(
    run: Run,
    classes: pd.Series | Mapping[str, str] | None = None,
    tolerance: float = 0.25,
    smooth: int | str | None = "auto",
    predictions: pd.DataFrame | None = None,
) -> Figure:
    """Measured against predicted, per invariance class (channel, layer), means over the class.

    Left: ‖w‖ with the predicted equilibrium norm (`analysis.equilibrium_predictions`); without
    weight decay, for the SGD family, the no-decay law (‖w0‖⁴ + 2κη²g̃²t)^(1/4) with each
    tensor's median measured g̃ = ‖w‖‖g‖. Right: the angular update with the equilibrium value
    (e.g. sqrt(2ηλ/(1+α)) for SGD) as a band of ±``tolerance``; without weight decay a t^(−1/2)
    guide through the mid-run value. ``predictions``: `analysis.equilibrium_predictions` of
    this run with these classes, if already computed (a report shares it with its findings).
    """
    from stepsize_lens.analysis import optimizer_family, tensor_classes
    from stepsize_lens.analysis.theory import predictions_for

    cls = tensor_classes(run, classes)
    family = optimizer_family(run)
    pred = predictions_for(run, predictions, cls, family)
    keep = ~run.skipped.astype(bool)
    steps = run.steps[keep].astype(np.float64)
    shape = (run.num_records, run.num_tensors)
    angle_pred = pred["predicted_angle"].to_numpy(dtype=np.float64).reshape(shape)[keep]
    norm_pred = pred["predicted_norm"].to_numpy(dtype=np.float64).reshape(shape)[keep]
    names = np.asarray(cls, dtype=object)
    window = S.window_for(int(keep.sum()), smooth)
    with style():
        fig, axes = figure(2)
        drawn = False
        for cname in INVARIANT_CLASSES:
            mask = names == cname
            if not mask.any():
                continue
            drawn = True
            color = CLASS_COLORS[cname]
            _, norm = set_mean(run, "weight_norm", mask)
            _, angle = set_mean(run, "angular_update", mask)
            S.draw(axes[0], steps, norm, None, color, "-", f"{cname}: measured")
            S.draw(axes[1], steps, S.positive(angle), window, color, "-", f"{cname}: measured")
            theory_norm = reduce_values(norm_pred[:, mask], "mean")
            theory_angle = reduce_values(angle_pred[:, mask], "mean")
            if np.isfinite(theory_angle).any():
                label = f"{cname}: equilibrium"
                S.draw(axes[0], steps, rolling_mean(theory_norm, window), None, color, "--", label)
                low, high = theory_angle * (1 - tolerance), theory_angle * (1 + tolerance)
                idx = S.thin(steps.size)
                axes[1].fill_between(steps[idx], low[idx], high[idx], color=color, alpha=0.15, lw=0)
                axes[1].plot(
                    steps[idx],
                    theory_angle[idx],
                    color=color,
                    ls="--",
                    lw=1.0,
                    label=f"{label} ±{tolerance:.0%}",
                )
            else:
                _no_decay_guides(axes, run, keep, steps, mask, angle, color, cname, family)
        if not drawn:
            for ax in axes:
                ax.text(
                    0.5,
                    0.5,
                    "no scale-invariant tensors",
                    ha="center",
                    va="center",
                    transform=ax.transAxes,
                )
        axes[0].set_title("Norm: measured vs theory")
        axes[0].set_ylabel("mean ‖w‖")
        axes[1].set_title("Angular update: measured vs equilibrium")
        axes[1].set_ylabel("radians per step")
        axes[1].set_yscale("log")
        for ax in axes:
            ax.set_xlabel("step")
            legend(ax)
        fig.suptitle(f"Theory for the {family} family ({run.label})", fontsize=8, color="0.3")
    return fig


def _no_decay_guides(
    axes: Any,
    run: Run,
    keep: np.ndarray,
    steps: np.ndarray,
    mask: np.ndarray,
    angle: np.ndarray,
    color: str,
    cname: str,
    family: str,
) -> None:
    """Without weight decay: the SGD-family norm law and a t^(-1/2) guide for the angle."""
    from stepsize_lens.analysis.theory import family_entry, no_decay_norm

    lr_field = run.group_field("lr")[keep]
    entry = family_entry(family)
    if entry.base == "sgd" and steps.size > 1 and lr_field.size:
        weight = run.metric("weight_norm")[keep][:, mask].astype(np.float64)
        grad = run.metric("grad_norm")[keep][:, mask].astype(np.float64)
        momentum_field = run.group_field("momentum")[keep]
        with quiet_nan():
            g_tilde = np.nanmedian(weight * grad, axis=0)
            lr = float(np.nanmax(lr_field[0]))
            momentum = (
                float(np.nan_to_num(np.nanmax(momentum_field[0]), nan=0.0))
                if momentum_field.size
                else 0.0
            )
            t = (steps - steps[0])[:, None]
            law = no_decay_norm(
                t, weight[0][None, :], lr, g_tilde[None, :], momentum, projected=entry.projects
            )
            idx = S.thin(steps.size)
            axes[0].plot(
                steps[idx],
                np.nanmean(law, axis=1)[idx],
                color=color,
                ls="--",
                lw=1.0,
                label=f"{cname}: no-decay law",
            )
    ok = np.flatnonzero(np.isfinite(angle) & (angle > 0) & (steps > 0))
    if ok.size >= 2:
        mid = ok[ok.size // 2]
        idx = S.thin(steps.size)
        guide = angle[mid] * np.sqrt(steps[mid] / np.maximum(steps[idx], 1.0))
        axes[1].plot(
            steps[idx], guide, color=color, ls=":", lw=1.0, label=f"{cname}: ∝ t^(-1/2) (no decay)"
        )
