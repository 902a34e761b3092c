"""Analysis of recorded runs: pure functions from `Run` objects to pandas frames and dataclasses.

No file I/O, no hooks, no plotting. The public API (everything else is an implementation
detail)::

    # frames.py: tidy / wide frames, reducers, smoothing, several runs
    tensor_frame(run, metrics=None, form="tidy"|"wide", classes=None)       -> DataFrame
    reduce(run, by="class"|"group"|"tensor"|"all", metrics=None,
           reducer="mean"|"weighted"|"median", form="tidy"|"wide")          -> DataFrame
    tensor_classes(run, classes=None, delta=None)                             -> Series
    ema(frame, alpha=0.1, value="value"), ema_values(array, alpha)            -> smoothed copy
    epochs(run, scalar="epoch"), stack(runs, by, metrics, on="step"|"epoch")  -> x axis / frame
    frames.tensor_group_field(run, "lr") -> [R, T];  frames.tensor_numel(run) -> [T]

    # summary.py: per group and per class
    summarize(run, by=("group", "class"), reducer="mean", window=None)       -> DataFrame
    overview(run) -> Overview;  nonfinite_mask(run) -> [R, T] bool
    decay_crossings(steps, values, lr, fractions, window) -> DecayCrossings

    # theory.py: DESIGN.md §5 as functions and per-record predictions
    norm_sq_after, decoupled_norm_sq, plain_gd_norm_sq, momentum_norm_sq, projected_norm_sq,
    momentum_growth_factor, equilibrium_angle (+ sgd_/adamw_/sgdp_/adamp_equilibrium_angle),
    sgd_/sgdp_/adamw_/adamp_equilibrium_norm, relaxation_steps, no_decay_norm, decay_exponent
    optimizer_family(run); norm_identity(run); equilibrium_predictions(run);
    equilibrium_check(run, window=0.2, by="tensor"|"class"|"invariant"); decay_exponents(run);
    sqrt_law(run)  (c·t^(−1/2) overlay fitted per tensor)

    # findings.py
    find(run, classes=None, delta=None, thresholds=Thresholds()) -> list[Finding]  (ranked)

    # compare.py
    compare(runs, metrics, by="class", on="step", reference=0, alpha=None)   -> DataFrame
    compare_summary(runs, ...)                                                -> DataFrame

``classes`` everywhere overrides the invariance class per tensor (Series or mapping name →
channel / layer / none); by default `stepsize_lens.invariance.classify_tensors` decides.
"""

from __future__ import annotations

from stepsize_lens.analysis.compare import compare, compare_summary
from stepsize_lens.analysis.findings import KINDS, SEVERITIES, Finding, Thresholds, find, rank
from stepsize_lens.analysis.frames import (
    ema,
    ema_values,
    epochs,
    reduce,
    stack,
    tensor_classes,
    tensor_frame,
)
from stepsize_lens.analysis.summary import (
    DecayCrossings,
    Overview,
    decay_crossings,
    nonfinite_mask,
    overview,
    summarize,
)
from stepsize_lens.analysis.theory import (
    decay_exponent,
    decay_exponents,
    equilibrium_angle,
    equilibrium_check,
    equilibrium_predictions,
    momentum_growth_factor,
    momentum_norm_sq,
    norm_identity,
    norm_sq_after,
    optimizer_family,
    sqrt_law,
)

__all__ = [
    "DecayCrossings",
    "Finding",
    "KINDS",
    "Overview",
    "SEVERITIES",
    "Thresholds",
    "compare",
    "compare_summary",
    "decay_crossings",
    "decay_exponent",
    "decay_exponents",
    "ema",
    "ema_values",
    "epochs",
    "equilibrium_angle",
    "equilibrium_check",
    "equilibrium_predictions",
    "find",
    "momentum_growth_factor",
    "momentum_norm_sq",
    "nonfinite_mask",
    "norm_identity",
    "norm_sq_after",
    "optimizer_family",
    "overview",
    "rank",
    "sqrt_law",
    "reduce",
    "stack",
    "summarize",
    "tensor_classes",
    "tensor_frame",
]
