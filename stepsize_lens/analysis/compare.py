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

from stepsize_lens.analysis.axes import interp_inside, run_labels, x_of_steps
from stepsize_lens.analysis.frames import reduce
from stepsize_lens.analysis.smoothing import ema_values

if TYPE_CHECKING:
    import pandas as pd

    from stepsize_lens.run import Run

DEFAULT_METRICS: tuple[str, ...] = ("weight_norm", "angular_update", "effective_lr")


def reference_index(runs: Sequence[Run], reference: int | str) -> int:
    """The position in ``runs`` of the reference run: ``reference`` is an index (negative counts
    from the end) or a label (`axes.run_labels`, so repeated labels carry #2, #3...).
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
    """Per run, set and metric: values and ratios at the last x the run shares with the
    reference where no run's lr is about 0.

    Only points where every run's lr is at least `ACTIVE_LR_SHARE` of its peak count
    (`shared_lr_share`): at the end of a schedule that decays to 0, every effective step goes
    to 0 with the lr and their ratio says nothing (all points count if none is such).
    Columns: run, <by>, metric, x (that last shared x), value, reference_value, final_ratio (at
    that x), mean_ratio (geometric mean of the ratio over those x where both are > 0).
    """
    import pandas as pd

    table = compare(runs, metrics, by, on, reference, reducer, classes, alpha, scalar)
    x_all = np.unique(table["x"].to_numpy(np.float64))
    active_x = x_all[lr_active(shared_lr_share(runs, x_all, on, scalar))]
    if active_x.size:
        table = table[np.isin(table["x"].to_numpy(np.float64), active_x)]
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


# --------------------------------------------------------------------------------------------
# Schedule-aware comparison: where the lr is not about 0, and over the schedule's windows
# --------------------------------------------------------------------------------------------

ACTIVE_LR_SHARE = 0.1
"""Points where some run's lr is below this share of its own peak are not compared: there the
effective step of every optimizer goes to 0 with the lr, and their ratio says nothing."""
PEAK_LR_SHARE = 0.9
"""The schedule's peak window: lr at or above this share of its peak."""
_TOLERANCE = 1e-9  # a step-decay schedule lands on 0.1 of its peak up to rounding
WINDOWS: dict[str, str] = {
    "active": "lr ≥ 10% of peak",
    "warmup": "warmup",
    "peak": "peak lr (≥ 90%)",
    "decay": "decay (10–90%)",
    "early": "first third",
    "middle": "middle third",
    "late": "last third",
}
"""Window name → how a table names it (`schedule_windows`)."""


def lr_share(run: Run, on: str = "step", scalar: str = "epoch") -> tuple[np.ndarray, np.ndarray]:
    """(x, r) over the non-skipped records, sorted by x: r_t = max over param groups of
    η_t/max_s η_s (each group's lr over its own peak), so 1 at the schedule's peak and 0 where
    every group's lr is 0. A run that recorded no positive lr gets r = 1 (nothing is known to
    be off)."""
    import pandas as pd

    keep = ~run.skipped.astype(bool)
    steps = run.steps[keep]
    lr = run.group_field("lr")[keep].astype(np.float64) if run.num_groups else np.empty((0, 0))
    x = x_of_steps(run, pd.Series(steps), on, scalar)
    if lr.size == 0 or not (lr > 0).any():
        share = np.ones(len(steps))
    else:
        positive = np.where(lr > 0, lr, np.nan)
        peak = np.fmax.reduce(positive, axis=0)  # NaN for a group with no positive lr
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.fmax.reduce(np.where(lr >= 0, lr, np.nan) / peak, axis=1)
    order = np.argsort(x, kind="stable")
    x, share = x[order], share[order]
    ok = np.isfinite(x)
    return x[ok], share[ok]


def shared_lr_share(
    runs: Sequence[Run], x: np.ndarray, on: str = "step", scalar: str = "epoch"
) -> np.ndarray:
    """At each x: the smallest `lr_share` of the runs that recorded it (linear interpolation
    inside each run's x range; NaN where none did)."""
    out = np.full(len(x), np.nan)
    for run in runs:
        run_x, share = lr_share(run, on, scalar)
        out = np.fmin(out, interp_inside(np.asarray(x, dtype=np.float64), run_x, share))
    return out


def lr_active(share: np.ndarray) -> np.ndarray:
    """[bool] the points where the lr is at least `ACTIVE_LR_SHARE` of its peak."""
    share = np.asarray(share, dtype=np.float64)
    return np.nan_to_num(share, nan=-1.0) >= ACTIVE_LR_SHARE * (1 - _TOLERANCE)


