"""Theory predictions per record and tensor of a recorded `Run` (docs/design.md §5): the one-step
norm identity, the equilibrium each tensor's optimizer family drives it to, how close the end of a
run gets, and the t^(−1/2) law without weight decay. The formulas are in `formulas`, the
per-family choice of formula in `families`; the predictions that follow the schedule step by
step in `forecast`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from stepsize_lens._schema import INVARIANT_CLASSES
from stepsize_lens.analysis.frames import record_frame
from stepsize_lens.analysis.sets import tensor_classes, tensor_group_field
from stepsize_lens.analysis.theory.families import family_entry
from stepsize_lens.analysis.theory.forecast import optimizer_family, run_hyper
from stepsize_lens.analysis.theory.formulas import (
    decay_exponent,
    decoupled_norm_sq,
    norm_sq_after,
    time_constant,
)

if TYPE_CHECKING:
    import pandas as pd

    from stepsize_lens.run import Run


def _late_records(run: Run, start: float) -> np.ndarray:
    """[R] bool: non-skipped records whose step is at least ``start`` × the last step."""
    steps = run.steps.astype(np.float64)
    if steps.size == 0:
        return np.zeros(0, bool)
    return (steps >= start * steps.max()) & ~run.skipped.astype(bool)


def norm_identity(run: Run) -> pd.DataFrame:
    """The one-step norm identity per record and tensor, predicted against measured ‖w'‖².

    Columns: step, tensor, group, ``weight_sq`` = ‖w‖², ``predicted_sq`` = ‖w‖² +
    2‖w‖‖Δ‖cos(w,Δ) + ‖Δ‖² (from this record's update), ``measured_sq`` = ‖w‖² at the next record
    when that record is the next step (NaN otherwise: the weights may have moved in between),
    ``rel_error`` = |predicted − measured|/measured, ``decay_sq`` = (1−ηλ_eff)²‖w‖² (the part the
    decoupled decay leaves, NaN for coupled-decay optimizers), and for plain SGD (no momentum)
    ``gradient_sq`` = (1−ηλ)²‖w‖² − 2η(1−ηλ)⟨w,g⟩ + η²‖g‖², predicted from the gradient alone.
    """
    w = run.metric("weight_norm").astype(np.float64)
    d = run.metric("update_norm").astype(np.float64)
    cos_u = run.metric("cos_update").astype(np.float64)
    g = run.metric("grad_norm").astype(np.float64)
    cos_g = run.metric("cos_grad").astype(np.float64)
    predicted = norm_sq_after(w, d, cos_u)
    steps = run.steps
    measured = np.full_like(predicted, np.nan)
    if run.num_records > 1:
        consecutive = (np.diff(steps) == 1) & ~run.skipped[:-1].astype(bool)
        measured[:-1] = np.where(consecutive[:, None], w[1:] ** 2, np.nan)
    lr = tensor_group_field(run, "lr", np.nan)
    wd = tensor_group_field(run, "weight_decay", 0.0)
    name = optimizer_family(run)
    family = family_entry(name)
    decay = np.full_like(predicted, np.nan)
    if family.decoupled_decay is not None:
        import pandas as pd

        # the decay the optimizer applied: projected where the run says so (no class guess)
        hyper = run_hyper(run, pd.Series("none", index=run.tensor_names), name)
        if family.projects:
            hyper = replace(hyper, projected=run.view("applied_view") > 0)
        lam = np.asarray(family.decoupled_decay(hyper), dtype=np.float64)
        decay = (1.0 - lr * lam) ** 2 * w * w
    gradient = np.full_like(predicted, np.nan)
    if family.gradient_identity:
        plain = (tensor_group_field(run, "momentum", 0.0) == 0) & (
            tensor_group_field(run, "nesterov", 0.0) == 0
        )
        w_dot_g = w * g * np.nan_to_num(cos_g, nan=0.0)
        gradient = np.where(plain, decoupled_norm_sq(w * w, lr, wd, w_dot_g, g * g), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.abs(predicted - measured) / measured
    return record_frame(
        run,
        {
            "weight_sq": w * w,
            "predicted_sq": predicted,
            "measured_sq": measured,
            "rel_error": rel,
            "decay_sq": decay,
            "gradient_sq": gradient,
        },
    )


def equilibrium_predictions(
    run: Run, classes: pd.Series | Mapping[str, str] | None = None, family: str | None = None
) -> pd.DataFrame:
    """Per record and tensor: the predicted equilibrium angular update and norm, and the measured
    whole-tensor angular update.

    The whole-tensor angle is the one to compare even for channel-invariant tensors: at
    equilibrium every row balances decay against growth in proportion to ‖w_row‖², so
    ‖Δ⊥‖²/‖w‖² summed over rows obeys the same law, while a plain mean of per-row angles is
    pulled down by rows not (yet) in equilibrium.

    Columns: step, tensor, group, class, projected, lr, weight_decay, ``predicted_angle`` (NaN
    where λ = 0: no equilibrium, or the family has no theory), ``predicted_norm`` (SGD family:
    from the measured g̃ = ‖w‖‖g‖; Adam family: from numel), ``relaxation_steps``,
    ``measured_angle``, ``weight_norm``. Only meaningful for scale-invariant tensors; all tensors
    are listed, with their class.
    """
    classes = tensor_classes(run, classes)
    family = family or optimizer_family(run)
    entry = family_entry(family)
    hyper = run_hyper(run, classes, family)
    lr, wd, projected = hyper.lr, hyper.weight_decay, hyper.projected
    weight = run.metric("weight_norm").astype(np.float64)
    if entry.equilibrium_angle is None:
        angle = np.full(lr.shape, np.nan)
    else:
        angle = np.asarray(entry.equilibrium_angle(hyper), dtype=np.float64) * np.ones_like(lr)
    if entry.equilibrium_norm is None:
        norm = np.full(lr.shape, np.nan)
    else:
        norm = np.asarray(entry.equilibrium_norm(hyper), dtype=np.float64) * np.ones_like(lr)
    no_decay = ~(wd > 0)
    angle = np.where(no_decay, np.nan, angle)
    norm = np.where(no_decay, np.nan, norm)
    if entry.relaxation_rate is None:
        relax = np.full(lr.shape, np.nan)
    else:
        rate = np.asarray(entry.relaxation_rate(hyper), dtype=np.float64) * np.ones_like(lr)
        relax = time_constant(np.where(no_decay & ~np.isnan(rate), 0.0, rate))
    return record_frame(
        run,
        {
            "class": np.asarray(classes, dtype=object),
            "projected": projected,
            "lr": lr,
            "weight_decay": wd,
            "predicted_angle": angle,
            "predicted_norm": np.asarray(norm, dtype=np.float64),
            "relaxation_steps": relax,
            "measured_angle": run.metric("angular_update").astype(np.float64),
            "weight_norm": weight,
        },
    )


def predictions_for(
    run: Run,
    predictions: pd.DataFrame | None = None,
    classes: pd.Series | Mapping[str, str] | None = None,
    family: str | None = None,
) -> pd.DataFrame:
    """`equilibrium_predictions` (run, classes, family), or ``predictions`` when a caller that
    needs them several times computed them already (checked to have one row per record and
    tensor of ``run``; ValueError otherwise)."""
    if predictions is None:
        return equilibrium_predictions(run, classes, family)
    if len(predictions) != run.num_records * run.num_tensors:
        raise ValueError(
            f"predictions has {len(predictions)} rows, not one per record and tensor of run "
            f"{run.label!r} ({run.num_records} x {run.num_tensors})"
        )
    return predictions


def _final_window(steps: np.ndarray, skipped: np.ndarray, window: float) -> np.ndarray:
    """Records whose step lies in the last ``window`` fraction of the run's step range."""
    if steps.size == 0:
        return np.zeros(0, dtype=bool)
    first, last = float(steps.min()), float(steps.max())
    return (steps >= last - window * (last - first)) & ~skipped.astype(bool)


def equilibrium_check(
    run: Run,
    classes: pd.Series | Mapping[str, str] | None = None,
    *,
    window: float = 0.2,
    by: str = "tensor",
    family: str | None = None,
    predictions: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Measured against predicted equilibrium angular update over the last part of a run.

    Scale-invariant tensors (class channel or layer) with weight decay > 0 and a theory for the
    optimizer only. ``window``: the last fraction of the step range averaged over. ``by``:
    ``tensor`` (one row each), ``class`` (channel / layer) or ``invariant`` (one row). Columns:
    the key, tensors, ``measured`` and ``predicted`` (means over the window and tensors),
    ``ratio`` = measured/predicted, ``relaxation_steps`` (largest, at the window's end),
    ``span_steps`` (steps the run covers), ``window_start`` (first step of the window).
    ``predictions``: `equilibrium_predictions` of this run with the same ``classes`` and
    ``family``, when the caller already has it (it is not recomputed; ``classes`` and ``family``
    are then not used).
    """
    import pandas as pd

    if by not in ("tensor", "class", "invariant"):
        raise ValueError(f"by must be 'tensor', 'class' or 'invariant', not {by!r}")
    pred = predictions_for(run, predictions, classes, family)
    in_window = _final_window(run.steps, run.skipped, window)
    mask = np.repeat(in_window, run.num_tensors)
    rows = pred[mask & pred["class"].isin(INVARIANT_CLASSES).to_numpy()]
    rows = rows[np.isfinite(rows["predicted_angle"].to_numpy())]
    key = {"tensor": "tensor", "class": "class", "invariant": None}[by]
    per_tensor = rows.groupby("tensor", sort=False).agg(
        group=("group", "first"),
        **{"class": ("class", "first")},
        measured=("measured_angle", "mean"),
        predicted=("predicted_angle", "mean"),
        relaxation_steps=("relaxation_steps", "last"),
    )
    columns = [
        "tensors",
        "measured",
        "predicted",
        "ratio",
        "relaxation_steps",
        "span_steps",
        "window_start",
    ]
    span = float(run.steps.max() - run.steps.min()) if run.num_records else 0.0
    start = int(run.steps[in_window].min()) if in_window.any() else -1
    if per_tensor.empty:
        return pd.DataFrame(columns=([key] if key else []) + columns)
    if key == "tensor":
        out = per_tensor.reset_index()
        out["tensors"] = 1
    else:
        grouped = per_tensor.groupby("class" if key else np.zeros(len(per_tensor)), sort=True)
        out = grouped.agg(
            tensors=("measured", "size"),
            measured=("measured", "mean"),
            predicted=("predicted", "mean"),
            relaxation_steps=("relaxation_steps", "max"),
        ).reset_index(drop=key is None)
    out["ratio"] = out["measured"] / out["predicted"]
    out["span_steps"] = span
    out["window_start"] = start
    leading = [
        c
        for c in ("tensor", "group", "class")
        if c in out.columns and (key == "tensor" or c == key)
    ]
    return out[leading + columns].reset_index(drop=True)


def decay_exponents(
    run: Run,
    classes: pd.Series | Mapping[str, str] | None = None,
    *,
    metric: str = "angular_update",
    start: float = 0.5,
) -> pd.DataFrame:
    """Per tensor, the fitted exponent of ``metric`` ~ step^k over the part of the run from
    ``start`` × the last step on (non-skipped records). k ≈ −1/2 is the no-weight-decay law, k ≈ 0
    equilibrium. Columns: tensor, group, class, weight_decay (last record), exponent.
    """
    import pandas as pd

    classes = tensor_classes(run, classes)
    steps = run.steps.astype(np.float64)
    keep = _late_records(run, start)
    values = run.metric(metric)[keep]
    wd = tensor_group_field(run, "weight_decay", 0.0)
    return pd.DataFrame(
        {
            "tensor": run.tensor_names,
            "group": run.tensor_groups,
            "class": np.asarray(classes, dtype=object),
            "weight_decay": wd[-1] if wd.shape[0] else np.full(run.num_tensors, np.nan),
            "exponent": [decay_exponent(steps[keep], values[:, i]) for i in range(run.num_tensors)],
        }
    )


def sqrt_law(
    run: Run,
    classes: pd.Series | Mapping[str, str] | None = None,
    *,
    metric: str = "angular_update",
    start: float = 0.5,
) -> pd.DataFrame:
    """The t^(−1/2) law as a per-record overlay: c·step^(−1/2) per tensor, with c fitted (slope
    held at −1/2, least squares in log space) over the non-skipped records from ``start`` × the
    last step on, next to the measured ``metric`` and the freely fitted exponent.

    Columns: step, tensor, group, class, weight_decay, measured, predicted, exponent. The law
    holds for scale-invariant tensors without weight decay; elsewhere the gap is the point.
    """
    classes = tensor_classes(run, classes)
    steps = run.steps.astype(np.float64)
    values = run.metric(metric).astype(np.float64)
    fit = _late_records(run, start)
    predicted = np.full(values.shape, np.nan)
    exponents = np.full(run.num_tensors, np.nan)
    for i in range(run.num_tensors):
        ok = fit & np.isfinite(values[:, i]) & (values[:, i] > 0) & (steps > 0)
        if ok.any():
            log_c = np.mean(np.log(values[ok, i]) + 0.5 * np.log(steps[ok]))
            with np.errstate(divide="ignore"):
                predicted[:, i] = np.where(steps > 0, np.exp(log_c) * steps**-0.5, np.nan)
        exponents[i] = decay_exponent(steps[ok], values[ok, i])
    return record_frame(
        run,
        {
            "class": np.asarray(classes, dtype=object),
            "weight_decay": tensor_group_field(run, "weight_decay", 0.0),
            "measured": values,
            "predicted": predicted,
            "exponent": exponents,
        },
    )
