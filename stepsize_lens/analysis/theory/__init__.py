"""Theory the measurements are held against (docs/design.md §5).

- `formulas`: pure functions of hyperparameters and norms (one step, Lemma 2.2, equilibrium
  angles and norms, relaxation rates, the no-decay law, fitted decay exponents);
- `families`: the optimizer families as one table (`FAMILY_TABLE`: how each is recognised,
  which formulas give its equilibrium, relaxation and decoupled decay, whether it projects),
  and the family-keyed `equilibrium_angle`, `equilibrium_norm`, `relaxation_steps`;
- `recurrence`: the per-step mean-field recurrence of one optimizer step on a scale-invariant
  tensor (`Dynamics`, `step`, `integrate`) and its constant-lr fixed point (`equilibrium`);
  `newton_schulz`: the size and gain of Muon's orthogonalized update per shape;
- `forecast`: the recurrence integrated along a run's recorded schedule (`forecast`, `predict`,
  `run_hyper`, `optimizer_family`);
- `predictions`: per record and tensor of a `Run` (`norm_identity`, `equilibrium_predictions`,
  `equilibrium_check`, `decay_exponents`, `sqrt_law`).

Above them, and not imported here (they use the findings' context, `analysis.finding`):
`relaxation` (the relaxation times a run has lasted and the first step at equilibrium, for the
findings and the advice) and `findings` (the findings that hold a run against the theory).

Everything public is importable from here.
"""

from __future__ import annotations

from stepsize_lens.analysis.theory.families import (
    FAMILIES,
    FAMILY_TABLE,
    UNKNOWN,
    Family,
    Hyper,
    equilibrium_angle,
    equilibrium_norm,
    family_entry,
    family_of_optimizer,
    relaxation_steps,
)
from stepsize_lens.analysis.theory.forecast import (
    Forecast,
    forecast,
    optimizer_family,
    predict,
    run_hyper,
)
from stepsize_lens.analysis.theory.formulas import (
    ArrayLike,
    adam_l2_equilibrium_norm,
    adamc_equilibrium_angle,
    adamc_equilibrium_norm,
    adamp_decoupled_decay,
    adamp_equilibrium_angle,
    adamp_equilibrium_norm,
    adamp_relaxation_rate,
    adamw_equilibrium_angle,
    adamw_equilibrium_norm,
    adamw_relaxation_rate,
    decay_exponent,
    decoupled_norm_sq,
    lion_cross_factor,
    lion_equilibrium_angle,
    lion_equilibrium_norm,
    lion_kosson_angle,
    lion_variance,
    momentum_growth_factor,
    momentum_norm_sq,
    no_decay_norm,
    norm_sq_after,
    normalized_grad_ratio,
    plain_gd_norm_sq,
    projected_norm_sq,
    sgd_equilibrium_angle,
    sgd_equilibrium_norm,
    sgd_relaxation_rate,
    sgdp_decoupled_decay,
    sgdp_equilibrium_angle,
    sgdp_equilibrium_norm,
    sgdp_relaxation_rate,
    sgdp_unprojected_equilibrium_norm,
    steps_to_within,
    time_constant,
    warmup_steps,
    wd_timescale,
)
from stepsize_lens.analysis.theory.predictions import (
    decay_exponents,
    equilibrium_check,
    equilibrium_predictions,
    norm_identity,
    predictions_for,
    sqrt_law,
)
from stepsize_lens.analysis.theory.recurrence import Dynamics, Equilibrium, equilibrium, integrate

__all__ = [
    "ArrayLike",
    "adam_l2_equilibrium_norm",
    "adamc_equilibrium_angle",
    "adamc_equilibrium_norm",
    "lion_cross_factor",
    "lion_equilibrium_angle",
    "lion_equilibrium_norm",
    "lion_kosson_angle",
    "lion_variance",
    "normalized_grad_ratio",
    "steps_to_within",
    "warmup_steps",
    "wd_timescale",
    "Dynamics",
    "Equilibrium",
    "Forecast",
    "FAMILIES",
    "FAMILY_TABLE",
    "Family",
    "Hyper",
    "UNKNOWN",
    "adamp_decoupled_decay",
    "adamp_equilibrium_angle",
    "adamp_equilibrium_norm",
    "adamp_relaxation_rate",
    "adamw_equilibrium_angle",
    "adamw_equilibrium_norm",
    "adamw_relaxation_rate",
    "decay_exponent",
    "decay_exponents",
    "decoupled_norm_sq",
    "equilibrium",
    "equilibrium_angle",
    "equilibrium_check",
    "equilibrium_norm",
    "equilibrium_predictions",
    "family_entry",
    "family_of_optimizer",
    "forecast",
    "integrate",
    "momentum_growth_factor",
    "momentum_norm_sq",
    "no_decay_norm",
    "norm_identity",
    "norm_sq_after",
    "optimizer_family",
    "predict",
    "plain_gd_norm_sq",
    "predictions_for",
    "projected_norm_sq",
    "relaxation_steps",
    "run_hyper",
    "sgd_equilibrium_angle",
    "sgd_equilibrium_norm",
    "sgd_relaxation_rate",
    "sgdp_decoupled_decay",
    "sgdp_equilibrium_angle",
    "sgdp_equilibrium_norm",
    "sgdp_relaxation_rate",
    "sgdp_unprojected_equilibrium_norm",
    "sqrt_law",
    "time_constant",
]