def schedule_windows(share: np.ndarray) -> np.ndarray:
    """The schedule's window of each point (in order of x) from its lr share r (`lr_share`):

    - ``warmup``: before r first reaches `PEAK_LR_SHARE`;
    - ``peak``: r ≥ `PEAK_LR_SHARE` (a constant lr, a WSD schedule's stable phase, the top of a
      cosine);
    - ``decay``: after the warmup, `ACTIVE_LR_SHARE` ≤ r < `PEAK_LR_SHARE`;
    - ``""``: r < `ACTIVE_LR_SHARE` (the lr is about 0 there: not compared).

    A constant lr has only the peak window: it is cut into thirds of its points (``early``,
    ``middle``, ``late``) so that the comparison still says when in training runs differ.
    """
    share = np.asarray(share, dtype=np.float64)
    active = lr_active(share)
    high = np.nan_to_num(share, nan=-1.0) >= PEAK_LR_SHARE * (1 - _TOLERANCE)
    first_high = int(np.argmax(high)) if high.any() else len(share)
    out = np.where(active, "decay", "").astype(object)
    out[:first_high] = np.where(active[:first_high], "warmup", "")
    out[high] = "peak"
    if set(out[active]) == {"peak"} and active.sum() >= 3:
        index = np.flatnonzero(active)
        for name, part in zip(("early", "middle", "late"), np.array_split(index, 3)):
            out[part] = name
    return out


def _geometric_mean(values: np.ndarray) -> float:
    return float(np.exp(np.log(values).mean())) if values.size else float("nan")


def compare_windows(
    runs: Sequence[Run],
    metrics: Sequence[str] = ("angular_update", "effective_lr"),
    by: str = "invariant",
    on: str = "step",
    reference: int | str = 0,
    reducer: str = "mean",
    classes: pd.Series | Mapping[str, str] | None = None,
    scalar: str = "epoch",
) -> pd.DataFrame:
    """Each run's effective step against the reference's over the windows its schedule defines.

    On the reference's x grid (`compare`), per set, metric, window and run: ``value`` and
    ``reference_value`` are geometric means over the window's points where both are positive,
    so ``ratio`` = value / reference_value is the geometric mean of the pointwise ratio there.
    Windows (`schedule_windows`, from the smallest lr share of all runs at each point, so no
    run's lr is about 0 in any of them): ``active`` (every point with lr ≥ `ACTIVE_LR_SHARE`
    of its peak), then ``warmup``, ``peak``, ``decay`` (or thirds for a constant lr); windows
    without points are left out. Columns: window, <by>, metric, run, points, x_first, x_last,
    value, reference_value, ratio.
    """
    import pandas as pd

    columns = ["window", by, "metric", "run", "points", "x_first", "x_last", "value"]
    columns += ["reference_value", "ratio"]
    table = compare(runs, metrics, by, on, reference, reducer, classes, None, scalar)
    if table.empty:
        return pd.DataFrame(columns=columns)
    x_all = np.unique(table["x"].to_numpy(np.float64))
    share = shared_lr_share(runs, x_all, on, scalar)
    window_of = dict(zip(x_all.tolist(), schedule_windows(share).tolist()))
    table = table.assign(window=table["x"].map(window_of))
    rows = []
    order = ["active", *dict.fromkeys(w for w in schedule_windows(share) if w)]
    for (key, metric, label), part in table.groupby([by, "metric", "run"], sort=False):
        value = part["value"].to_numpy(np.float64)
        ref = part["reference_value"].to_numpy(np.float64)
        both = np.isfinite(value) & np.isfinite(ref) & (value > 0) & (ref > 0)
        windows = part["window"].to_numpy(object)
        x = part["x"].to_numpy(np.float64)
        for window in order:
            inside = both & (windows != "") if window == "active" else both & (windows == window)
            if not inside.any():
                continue
            mean_value = _geometric_mean(value[inside])
            mean_ref = _geometric_mean(ref[inside])
            rows.append(
                {
                    "window": window,
                    by: key,
                    "metric": metric,
                    "run": label,
                    "points": int(inside.sum()),
                    "x_first": float(x[inside].min()),
                    "x_last": float(x[inside].max()),
                    "value": mean_value,
                    "reference_value": mean_ref,
                    "ratio": mean_value / mean_ref,
                }
            )
    out = pd.DataFrame(rows, columns=columns)
    rank = {name: i for i, name in enumerate(order)}
    return out.sort_values("window", key=lambda w: w.map(rank), kind="stable", ignore_index=True)


# --------------------------------------------------------------------------------------------
# Norm growth and premature step-size decay, per run and set
# --------------------------------------------------------------------------------------------


