"""The findings that hold a run against the theory (docs/design.md §5.11): why the effective step
fell, whether and when equilibrium comes, the weight-decay timescale, the early overshoot and
warmup, the late gradient-norm rise, and rotation balance. Each check takes the findings'
context (`analysis.finding.Context`) and returns a list of `Finding`; `analysis.findings.find`
runs them (this module is not imported by the package's ``__init__``: it stands on the findings'
context, which stands on the theory).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from stepsize_lens._jsonable import jsonable
from stepsize_lens.analysis.finding import MAX_LISTED, Context, Finding, listed
from stepsize_lens.analysis.sets import starts_at_zero, tensor_group_field
from stepsize_lens.analysis.smoothing import rolling_mean
from stepsize_lens.analysis.split import split_values
from stepsize_lens.analysis.theory.formulas import warmup_steps
from stepsize_lens.analysis.theory.relaxation import elapsed_relaxation, equilibrium_steps


def _nanmedian(values: np.ndarray, axis: int = 0) -> np.ndarray:
    """np.nanmedian without the warning for all-NaN columns (they give NaN)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(values, axis=axis)


def _nanmean(values: np.ndarray, axis: int | None = 0) -> np.ndarray:
    """np.nanmean without the warning for all-NaN slices (they give NaN)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=axis)


def _median(values: Any) -> float | None:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(np.median(values)) if values.size else None


def _fmt_steps(steps: float) -> str:
    return "never" if not np.isfinite(steps) else f"{steps:,.0f}"


# --------------------------------------------------------------------------------------------
# Why the effective step fell
# --------------------------------------------------------------------------------------------


def tensor_split(ctx: Context) -> dict[str, np.ndarray]:
    """The decay split (`decay_split`) of every tensor, over the non-skipped records; tensors
    that are not scale-invariant or start at zero are NaN (cached on the context)."""
    if "split" not in ctx.cache:
        run = ctx.run
        angle = run.metric("angular_update")[ctx.keep].astype(np.float64)
        weight = run.metric("weight_norm")[ctx.keep].astype(np.float64)
        lr = tensor_group_field(run, "lr")[ctx.keep]
        parts = split_values(angle, weight, lr, ctx.power, ctx.window)
        usable = ctx.invariant & ~starts_at_zero(weight)
        ctx.cache["split"] = {k: np.where(usable, v, np.nan) for k, v in parts.items()}
    return ctx.cache["split"]


def _split_evidence(ctx: Context, split: dict[str, np.ndarray], index: np.ndarray) -> dict:
    total = split["total"][index]
    norm = split["norm_part"][index]
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.log(norm) / np.log(total)
    return {
        "tensor_count": int(index.size),
        "scale_invariant_tensors": int(ctx.invariant.sum()),
        "measure": "η/‖w‖²" if ctx.power == 2 else "η/‖w‖",
        "median_total_fall": jsonable(_median(total)),
        "median_norm_growth_part": jsonable(_median(norm)),
        "median_lr_part": jsonable(_median(split["lr_part"][index])),
        "median_scale_free_part": jsonable(_median(split["gradient_part"][index])),
        "norm_growth_share": jsonable(_median(np.clip(share, 0.0, 1.0))),
        "median_norm_growth": jsonable(_median(split["norm_growth"][index])),
        "median_early_angular_update": jsonable(_median(split["angle_early"][index])),
        "median_final_angular_update": jsonable(_median(split["angle_late"][index])),
        "optimizer_family": ctx.family.name,
    }


def premature_decay(ctx: Context) -> list[Finding]:
    """Norm growth alone cut the effective step of scale-invariant tensors by
    ``norm_decay_ratio`` or more: (‖w‖_late/‖w‖_early)^k ≥ the threshold, whatever the lr and
    the scale-free gradient did — unless the tensor reached equilibrium in the run
    (`at_equilibrium`): then the growth was the approach to the norm weight decay holds, not a
    premature decay."""
    th = ctx.thresholds
    if ctx.keep.sum() < th.min_records or not ctx.invariant.any():
        return []
    split = tensor_split(ctx)
    norm = split["norm_part"]
    grown = np.nan_to_num(norm, nan=0.0) >= th.norm_decay_ratio
    hit = np.flatnonzero(grown & ~at_equilibrium(ctx))
    if hit.size == 0:
        return []
    hit = hit[np.argsort(-norm[hit])]
    evidence = _split_evidence(ctx, split, hit)
    evidence["threshold"] = th.norm_decay_ratio
    momentum = ctx.run.group_field("momentum")
    beta1 = ctx.run.group_field("beta1")
    evidence["momentum"] = jsonable(np.nanmax(momentum)) if np.isfinite(momentum).any() else None
    evidence["beta1"] = jsonable(np.nanmax(beta1)) if np.isfinite(beta1).any() else None
    norm_part = evidence["median_norm_growth_part"]
    total = evidence["median_total_fall"]
    measure = evidence["measure"]
    rest_text = (
        f"; the other {total / norm_part:.3g}x of its {total:.3g}x fall (medians) is the "
        "scale-free gradient and the lr, which this does not change"
        if total is not None
        else ""
    )
    if ctx.family.projects:
        suggestion = (
            f"The projection is on, yet the norms grew {evidence['median_norm_growth']:.3g}x "
            f"({measure} fell {norm_part:.3g}x){rest_text}. Raise the weight decay on these "
            "tensors: at equilibrium it holds the norm, and the angular update at sqrt(2ηλ')."
        )
    elif ctx.family.projected_variant:
        suggestion = (
            f"Norm growth shrank {measure} {norm_part:.3g}x{rest_text}. Momentum grows the norm "
            "of scale-invariant weights (1+β)/(1−β) times faster than plain GD; "
            f"stepsize_lens.{ctx.family.projected_variant} (same arguments) removes the radial "
            "part of each update, and weight decay pulls the norm back towards equilibrium."
        )
    else:
        suggestion = (
            f"Norm growth shrank {measure} {norm_part:.3g}x{rest_text}. Weight decay on these "
            "tensors pulls the norm back towards its equilibrium."
        )
    share = hit.size / max(1, int(ctx.invariant.sum()))
    from stepsize_lens.analysis.advice import advice_dicts, switch_advice, weight_decay_advice

    advice = advice_dicts(
        weight_decay_advice(ctx, hit) if not ctx.family.projects else None,
        switch_advice(ctx) if not ctx.family.projects else weight_decay_advice(ctx, hit),
    )
    return [
        Finding(
            kind="premature_decay",
            severity="warning",
            title=(
                f"Norm growth alone cut the effective step ({measure}) of {hit.size} "
                f"scale-invariant tensor(s) {norm_part:.3g}x"
            ),
            evidence=evidence,
            tensors=listed([ctx.names[i] for i in hit]),
            suggestion=suggestion,
            score=share * math.log10(float(norm_part) + 1.0),
            advice=advice,
        )
    ]


def at_equilibrium(ctx: Context) -> np.ndarray:
    """[T] bool: the tensor reached equilibrium within the run — over the records where the
    recurrence puts it there (`equilibrium_steps`), its measured angular update is within
    ``equilibrium_tolerance`` of the equilibrium (cached, shared with `equilibrium`)."""
    out = np.zeros(ctx.run.num_tensors, bool)
    found = _decayed(ctx)
    if found is None:
        return out
    fc, decayed = found
    judged = judged_equilibrium(ctx)
    ratio = judged["measured"] / judged["predicted"]
    there = np.abs(ratio - 1.0) <= ctx.thresholds.equilibrium_tolerance
    out[fc.tensor_index()[decayed]] = there
    return out


def judged_equilibrium(ctx: Context) -> dict[str, np.ndarray]:
    """Per forecast tensor with weight decay: the measured and the equilibrium angular update
    averaged over the last records at which the recurrence puts it at equilibrium (the last
    ``equilibrium_window`` of them, at least ``window``), and the first step averaged; NaN
    where it never is (cached)."""
    if "judged" in ctx.cache:
        return ctx.cache["judged"]
    fc, decayed = _decayed(ctx)  # type: ignore[misc]
    eq = equilibrium_steps(ctx)
    th = ctx.thresholds
    columns = np.flatnonzero(decayed)
    measured, predicted, start = (np.full(columns.size, np.nan) for _ in range(3))
    with np.errstate(invalid="ignore", divide="ignore"):
        for j, col in enumerate(columns):
            rows = np.flatnonzero(eq["current"][:, col])
            if rows.size:
                rows = rows[-max(ctx.window, int(th.equilibrium_window * rows.size)) :]
                measured[j] = _nanmean(fc.measured_angle[rows, col])
                predicted[j] = _nanmean(fc.eq_angle[rows, col])
                start[j] = fc.steps[rows[0]]
    ctx.cache["judged"] = {"measured": measured, "predicted": predicted, "start": start}
    return ctx.cache["judged"]


def gradient_faded(ctx: Context) -> list[Finding]:
    """The effective step fell to ``decay_fraction`` of its early level or below on
    scale-invariant tensors whose norm-growth part stayed under ``norm_decay_ratio``: the
    scale-free gradient (or the lr) made the fall, not the norms."""
    th = ctx.thresholds
    if ctx.keep.sum() < th.min_records or not ctx.invariant.any():
        return []
    split = tensor_split(ctx)
    fell = np.nan_to_num(split["total"], nan=0.0) >= 1.0 / th.decay_fraction
    flat = np.nan_to_num(split["norm_part"], nan=np.inf) < th.norm_decay_ratio
    hit = np.flatnonzero(fell & flat)
    if hit.size == 0:
        return []
    evidence = _split_evidence(ctx, split, hit)
    lr_part = evidence["median_lr_part"] or 1.0
    cause = "the lr schedule and " if lr_part >= 1.5 else ""
    return [
        Finding(
            kind="gradient_faded",
            severity="info",
            title=(
                f"Effective step of {hit.size} scale-invariant tensor(s) fell "
                f"{evidence['median_total_fall']:.3g}x with their norms nearly flat: "
                f"{cause}the scale-free gradient made the fall "
                f"({evidence['measure']} only {evidence['median_norm_growth_part']:.3g}x)"
            ),
            evidence=evidence,
            tensors=listed([ctx.names[i] for i in hit]),
            suggestion=(
                "Not premature step-size decay: the norms barely moved, the gradient measured at "
                f"the weights' own scale shrank {evidence['median_scale_free_part']:.3g}x. Late "
                "in training that is the task being learned (the loss and its gradients fade); "
                "early, check for vanishing gradients. Projection or weight decay would not "
                "change it."
            ),
            score=math.log10(float(evidence["median_total_fall"] or 1.0) + 1.0),
        )
    ]


# --------------------------------------------------------------------------------------------
# Equilibrium in time
# --------------------------------------------------------------------------------------------


def _decayed(ctx: Context) -> tuple[Any, np.ndarray] | None:
    """The forecast and the mask of its tensors with weight decay at the last record."""
    fc = ctx.forecast
    if fc.empty or ctx.keep.sum() < ctx.thresholds.min_records:
        return None
    decayed = np.isfinite(fc.eq_angle[-1]) & (fc.decay[-1] > 0)
    return (fc, decayed) if decayed.any() else None


def equilibrium(ctx: Context) -> list[Finding]:
    """``equilibrium_time`` (info, whenever there is a prediction): when the effective step is
    predicted within 10% of equilibrium (`equilibrium_steps`) and whether the run got there.
    Only over the records where the recurrence puts a tensor at equilibrium (the last
    ``equilibrium_window`` of them, at least ``window``) is its measured angle judged against
    the closed-form equilibrium: ``equilibrium_reached`` (info) within
    ``equilibrium_tolerance``, else ``equilibrium_missed`` (warning). A run shorter than its
    relaxation time is not at equilibrium whatever its angle, and a schedule that moves the
    equilibrium faster than the norm can follow (the end of a cosine) leaves it; there nothing
    is claimed."""
    found = _decayed(ctx)
    if found is None:
        return []
    fc, decayed = found
    names = [ctx.names[i] for i in fc.tensor_index()[decayed]]
    judged_at = judged_equilibrium(ctx)
    evidence, predicted_step, relax = _equilibrium_timing(ctx, fc, decayed, judged_at)
    findings = [_equilibrium_time_finding(ctx, names, evidence, predicted_step, relax)]
    judged = _equilibrium_judged_finding(ctx, names, evidence, judged_at)
    if judged is not None:
        findings.append(judged)
    return findings


def _equilibrium_timing(
    ctx: Context, fc: Any, decayed: np.ndarray, judged_at: dict[str, np.ndarray]
) -> tuple[dict[str, Any], float | None, float | None]:
    """When the decayed tensors come within tolerance of equilibrium: the evidence of
    ``equilibrium_time``, the predicted step (a step within the run where most got there; none
    extrapolated at constant lr across a decaying schedule) and the relaxation time."""
    th = ctx.thresholds
    eq = equilibrium_steps(ctx)
    steps = fc.steps.astype(np.float64)
    first, last = float(steps[0]), float(steps[-1])
    step = eq["step"][decayed]
    predicted_step = _median(step) if np.isfinite(step).any() else math.inf
    relax = _median(eq["relaxation"][decayed])
    reached_steps = step[eq["reached"][decayed]]
    if eq["reached"][decayed].mean() >= 0.5:  # the run got there: a step within it
        predicted_step = _median(reached_steps)
    elif decaying(ctx):  # no constant-lr extrapolation across a decaying schedule
        predicted_step = _median(reached_steps) if reached_steps.size else None
    evidence: dict[str, Any] = {
        "equilibrium_step": jsonable(predicted_step),
        "reached_within_run": bool(eq["reached"][decayed].mean() >= 0.5),
        "tensors_reached": int(eq["reached"][decayed].sum()),
        "tolerance": th.equilibrium_time_tolerance,
        "relaxation_steps": jsonable(relax),
        "relaxation_times_elapsed": jsonable(_median(eq["elapsed"][decayed])),
        "span_steps": last - first,
        "last_step": int(last),
        "optimizer_family": ctx.family.name,
        "tensor_count": int(decayed.sum()),
        "measured_angular_update": jsonable(_median(judged_at["measured"])),
        "predicted_angular_update": jsonable(_median(judged_at["predicted"])),
    }
    return evidence, predicted_step, relax


def _equilibrium_time_finding(
    ctx: Context,
    names: list[str],
    evidence: dict[str, Any],
    predicted_step: float | None,
    relax: float | None,
) -> Finding:
    """``equilibrium_time``: the schedule-aware statement of a decaying run (`tracking`), else
    the step by which the run got within tolerance, else the step predicted past its end."""
    th = ctx.thresholds
    track = tracking(ctx)
    if track is not None:
        return _tracking_finding(ctx, track, names, evidence)
    if evidence["reached_within_run"]:
        return Finding(
            kind="equilibrium_time",
            severity="info",
            title=(
                f"Effective step came within {th.equilibrium_time_tolerance:.0%} of "
                f"equilibrium by step {_fmt_steps(predicted_step)} (predicted; relaxation "
                f"time {_fmt_steps(relax or math.inf)} steps)"
            ),
            evidence=evidence,
            tensors=listed(names),
            suggestion=(
                "From there weight decay holds the effective step near sqrt(2ηλ'/κ) "
                "(docs/design.md §5.3); tune lr × weight decay to move it."
            ),
        )
    return Finding(
        kind="equilibrium_time",
        severity="info",
        title=(
            f"Equilibrium predicted at step {_fmt_steps(predicted_step)} at this constant "
            f"lr, after this run's {evidence['last_step']:,} steps (relaxation time "
            f"{_fmt_steps(relax or math.inf)} steps): weight decay has not balanced the "
            "norm yet"
        ),
        evidence=evidence,
        tensors=listed(names),
        suggestion=(
            "Information, not a problem: a run shorter than its relaxation time is not at "
            "equilibrium, whatever its angle. To get there sooner raise lr × weight decay "
            "(the time scales as 1/(ηλ')); see the weight-decay timescale."
        ),
    )


def _equilibrium_judged_finding(
    ctx: Context, names: list[str], evidence: dict[str, Any], judged_at: dict[str, np.ndarray]
) -> Finding | None:
    """``equilibrium_reached`` or ``equilibrium_missed``: the measured angle against the
    closed-form equilibrium over the records where the recurrence puts each tensor at it; None
    where it puts none there."""
    th = ctx.thresholds
    measured, predicted = judged_at["measured"], judged_at["predicted"]
    judged = np.flatnonzero(np.isfinite(measured) & np.isfinite(predicted))
    if judged.size == 0:
        return None
    m, p = measured[judged], predicted[judged]
    ratio = float(_nanmean(m) / _nanmean(p))
    tensor_ratio = m / p
    judged_evidence = {
        **evidence,
        "measured_angular_update": float(_nanmean(m)),
        "predicted_angular_update": float(_nanmean(p)),
        "ratio": ratio,
        "tolerance": th.equilibrium_tolerance,
        "tensors_outside_tolerance": int(
            (np.abs(tensor_ratio - 1.0) > th.equilibrium_tolerance).sum()
        ),
        "window_start": int(np.nanmin(judged_at["start"][judged])),
        "tensor_count": int(judged.size),
    }
    judged_names = [names[i] for i in judged]
    if abs(ratio - 1.0) <= th.equilibrium_tolerance:
        return Finding(
            kind="equilibrium_reached",
            severity="info",
            title=(
                "Scale-invariant tensors are at equilibrium: angular update "
                f"{judged_evidence['measured_angular_update']:.3g} rad/step vs "
                f"{judged_evidence['predicted_angular_update']:.3g} predicted"
            ),
            evidence=judged_evidence,
            tensors=listed(judged_names),
            suggestion=(
                "Nothing to fix: the run lasted past its relaxation time and weight decay "
                "holds the effective step at its equilibrium, sqrt(2ηλ'/κ); tune that "
                "product to move it."
            ),
            score=0.0,
        )
    cause = (
        "below: gradients still carry signal the theory leaves out, or the norm has not come "
        "down from a larger value yet"
        if ratio < 1.0
        else "above: gradients correlated across steps (signal-dominated) turn faster than "
        "noise, which the theory assumes"
    )
    return Finding(
        kind="equilibrium_missed",
        severity="warning",
        title=(
            f"Angular update {judged_evidence['measured_angular_update']:.3g} rad/step is "
            f"{ratio:.2f}x the equilibrium {judged_evidence['predicted_angular_update']:.3g} "
            "where the run should be at it"
        ),
        evidence=judged_evidence,
        tensors=listed(judged_names),
        suggestion=(
            "From step "
            f"{judged_evidence['window_start']:,} the run had lasted a relaxation time and "
            "the recurrence puts it at equilibrium, yet its measured effective step is "
            f"{cause}. Compare `analysis.predict(run)`, which follows the recorded schedule."
        ),
        score=abs(math.log(ratio)) if ratio > 0 else 0.0,
    )


def decaying(ctx: Context) -> bool:
    """The recorded lr of the forecast tensors ends below ``schedule_decayed`` × its peak
    (median over tensors): a decaying schedule (cosine, step, linear, WSD's cool-down)."""
    fc = ctx.forecast
    if fc.empty:
        return False
    lr = _nanmedian(np.where(np.isfinite(fc.lr), fc.lr, np.nan), axis=1)
    if not np.isfinite(lr).any():
        return False
    peak = float(np.nanmax(lr))
    return bool(peak > 0 and lr[-1] < ctx.thresholds.schedule_decayed * peak)


def tracking(ctx: Context) -> dict[str, Any] | None:
    """Under a decaying schedule (`decaying`), how the effective step relates to the
    instantaneous equilibrium of the recorded lr and weight decay; None at a constant lr.

    The equilibrium moves as X_eq ∝ η_t/λ'_t (X = ‖w‖^(2·order): ‖w‖⁴ for SGD-like updates,
    ‖w‖² for Adam, Lion, Muon), so at |d ln(η_t/λ'_t)/dt| per step, while the norm relaxes at
    the rate ``rate`` = c·η_t·λ'_t (c = 4 or 2). From ``outpaced_from_step``, the first record
    after the lr's peak where the schedule moves faster than the norm can relax (median over
    tensors; the η_t·λ'·t-against-1 test with t the lr's own timescale 1/|d ln η/dt|), the
    effective step follows the schedule and not an equilibrium. ``mid_run_ratio``: measured /
    equilibrium angular update, geometric mean over the middle fifth of the run (median over
    tensors); ``mid_run_predicted_ratio`` the same for the recurrence. Every step it gives lies
    within the run."""
    if "tracking" in ctx.cache:
        return ctx.cache["tracking"]
    found = _decayed(ctx)
    out = None
    if found is not None and decaying(ctx):
        fc, decayed = found
        steps = fc.steps.astype(np.float64)
        lr = _nanmedian(np.where(np.isfinite(fc.lr[:, decayed]), fc.lr[:, decayed], np.nan), 1)
        peak = int(np.flatnonzero(lr >= 0.99 * np.nanmax(lr))[-1])
        with np.errstate(all="ignore"):
            target = np.log(np.maximum(fc.lr[:, decayed], 1e-300) / fc.decay[:, decayed])
            drift = (
                np.abs(np.gradient(target, steps, axis=0))
                if steps.size >= 2
                else np.zeros_like(target)
            )
        drift = _nanmedian(rolling_mean(drift, ctx.window), 1)
        rate = _nanmedian(fc.rate[:, decayed], 1)
        outpaced = np.flatnonzero((drift > rate)[peak:])
        span = steps[-1] - steps[0]
        mid = (steps >= steps[0] + 0.4 * span) & (steps <= steps[0] + 0.6 * span)
        if not mid.any():
            mid = np.ones_like(steps, bool)
        cells = np.ix_(mid, decayed)
        with np.errstate(all="ignore"):
            measured = np.log(fc.measured_angle[cells] / fc.eq_angle[cells])
            predicted = np.log(fc.angle[cells] / fc.eq_angle[cells])
        out = {
            "decay_start_step": int(steps[peak]),
            "outpaced_from_step": int(steps[peak + outpaced[0]]) if outpaced.size else None,
            "mid_run_ratio": jsonable(_median(np.exp(_nanmean(_finite(measured), axis=0)))),
            "mid_run_predicted_ratio": jsonable(
                _median(np.exp(_nanmean(_finite(predicted), axis=0)))
            ),
            "lr_peak": float(np.nanmax(lr)),
            "lr_last": float(lr[-1]),
        }
    ctx.cache["tracking"] = out
    return out


def _finite(values: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(values), values, np.nan)


def _tracking_finding(
    ctx: Context, track: dict[str, Any], names: list[str], base: dict[str, Any]
) -> Finding:
    """``equilibrium_tracking`` (info): the schedule-aware statement of a decaying run."""
    evidence = {
        **{k: base[k] for k in ("relaxation_steps", "relaxation_times_elapsed", "last_step")},
        "equilibrium_step": base["equilibrium_step"],
        "reached_within_run": base["reached_within_run"],
        **track,
        "optimizer_family": ctx.family.name,
        "tensor_count": base["tensor_count"],
    }
    elapsed = evidence["relaxation_times_elapsed"] or 0.0
    outpaced = evidence["outpaced_from_step"]
    ratio = evidence["mid_run_ratio"]
    after = (
        f"; from step {outpaced:,} the lr falls faster than the norm can relax"
        if outpaced is not None
        else ""
    )
    if elapsed >= 1.0 and ratio is not None:
        close = abs(ratio - 1.0) <= ctx.thresholds.equilibrium_tolerance
        verb = (
            "tracks its instantaneous equilibrium"
            if close
            else "runs off its instantaneous equilibrium"
        )
        title = (
            f"Under the decaying lr the effective step {verb}: {ratio:.3g}x mid-run "
            "(measured/equilibrium of the recorded lr and weight decay)" + after
        )
    else:
        title = (
            "Under the decaying lr no equilibrium holds: weight decay acted for "
            f"{elapsed:.2g} relaxation times" + after
        )
    follows = (
        f"From step {outpaced:,} the schedule decays faster than weight decay can pull the norm "
        "along (η_t·λ'·t_lr below 1, t_lr the lr's own timescale), so the effective step follows "
        "the schedule, not an equilibrium: that is what a decaying lr is for. "
        if outpaced is not None
        else "The norm keeps up with the schedule's equilibrium to the end. "
    )
    return Finding(
        kind="equilibrium_tracking",
        severity="info",
        title=title,
        evidence=evidence,
        tensors=listed(names),
        suggestion=(
            follows + "Under a decaying lr the equilibrium keeps moving, so no single step "
            "'reaches' it; the ratio to the instantaneous equilibrium (1 = tracking) is the "
            "measure. Information, not a problem."
        ),
    )


# --------------------------------------------------------------------------------------------
# Weight-decay timescale
# --------------------------------------------------------------------------------------------


def steps_per_epoch(ctx: Context) -> float | None:
    """Steps per epoch from a logged ``steps_per_epoch`` scalar (its last value) or from the
    slope of a logged ``epoch`` scalar against the step; None when neither is logged."""
    run = ctx.run
    if "steps_per_epoch" in run.scalar_names:
        steps, values = run.scalar("steps_per_epoch")
        if values.size and np.isfinite(values[-1]) and values[-1] > 0:
            return float(values[-1])
    if "epoch" in run.scalar_names:
        steps, values = run.scalar("epoch")
        ok = np.isfinite(values)
        if ok.sum() >= 2 and np.ptp(values[ok]) > 0:
            slope = np.polyfit(values[ok].astype(np.float64), steps[ok].astype(np.float64), 1)[0]
            return float(slope) if slope > 0 else None
    return None


def wd_timescale(ctx: Context) -> list[Finding]:
    """τ_iter = 1/(η_peak·λ') per param group of scale-invariant tensors (Wang & Aitchison
    2024), and the timescales the run covers, Σ_t η_t·λ'_t: fires when that is below 1 (τ
    exceeds the run) or when τ is shorter than one epoch (the weights forget what they learned
    within an epoch). A τ longer than the run is a warning only where the norms grew enough to
    cut the effective step (median (‖w‖_last/‖w‖_first)^k ≥ ``norm_decay_ratio``): weight decay
    could not hold them. Where they did not grow it is information: the long timescale did not
    cut the effective step in this run, whatever weight decay did to the norms."""
    found = _decayed(ctx)
    if found is None:
        return []
    fc, decayed = found
    index = fc.tensor_index()
    groups = ctx.groups[index]
    per_epoch = steps_per_epoch(ctx)
    steps = fc.steps.astype(np.float64)
    run_steps = float(steps[-1] - steps[0] + 1)
    with np.errstate(all="ignore"):
        norm_ratio = fc.measured_norm[-1] / fc.measured_norm[0]
    rows = {}
    for group in np.unique(groups[decayed]):
        local = decayed & (groups == group)
        rate = _nanmedian(fc.lr[:, local] * fc.decay[:, local], axis=1)  # η_t·λ'_t
        peak = float(np.nanmax(rate))
        covered = float(np.trapezoid(rate, steps)) + float(rate[0])
        tau = 1.0 / peak if peak > 0 else math.inf
        rows[int(group)] = {
            "tau_steps": tau,
            "tau_epochs": tau / per_epoch if per_epoch else None,
            "timescales_covered": covered,
            "decay_alone_norm_ratio": math.exp(-covered),
            "norm_ratio": _median(norm_ratio[local]),
            "lr_peak": float(np.nanmax(fc.lr[:, local])),
            "decay_per_lr": float(_nanmedian(fc.decay[:, local].ravel())),
            "tensor_count": int(local.sum()),
        }
    too_long = [g for g, r in rows.items() if r["timescales_covered"] < 1.0]
    too_short = [g for g, r in rows.items() if per_epoch and r["tau_steps"] < per_epoch]
    if not too_long and not too_short:
        return []
    group = (too_long or too_short)[0]
    worst = rows[group]
    evidence = {
        "tau_steps": worst["tau_steps"],
        "timescales_covered": worst["timescales_covered"],
        "decay_alone_norm_ratio": worst["decay_alone_norm_ratio"],
        "median_norm_ratio": worst["norm_ratio"],
        "group": group,
        "by_group": jsonable(rows),
        "run_steps": run_steps,
        "steps_per_epoch": per_epoch,
        "tau_epochs": worst["tau_epochs"],
        "optimizer_family": ctx.family.name,
        "tensor_count": int(decayed.sum()),
    }
    epoch_text = f" ({worst['tau_epochs']:.3g} epochs)" if worst["tau_epochs"] else ""
    severity = "warning"
    advice: tuple[dict[str, Any], ...] = ()
    if too_long:
        title = (
            f"Weight-decay timescale τ = 1/(ηλ') = {worst['tau_steps']:,.0f} steps{epoch_text} "
            f"exceeds the run: it covers {worst['timescales_covered']:.2g} timescale(s)"
        )
        ratio = worst["norm_ratio"]
        grew = ratio is not None and ratio**ctx.power >= ctx.thresholds.norm_decay_ratio
        alone = f"{worst['decay_alone_norm_ratio']:.3g}x"
        if grew:
            from stepsize_lens.analysis.advice import advice_dicts, weight_decay_advice

            advice = advice_dicts(weight_decay_advice(ctx, index[decayed & (groups == group)]))
            suggestion = (
                f"Weight decay alone would have shrunk ‖w‖ to {alone} over the run while the "
                f"norms grew {ratio:.3g}x (medians): it could not hold them, so the effective "
                "step followed the norm growth. A τ between one epoch and the run (Wang & "
                "Aitchison 2024) lets it act"
                + ("; see the advice." if advice else "; a longer run does the same.")
            )
        else:
            severity = "info"
            norms = f"{ratio:.3g}x" if ratio is not None else "–"
            suggestion = (
                f"The norms ended at {norms} their first value (median), so the long timescale "
                f"did not cut the effective step in this run (weight decay alone would have "
                f"shrunk ‖w‖ to {alone}). Information for longer runs: a τ between one epoch and "
                "the run (Wang & Aitchison 2024) lets weight decay set the effective step."
            )
    else:
        title = (
            f"Weight-decay timescale τ = {worst['tau_steps']:,.0f} steps is shorter than one "
            f"epoch ({per_epoch:,.0f} steps)"
        )
        evidence["steps_per_epoch"] = float(round(per_epoch))  # as quoted
        suggestion = (
            "Decoupled weight decay averages the updates over τ steps; shorter than an epoch, "
            "the weights forget parts of the data set within each pass. Lower the weight decay "
            "so that τ = 1/(ηλ') is at least an epoch."
        )
    return [
        Finding(
            kind="wd_timescale",
            severity=severity,
            title=title,
            evidence=evidence,
            tensors=listed([ctx.names[i] for i in index[decayed]]),
            suggestion=suggestion,
            score=abs(math.log10(max(worst["timescales_covered"], 1e-12))),
            advice=advice,
        )
    ]


# --------------------------------------------------------------------------------------------
# Early overshoot and warmup
# --------------------------------------------------------------------------------------------


def _warmup_length(lr: np.ndarray, steps: np.ndarray) -> int:
    """Steps from the first record until the lr first reaches 99% of its peak."""
    finite = np.where(np.isfinite(lr), lr, -np.inf)
    reach = np.flatnonzero(finite >= 0.99 * finite.max())
    return int(steps[reach[0]] - steps[0]) if reach.size else 0


def early_overshoot(ctx: Context) -> list[Finding]:
    """Over the first quarter of a run that lasts at least a relaxation time, the measured
    angular update (trailing mean over ``window`` records) peaks at ``overshoot_ratio`` or more
    times the equilibrium at the peak lr: warmup counters this (Kosson et al. 2024). The
    suggested warmup is the shortest linear one keeping the predicted angle within
    ``warmup_target`` × equilibrium by the recurrence's rate equation
    (`formulas.warmup_steps`), from the first record's norm."""
    found = _decayed(ctx)
    if found is None:
        return []
    fc, decayed = found
    th = ctx.thresholds
    steps = fc.steps.astype(np.float64)
    early = steps <= steps[0] + 0.25 * (steps[-1] - steps[0])
    lasted = (_median(elapsed_relaxation(ctx)[-1][decayed]) or 0.0) >= 1.0
    if early.sum() < 3 or not lasted:
        return []  # a run shorter than its relaxation time never meets its equilibrium
    peak = int(np.nanargmax(_nanmedian(fc.lr, axis=1)))
    eq_angle = fc.eq_angle[peak]
    near = slice(max(0, peak - ctx.window // 2), peak + ctx.window // 2 + 1)
    eq_sq = _nanmedian(fc.eq_sq[near])
    smoothed = np.column_stack([rolling_mean(c, ctx.window) for c in fc.measured_angle[early].T])
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.nanmax(smoothed, axis=0) / eq_angle
        where = fc.steps[early][np.nanargmax(np.where(np.isfinite(smoothed), smoothed, -1), axis=0)]
        x0 = (fc.sq[0] / eq_sq) ** fc.order
    ratio = np.where(decayed, ratio, np.nan)
    median = _median(ratio)
    if median is None or median < th.overshoot_ratio:
        return []
    hit = np.flatnonzero(decayed & (ratio >= th.overshoot_ratio))
    # the norm ratio gives the noise model's overshoot, 1/sqrt(x0); early gradients carrying
    # signal make the real one larger: start from the larger of the two
    x_start = np.fmin(x0[hit], 1.0 / ratio[hit] ** 2)
    warmup = warmup_steps(x_start, fc.rate[peak][hit], th.warmup_target)
    suggested = _median(warmup)
    current = _warmup_length(_nanmedian(fc.lr, axis=1), fc.steps)
    evidence = {
        "median_overshoot": median,
        "max_overshoot": jsonable(float(np.nanmax(ratio))),
        "median_peak_step": jsonable(_median(where[hit])),
        "equilibrium_angular_update": jsonable(_median(eq_angle[hit])),
        "initial_over_equilibrium_norm": jsonable(_median(np.sqrt(fc.sq[0] / eq_sq)[hit])),
        "warmup_steps_now": current,
        "suggested_warmup_steps": jsonable(suggested),
        "warmup_target": th.warmup_target,
        "optimizer_family": ctx.family.name,
        "tensor_count": int(hit.size),
    }
    if suggested is None or not np.isfinite(suggested):
        length = "a warmup of about one relaxation time (no shorter one suffices)"
    elif suggested <= current:
        length = (
            f"its warmup ({current:,} steps) should suffice by the recurrence "
            f"({suggested:,.0f}); the measured overshoot is larger than the noise model's"
        )
    else:
        length = f"a linear warmup of about {suggested:,.0f} steps (now {current:,})"
    return [
        Finding(
            kind="early_overshoot",
            severity="warning",
            title=(
                f"Early angular update reached {median:.3g}x the equilibrium of the peak lr on "
                f"{hit.size} scale-invariant tensor(s)"
            ),
            evidence=evidence,
            tensors=listed([ctx.names[i] for i in fc.tensor_index()[hit]]),
            suggestion=(
                "The weights start far below their equilibrium norm, so the first updates turn "
                "them much faster than the steady state does, until the norm has grown "
                "(Kosson et al. 2024: this is what warmup is for). Use "
                f"{length}, which keeps the angle within {th.warmup_target:g}x equilibrium; "
                "a larger initial norm does the same."
            ),
            score=math.log10(median),
        )
    ]


# --------------------------------------------------------------------------------------------
# The late gradient-norm rise
# --------------------------------------------------------------------------------------------


def _window_mean(values: np.ndarray, rows: slice) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return _nanmean(values[rows], axis=0)


def gradient_norm_rise(ctx: Context) -> list[Finding]:
    """‖g‖ of scale-invariant tensors rose ``gradient_rise_ratio``-fold or more from where the
    lr started to decay (to ``lr_decayed`` of its peak or below) to the end, and the fall of
    ‖w‖ makes at least ``gradient_norm_share`` of that rise (on a log scale), the scale-free
    g̃ = ‖w‖‖g‖ staying near flat: Defazio 2025's steady state ‖g‖/‖w‖ ≈ sqrt(2λ/η_t) as η_t
    decays under a fixed λ."""
    th = ctx.thresholds
    if ctx.keep.sum() < th.min_records or not ctx.invariant.any():
        return []
    run = ctx.run
    lr = tensor_group_field(run, "lr")[ctx.keep]
    grad = run.metric("grad_norm")[ctx.keep].astype(np.float64)
    weight = run.metric("weight_norm")[ctx.keep].astype(np.float64)
    steps = run.steps[ctx.keep]
    rows = []
    for i in np.flatnonzero(ctx.invariant):
        series = lr[:, i]
        if not np.isfinite(series).any():
            continue
        top = np.nanmax(series)
        if not top > 0 or series[-1] > th.lr_decayed * top:
            continue
        start = int(np.flatnonzero(series >= 0.99 * top)[-1])  # where the decay begins
        if len(series) - start < 2 * ctx.window:
            continue
        before = slice(max(0, start - ctx.window + 1), start + 1)
        after = slice(len(series) - ctx.window, len(series))
        g0, g1 = _window_mean(grad[:, i], before), _window_mean(grad[:, i], after)
        w0, w1 = _window_mean(weight[:, i], before), _window_mean(weight[:, i], after)
        with np.errstate(divide="ignore", invalid="ignore"):
            rise, fall = g1 / g0, w0 / w1
        if not (np.isfinite(rise) and np.isfinite(fall)) or rise < th.gradient_rise_ratio:
            continue
        share = math.log(fall) / math.log(rise) if fall > 1 else 0.0
        if share >= th.gradient_norm_share:
            rows.append((i, rise, fall, rise / fall, series[start] / series[-1], steps[start]))
    if not rows:
        return []
    rise = np.array([r[1] for r in rows])
    fall = np.array([r[2] for r in rows])
    lr_fall = np.array([r[4] for r in rows])
    evidence = {
        "tensor_count": len(rows),
        "median_grad_norm_rise": float(np.median(rise)),
        "median_weight_norm_fall": float(np.median(fall)),
        "median_scale_free_change": float(np.median([r[3] for r in rows])),
        "median_lr_fall": float(np.median(lr_fall)),
        "equilibrium_rise": float(np.median(np.sqrt(lr_fall))),
        "decay_start_step": int(np.median([r[5] for r in rows])),
        "optimizer_family": ctx.family.name,
    }
    if ctx.family.base == "adam":
        fix = (
            "stepsize_lens.optim.AdamC: AdamW whose decay on these tensors follows the schedule "
            "(λ·η_t/η_max), so ‖w‖ and ‖g‖ stay put as the lr decays"
        )
    else:
        fix = (
            "a weight decay that follows the schedule, λ_t = λ·η_t/η_max (what AdamC does for "
            "AdamW), so ‖w‖ and ‖g‖ stay put as the lr decays"
        )
    return [
        Finding(
            kind="gradient_norm_rise",
            severity="info",
            title=(
                f"Gradient norm rose {evidence['median_grad_norm_rise']:.3g}x as the lr decayed "
                f"{evidence['median_lr_fall']:.3g}x: the weight norm fell "
                f"{evidence['median_weight_norm_fall']:.3g}x while ‖w‖‖g‖ stayed near flat"
            ),
            evidence=evidence,
            tensors=listed([ctx.names[r[0]] for r in rows]),
            suggestion=(
                "On scale-invariant weights ‖g‖ scales as 1/‖w‖, and lr × weight decay sets "
                "the equilibrium norm: as the lr decays under a fixed weight decay the norm "
                "shrinks and ‖g‖ climbs towards sqrt(2λ/η_t)·‖w‖ (Defazio 2025) — not a sign of "
                f"instability in the loss. To remove it use {fix}."
            ),
            score=math.log10(evidence["median_grad_norm_rise"]),
        )
    ]


# --------------------------------------------------------------------------------------------
# Rotation balance
# --------------------------------------------------------------------------------------------


def rotation_balance(ctx: Context) -> list[Finding]:
    """Rows of a scale-invariant tensor (``channel_angular_update_cv``, median over the second
    half of the run) or scale-invariant tensors of one class (the coefficient of variation of
    their late angular update divided by each one's equilibrium; only in a run that lasted a
    relaxation time, before which every tensor approaches at its own pace) turning at rates
    that differ by ``rotation_cv`` or more (Kosson et al. 2024: at rotational equilibrium they
    turn alike)."""
    th = ctx.thresholds
    if ctx.keep.sum() < th.min_records or not ctx.invariant.any():
        return []
    run = ctx.run
    steps = run.steps[ctx.keep].astype(np.float64)
    late = steps >= steps[0] + 0.5 * (steps[-1] - steps[0])
    cv = run.metric("channel_angular_update_cv")[ctx.keep][late].astype(np.float64)
    multi = ctx.invariant & (run.param_values("ndim", 0.0) >= 2)
    with np.errstate(all="ignore"):
        inside = np.where(multi, _nanmedian(np.where(np.isfinite(cv), cv, np.nan)), np.nan)
    inside_hit = np.flatnonzero(np.nan_to_num(inside, nan=0.0) >= th.rotation_cv)
    angle = run.metric("angular_update")[ctx.keep][late].astype(np.float64)
    with np.errstate(all="ignore"):
        rate = _nanmean(angle, axis=0)
    fc = ctx.forecast
    if not fc.empty:
        eq = np.full(run.num_tensors, np.nan)
        fc_late = fc.steps.astype(np.float64) >= steps[0] + 0.5 * (steps[-1] - steps[0])
        with np.errstate(all="ignore"):
            eq[fc.tensor_index()] = _nanmean(fc.eq_angle[fc_late], axis=0)
        rate = np.where(np.isfinite(eq) & (eq > 0), rate / eq, rate)
    across: dict[str, float] = {}
    across_tensors: list[int] = []
    classes = np.asarray(ctx.classes, dtype=object)
    # tensors approach equilibrium at their own pace: compare them only in a run that lasted
    lasted = not fc.empty and (_median(elapsed_relaxation(ctx)[-1]) or 0.0) >= 1.0
    for cname in np.unique(classes[ctx.invariant]) if lasted else ():
        members = np.flatnonzero((classes == cname) & ctx.invariant & np.isfinite(rate))
        if members.size < 3:
            continue
        values = rate[members]
        spread = float(values.std() / values.mean()) if values.mean() > 0 else math.nan
        if np.isfinite(spread):
            across[str(cname)] = spread
            if spread >= th.rotation_cv:
                across_tensors.extend(members.tolist())
    across_hit = {k: v for k, v in across.items() if v >= th.rotation_cv}
    if inside_hit.size == 0 and not across_hit:
        return []
    order = inside_hit[np.argsort(-inside[inside_hit])]
    evidence = {
        "threshold": th.rotation_cv,
        "tensors_with_unbalanced_rows": int(inside_hit.size),
        "row_cv": {ctx.names[i]: float(inside[i]) for i in order[:MAX_LISTED]},
        "median_row_cv": jsonable(_median(inside[multi])),
        "max_row_cv": jsonable(float(inside[order[0]])) if order.size else None,
        "across_tensor_cv": across,
        "max_across_tensor_cv": jsonable(max(across_hit.values())) if across_hit else None,
        "relative_to_equilibrium": not fc.empty,
        "tensor_count": int(len(set(order.tolist()) | set(across_tensors))),
        "matrix_tensors": int(multi.sum()),
    }
    parts = []
    if inside_hit.size:
        median = evidence["median_row_cv"]
        parts.append(
            f"rows of {inside_hit.size} tensor(s) turn at rates whose coefficient of variation "
            f"reaches {evidence['max_row_cv']:.2g} (median {median:.2g} over the "
            f"{int(multi.sum())} scale-invariant matrix/conv tensors)"
        )
    if across_hit:
        name, spread = max(across_hit.items(), key=lambda kv: kv[1])
        parts.append(
            f"{name}-invariant tensors' θ/θ_eq vary with a coefficient of variation of {spread:.2g}"
        )
    names = [ctx.names[i] for i in order] + [
        ctx.names[i] for i in across_tensors if i not in set(order.tolist())
    ]
    return [
        Finding(
            kind="rotation_balance",
            severity="info",
            title="Unbalanced rotation: " + "; ".join(parts),
            evidence=evidence,
            tensors=listed(names),
            suggestion=(
                "At rotational equilibrium every neuron and every scale-invariant tensor of a "
                "param group turns at the same rate (Kosson et al. 2024); a spread this large "
                "means some learn much faster than others. Early in training that is the "
                "approach to equilibrium (see the time to equilibrium); late, it marks rows or "
                "tensors with their own effective learning rate: give them one lr and weight "
                "decay, train past the relaxation time, or balance the updates (projected "
                "optimizers such as AdamP/SGDP, or per-neuron normalised updates)."
            ),
            score=float(max([*inside[inside_hit].tolist(), *across_hit.values()])),
        )
    ]
