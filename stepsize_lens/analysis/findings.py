"""Findings: what a run says the user should look at, ranked, each with evidence and a suggestion.

`find(run)` runs these checks:

- ``nonfinite`` (critical): any non-finite gradient, update or weight
  (`summary.nonfinite_mask`).
- ``norm_blowup`` (warning; critical from ``blowup_critical_ratio``): a tensor's weight norm
  grew ``blowup_ratio``-fold or more.
- ``premature_decay`` (warning): a scale-invariant tensor's angular update fell to
  ``decay_fraction`` of its early level while the lr was unchanged (`summary.decay_crossings`).
- ``no_weight_decay`` (warning): scale-invariant tensors sit in groups with weight decay 0: no
  equilibrium, the effective step keeps falling (≈ t^(−1/2)). The suggested value fits the
  optimizer family (`theory.Family.typical_weight_decay`).
- ``equilibrium_missed`` (warning) / ``equilibrium_reached`` (info): the mean angular update of
  the scale-invariant, weight-decayed tensors over the last ``equilibrium_window`` of the run is
  off the theory (`theory.equilibrium_check`) by more than ``equilibrium_tolerance``, or not.
- ``projection_never`` (warning): AdamP/SGDP never projected any ≥2-D tensor (it ran as
  AdamW/SGD).
- ``projection_always`` (warning): AdamP/SGDP projected every ≥2-D tensor at
  ``projection_always_share`` of the records or more, classifier included: δ is too loose.
- ``wd_mismatch`` (warning): groups holding scale-invariant tensors differ in weight decay
  ``wd_mismatch_ratio``-fold or more (or zero against non-zero).

Trend checks (decay, equilibrium) need at least ``min_records`` non-skipped records. Scale
invariance comes from `stepsize_lens.invariance.classify_tensors` unless ``classes`` is given.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from stepsize_lens._jsonable import jsonable
from stepsize_lens.analysis.frames import is_invariant, tensor_classes, tensor_group_field
from stepsize_lens.analysis.summary import (
    decay_crossings,
    default_window,
    nonfinite_gradient,
    nonfinite_mask,
)
from stepsize_lens.analysis.theory.families import FAMILY_TABLE, Family, family_entry

if TYPE_CHECKING:
    import pandas as pd

    from stepsize_lens.run import Run

SEVERITIES: tuple[str, ...] = ("critical", "warning", "info")
KINDS: tuple[str, ...] = (
    "nonfinite",
    "norm_blowup",
    "premature_decay",
    "no_weight_decay",
    "equilibrium_missed",
    "equilibrium_reached",
    "projection_never",
    "projection_always",
    "wd_mismatch",
)
MAX_LISTED = 20  # tensors listed in a finding's evidence
# the ``no_weight_decay`` suggestion's usual weight decay, per theory family
TYPICAL_WEIGHT_DECAY: dict[str, str] = {
    name: family.typical_weight_decay for name, family in FAMILY_TABLE.items()
}


@dataclass(frozen=True)
class Finding:
    """One finding: ``kind`` (one of `KINDS`), ``severity`` (critical / warning / info), a
    one-line ``title``, ``evidence`` (numbers, JSON-friendly), the ``tensors`` concerned (at most
    20 listed; ``evidence["tensor_count"]`` has the total), a concrete ``suggestion``, and a
    ``score`` that orders findings of equal severity (larger first)."""

    kind: str
    severity: str
    title: str
    evidence: dict[str, Any]
    tensors: tuple[str, ...]
    suggestion: str
    score: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["tensors"] = list(self.tensors)
        return out


@dataclass(frozen=True)
class Thresholds:
    """When findings fire (see the module docstring)."""

    decay_fraction: float = 0.1
    blowup_ratio: float = 10.0
    blowup_critical_ratio: float = 100.0
    equilibrium_tolerance: float = 0.25
    equilibrium_window: float = 0.2
    projection_always_share: float = 0.99
    wd_mismatch_ratio: float = 10.0
    min_records: int = 10


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


def _listed(names: list[str]) -> tuple[str, ...]:
    return tuple(names[:MAX_LISTED])


@dataclass
class _Context:
    run: Run
    classes: pd.Series
    thresholds: Thresholds
    keep: np.ndarray  # non-skipped records
    names: list[str]
    invariant: np.ndarray  # [T] bool
    family: Family
    wd_last: np.ndarray  # [T] weight decay at the last record (NaN -> 0)
    groups: np.ndarray  # [T] param group
    predictions: pd.DataFrame | None  # theory.equilibrium_predictions, if the caller has it


def find(
    run: Run,
    classes: pd.Series | Mapping[str, str] | None = None,
    delta: float | None = None,
    thresholds: Thresholds | None = None,
    predictions: pd.DataFrame | None = None,
) -> list[Finding]:
    """All findings for a run, ranked (`rank`).

    ``predictions``: `theory.equilibrium_predictions` of this run with these classes, when the
    caller already has it (a report computes it once for the findings and the theory figure).
    """
    from stepsize_lens.analysis.theory import optimizer_family

    cls = tensor_classes(run, classes, delta)
    keep = ~run.skipped.astype(bool)
    groups = run.tensor_groups
    wd = tensor_group_field(run, "weight_decay", 0.0)
    wd_last = wd[-1] if run.num_records else np.zeros(run.num_tensors)
    ctx = _Context(
        run=run,
        classes=cls,
        thresholds=thresholds or Thresholds(),
        keep=keep,
        names=run.tensor_names,
        invariant=is_invariant(cls),
        family=family_entry(optimizer_family(run)),
        wd_last=wd_last,
        groups=groups,
        predictions=predictions,
    )
    findings: list[Finding] = []
    for check in (
        _nonfinite,
        _norm_blowup,
        _premature_decay,
        _no_weight_decay,
        _equilibrium,
        _projection,
        _wd_mismatch,
    ):
        findings.extend(check(ctx))
    return rank(findings)


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------


def _nonfinite(ctx: _Context) -> list[Finding]:
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
            tensors=_listed(tensors),
            suggestion=(
                "Check the loss for inf/NaN at that step; lower the learning rate or clip "
                "gradients (torch.nn.utils.clip_grad_norm_); with float16 use "
                "torch.amp.GradScaler so bad steps are skipped instead of applied."
            ),
            score=float(bad.sum()),
        )
    ]


def _norm_ratios(ctx: _Context) -> np.ndarray:
    w = ctx.run.metric("weight_norm")[ctx.keep].astype(np.float64)
    ratios = np.full(w.shape[1], np.nan)
    for i in range(w.shape[1]):
        finite = np.flatnonzero(np.isfinite(w[:, i]))
        if finite.size >= 2 and w[finite[0], i] > 0:
            ratios[i] = w[finite[-1], i] / w[finite[0], i]
    return ratios


def _norm_blowup(ctx: _Context) -> list[Finding]:
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
            tensors=_listed([ctx.names[i] for i in order]),
            suggestion=suggestion,
            score=math.log10(worst),
        )
    ]


def _premature_decay(ctx: _Context) -> list[Finding]:
    th = ctx.thresholds
    run = ctx.run
    if ctx.keep.sum() < th.min_records or not ctx.invariant.any():
        return []
    steps = run.steps[ctx.keep]
    window = default_window(int(ctx.keep.sum()))
    angle = run.metric("angular_update")[ctx.keep].astype(np.float64)
    lr = tensor_group_field(run, "lr")[ctx.keep]
    hits: list[tuple[int, int, float, float]] = []
    for i in np.flatnonzero(ctx.invariant):
        crossing = decay_crossings(steps, angle[:, i], lr[:, i], (th.decay_fraction,), window)
        step = crossing.steps[th.decay_fraction]
        if step is not None:
            tail = angle[:, i][np.isfinite(angle[:, i])][-window:]
            hits.append((int(i), step, crossing.early, float(tail.mean()) if tail.size else np.nan))
    if not hits:
        return []
    hits.sort(key=lambda h: h[1])
    early = np.array([h[2] for h in hits])
    final = np.array([h[3] for h in hits])
    momentum = run.group_field("momentum")
    beta1 = run.group_field("beta1")
    evidence = {
        "tensor_count": len(hits),
        "scale_invariant_tensors": int(ctx.invariant.sum()),
        "fraction": th.decay_fraction,
        "first_step": hits[0][1],
        "median_step": jsonable(np.median([h[1] for h in hits])),
        "median_early_angular_update": jsonable(np.median(early)),
        "median_final_angular_update": jsonable(np.median(final)),
        "median_decay": jsonable(np.median(early / final)),
        "optimizer_family": ctx.family.name,
        "momentum": jsonable(np.nanmax(momentum)) if np.isfinite(momentum).any() else None,
        "beta1": jsonable(np.nanmax(beta1)) if np.isfinite(beta1).any() else None,
    }
    if ctx.family.projects:
        suggestion = (
            "The projection is on, so the decay comes from the lr and weight decay balance: raise "
            "the weight decay on these tensors (the equilibrium angular update grows as sqrt(ηλ)) "
            "or the learning rate."
        )
    else:
        suggestion = (
            "Momentum grows the norm of scale-invariant weights (1+β)/(1−β) times faster than "
            "plain GD, shrinking their effective step early. Try "
            f"stepsize_lens.{ctx.family.projected_variant} (same arguments), which removes the "
            "radial part of each update, or raise the weight decay on these tensors."
        )
    share = len(hits) / max(1, int(ctx.invariant.sum()))
    return [
        Finding(
            kind="premature_decay",
            severity="warning",
            title=(
                f"Effective step of {len(hits)} scale-invariant tensor(s) fell below "
                f"{th.decay_fraction:g} of its early level at constant lr (from step {hits[0][1]})"
            ),
            evidence=evidence,
            tensors=_listed([ctx.names[h[0]] for h in hits]),
            suggestion=suggestion,
            score=share * math.log10(max(float(np.median(early / final)), 1.0) + 1.0),
        )
    ]


def _no_weight_decay(ctx: _Context) -> list[Finding]:
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
    return [
        Finding(
            kind="no_weight_decay",
            severity="warning",
            title=(
                f"{target.size} scale-invariant tensor(s) have no weight decay: "
                "their effective step keeps falling"
            ),
            evidence=evidence,
            tensors=_listed([ctx.names[i] for i in target]),
            suggestion=(
                "Without weight decay a scale-invariant weight has no equilibrium: its norm only "
                "grows and its angular update falls like t^(-1/2). Put weight decay on these "
                f"tensors (typically {typical}); keep excluding biases and norm gains if you like."
            ),
            score=float(target.size),
        )
    ]


def _equilibrium(ctx: _Context) -> list[Finding]:
    th = ctx.thresholds
    if ctx.keep.sum() < th.min_records or not (ctx.invariant & (ctx.wd_last > 0)).any():
        return []
    from stepsize_lens.analysis.theory import equilibrium_check

    per_tensor = equilibrium_check(
        ctx.run,
        ctx.classes,
        window=th.equilibrium_window,
        by="tensor",
        family=ctx.family.name,
        predictions=ctx.predictions,
    )
    per_tensor = per_tensor[np.isfinite(per_tensor["measured"].to_numpy(dtype=float))]
    if per_tensor.empty:
        return []
    measured = float(per_tensor["measured"].mean())
    predicted = float(per_tensor["predicted"].mean())
    ratio = measured / predicted
    tensor_ratio = per_tensor["ratio"].to_numpy(dtype=float)
    relax = float(np.nanmax(per_tensor["relaxation_steps"].to_numpy(dtype=float)))
    span = float(per_tensor["span_steps"].iloc[0])
    evidence = {
        "measured_angular_update": measured,
        "predicted_angular_update": predicted,
        "ratio": ratio,
        "tolerance": th.equilibrium_tolerance,
        "tensors_outside_tolerance": int(
            (np.abs(tensor_ratio - 1.0) > th.equilibrium_tolerance).sum()
        ),
        "relaxation_steps": jsonable(relax),
        "span_steps": span,
        "window_start": int(per_tensor["window_start"].iloc[0]),
        "optimizer_family": ctx.family.name,
        "tensor_count": len(per_tensor),
        "ratio_by_class": {
            str(k): float(v) for k, v in per_tensor.groupby("class")["ratio"].mean().items()
        },
    }
    names = per_tensor["tensor"].tolist()
    if abs(ratio - 1.0) <= th.equilibrium_tolerance:
        return [
            Finding(
                kind="equilibrium_reached",
                severity="info",
                title=(
                    "Scale-invariant tensors are at equilibrium: angular update "
                    f"{measured:.3g} rad/step vs {predicted:.3g} predicted"
                ),
                evidence=evidence,
                tensors=_listed(names),
                suggestion=(
                    "Nothing to fix: weight decay holds the effective step at its equilibrium, "
                    "sqrt(lr x weight decay) in scale; tune that product to move it."
                ),
                score=0.0,
            )
        ]
    if span < 3.0 * relax:
        cause = (
            f"The run covers {span:.0f} steps but equilibrium takes about 3 x {relax:.0f} steps to "
            "reach: train longer, or raise lr x weight decay to get there sooner."
        )
    elif ratio < 1.0:
        cause = (
            "The effective step is below the equilibrium: the norms are still above their "
            "equilibrium (they shrink slowly), or the lr changed recently; raising weight decay "
            "speeds this up."
        )
    else:
        cause = (
            "The effective step is above the equilibrium: gradients may be strongly correlated "
            "across steps (the theory assumes noise-dominated gradients) or the lr rose recently."
        )
    return [
        Finding(
            kind="equilibrium_missed",
            severity="warning",
            title=(
                f"Angular update {measured:.3g} rad/step is {ratio:.2f}x "
                f"the predicted equilibrium {predicted:.3g}"
            ),
            evidence=evidence,
            tensors=_listed(names),
            suggestion=cause,
            score=abs(math.log(ratio)) if ratio > 0 else 0.0,
        )
    ]


def _projection(ctx: _Context) -> list[Finding]:
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
                tensors=_listed(names),
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
                tensors=_listed(names),
                suggestion=(
                    "Tensors whose scale matters (such as the final classifier) should fail the "
                    "test; delta is probably too loose. Use the default delta=0.1 and compare with "
                    "the functional probe (`stepsize-lens inspect`)."
                ),
                score=float(candidates.size),
            )
        ]
    return []


def _wd_mismatch(ctx: _Context) -> list[Finding]:
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
                "weight_decay_by_group": {str(g): v for g, v in sorted(by_group.items())},
                "lr_by_group": {str(g): v for g, v in sorted(lr_by_group.items())},
                "ratio": None if low == 0 else float(high / low),
                "tensor_count": int(target.size),
            },
            tensors=_listed([ctx.names[i] for i in target]),
            suggestion=(
                "Their equilibrium effective steps differ by sqrt of the lr x weight-decay ratio. "
                "Unless that is intended, give all scale-invariant weights the same weight decay "
                "(biases and norm gains, which are not scale-invariant, can stay at 0)."
            ),
            score=10.0 if low == 0 else math.log10(high / low),
        )
    ]