def norm_growth(
    runs: Sequence[Run],
    by: str = "invariant",
    reducer: str = "mean",
    classes: pd.Series | Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Each run's weight-norm growth per set of tensors (`frames.reduce` of ``weight_norm``).

    Columns: run, <by>, first (‖w‖ at the first non-skipped record), peak (the largest
    recorded), peak_step, last, peak_growth = peak / first (the early bump that momentum gives
    scale-invariant weights, even where weight decay pulls the norm back later), last_growth =
    last / first.
    """
    import pandas as pd

    columns = ["run", by, "first", "peak", "peak_step", "last", "peak_growth", "last_growth"]
    rows = []
    for label, run in zip(run_labels(runs), runs):
        wide = reduce(
            run, by=by, metrics=["weight_norm"], reducer=reducer, form="wide", classes=classes
        )
        for key, part in wide.groupby(by, sort=False):
            steps = part["step"].to_numpy(np.float64)
            norm = part["weight_norm"].to_numpy(np.float64)
            ok = np.isfinite(norm)
            if not ok.any():
                continue
            steps, norm = steps[ok], norm[ok]
            top = int(np.argmax(norm))
            with np.errstate(invalid="ignore", divide="ignore"):
                peak_growth = norm[top] / norm[0] if norm[0] > 0 else np.nan
                last_growth = norm[-1] / norm[0] if norm[0] > 0 else np.nan
            rows.append(
                {
                    "run": label,
                    by: key,
                    "first": float(norm[0]),
                    "peak": float(norm[top]),
                    "peak_step": float(steps[top]),
                    "last": float(norm[-1]),
                    "peak_growth": float(peak_growth),
                    "last_growth": float(last_growth),
                }
            )
    return pd.DataFrame(rows, columns=columns)


def premature_decay(
    runs: Sequence[Run],
    by: str = "invariant",
    classes: pd.Series | Mapping[str, str] | None = None,
    threshold: float | None = None,
) -> pd.DataFrame:
    """Premature step-size decay per run and set: how much norm growth alone cut the effective
    step (`split.decay_split`'s norm-growth part, (‖w‖_late/‖w‖_early)^k with k = 2 for
    SGD-like updates, 1 for adaptive ones, over `smoothing.default_window` records), at the end of
    the run and at the norm's peak ((max_t ‖w‖_t/‖w‖_early)^k, the trailing window mean).

    ``verdict``: ``premature`` when the end's part is at least ``threshold`` (default: the
    ``premature_decay`` finding's `Thresholds.norm_decay_ratio`), ``transient`` when only the
    peak's is (the norm grew, then weight decay pulled it back), ``none`` below, ``""``
    undefined. ``premature_tensors``: how many of the set's tensors have a norm-growth part of
    at least ``threshold`` each (the per-tensor verdict; tensors that start at zero or are
    frozen, `sets.left_out_of_means`, never count). Columns: run, <by> (the set's key, as
    `frames.reduce` names it), tensors, power, norm_part, peak_norm_part, verdict,
    premature_tensors.
    """
    import pandas as pd

    from stepsize_lens.analysis.finding import Thresholds
    from stepsize_lens.analysis.sets import left_out_of_means, set_name, tensor_classes, tensor_sets
    from stepsize_lens.analysis.smoothing import default_window
    from stepsize_lens.analysis.split import decay_split

    limit = Thresholds().norm_decay_ratio if threshold is None else threshold
    columns = ["run", by, "tensors", "power", "norm_part", "peak_norm_part", "verdict"]
    columns += ["premature_tensors"]
    rows = []
    for label, run in zip(run_labels(runs), runs):
        split = decay_split(run, by=by, classes=classes)
        per_tensor = decay_split(run, by="tensor", classes=classes)["norm_part"].to_numpy()
        # tensors that start at zero (biases) have no norm growth to speak of: never counted
        hit = (np.nan_to_num(per_tensor, nan=0.0) >= limit) & ~left_out_of_means(run)
        members = {
            set_name(by, key): index
            for key, index in tensor_sets(run, by, tensor_classes(run, classes)).items()
        }
        window = default_window(int((~run.skipped.astype(bool)).sum()))
        wide = reduce(run, by=by, metrics=["weight_norm"], form="wide", classes=classes)
        norms = {
            set_name(by, key): (key, part["weight_norm"].to_numpy(np.float64))
            for key, part in wide.groupby(by, sort=False)
        }
        for _, row in split.iterrows():
            key, weight = norms.get(row["set"], (row["set"], np.array([])))
            finite = weight[np.isfinite(weight)]
            peak_part = np.nan
            if finite.size and finite[:window].mean() > 0:
                width = min(window, finite.size)
                trailing = np.convolve(finite, np.ones(width) / width, mode="valid")
                peak_part = (trailing.max() / finite[:window].mean()) ** int(row["power"])
            part = float(row["norm_part"])
            if np.isfinite(part) and part >= limit:
                verdict = "premature"
            elif np.isfinite(peak_part) and peak_part >= limit:
                verdict = "transient"
            elif np.isfinite(part):
                verdict = "none"
            else:
                verdict = ""
            rows.append(
                {
                    "run": label,
                    by: key,
                    "tensors": int(row["tensors"]),
                    "power": int(row["power"]),
                    "norm_part": part,
                    "peak_norm_part": float(peak_part),
                    "verdict": verdict,
                    "premature_tensors": int(hit[members.get(row["set"], [])].sum()),
                }
            )
    return pd.DataFrame(rows, columns=columns)
