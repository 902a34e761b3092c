"""When the recurrence puts each tensor at equilibrium: the relaxation times a run has lasted
(`elapsed_relaxation`) and the first step within tolerance of the equilibrium
(`equilibrium_steps`). Shared by the theory findings and the advice, which both read them from
the context's cache."""

from __future__ import annotations

import numpy as np

from stepsize_lens.analysis.finding import Context
from stepsize_lens.analysis.smoothing import rolling_mean
from stepsize_lens.analysis.theory.formulas import steps_to_within


def elapsed_relaxation(ctx: Context) -> np.ndarray:
    """[R', T'] relaxation times elapsed by each record, Σ rate over the steps from the first
    record (the rate interpolated linearly between records): equilibrium can be claimed only
    once this reaches 1 (the run has lasted a relaxation time; cached)."""
    if "elapsed" not in ctx.cache:
        fc = ctx.forecast
        steps = fc.steps.astype(np.float64)
        rate = np.nan_to_num(fc.rate, nan=0.0)
        gaps = np.diff(steps)[:, None]
        pieces = 0.5 * (rate[1:] + rate[:-1]) * gaps
        ctx.cache["elapsed"] = rate[:1] + np.concatenate(
            [np.zeros((1, rate.shape[1])), np.cumsum(pieces, axis=0)]
        )
    return ctx.cache["elapsed"]


def equilibrium_steps(ctx: Context) -> dict[str, np.ndarray]:
    """Per forecast tensor: the first step at which the run has lasted a relaxation time
    (`elapsed_relaxation` ≥ 1) and the predicted effective step is within
    ``equilibrium_time_tolerance`` of the equilibrium at that record's hyperparameters (the
    ratio (‖w_eq‖²/‖w‖²)^e of the recurrence's norm, ‖w_eq‖² smoothed over ``window`` records).
    A norm that merely crosses a moving equilibrium (the gradient fading, the lr decaying)
    before weight decay has acted is not there. If the run never gets there,
    `formulas.steps_to_within` at the last record's hyperparameters (and the rest of one
    relaxation time) predicts the step (∞ if the lr or the decay is 0 there). Also
    ``reached`` (did the run get there), ``relaxation`` (the shortest time constant of the
    run, at its peak lr), ``elapsed`` (relaxation times the run lasted) and ``current`` [R', T']
    (the records where the recurrence puts the tensor at equilibrium: lasted a relaxation time
    and within the tolerance). Cached."""
    if "equilibrium" in ctx.cache:
        return ctx.cache["equilibrium"]
    fc = ctx.forecast
    tol = ctx.thresholds.equilibrium_time_tolerance
    elapsed = elapsed_relaxation(ctx)
    with np.errstate(divide="ignore", invalid="ignore"):
        eq_sq = np.column_stack([rolling_mean(c, ctx.window) for c in fc.eq_sq.T])
        ratio = (eq_sq / fc.sq) ** fc.exponent
    within = (np.abs(ratio - 1.0) <= tol) & (elapsed >= 1.0)
    reached = within.any(axis=0)
    first = np.argmax(within, axis=0)
    last = float(fc.steps[-1])
    rate = fc.rate[-1]
    fastest = np.nanmax(np.nan_to_num(fc.rate, nan=0.0), axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ahead = steps_to_within(fc.sq[-1], eq_sq[-1], rate, fc.order, fc.exponent, tol)
        rest = np.where(rate > 0, np.maximum(1.0 - elapsed[-1], 0.0) / rate, np.inf)
        relaxation = np.where(fastest > 0, 1.0 / fastest, np.inf)
    step = np.where(reached, fc.steps[first].astype(np.float64), last + np.maximum(ahead, rest))
    ctx.cache["equilibrium"] = {
        "step": step,
        "reached": reached,
        "relaxation": relaxation,
        "elapsed": elapsed[-1],
        "current": within,
    }
    return ctx.cache["equilibrium"]
