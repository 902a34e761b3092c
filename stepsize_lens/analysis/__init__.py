"""Analysis of recorded runs: pure functions from `Run` objects to pandas frames and dataclasses.

No file I/O, no hooks, no plotting. The public API (everything else is an implementation
detail)::

    # frames.py: tidy / wide frames, several runs; sets.py: the sets of tensors and their
    # figures (reducers, left-out tensors); smoothing.py: EMA, rolling mean; axes.py: step / epoch
    tensor_frame(run, metrics=None, form="tidy"|"wide", classes=None)       -> DataFrame
    reduce(run, by="class"|"group"|"tensor"|"invariant"|"all", metrics=None,
           reducer="mean"|"weighted"|"median", form="tidy"|"wide")          -> DataFrame
    tensor_classes(run, classes=None, delta=None)                             -> Series
    is_invariant(classes) -> [T] bool;  set_mean(run, metric, mask) -> (steps, mean)
    ema(frame, alpha=0.1, value="value"), ema_values(array, alpha)            -> smoothed copy
    rolling_mean(values, window)                                              -> smoothed copy
    epochs(run, scalar="epoch"), stack(runs, by, metrics, on="step"|"epoch")  -> x axis / frame
    run_labels(runs) -> unique labels;  set_name(by, key) -> "group 0" / key
    last_logged(run, "test_accuracy") -> float
    sets.tensor_group_field(run, "lr") -> [R, T];  frames.record_frame(run, columns)

    # summary.py: per group and per class
    summarize(run, by=("group", "class"), reducer="mean", window=None)       -> DataFrame
    overview(run) -> Overview;  nonfinite_mask(run) -> [R, T] bool;  lr_changes(run) -> steps
    decay_crossings(steps, values, lr, fractions, window) -> DecayCrossings

    # theory/: docs/design.md §5 (formulas.py: pure functions; families.py: the optimizer-family
    # table; predictions.py: per record and tensor of a run)
    norm_sq_after, decoupled_norm_sq, plain_gd_norm_sq, momentum_norm_sq, projected_norm_sq,
    momentum_growth_factor, sgd_/adamw_/sgdp_/adamp_equilibrium_angle and _norm, no_decay_norm,
    decay_exponent; FAMILY_TABLE, equilibrium_angle(family, ...), equilibrium_norm(family, ...),
    relaxation_steps(family, ...)
    predict(run, by="class") -> tidy step, set, metric, predicted, measured, equilibrium: the
    per-step recurrence along the recorded schedule; forecast(run) -> Forecast (per tensor)
    optimizer_family(run); norm_identity(run); equilibrium_predictions(run);
    equilibrium_check(run, window=0.2, by="tensor"|"class"|"invariant"); decay_exponents(run);
    sqrt_law(run)  (c·t^(−1/2) overlay fitted per tensor)

    # split.py: why the effective step fell
    decay_split(run, by="class") -> per set: total fall = lr part x norm part x gradient part
    split_series(run, by="class") -> the same along the run, for figures

    # findings.py (theory checks in theory/findings.py; every kind's contract: docs/findings.md)
    find(run, classes=None, delta=None, thresholds=Thresholds(), forecasted=None)
        -> list[Finding]  (ranked; advice.py: changes in the user's own arguments)
    verdict(findings) -> {healthy, sentences, text, kinds}  (verdict.py: the report's opening)

    # compare.py
    compare(runs, metrics, by="class", on="step", reference=0, alpha=None)   -> DataFrame
    compare_summary(runs, ...)                                                -> DataFrame

``classes`` everywhere overrides the invariance class per tensor (Series or mapping name →
channel / layer / none); by default `stepsize_lens.invariance.classify_tensors` decides.
"""

from __future__ import annotations

from stepsize_lens.analysis.advice import PLAUSIBLE_WEIGHT_DECAY
from stepsize_lens.analysis.axes import epochs, last_logged, run_labels
from stepsize_lens.analysis.compare import compare, compare_summary
from stepsize_lens.analysis.findings import KINDS, SEVERITIES, Finding, Thresholds, find, rank
from stepsize_lens.analysis.frames import reduce, stack, tensor_frame
from stepsize_lens.analysis.sets import is_invariant, set_mean, tensor_classes
from stepsize_lens.analysis.smoothing import ema, ema_values, rolling_mean
from stepsize_lens.analysis.split import decay_split, split_series
from stepsize_lens.analysis.summary import (
    DecayCrossings,
    Overview,
    decay_crossings,
    lr_changes,
    nonfinite_mask,
    overview,
    summarize,
)
from stepsize_lens.analysis.theory import (
    FAMILY_TABLE,
    decay_exponent,
    decay_exponents,
    equilibrium_angle,
    equilibrium_check,
    equilibrium_norm,
    equilibrium_predictions,
    forecast,
    momentum_growth_factor,
    momentum_norm_sq,
    norm_identity,
    norm_sq_after,
    optimizer_family,
    predict,
    relaxation_steps,
    sqrt_law,
)
from stepsize_lens.analysis.verdict import verdict

__all__ = [
    "FAMILY_TABLE",
    "DecayCrossings",
    "Finding",
    "KINDS",
    "Overview",
    "PLAUSIBLE_WEIGHT_DECAY",
    "SEVERITIES",
    "Thresholds",
    "compare",
    "compare_summary",
    "decay_crossings",
    "decay_exponent",
    "decay_exponents",
    "decay_split",
    "ema",
    "ema_values",
    "epochs",
    "equilibrium_angle",
    "equilibrium_check",
    "equilibrium_norm",
    "equilibrium_predictions",
    "find",
    "forecast",
    "is_invariant",
    "last_logged",
    "lr_changes",
    "momentum_growth_factor",
    "momentum_norm_sq",
    "nonfinite_mask",
    "norm_identity",
    "norm_sq_after",
    "optimizer_family",
    "overview",
    "predict",
    "rank",
    "reduce",
    "relaxation_steps",
    "rolling_mean",
    "run_labels",
    "set_mean",
    "split_series",
    "sqrt_law",
    "stack",
    "summarize",
    "tensor_classes",
    "tensor_frame",
    "verdict",
]
