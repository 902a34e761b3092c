"""Findings: what a run says the user should look at, ranked, each with evidence and a suggestion.

`find(run)` runs these checks (the theory checks are in `theory.findings`, docs/design.md §5.11):

- ``nonfinite`` (critical): any non-finite gradient, update or weight
  (`summary.nonfinite_mask`).
- ``norm_blowup`` (warning; critical from ``blowup_critical_ratio``): a tensor's weight norm
  grew ``blowup_ratio``-fold or more.
- ``premature_decay`` (warning): norm growth *alone* cut a scale-invariant tensor's effective
  step ``norm_decay_ratio``-fold or more, (‖w‖_late/‖w‖_early)^k (k = 2: η/‖w‖², the paper's
  measure, for SGD-like updates; k = 1 for adaptive ones: `decay_split`); the evidence splits
  the whole fall into its norm-growth, lr and scale-free-gradient parts.
- ``gradient_faded`` (info): the effective step fell to ``decay_fraction`` of its early level
  with the norm-growth part under that threshold: the scale-free gradient made the fall.
- ``no_weight_decay`` (warning): scale-invariant tensors sit in groups with weight decay 0: no
  equilibrium, the effective step keeps falling (≈ t^(−1/2)). The suggested value fits the
  optimizer family (`theory.Family.typical_weight_decay`).
- ``wd_timescale`` (warning; info where the norms did not grow): τ_iter = 1/(ηλ') exceeds the
  run (it covers less than one timescale) or is shorter than one epoch (from a logged
  ``epoch`` or ``steps_per_epoch``).
- ``equilibrium_time`` (info, constant lr): the step at which the recurrence
  (`theory.forecast`) brings the effective step within ``equilibrium_time_tolerance`` of
  equilibrium, and whether the run got there; only a run that got there before its final
  ``equilibrium_window`` is judged: ``equilibrium_reached`` (info) / ``equilibrium_missed``
  (warning), measured against the closed-form equilibrium within ``equilibrium_tolerance``.
- ``equilibrium_tracking`` (info, a recorded lr ending below ``schedule_decayed`` × its peak):
  the measured angular update against the instantaneous equilibrium, and the step from which
  the schedule decays faster than the norm can relax; never a step beyond the run.
- ``early_overshoot`` (warning): the early angular update peaks at ``overshoot_ratio`` times
  the equilibrium of the peak lr or more; the suggestion gives the warmup the recurrence
  implies.
- ``gradient_norm_rise`` (info): ‖g‖ rose ``gradient_rise_ratio``-fold or more after the lr
  decayed, mostly because ‖w‖ fell (Defazio 2025); suggests AdamC or a schedule-following decay.
- ``rotation_balance`` (info): rows of a tensor (``channel_angular_update_cv``) or tensors of a
  class turn at rates whose coefficient of variation is ``rotation_cv`` or more.
- ``projection_never`` (warning): AdamP/SGDP never projected any ≥2-D tensor (it ran as
  AdamW/SGD).
- ``projection_always`` (warning): AdamP/SGDP projected every ≥2-D tensor at
  ``projection_always_share`` of the records or more, classifier included: δ is too loose.
- ``wd_mismatch`` (warning): groups holding scale-invariant tensors differ in weight decay
  ``wd_mismatch_ratio``-fold or more (or zero against non-zero).

Every title quotes its evidence's numbers; ``premature_decay``, ``no_weight_decay`` and
``wd_timescale`` carry advice in the user's own optimizer arguments (`advice`). The contract of
every kind is docs/findings.md. Trend and theory checks need at least ``min_records``
non-skipped records. Scale invariance
comes from `stepsize_lens.invariance.classify_tensors` unless ``classes`` is given.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from stepsize_lens._jsonable import jsonable
from stepsize_lens.analysis.finding import MAX_LISTED, Context, Finding, Thresholds, listed
from stepsize_lens.analysis.sets import is_invariant, tensor_classes, tensor_group_field
from stepsize_lens.analysis.summary import nonfinite_gradient, nonfinite_mask
from stepsize_lens.analysis.theory import findings as T
from stepsize_lens.analysis.theory.families import FAMILY_TABLE, family_entry

if TYPE_CHECKING:
    import pandas as pd

    from stepsize_lens.run import Run

SEVERITIES: tuple[str, ...] = ("critical", "warning", "info")
KINDS: tuple[str, ...] = (
    "nonfinite",
    "norm_blowup",
    "premature_decay",
    "gradient_faded",
    "no_weight_decay",
    "wd_timescale",
    "early_overshoot",
    "equilibrium_missed",
    "equilibrium_reached",
    "equilibrium_time",
    "equilibrium_tracking",
    "gradient_norm_rise",
    "rotation_balance",
    "projection_never",
    "projection_always",
    "wd_mismatch",
)
# the ``no_weight_decay`` suggestion's usual weight decay, per theory family
TYPICAL_WEIGHT_DECAY: dict[str, str] = {
    name: family.typical_weight_decay for name, family in FAMILY_TABLE.items()
}


def rank(findings: list[Finding]) -> list[Finding]:
    """Most severe first, then by score (descending), then by kind order."""
    return sorted(
        findings,
        key=lambda f: (
            SEVERITIES.index(f.severity),
            -f.score,
            KINDS.index(f.kind) if f.kind in KINDS else 99,
        ),
    )


def find(
    run: Run,
    classes: pd.Series | Mapping[str, str] | None = None,
    delta: float | None = None,
    thresholds: Thresholds | None = None,
    forecasted: Any = None,
) -> list[Finding]:
    """All findings for a run, ranked (`rank`).

    ``forecasted``: `theory.forecast` of this run with these classes, when the caller already
    has it (a report computes it once for the findings, its theory section and the figures).
    """
    from stepsize_lens.analysis.theory import optimizer_family

    cls = tensor_classes(run, classes, delta)
    keep = ~run.skipped.astype(bool)
    groups = run.tensor_groups
    wd = tensor_group_field(run, "weight_decay", 0.0)
    wd_last = wd[-1] if run.num_records else np.zeros(run.num_tensors)
    ctx = Context(
        run=run,
        classes=cls,
        thresholds=thresholds or Thresholds(),
        keep=keep,
        names=run.tensor_names,
        invariant=is_invariant(cls),
        family=family_entry(optimizer_family(run)),
        wd_last=wd_last,
        groups=groups,
        forecasted=forecasted,
    )
    findings: list[Finding] = []
    for check in (
        _nonfinite,
        _norm_blowup,
        T.premature_decay,
        T.gradient_faded,
        _no_weight_decay,
        T.wd_timescale,
        T.equilibrium,
        T.early_overshoot,
        T.gradient_norm_rise,
        T.rotation_balance,
        _projection,
        _wd_mismatch,
    ):
        findings.extend(check(ctx))
    return rank(findings)


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------


def _nonfinite(ctx: Context) -> list[Finding]:
    bad = nonfinite_mask(ctx.run)
    if not bad.any():
        return []
    run = ctx.run
    g = run.metric("grad_norm")
    d = run.metric("update_norm")
    w = run.metric("weight_norm")
    grad_bad = bad & nonfinite_gradient(g, d)
    records = np.flatnonzero(bad.any(axis=1))
    tensors = [ctx.names[i] for i in np.flatnonzero(bad.any(axis=0))]
    evidence = {
        "cells": int(bad.sum()),
        "records": int(records.size),
        "first_step": int(run.steps[records[0]]),
        "gradient_cells": int(grad_bad.sum()),
        "update_cells": int((bad & ~np.isfinite(d)).sum()),
        "weight_cells": int((bad & ~np.isfinite(w)).sum()),
        "tensor_count": len(tensors),
    }
    return [
        Finding(
            kind="nonfinite",
            severity="critical",
            title=(
                f"Non-finite gradients or updates in {len(tensors)} tensor(s) "
                f"from step {evidence['first_step']}"
            ),
            evidence=evidence,
            tensors=listed(tensors),
            suggestion=(
                "Check the loss for inf/NaN at that step; lower the learning rate or clip "
                "gradients (torch.nn.utils.clip_grad_norm_); with float16 use "
                "torch.amp.GradScaler so bad steps are skipped instead of applied."
            ),
            score=float(bad.sum()),
        )
    ]


def _norm_ratios(ctx: Context) -> np.ndarray:
    w = ctx.run.metric("weight_norm")[ctx.keep].astype(np.float64)
    ratios = np.full(w.shape[1], np.nan)
    for i in range(w.shape[1]):
        finite = np.flatnonzero(np.isfinite(w[:, i]))
        if finite.size >= 2 and w[finite[0], i] > 0:
            ratios[i] = w[finite[-1], i] / w[finite[0], i]
    return ratios


def _norm_blowup(ctx: Context) -> list[Finding]:
    th = ctx.thresholds
    ratios = _norm_ratios(ctx)
    hit = np.flatnonzero(np.nan_to_num(ratios, nan=0.0) >= th.blowup_ratio)
    if hit.size == 0:
        return []
    order = hit[np.argsort(-ratios[hit])]
    worst = float(ratios[order[0]])
    invariant = ctx.invariant[order]
    evidence = {
        "max_ratio": worst,
        "ratios": {ctx.names[i]: float(ratios[i]) for i in order[:MAX_LISTED]},
        "scale_invariant": int(invariant.sum()),
        "not_scale_invariant": int((~invariant).sum()),
        "tensor_count": int(hit.size),
    }
    if invariant.all():
        suggestion = (
            "These tensors are scale-invariant, so the growth does not change the loss but shrinks "
            "their effective step as 1/‖w‖²: add weight decay on them or use SGDP/AdamP, whose "
            "projection removes the norm-growing part of each update."
        )
    else:
        suggestion = (
            "Tensors whose scale matters are growing: lower the learning rate, add weight decay or "
            "gradient clipping; for the scale-invariant ones, SGDP/AdamP stop the radial growth."
        )
    return [
        Finding(
            kind="norm_blowup",
            severity="critical" if worst >= th.blowup_critical_ratio else "warning",
            title=f"Weight norm grew up to {worst:.3g}x in {hit.size} tensor(s)",
            evidence=evidence,
            tensors=listed([ctx.names[i] for i in order]),
            suggestion=suggestion,
            score=math.log10(worst),
        )
    ]


def _no_weight_decay(ctx: Context) -> list[Finding]:
    target = np.flatnonzero(ctx.invariant & ~(ctx.wd_last > 0))
    if target.size == 0:
        return []
    from stepsize_lens.analysis.theory import decay_exponent

    run = ctx.run
    evidence: dict[str, Any] = {
        "tensor_count": int(target.size),
        "groups": sorted({int(g) for g in ctx.groups[target]}),
        "numel": int(run.numel[target].sum()),
    }
    if ctx.keep.sum() >= ctx.thresholds.min_records:
        steps = run.steps[ctx.keep].astype(np.float64)
        late = steps >= 0.5 * steps.max()
        angle = run.metric("angular_update")[ctx.keep][late]
        exponents = [decay_exponent(steps[late], angle[:, i]) for i in target]
        finite = [e for e in exponents if np.isfinite(e)]
        evidence["median_decay_exponent"] = jsonable(np.median(finite)) if finite else None
    typical = ctx.family.typical_weight_decay
    from stepsize_lens.analysis.advice import advice_dicts, weight_decay_advice

    advice = advice_dicts(weight_decay_advice(ctx, target)) if not ctx.forecast.empty else ()
    return [
        Finding(
            kind="no_weight_decay",
            severity="warning",
            title=(
                f"{target.size} scale-invariant tensor(s) have no weight decay: "
                "their effective step keeps falling"
            ),
            evidence=evidence,
            tensors=listed([ctx.names[i] for i in target]),
            suggestion=(
                "Without weight decay a scale-invariant weight has no equilibrium: its norm only "
                "grows and its angular update falls like t^(-1/2). Put weight decay on these "
                f"tensors (typically {typical}); keep excluding biases and norm gains if you like."
            ),
            score=float(target.size),
            advice=advice,
        )
    ]


def _projection(ctx: Context) -> list[Finding]:
    run = ctx.run
    applied = run.view("applied_view")[ctx.keep]
    ndim = run.param_values("ndim", 0.0)
    known = applied >= 0
    candidates = np.flatnonzero((ndim >= 2) & known.any(axis=0))
    if candidates.size == 0:
        return []
    counts = known[:, candidates].sum(axis=0)
    share = (applied[:, candidates] > 0).sum(axis=0) / np.maximum(counts, 1)
    delta = run.meta.get("delta")
    optimizer = str((run.meta.get("optimizer") or {}).get("class") or "the optimizer")
    names = [ctx.names[i] for i in candidates]
    if not (share > 0).any():
        return [
            Finding(
                kind="projection_never",
                severity="warning",
                title=(
                    f"{optimizer} never projected any of its {candidates.size} matrix/conv tensors"
                ),
                evidence={
                    "tensor_count": int(candidates.size),
                    "records": int(counts.max()),
                    "delta": delta,
                },
                tensors=listed(names),
                suggestion=(
                    f"{optimizer} behaved exactly like its base optimizer here. If the network has "
                    "normalization layers, check them with `stepsize-lens inspect` (the functional "
                    "probe); a larger delta makes the test more permissive."
                ),
                score=float(candidates.size),
            )
        ]
    if candidates.size >= 2 and (share >= ctx.thresholds.projection_always_share).all():
        not_invariant = [ctx.names[i] for i in candidates if not ctx.invariant[i]]
        return [
            Finding(
                kind="projection_always",
                severity="warning",
                title=f"{optimizer} projected every matrix/conv tensor at nearly every step",
                evidence={
                    "tensor_count": int(candidates.size),
                    "min_share": float(share.min()),
                    "delta": delta,
                    "projected_but_not_invariant": not_invariant[:MAX_LISTED],
                },
                tensors=listed(names),
                suggestion=(
                    "Tensors whose scale matters (such as the final classifier) should fail the "
                    "test; delta is probably too loose. Use the default delta=0.1 and compare with "
                    "the functional probe (`stepsize-lens inspect`)."
                ),
                score=float(candidates.size),
            )
        ]
    return []


def _wd_mismatch(ctx: Context) -> list[Finding]:
    target = np.flatnonzero(ctx.invariant)
    if target.size == 0:
        return []
    by_group: dict[int, float] = {}
    for i in target:
        by_group[int(ctx.groups[i])] = float(ctx.wd_last[i])
    if len(by_group) < 2:
        return []
    values = np.array(list(by_group.values()))
    high, low = values.max(), values.min()
    if high <= 0 or (low > 0 and high / low < ctx.thresholds.wd_mismatch_ratio):
        return []
    lr = (
        tensor_group_field(ctx.run, "lr")[-1]
        if ctx.run.num_records
        else np.full(ctx.run.num_tensors, np.nan)
    )
    lr_by_group = {int(ctx.groups[i]): float(lr[i]) for i in target}
    return [
        Finding(
            kind="wd_mismatch",
            severity="warning",
            title=(
                f"Scale-invariant tensors get weight decay from {low:.3g} to {high:.3g} "
                "across param groups"
            ),
            evidence={
                "min_weight_decay": float(low),
                "max_weight_decay": float(high),
                "weight_decay_by_group": {str(g): v for g, v in sorted(by_group.items())},
                "lr_by_group": {str(g): v for g, v in sorted(lr_by_group.items())},
                "ratio": None if low == 0 else float(high / low),
                "tensor_count": int(target.size),
            },
            tensors=listed([ctx.names[i] for i in target]),
            suggestion=(
                "Their equilibrium effective steps differ by sqrt of the lr x weight-decay ratio. "
                "Unless that is intended, give all scale-invariant weights the same weight decay "
                "(biases and norm gains, which are not scale-invariant, can stay at 0)."
            ),
            score=10.0 if low == 0 else math.log10(high / low),
        )
    ]
