"""Series the figures draw: set means per record, smoothing, logged scalars, lr-change marks.

The numbers come from `stepsize_lens.analysis` (set means, rolling means, lr changes, run
labels); this module only picks, thins and draws them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from stepsize_lens.analysis.sets import is_invariant, tensor_classes
from stepsize_lens.analysis.smoothing import rolling_mean
from stepsize_lens.analysis.summary import lr_changes
from stepsize_lens.plots._style import CLASS_COLORS, LINESTYLES, OKABE_ITO

if TYPE_CHECKING:
    from stepsize_lens.run import Run

LOSS_NAMES = ("loss", "train_loss", "training_loss")
ACCURACY_NAMES = ("test_accuracy", "val_accuracy", "accuracy", "test_acc", "val_acc", "acc")


def as_runs(runs: Run | Sequence[Run]) -> list[Run]:
    from stepsize_lens.run import Run

    out = [runs] if isinstance(runs, Run) else list(runs)
    if not out:
        raise ValueError("no runs to plot")
    return out


def window_for(records: int, smooth: int | str | None) -> int | None:
    """``smooth="auto"``: records/40 (1 = none); an int: that window; None: raw."""
    if smooth == "auto":
        return max(1, round(records / 40))
    return None if smooth is None else int(smooth)


def set_series(
    run: Run, by: str, metrics: Sequence[str], classes: Any
) -> dict[object, tuple[np.ndarray, dict[str, np.ndarray]]]:
    """key → (steps, {metric: mean over the set's tensors}), from `analysis.reduce`."""
    from stepsize_lens.analysis.frames import reduce

    wide = reduce(run, by=by, metrics=list(metrics), form="wide", classes=classes)
    out = {}
    for key, part in wide.groupby(by, sort=False):
        steps = part["step"].to_numpy(dtype=np.float64)
        out[key] = (steps, {m: part[m].to_numpy(dtype=np.float64) for m in metrics})
    return out


def invariant_mask(run: Run, classes: Any) -> tuple[np.ndarray, str]:
    """Tensors of class channel or layer (all tensors if there are none), and a description."""
    mask = is_invariant(tensor_classes(run, classes))
    if mask.any():
        return mask, "scale-invariant tensors"
    return np.ones(run.num_tensors, bool), "all tensors (none scale-invariant)"


def scalar(run: Run, names: Sequence[str]) -> tuple[str, np.ndarray, np.ndarray] | None:
    """The first user-logged scalar among ``names``: (name, steps, values), or None."""
    for name in names:
        if name in run.scalar_names:
            steps, values = run.scalar(name)
            if steps.size:
                return name, steps.astype(np.float64), values
    return None


def positive(values: np.ndarray) -> np.ndarray:
    """Values for a log axis: non-positive ones become NaN (gaps)."""
    return np.where(values > 0, values, np.nan)


MAX_POINTS = 2000  # vertices per drawn line; longer series are thinned (see `draw`)


def thin(n: int, limit: int = MAX_POINTS) -> np.ndarray:
    """Indices of at most ``limit`` evenly spread points of ``n``, first and last included."""
    if n <= limit:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(np.int64))


def envelope(x: np.ndarray, y: np.ndarray, bins: int) -> tuple[np.ndarray, ...]:
    """Per bin of consecutive points: (first x, min y, max y), NaN ignored."""
    edges = np.linspace(0, x.size, bins + 1).astype(np.int64)
    starts = edges[:-1][np.diff(edges) > 0]
    lo = np.fmin.reduceat(np.where(np.isfinite(y), y, np.inf), starts)
    hi = np.fmax.reduceat(np.where(np.isfinite(y), y, -np.inf), starts)
    ok = np.isfinite(lo) & np.isfinite(hi)
    return x[starts][ok], lo[ok], hi[ok]


def draw(
    ax: Any,
    x: np.ndarray,
    y: np.ndarray,
    window: int | None,
    color: str,
    ls: str,
    label: str | None,
) -> None:
    """A line; with a smoothing window, the raw series faintly and the rolling mean on top.

    Series longer than `MAX_POINTS` are drawn thinned (the raw one as its min–max band per
    bin), which keeps PDF/SVG files small and rendering fast without hiding the spread.
    Sparse series (under 20 points) get markers."""
    x = np.asarray(x, dtype=np.float64)
    ok = np.isfinite(y) & np.isfinite(x)
    x, y = x[ok], np.asarray(y, dtype=np.float64)[ok]
    if window and window > 1:
        if x.size > MAX_POINTS:
            bx, lo, hi = envelope(x, y, MAX_POINTS // 2)
            ax.fill_between(bx, lo, hi, color=color, alpha=0.18, lw=0)
        else:
            ax.plot(x, y, color=color, ls=ls, lw=0.6, alpha=0.25)
        y = rolling_mean(y, window)
    keep = thin(x.size)
    marker = "o" if 0 < x.size < 20 else None
    ax.plot(x[keep], y[keep], color=color, ls=ls, label=label, marker=marker, ms=3)


def line_styles(num_runs: int, keys: Sequence[object], by: str) -> dict[tuple[int, object], tuple]:
    """(run index, set key) → (colour, line style): colour per set for one run, per run else."""
    out = {}
    for r in range(num_runs):
        for k, key in enumerate(keys):
            if num_runs == 1:
                color = CLASS_COLORS.get(str(key)) if by == "class" else None
                out[(r, key)] = (color or OKABE_ITO[k % len(OKABE_ITO)], "-")
            else:
                out[(r, key)] = (OKABE_ITO[r % len(OKABE_ITO)], LINESTYLES[k % len(LINESTYLES)])
    return out


def mark_lr(ax: Any, runs: Sequence[Run], max_lines: int = 8) -> None:
    """Dotted lines at lr changes; a faint lr curve on a twin axis when the lr moves often."""
    twin = None
    for r, run in enumerate(runs):
        changes = lr_changes(run)
        if changes.size == 0:
            continue
        color = OKABE_ITO[r % len(OKABE_ITO)] if len(runs) > 1 else "0.35"
        if changes.size <= max_lines:
            for i, step in enumerate(changes):
                label = "lr change" if (i == 0 and r == 0) else None
                ax.axvline(step, color=color, ls=":", lw=1.0, label=label)
            continue
        twin = twin or ax.twinx()
        keep = ~run.skipped.astype(bool)
        lr = run.group_field("lr")[keep][:, 0]
        idx = thin(lr.size)
        twin.plot(run.steps[keep][idx], lr[idx], color=color, lw=0.8, alpha=0.5)
    if twin is not None:
        twin.set_ylabel("lr (faint line)", color="0.35")
        twin.grid(False)
        twin.spines["right"].set_visible(True)
